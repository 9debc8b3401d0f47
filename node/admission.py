"""Admission: transactions submitted through the API or gossiped by peers, into the mempool.

The stateless checks (signatures: a large batch partly in the signature workers) run
first, then the mempool's state-dependent admission under the runtime's `lock`; what is
admitted wakes the engine, goes to gossip and to the events stream.  `wait=final` waits
here too.  Node mixes this in, so the runtime module holds only the engine loop.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Container

from api.service import Accepted, Rejection, SubmitResult, TxStatusName
from ledger.genesis import Genesis
from ledger.mempool import Mempool, MempoolRejection
from ledger.store import ChainStore
from ledger.transaction import InvalidTransaction, Transaction
from ledger.validate import BlockRules
from node.events import EventHub
from node.finality import FinalityWaiters
from node.gossip import TxGossip
from node.metrics import NodeMetrics
from node.signatures import ADMIT_AHEAD, SignatureChecks


class Admission:
    genesis: Genesis
    store: ChainStore
    pool: Mempool
    rules: BlockRules
    lock: threading.Lock
    metrics: NodeMetrics
    signatures: SignatureChecks
    gossip: TxGossip | None
    hub: EventHub
    finality: FinalityWaiters
    reading: Callable[..., Awaitable]
    now_ms: Callable[[], int]
    _stopping: bool

    async def submit(self, transactions: list[Transaction]) -> list[SubmitResult]:
        return await self._admit(transactions, None)

    def _pending_tx(self, tx_id: bytes) -> Transaction | None:
        with self.lock:
            return self.pool.get(tx_id)

    async def _admit(self, transactions: list[Transaction], origin: str | None) -> list[SubmitResult]:
        if self._stopping:
            return [Rejection("shutting_down", "the node is shutting down")] * len(transactions)
        checks = await self._check_stateless(transactions)
        if self._stopping:
            return [Rejection("shutting_down", "the node is shutting down")] * len(transactions)
        results: list[SubmitResult] = []
        now = self.now_ms()
        admitted: list[Transaction] = []
        with self.lock:
            for tx, problem in zip(transactions, checks):
                if problem is not None:
                    results.append(Rejection(problem.reason, str(problem), problem.field))
                    continue
                try:
                    added = self.pool.add(tx, now, verified=True)
                except MempoolRejection as exc:
                    results.append(Rejection(exc.reason, exc.message, exc.field))
                    continue
                results.append(Accepted(tx.id, duplicate=not added))
                if added:
                    admitted.append(tx)
        used = [i for i, r in enumerate(results) if isinstance(r, Rejection) and r.reason == "nonce_too_low"]
        if used:
            # Submitting is idempotent (docs/api.md): a transaction already on the chain, sent
            # again by a client whose answer was lost, is a known duplicate, not a nonce error.
            stored = await self.reading(self._stored_ids, [transactions[i].id for i in used])
            for i in used:
                if transactions[i].id in stored:
                    results[i] = Accepted(transactions[i].id, duplicate=True)
        rejected = [r for r in results if isinstance(r, Rejection)]
        for rejection in rejected:
            self.metrics.rejected.labels(rejection.reason).inc()
        if admitted:
            self.metrics.admitted.inc(len(admitted))
            self.metrics.mempool_size.set(len(self.pool))
            self.signal_txs()
            if self.gossip is not None:
                self.gossip.admitted(admitted, origin)
            if self.hub:
                for tx in admitted[:100]:
                    self.publish("tx", self._tx_event(tx))
        return results

    def _stored_ids(self, tx_ids: list[bytes]) -> set[bytes]:
        return {tx_id for tx_id in tx_ids if self.store.transaction(tx_id) is not None}

    async def _check_stateless(self, transactions: list[Transaction]) -> list[InvalidTransaction | None]:
        """Each transaction's stateless problem, or None.  A batch large enough goes partly to the
        signature workers while the loop checks its own share (not in a thread: every
        libsecp256k1 call would drop and re-take the GIL against the loop, which measured
        slower).  What the workers do not vouch for is checked here, which also gives the
        reason of a refusal."""
        good: Container[bytes] = ()
        batch = self.signatures.begin(len(transactions), ADMIT_AHEAD)
        if batch is not None:
            batch.add(transactions)
            good = await batch.finish()
            if self._stopping:
                return [None] * len(transactions)  # the caller refuses them all: no checks owed
        chain_id = self.genesis.chain_id
        out: list[InvalidTransaction | None] = []
        for tx in transactions:
            if tx.id in good:
                out.append(None)
                continue
            try:
                tx.check_stateless(chain_id, staking=self.rules.staking)
                out.append(None)
            except InvalidTransaction as exc:
                out.append(exc)
        return out

    def _tx_event(self, tx: Transaction) -> dict:
        return {
            "id": tx.id.hex(),
            "sender": self.genesis.address(tx.sender_address),
            "recipient": self.genesis.address(tx.recipient),
            "amount": tx.amount,
            "fee": tx.fee,
            "nonce": tx.nonce,
            "status": "pending",
        }

    async def wait_final(self, tx_ids: list[bytes], timeout: float) -> dict[bytes, TxStatusName]:
        async def status_of(tx_id: bytes) -> TxStatusName:
            record = await self.reading(self.transaction, tx_id)
            return record.status if record is not None else "unknown"

        return await self.finality.wait(tx_ids, timeout, status_of, lambda tx_id: tx_id in self.pool)
