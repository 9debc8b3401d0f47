"""TEMPORARY (replaced by the pos-ledger branch): the interface the engine builds against."""
from __future__ import annotations
from dataclasses import dataclass
from enum import IntEnum
from ledger.codec import DecodeError, Reader, Writer


class StakeOpKind(IntEnum):
    REWARD = 1
    PENALTY = 2
    SLASH = 3
    UNBOND = 4
    RELEASE = 5


@dataclass(frozen=True, slots=True)
class StakeOp:
    kind: int
    address: bytes
    amount: int
    epoch: int = 0

    def write(self, writer: Writer) -> None:
        writer.u8(self.kind).fixed(self.address, 20).u64(self.amount).u64(self.epoch)

    @classmethod
    def read(cls, reader: Reader) -> StakeOp:
        kind = reader.u8("op.kind")
        if kind not in tuple(StakeOpKind):
            raise DecodeError("op.kind", "unknown")
        return cls(kind, reader.fixed(20, "op.address"), reader.u64("op.amount"), reader.u64("op.epoch"))


@dataclass(frozen=True, slots=True)
class StakeChange:
    owner: bytes
    validator_key: bytes
    amount: int
    bond: bool

    def write(self, writer: Writer) -> None:
        writer.u8(self.bond).fixed(self.owner, 20).var_bytes(self.validator_key).u64(self.amount)

    @classmethod
    def read(cls, reader: Reader) -> StakeChange:
        bond = reader.u8("bond")
        return cls(reader.fixed(20, "owner"), reader.var_bytes("key", 33), reader.u64("amount"), bool(bond))


def stake_changes_of(transactions) -> tuple[StakeChange, ...]:
    return ()
