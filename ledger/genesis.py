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
from ledger.staking import Stake
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
class GenesisStake:
    """A first validator: `amount` of its owner's money bonded from block 0, signing with `validator_key`."""

    owner: bytes  # 20-byte account
    validator_key: bytes  # 33-byte compressed public key
    amount: int


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
    # Bonded stake from block 0 (proof of stake's first validators).
    stakes: tuple[GenesisStake, ...] = ()

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
        if self.stakes:  # only then: the hash of every chain without stakes stays what it was
            writer.u32(len(self.stakes))
            for stake in self.stakes:
                writer.fixed(stake.owner, 20).fixed(stake.validator_key, 33).u64(stake.amount)
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
        """Balances and stakes at genesis."""
        return sum(self.allocations.values()) + sum(stake.amount for stake in self.stakes)

    def expected_supply(self, height: int, issued: int = 0, burned: int = 0) -> int:
        """Money after `height` blocks: genesis, block rewards, and what stake ops issued
        (rewards) and burnt (penalties, slashings) on that chain."""
        return self.total_allocated + self.block_reward * height + issued - burned

    def initial_accounts(self) -> dict[bytes, tuple]:
        """Every account at genesis as ledger.state.Account: allocations, and stakes bonded."""
        accounts: dict[bytes, tuple] = {address: (balance, 0, None) for address, balance in self.allocations.items()}
        for stake in self.stakes:
            balance, nonce, held = accounts.get(stake.owner, (0, 0, None))
            bonded = (held.bonded if held is not None else 0) + stake.amount
            accounts[stake.owner] = (balance, nonce, Stake(bonded=bonded))
        return accounts

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
            **({"stakes": [
                {"address": self.address(stake.owner), "validator_key": stake.validator_key.hex(), "amount": stake.amount}
                for stake in self.stakes
            ]} if self.stakes else {}),
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
                 "max_block_transactions", "allocations", "stakes"}
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
            account = _address(entry, f"allocations[{index}]", prefix)
            if account in allocations:
                raise InvalidGenesis(f"allocations[{index}]: address allocated twice")
            allocations[account] = _int(entry["balance"], f"allocations[{index}].balance", 0, MAX_AMOUNT)
        stakes = _stakes(data.get("stakes", []), prefix)
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
            stakes=stakes,
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


def _stakes(entries: Any, prefix: str) -> tuple[GenesisStake, ...]:
    if not isinstance(entries, list):
        raise InvalidGenesis("stakes must be a list of {address, validator_key, amount} objects")
    stakes: list[GenesisStake] = []
    for index, entry in enumerate(entries):
        name = f"stakes[{index}]"
        entry = _object(entry, name, {"address", "validator_key", "amount"})
        owner = _address(entry, name, prefix)
        key_text = entry.get("validator_key")
        try:
            key = bytes.fromhex(key_text) if isinstance(key_text, str) else b""
        except ValueError:
            key = b""
        if not crypto.is_valid_public_key(key):
            raise InvalidGenesis(f"{name}.validator_key: 66 hex digits of a compressed secp256k1 public key")
        if any(stake.owner == owner for stake in stakes) or any(stake.validator_key == key for stake in stakes):
            raise InvalidGenesis(f"{name}: an owner or a validator key staked twice")
        stakes.append(GenesisStake(owner, key, _int(entry.get("amount"), f"{name}.amount", 1, MAX_AMOUNT)))
    return tuple(stakes)


def _address(entry: dict[str, Any], name: str, prefix: str) -> bytes:
    if not isinstance(entry.get("address"), str):
        raise InvalidGenesis(f"{name}.address must be a string")
    try:
        return decode_address(entry["address"], prefix)
    except InvalidAddress as exc:
        raise InvalidGenesis(f"{name}.address: {exc}") from None


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
