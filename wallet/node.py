"""Talking to a node for the wallet: the network's parameters, errors in words, following a
transaction to finality.

Everything goes through the shared client (`api.client.LedgerClient`) and its response
models; this module only turns its exceptions into WalletErrors with exit codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from api.client import ApiError, LedgerClient, NodeUnreachable
from api.schemas import NodeInfoOut, TransactionStatusOut
from ledger.address import InvalidAddress, decode_address, encode_address
from wallet.errors import BadInput, ExitCode, NotFound, WalletError

DEFAULT_NODE = "http://127.0.0.1:8000"
POLL_SECONDS = 0.25
# A transaction the node stops knowing for this long after accepting it was dropped.
DROP_GRACE_SECONDS = 2.0


class Rejected(WalletError):
    code = ExitCode.REJECTED


class Unreachable(WalletError):
    code = ExitCode.UNREACHABLE


class TimedOut(WalletError):
    code = ExitCode.TIMEOUT


@contextmanager
def node_errors(url: str, submitting: bool = False) -> Iterator[None]:
    """Turn the client's errors into one-line WalletErrors with the right exit code."""
    try:
        yield
    except NodeUnreachable as exc:
        raise Unreachable(
            f"{exc}. Is a node running there? Start one with `make node`, or point --node "
            "(or LEDGER_NODE) at a running node.",
            "node_unreachable",
        ) from None
    except ApiError as exc:
        detail = exc.detail or exc.reason
        if exc.status == 404:
            raise NotFound(f"the node has no such thing: {detail}", exc.reason) from None
        # 503 answers a submission with mempool_full, syncing or shutting_down: a refusal too.
        if submitting and (400 <= exc.status < 500 or exc.status == 503):
            raise Rejected(f"the node refused the transaction ({exc.reason}): {detail}", exc.reason) from None
        if 400 <= exc.status < 500:
            raise BadInput(f"the node refused the request ({exc.reason}): {detail}", exc.reason) from None
        raise WalletError(f"the node failed to answer ({exc.status} {exc.reason}): {detail}", exc.reason) from None


@dataclass
class Network:
    """A node and the parameters of its chain, read once from GET /v1/node."""

    client: LedgerClient
    info: NodeInfoOut

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def prefix(self) -> str:
        return self.info.address_prefix

    def address(self, account: bytes) -> str:
        return encode_address(self.prefix, account)

    def decode_address(self, text: str, what: str = "address") -> bytes:
        try:
            return decode_address(text, self.prefix)
        except InvalidAddress as exc:
            raise BadInput(f"{what} '{text.strip()}': {exc}", exc.reason) from None


@contextmanager
def connect(url: str, chain_id: str | None = None, timeout: float = 10.0) -> Iterator[Network]:
    """A Network for `url`; refuses a node serving another chain than `chain_id` when given."""
    with LedgerClient(url, timeout=timeout) as client:
        with node_errors(client.url):
            info = client.node_info()
        if chain_id is not None and info.chain_id != chain_id:
            raise BadInput(
                f"the node at {client.url} serves chain '{info.chain_id}', not '{chain_id}' (--chain-id); "
                "nothing was signed",
                "wrong_chain",
            )
        yield Network(client, info)


def describe_status(record: TransactionStatusOut) -> str:
    if record.status == "included":
        plural = "" if record.confirmations == 1 else "s"
        return f"included in block {record.block_height} ({record.confirmations} confirmation{plural})"
    if record.status == "final":
        return f"final in block {record.block_height}"
    if record.status == "pending":
        return "pending in the mempool"
    return record.status


def follow(
    network: Network, tx_id: str, timeout: float, on_change: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> TransactionStatusOut:
    """Poll a transaction until it is final; `on_change` hears each new status line.

    TimedOut (with the last status) when `timeout` passes first; Rejected when the
    node no longer knows the transaction for DROP_GRACE_SECONDS (dropped from its
    mempool: expired, evicted or replaced).
    """
    deadline = clock() + timeout
    last_shown = None
    last: TransactionStatusOut | None = None
    missing_since: float | None = None
    while True:
        record: TransactionStatusOut | None
        try:
            with node_errors(network.url):
                record = network.client.transaction(tx_id)
        except NotFound:
            record = None
        now = clock()
        if record is None or record.status == "unknown":
            missing_since = missing_since if missing_since is not None else now
            if now - missing_since >= DROP_GRACE_SECONDS:
                raise Rejected(
                    f"transaction {tx_id} was dropped: the node no longer knows it (expired, evicted or replaced)",
                    "dropped",
                    data={"id": tx_id, "status": "dropped"},
                )
        else:
            missing_since = None
            last = record
            shown = describe_status(record)
            if shown != last_shown:
                on_change(shown)
                last_shown = shown
            if record.status == "final":
                return record
        if now >= deadline:
            status = last.status if last is not None else "unknown"
            raise TimedOut(
                f"transaction {tx_id} is not final after {timeout:g} s (last status: {status}); "
                f"check later with `wallet tx {tx_id}`",
                "timeout",
                data={"id": tx_id, "status": status},
            )
        sleep(min(POLL_SECONDS, max(0.0, deadline - now)))
