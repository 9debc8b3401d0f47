"""Genesis: the rules a chain starts from, loaded from a JSON file and hashed.

The genesis hash commits to every field (allocations included) through the
canonical encoding, and the genesis block carries it in `extra`, so two nodes
with different genesis files can never agree on block 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger import crypto
from ledger.address import InvalidAddress, address_of, decode_address, encode_address, is_valid_prefix
from ledger.block import ZERO_HASH, Block, BlockHeader
from ledger.codec import MAX_AMOUNT, Writer
from ledger.merkle import EMPTY_ROOT
from ledger.transaction import CHAIN_ID_PATTERN

MAX_GENESIS_FILE = 16 * 1024 * 1024
ENGINES = ("solo", "pow", "bft", "pos", "raft")


class InvalidGenesis(ValueError):
    pass


@dataclass(frozen=True)
class Denomination:
    name: str = "LED"
    decimals: int = 9


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    address_prefix: str
    timestamp: int
    engine: str
    engine_params: dict[str, Any]
    allocations: dict[bytes, int]
    denomination: Denomination = field(default_factory=Denomination)
    block_reward: int = 0
    max_block_transactions: int = 10_000

    # --- hashing ---------------------------------------------------------------------------
    def encode(self) -> bytes:
        writer = (
            Writer()
            .u32(1)
            .text(self.chain_id)
            .text(self.address_prefix)
            .text(self.denomination.name)
            .u8(self.denomination.decimals)
            .u64(self.timestamp)
            .text(self.engine)
            .text(json.dumps(self.engine_params, sort_keys=True, separators=(",", ":")))
            .u64(self.block_reward)
            .u32(self.max_block_transactions)
            .u32(len(self.allocations))
        )
        for address in sorted(self.allocations):
            writer.fixed(address, 20).u64(self.allocations[address])
        return writer.bytes()

    @property
    def hash(self) -> bytes:
        return crypto.sha256(self.encode())

    def block(self) -> Block:
        header = BlockHeader(
            chain_id=self.chain_id,
            height=0,
            parent=ZERO_HASH,
            timestamp=self.timestamp,
            tx_root=EMPTY_ROOT,
            tx_count=0,
            proposer=bytes(20),
            extra=self.hash,
        )
        return Block(header, ())

    @property
    def total_allocated(self) -> int:
        return sum(self.allocations.values())

    def expected_supply(self, height: int) -> int:
        return self.total_allocated + self.block_reward * height

    def address(self, account: bytes) -> str:
        return encode_address(self.address_prefix, account)

    # --- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "address_prefix": self.address_prefix,
            "denomination": {"name": self.denomination.name, "decimals": self.denomination.decimals},
            "timestamp": self.timestamp,
            "engine": {"name": self.engine, "params": self.engine_params},
            "block_reward": self.block_reward,
            "max_block_transactions": self.max_block_transactions,
            "allocations": [
                {"address": self.address(address), "balance": balance}
                for address, balance in sorted(self.allocations.items())
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> Genesis:
        try:
            return cls._from_json(data)
        except InvalidGenesis:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidGenesis(f"genesis is malformed: {exc!r}") from None

    @classmethod
    def _from_json(cls, data: Any) -> Genesis:
        if not isinstance(data, dict):
            raise InvalidGenesis("genesis must be a JSON object")
        known = {"chain_id", "address_prefix", "denomination", "timestamp", "engine", "block_reward",
                 "max_block_transactions", "allocations"}
        unknown = set(data) - known
        if unknown:
            raise InvalidGenesis(f"unknown genesis fields: {', '.join(sorted(unknown))}")
        chain_id = data["chain_id"]
        if not isinstance(chain_id, str) or not CHAIN_ID_PATTERN.match(chain_id):
            raise InvalidGenesis("chain_id: 1-64 characters of a-z, 0-9 and '-'")
        prefix = data["address_prefix"]
        if not isinstance(prefix, str) or not is_valid_prefix(prefix) or len(prefix) > 20:
            raise InvalidGenesis("address_prefix: 1-20 lower-case printable characters")
        denomination = _object(data.get("denomination", {}), "denomination", {"name", "decimals"})
        name = denomination.get("name", "LED")
        if not isinstance(name, str):
            raise InvalidGenesis("denomination.name must be a string")
        denom = Denomination(name, _int(denomination.get("decimals", 9), "denomination.decimals", 0, 18))
        engine = data["engine"]
        if not isinstance(engine, dict) or engine.get("name") not in ENGINES:
            raise InvalidGenesis(f"engine.name: one of {', '.join(ENGINES)}")
        _object(engine, "engine", {"name", "params"})
        params = engine.get("params", {})
        if not isinstance(params, dict):
            raise InvalidGenesis("engine.params must be an object")
        allocations: dict[bytes, int] = {}
        entries = data.get("allocations", [])
        if not isinstance(entries, list):
            raise InvalidGenesis("allocations must be a list of {address, balance} objects")
        for index, entry in enumerate(entries):
            entry = _object(entry, f"allocations[{index}]", {"address", "balance"})
            if not isinstance(entry.get("address"), str):
                raise InvalidGenesis(f"allocations[{index}].address must be a string")
            try:
                account = decode_address(entry["address"], prefix)
            except InvalidAddress as exc:
                raise InvalidGenesis(f"allocations[{index}].address: {exc}") from None
            if account in allocations:
                raise InvalidGenesis(f"allocations[{index}]: address allocated twice")
            allocations[account] = _int(entry["balance"], f"allocations[{index}].balance", 0, MAX_AMOUNT)
        genesis = cls(
            chain_id=chain_id,
            address_prefix=prefix,
            timestamp=_int(data.get("timestamp", 0), "timestamp", 0, MAX_AMOUNT),
            engine=engine["name"],
            engine_params=params,
            allocations=allocations,
            denomination=denom,
            block_reward=_int(data.get("block_reward", 0), "block_reward", 0, MAX_AMOUNT),
            max_block_transactions=_int(data.get("max_block_transactions", 10_000), "max_block_transactions", 1, 1_000_000),
        )
        if genesis.total_allocated > MAX_AMOUNT:
            raise InvalidGenesis("allocations add up to more than the maximum supply")
        return genesis

    @classmethod
    def load(cls, path: Path) -> Genesis:
        try:
            if path.stat().st_size > MAX_GENESIS_FILE:
                raise InvalidGenesis(f"{path}: larger than {MAX_GENESIS_FILE} bytes")
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidGenesis(f"cannot read genesis file {path}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidGenesis(f"{path} is not valid JSON: {exc}") from None
        return cls.from_json(data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def _object(value: Any, name: str, known: set[str]) -> dict[str, Any]:
    """A JSON object with no keys outside `known`: a misspelt key must not fall back to a default."""
    if not isinstance(value, dict):
        raise InvalidGenesis(f"{name} must be an object")
    unknown = set(value) - known
    if unknown:
        raise InvalidGenesis(f"{name}: unknown fields: {', '.join(sorted(unknown))}")
    return value


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidGenesis(f"{name}: an integer from {low} to {high}")
    return value


def dev_genesis(
    authority: bytes, chain_id: str = "ledger-dev", prefix: str = "dev", accounts: int = 10,
    balance: int = 1_000_000 * 10**9, timestamp: int = 1_767_225_600_000, block_interval_ms: int = 0,
) -> Genesis:
    """A solo dev chain whose `accounts` dev keys (ledger.hdkeys.dev_keys) are funded."""
    from ledger.hdkeys import dev_keys

    allocations = {address_of(key.public_key): balance for key in dev_keys(accounts)}
    return Genesis(
        chain_id=chain_id,
        address_prefix=prefix,
        timestamp=timestamp,
        engine="solo",
        engine_params={"authority": authority.hex(), "block_interval_ms": block_interval_ms},
        allocations=allocations,
    )
