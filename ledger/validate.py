"""The block-validity rule: everything a block must pass before it can commit, in one pure function.

Every path that takes a block in uses it: a block from a peer on our head, a sync batch,
each block of a branch before a reorg, a proposal the engine asks the node to execute,
and the simulator (which runs the node).  The order follows DESIGN.md principle 7:
structure and size first, then the header against its parent and the engine's seal
rule, then signatures, then state.  Nothing here reads a clock or a database: `now_ms`,
the recent headers and the accounts are handed in, so the same inputs give the same verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass

from ledger.block import Block, BlockHeader, InvalidBlock, InvalidSeal
from ledger.staking import StakeChange, StakeOp
from ledger.state import Account, BlockEffects, StateError, apply_transactions
from ledger.transaction import InvalidTransaction, Transaction

# The engine's pure header check: (header, ancestors ending with the parent, now_ms).
HeaderCheck = Callable[[BlockHeader, Sequence[BlockHeader], "int | None"], None]

# What a refused block raises; `reason` (where the exception has one) is a stable code.
BLOCK_REFUSALS: tuple[type[Exception], ...] = (InvalidBlock, InvalidSeal, StateError, InvalidTransaction)


@dataclass(frozen=True, slots=True)
class BlockRules:
    """The chain's limits a block is checked against (from genesis and the engine)."""

    chain_id: str
    max_block_transactions: int
    block_reward: int
    max_future_ms: int  # how far ahead of the receiver's clock a timestamp may be
    # Proof of stake (the engine's members of the same names): stake transactions allowed, the
    # stake ops a header orders and the stake changes it declares, read from its `extra`.
    staking: bool = False
    stake_ops: Callable[[bytes], tuple[StakeOp, ...]] = lambda extra: ()
    declared_stake_changes: Callable[[bytes], tuple[StakeChange, ...]] = lambda extra: ()

    @classmethod
    def of(cls, genesis, engine) -> BlockRules:
        """The rules of a chain (ledger.genesis.Genesis) run by `engine` (consensus.engine.Engine)."""
        return cls(genesis.chain_id, genesis.max_block_transactions, genesis.block_reward, engine.max_future_ms,
                   engine.staking, engine.stake_ops, engine.declared_stake_changes)


def apply_block(
    accounts: Mapping[bytes, Account], transactions: Sequence[Transaction], proposer: bytes, extra: bytes,
    rules: BlockRules,
) -> BlockEffects:
    """The effects of a block (or one being built) whose header carries `extra`: its stake ops,
    then its transactions, then fees and reward."""
    return apply_transactions(accounts, transactions, proposer, rules.block_reward, rules.stake_ops(extra))


def too_far_ahead(timestamp: int, now_ms: int | None, max_future_ms: int) -> str | None:
    """Why `timestamp` is refused by a receiver whose clock reads `now_ms`, or None.
    None for `now_ms` None: a block accepted once is not judged by the clock again."""
    if now_ms is None or timestamp <= now_ms + max_future_ms:
        return None
    return f"timestamp {timestamp} is {timestamp - now_ms} ms in the future (at most {max_future_ms})"


def validate_header(
    block: Block, recent: Sequence[BlockHeader], rules: BlockRules, verify_header: HeaderCheck, now_ms: int | None,
) -> None:
    """The checks of `block` that need no account state: its structure, that it extends
    `recent[-1]`, its timestamp against the receiver's clock, and the engine's header rule
    (seal, proposer, certificate, target) over `recent`.  A side branch is checked this far
    before it may weigh in fork choice."""
    if not recent:
        raise ValueError("a block is checked against at least its parent's header")
    header, parent = block.header, recent[-1]
    block.check_structure(rules.chain_id, rules.max_block_transactions)
    if header.height != parent.height + 1 or header.parent != parent.hash:
        raise InvalidBlock("bad_parent", "block does not extend its parent")
    problem = too_far_ahead(header.timestamp, now_ms, rules.max_future_ms)
    if problem is not None:
        raise InvalidBlock("future_timestamp", f"block {problem}")
    verify_header(header, recent, now_ms)


def validate_block(
    block: Block,
    recent: Sequence[BlockHeader],
    accounts: Mapping[bytes, Account],
    rules: BlockRules,
    verify_header: HeaderCheck,
    now_ms: int | None,
    verified: Container[bytes] = (),
) -> BlockEffects:
    """The effects of `block` on `accounts` if it is valid on top of `recent[-1]` (its parent;
    `recent` holds the headers the engine needs, oldest first); raises one of BLOCK_REFUSALS
    otherwise.  `verified` holds ids of transactions whose signatures were checked already
    (the mempool's), which are not checked again."""
    validate_header(block, recent, rules, verify_header, now_ms)
    for tx in block.transactions:
        if tx.id not in verified:
            tx.check_stateless(rules.chain_id, staking=rules.staking)
    header = block.header
    effects = apply_block(accounts, block.transactions, header.proposer, header.extra, rules)
    if effects.stake_changes != rules.declared_stake_changes(header.extra):
        raise InvalidBlock("stake_changes_mismatch", "the header does not declare what its stake transactions do")
    return effects
