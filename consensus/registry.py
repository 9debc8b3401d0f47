"""Engine construction from genesis: the one place that maps an engine name to its class."""

from __future__ import annotations

from ledger.address import address_of
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis

from consensus.bft import BftEngine
from consensus.engine import Engine
from consensus.pos.engine import PosEngine
from consensus.pow import PowEngine
from consensus.raft.engine import RaftEngine
from consensus.solo import SoloEngine


class EngineNotBuilt(ValueError):
    pass


class NotForThisEngine(ValueError):
    """A node option the chain's engine has no use for (a block time on a network engine)."""


def create_engine(
    genesis: Genesis, signer: PrivateKey | None, *, mine: bool = True, miner_address: bytes | None = None,
    block_time_ms: int = 0,
) -> Engine:
    """`mine` and `miner_address` concern proof of work only; the miner address defaults to
    the signer's (the node key's) address.  Under bft the signer votes if it is a validator's key.
    `block_time_ms` (a dev chain's fixed cadence) concerns solo only."""
    if genesis.engine == "solo":
        return SoloEngine(genesis.engine_params, signer, block_time_ms)
    if block_time_ms:
        raise NotForThisEngine(f"--block-time is for a dev chain (solo engine); this chain runs {genesis.engine}, "
                               "whose blocks the network decides")
    if genesis.engine == "pow":
        if miner_address is None and signer is not None:
            miner_address = address_of(signer.public_key)
        return PowEngine(genesis.engine_params, miner_address, mine and miner_address is not None,
                         genesis.max_block_transactions)
    if genesis.engine == "bft":
        # The node key votes when it is a validator's; any other node follows.
        return BftEngine.from_genesis(genesis, signer)
    if genesis.engine == "pos":
        # The node key attests and proposes once it is an active validator's key.
        return PosEngine(genesis, signer)
    if genesis.engine == "raft":
        # The node key takes part if it is a member's; any other node follows by sync.
        return RaftEngine(genesis, signer)
    raise EngineNotBuilt(
        f"the '{genesis.engine}' engine is not built yet; this node runs: solo, pow, bft, pos, raft"
    )
