"""The mempool: signed transactions waiting for a block.

Per sender, pending transactions form a queue keyed by nonce.  The part of the queue
that runs without a gap from the account's committed nonce is *ready* (a block can
include it now); transactions after a gap are *queued* and become ready when the gap
fills, as in geth's txpool (pending/queued).  Across senders, blocks take the highest
fee first among the senders' next ready transactions, never breaking a sender's nonce
order.

Admission is O(log n) per transaction: dictionaries for lookups, one sorted nonce list
per sender (bounded by `per_sender_limit`), and a lazily pruned heap of sender tails by
fee (eviction when full, like Bitcoin Core evicting the lowest fee).  Stale heap items
are skipped when met and the heap is rebuilt when they outnumber the senders, so that
work is amortised O(1).  Expiry needs no index of its own: the id dictionary keeps
insertion order, which is arrival order, so the oldest come first.

A sender's committed nonce is cached in its queue, refreshed whenever the mempool asks
`accounts()` (at every admission, and for the senders of every committed block), so a
caller that forgets `remove_committed` still gets a consistent pool at the next add.

Not thread-safe: the node owns it on its event loop.  Signature verification, the one
expensive step, happens at most once per transaction id (a bounded cache of stateless
check outcomes), and callers that verified elsewhere pass `verified=True`.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable

from ledger.crypto import SIGNATURE_SIZE
from ledger.recent import RecentMap
from ledger.state import Account
from ledger.transaction import InvalidTransaction, Transaction, TxKind

AccountLookup = Callable[[bytes], Account]  # address -> its committed account

# The tails heap is rebuilt when it holds more than this many items a sender (plus slack):
# each transaction that becomes its sender's tail leaves the previous tail's item stale.
_HEAP_SLACK_FACTOR = 2
_HEAP_SLACK_MIN = 1024
# Verdicts of stateless checks remembered: a few seconds of traffic at full rate.
VERIFIED_CACHE_SIZE = 32_768


class MempoolRejection(Exception):
    """Why a transaction was refused: `reason` is a stable snake_case code, `field` the culprit."""

    def __init__(self, reason: str, message: str, field: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"MempoolRejection({self.reason!r}, {self.message!r}, {self.field!r})"


class _Entry:
    """A pending transaction with what the pool needs of it computed once."""

    __slots__ = ("tx", "id", "sender", "nonce", "fee", "cost", "seq", "arrival_ms")

    def __init__(self, tx: Transaction, tx_id: bytes, sender: bytes, seq: int, arrival_ms: int):
        self.tx = tx
        self.id = tx_id
        self.sender = sender
        self.nonce = tx.nonce
        self.fee = tx.fee
        self.cost = tx.cost
        self.seq = seq  # arrival order, unique: breaks fee ties and tells live heap items from stale
        self.arrival_ms = arrival_ms


class _SenderQueue:
    __slots__ = ("address", "by_nonce", "nonces", "committed", "ready", "total_cost")

    def __init__(self, address: bytes, committed: int):
        self.address = address
        self.by_nonce: dict[int, _Entry] = {}
        self.nonces: list[int] = []  # sorted; nonces[-1] is the tail
        self.committed = committed  # the account nonce when last asked
        self.ready = 0  # length of the gapless run starting at `committed`
        self.total_cost = 0  # amount + fee of everything pending, ready or queued


class Mempool:
    def __init__(
        self,
        chain_id: str,
        accounts: AccountLookup,
        capacity: int = 100_000,
        per_sender_limit: int = 1_000,
        nonce_window: int = 1_000,
        replace_bump_percent: int = 10,
        ttl_ms: int = 3 * 3600 * 1000,
        verified_cache_size: int | None = None,
        staking: bool = False,
    ):
        if capacity < 1 or per_sender_limit < 1 or nonce_window < 1:
            raise ValueError("capacity, per_sender_limit and nonce_window must be positive")
        if replace_bump_percent < 0 or ttl_ms < 1:
            raise ValueError("replace_bump_percent must be >= 0 and ttl_ms positive")
        self.chain_id = chain_id
        self.staking = staking  # the chain bonds stake: stake and unstake transactions are admitted
        self.capacity = capacity
        self.per_sender_limit = per_sender_limit
        self.nonce_window = nonce_window  # admitted nonces: committed .. committed + nonce_window - 1
        self.replace_bump_percent = replace_bump_percent
        self.ttl_ms = ttl_ms
        self._accounts = accounts
        self._by_id: dict[bytes, _Entry] = {}
        self._senders: dict[bytes, _SenderQueue] = {}
        self._ready_total = 0
        self._seq = 0
        # (fee, -seq, id) of sender tails: the cheapest, newest tail is evicted first.
        self._tails: list[tuple[int, int, bytes]] = []
        # id -> None (passed the stateless checks) or the InvalidTransaction it failed with.
        # Stateless checks depend only on the transaction bytes and our chain id, so the
        # outcome can be replayed for a re-submitted id without verifying again.  Only the
        # newest verdicts are kept (duplicates arrive close together: gossip from several
        # peers, a client's retry); one per transfer ever seen would grow with the chain.
        self._checked: RecentMap[bytes, InvalidTransaction | None] = RecentMap(
            verified_cache_size or VERIFIED_CACHE_SIZE)

    # --- queries --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._by_id

    def get(self, tx_id: bytes) -> Transaction | None:
        entry = self._by_id.get(tx_id)
        return entry.tx if entry is not None else None

    def senders(self) -> int:
        return len(self._senders)

    def ready_count(self) -> int:
        return self._ready_total

    def pending_count(self, address: bytes) -> int:
        queue = self._senders.get(address)
        return len(queue.nonces) if queue is not None else 0

    def pending_nonce(self, address: bytes) -> int:
        """The nonce a new transaction of `address` should use: after the gapless pending run."""
        _, committed, _ = self._accounts(address)
        queue = self._senders.get(address)
        if queue is None:
            return committed
        if queue.committed == committed:
            return committed + queue.ready
        nonce = committed  # the cache is stale (a block not yet reported): count afresh
        while nonce in queue.by_nonce:
            nonce += 1
        return nonce

    def snapshot(self, limit: int) -> list[Transaction]:
        """Up to `limit` pending transactions, highest fee first (earlier arrival first on ties)."""
        if limit <= 0:
            return []
        best = heapq.nlargest(limit, self._by_id.values(), key=lambda e: (e.fee, -e.seq))
        return [entry.tx for entry in best]

    def select(self, max_count: int) -> list[Transaction]:
        """Ready transactions for a block, best fee first, each sender's in nonce order.

        Greedy over the senders' next ready transactions (a heap keyed by fee, then arrival):
        a sender whose cheap transaction blocks dearer ones behind it waits its turn, the
        same rule geth's price-and-nonce ordering follows.  Nothing is removed.
        """
        if max_count <= 0 or self._ready_total == 0:
            return []
        heap = []
        for queue in self._senders.values():
            if queue.ready:
                head = queue.by_nonce[queue.committed]
                heap.append((-head.fee, head.seq, head, queue))
        heapq.heapify(heap)
        chosen: list[Transaction] = []
        while heap and len(chosen) < max_count:
            _, _, entry, queue = heap[0]
            chosen.append(entry.tx)
            following = entry.nonce + 1
            if following < queue.committed + queue.ready:
                successor = queue.by_nonce[following]
                heapq.heapreplace(heap, (-successor.fee, successor.seq, successor, queue))
            else:
                heapq.heappop(heap)
        return chosen

    # --- admission ------------------------------------------------------------------------
    def add(self, tx: Transaction, now_ms: int, verified: bool = False) -> bool:
        """Admit `tx` (True), or find it already pending (False), or raise MempoolRejection.

        Nothing changes when the transaction is refused.
        """
        if len(tx.signature) != SIGNATURE_SIZE:
            raise MempoolRejection("bad_signature", "transaction is not signed", "signature")
        tx_id = tx.id
        if tx_id in self._by_id:
            return False
        self._check_stateless(tx, tx_id, verified)

        sender = tx.sender_address
        balance, committed, stake = self._accounts(sender)
        if tx.kind == TxKind.UNSTAKE and (stake is None or stake.bonded < tx.amount):
            raise MempoolRejection("insufficient_stake", f"only {stake.bonded if stake else 0} is bonded, "
                                   f"not {tx.amount}", "amount")
        queue = self._senders.get(sender)
        if queue is not None and (queue.committed != committed or queue.total_cost > balance):
            # The chain moved without remove_committed telling us: catch up first.
            self._resync(queue, balance, committed)
            queue = self._senders.get(sender)

        nonce = tx.nonce
        if nonce < committed:
            raise MempoolRejection(
                "nonce_too_low", f"nonce {nonce} is already used; the account nonce is {committed}", "nonce"
            )
        if nonce - committed >= self.nonce_window:
            raise MempoolRejection(
                "nonce_too_far",
                f"nonce {nonce} is too far ahead of the account nonce {committed} "
                f"(at most {committed + self.nonce_window - 1})",
                "nonce",
            )
        replaced = queue.by_nonce.get(nonce) if queue is not None else None
        if replaced is not None:
            bump = 100 + self.replace_bump_percent
            if tx.fee <= replaced.fee or tx.fee * 100 < replaced.fee * bump:
                needed = max(replaced.fee + 1, -(-replaced.fee * bump // 100))
                raise MempoolRejection(
                    "replacement_underpriced",
                    f"a transaction with nonce {nonce} is pending with fee {replaced.fee}; "
                    f"a replacement needs a fee of at least {needed}",
                    "fee",
                )
        pending_cost = queue.total_cost if queue is not None else 0
        if replaced is not None:
            pending_cost -= replaced.cost
        cost = tx.cost
        if pending_cost + cost > balance:
            raise MempoolRejection(
                "insufficient_balance",
                f"balance {balance} does not cover {cost} on top of {pending_cost} already pending",
                "amount",
            )
        victim = None
        if replaced is None:
            if queue is not None and len(queue.nonces) >= self.per_sender_limit:
                raise MempoolRejection(
                    "sender_limit", f"the sender already has {self.per_sender_limit} pending transactions", None
                )
            if len(self._by_id) >= self.capacity:
                victim = self._eviction_victim(sender, nonce, tx.fee)

        # Every check passed: from here on nothing raises.
        if victim is not None:
            self._remove_tail(self._senders[victim.sender])
            queue = self._senders.get(sender)
        self._insert(tx, tx_id, sender, committed, queue, replaced, now_ms)
        return True

    def add_many(self, txs: list[Transaction], now_ms: int) -> list[MempoolRejection | bool]:
        """Admit a batch; one outcome per transaction, in order (True new, False duplicate)."""
        outcomes: list[MempoolRejection | bool] = []
        for tx in txs:
            try:
                outcomes.append(self.add(tx, now_ms))
            except MempoolRejection as rejection:
                outcomes.append(rejection)
        return outcomes

    def readmit(self, txs: Iterable[Transaction], now_ms: int) -> None:
        """Put back the transactions of blocks abandoned in a reorg, best effort.

        Call it once `accounts()` reflects the new head: those the new branch already
        includes are refused as nonce_too_low and dropped silently.  The blocks were
        verified on import, so signatures are not checked again.
        """
        for tx in sorted(txs, key=lambda t: t.nonce):
            try:
                self.add(tx, now_ms, verified=True)
            except MempoolRejection:
                pass
            except ValueError:  # e.g. unencodable: never let a reorg fail on the mempool
                pass

    # --- removal --------------------------------------------------------------------------
    def clear(self) -> list[Transaction]:
        """Drop every pending transaction (a dev chain rewound to a snapshot); returns them.
        The signature cache stays: it depends on the bytes alone."""
        dropped = [entry.tx for entry in self._by_id.values()]
        self._by_id.clear()
        self._senders.clear()
        self._tails.clear()
        self._ready_total = 0
        return dropped

    def remove_committed(self, txs: Iterable[Transaction]) -> None:
        """After a block commits (`accounts()` already shows the new state): drop its
        transactions, the pending ones its nonces made stale, and those the senders'
        new balances no longer cover (from the tail, so no gap appears)."""
        ids = []
        affected = set()
        by_id = self._by_id
        for tx in txs:
            tx_id = tx.id
            ids.append(tx_id)
            entry = by_id.get(tx_id)
            affected.add(entry.sender if entry is not None else tx.sender_address)
        self.revalidate(affected)
        for tx_id in ids:
            # Normally already gone (its nonce is below the committed one); this covers an
            # accounts() that lags behind the block.
            entry = by_id.get(tx_id)
            if entry is not None:
                queue = self._senders[entry.sender]
                self._remove_from(queue, bisect_left(queue.nonces, entry.nonce), keep_after=True)

    def revalidate(self, addresses: Iterable[bytes]) -> None:
        """Re-read the committed state of `addresses` and drop what no longer fits.

        For the runtime after a reorg: accounts that lost funds (recipients of abandoned
        transactions) may no longer cover their pending transactions."""
        for address in addresses:
            queue = self._senders.get(address)
            if queue is not None:
                balance, committed, _ = self._accounts(address)
                self._resync(queue, balance, committed)

    def expire(self, now_ms: int) -> list[Transaction]:
        """Drop transactions that waited longer than the ttl, and their senders' later nonces.
        The pool is scanned in arrival order and stops at the first one young enough, so
        callers pass times that do not go back (a transaction admitted with an earlier time
        than the one before it expires with that one)."""
        deadline = now_ms - self.ttl_ms
        due = []
        for entry in self._by_id.values():  # oldest first (arrival order)
            if entry.arrival_ms >= deadline:
                break
            due.append(entry)
        expired: list[Transaction] = []
        for entry in due:
            if self._by_id.get(entry.id) is not entry:
                continue  # gone with an earlier nonce of its sender
            queue = self._senders[entry.sender]
            removed = self._remove_from(queue, bisect_left(queue.nonces, entry.nonce), keep_after=False)
            expired.extend(e.tx for e in removed)
        return expired

    # --- internals ------------------------------------------------------------------------
    def _check_stateless(self, tx: Transaction, tx_id: bytes, verified: bool) -> None:
        checked = self._checked
        if tx_id in checked:
            failure = checked.get(tx_id)
        else:
            failure = None
            try:
                tx.check_stateless(self.chain_id, verify_signature=not verified, staking=self.staking)
            except InvalidTransaction as exc:
                failure = exc
            checked[tx_id] = failure
        if failure is not None:
            raise MempoolRejection(failure.reason, str(failure), failure.field)

    def _eviction_victim(self, sender: bytes, nonce: int, fee: int) -> _Entry:
        """The cheapest tail in the pool that `fee` outbids, or raise mempool_full.

        The newcomer's own sender's tail is not a candidate when the newcomer's nonce is
        above it: evicting it would leave the newcomer behind a gap."""
        tails = self._tails
        set_aside = None
        victim = None
        while tails:
            _, neg_seq, tx_id = tails[0]
            entry = self._by_id.get(tx_id)
            if entry is None or entry.seq != -neg_seq or self._senders[entry.sender].nonces[-1] != entry.nonce:
                heapq.heappop(tails)  # stale: no longer pending, or no longer its sender's tail
                continue
            if entry.sender == sender and nonce > entry.nonce:
                set_aside = heapq.heappop(tails)
                continue
            victim = entry
            break
        if set_aside is not None:
            heapq.heappush(tails, set_aside)
        if victim is None or fee <= victim.fee:
            cheapest = victim.fee if victim is not None else None
            raise MempoolRejection(
                "mempool_full",
                f"the mempool is full ({self.capacity} transactions)"
                + (f"; a fee above {cheapest} is needed to enter" if cheapest is not None else ""),
                "fee",
            )
        return victim

    def _insert(
        self, tx: Transaction, tx_id: bytes, sender: bytes, committed: int,
        queue: _SenderQueue | None, replaced: _Entry | None, now_ms: int,
    ) -> None:
        self._seq += 1
        if tx.chain_id is not self.chain_id:
            assert tx.chain_id == self.chain_id, "a transaction of another chain passed the checks"
            # Equal: a pending transaction shares the pool's copy rather than hold its
            # own, about 50 bytes of each.  Not interned at decoding, where the id is not yet
            # checked and a stream of made-up ones would stay interned.
            object.__setattr__(tx, "chain_id", self.chain_id)
        entry = _Entry(tx, tx_id, sender, self._seq, now_ms)
        nonce = entry.nonce
        if queue is None:
            queue = _SenderQueue(sender, committed)
            self._senders[sender] = queue
        queue.by_nonce[nonce] = entry
        self._by_id[tx_id] = entry
        nonces = queue.nonces
        if replaced is not None:
            del self._by_id[replaced.id]
            queue.total_cost += entry.cost - replaced.cost
            if nonces[-1] == nonce:
                self._push_tail(entry)
        else:
            queue.total_cost += entry.cost
            if not nonces or nonce > nonces[-1]:
                nonces.append(nonce)
                self._push_tail(entry)
            else:
                insort(nonces, nonce)
            if nonce == queue.committed + queue.ready:
                self._extend_ready(queue)

    def _push_tail(self, entry: _Entry) -> None:
        heapq.heappush(self._tails, (entry.fee, -entry.seq, entry.id))
        if len(self._tails) > _HEAP_SLACK_FACTOR * len(self._senders) + _HEAP_SLACK_MIN:
            self._tails = []
            for queue in self._senders.values():
                if queue.nonces:
                    tail = queue.by_nonce[queue.nonces[-1]]
                    self._tails.append((tail.fee, -tail.seq, tail.id))
            heapq.heapify(self._tails)

    def _extend_ready(self, queue: _SenderQueue) -> None:
        nonce = queue.committed + queue.ready
        by_nonce = queue.by_nonce
        while nonce in by_nonce:
            nonce += 1
        self._set_ready(queue, nonce - queue.committed)

    def _set_ready(self, queue: _SenderQueue, ready: int) -> None:
        self._ready_total += ready - queue.ready
        queue.ready = ready

    def _drop_entry(self, queue: _SenderQueue, nonce: int) -> _Entry:
        entry = queue.by_nonce.pop(nonce)
        del self._by_id[entry.id]
        queue.total_cost -= entry.cost
        return entry

    def _forget_if_empty(self, queue: _SenderQueue) -> bool:
        if queue.nonces:
            return False
        self._set_ready(queue, 0)
        del self._senders[queue.address]
        return True

    def _remove_tail(self, queue: _SenderQueue) -> _Entry:
        nonce = queue.nonces.pop()
        entry = self._drop_entry(queue, nonce)
        if nonce < queue.committed + queue.ready:  # the whole queue was ready
            self._set_ready(queue, queue.ready - 1)
        if not self._forget_if_empty(queue):
            self._push_tail(queue.by_nonce[queue.nonces[-1]])
        return entry

    def _remove_from(self, queue: _SenderQueue, index: int, keep_after: bool) -> list[_Entry]:
        """Drop nonces[index] and, unless keep_after, every later nonce of the sender."""
        nonces = queue.nonces
        first = nonces[index]
        end = index + 1 if keep_after else len(nonces)
        removed = [self._drop_entry(queue, nonce) for nonce in nonces[index:end]]
        was_tail = end == len(nonces)
        del nonces[index:end]
        if first >= queue.committed:
            self._set_ready(queue, min(queue.ready, first - queue.committed))
        if not self._forget_if_empty(queue) and was_tail:
            self._push_tail(queue.by_nonce[nonces[-1]])
        return removed

    def _resync(self, queue: _SenderQueue, balance: int, committed: int) -> None:
        """Bring one sender's queue in line with its committed (balance, nonce)."""
        nonces = queue.nonces
        if committed != queue.committed:
            cut = bisect_left(nonces, committed)
            for nonce in nonces[:cut]:
                self._drop_entry(queue, nonce)
            del nonces[:cut]
            if committed > queue.committed:
                # What was ready past the new nonce is still present and gapless.
                still_ready = max(0, queue.committed + queue.ready - committed)
            else:
                still_ready = 0  # the chain went back (reorg): recount from scratch
            self._set_ready(queue, still_ready)
            queue.committed = committed
            if self._forget_if_empty(queue):
                return
            self._extend_ready(queue)
        while queue.total_cost > balance:
            self._remove_tail(queue)
            if not queue.nonces:
                return
