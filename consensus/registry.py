"""Engine construction from genesis: the one place that maps an engine name to its class."""

from __future__ import annotations

from ledger.crypto import PrivateKey
from ledger.genesis import Genesis

from consensus.engine import Engine
from consensus.solo import SoloEngine


class EngineNotBuilt(ValueError):
    pass


def create_engine(genesis: Genesis, signer: PrivateKey | None) -> Engine:
    if genesis.engine == "solo":
        return SoloEngine(genesis.engine_params, signer)
    raise EngineNotBuilt(
        f"the '{genesis.engine}' engine is not built yet; this node runs: solo"
    )
