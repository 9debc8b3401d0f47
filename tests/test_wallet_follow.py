"""Following a transaction to finality: statuses in order, a timeout, a drop; and the node's
errors in words.  A scripted stand-in for the client and a virtual clock keep it instant;
the real node is exercised in test_wallet_cli.py."""

from __future__ import annotations

import httpx
import pytest

from api.client import ApiError, LedgerClient, NodeUnreachable
from api.schemas import NodeInfoOut, TransactionStatusOut
from wallet.errors import BadInput, ExitCode, NotFound, WalletError
from wallet.node import DROP_GRACE_SECONDS, Network, Rejected, TimedOut, Unreachable, follow, node_errors

TX_ID = "ab" * 32
INFO = NodeInfoOut(
    chain_id="ledger-dev", genesis_hash="00" * 32, engine="solo", height=0, head_hash="00" * 32, head_timestamp=0,
    finalized_height=0, version="0", address_prefix="dev", denomination="LED", decimals=9, node_id="n",
)


def record(status: str, height: int | None = None, confirmations: int = 0) -> TransactionStatusOut:
    return TransactionStatusOut(
        id=TX_ID, sender_address="dev1x", chain_id="ledger-dev", nonce=0, sender="02" + "11" * 32, recipient="dev1y",
        amount=1, fee=0, kind="transfer", payload="", signature="22" * 64, status=status, block_height=height,
        block_hash=None if height is None else "33" * 32, confirmations=confirmations,
    )


class ScriptedClient:
    """Answers `transaction()` from a list; None means 404."""

    url = "http://node.test"

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def transaction(self, tx_id):
        assert tx_id == TX_ID
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if answer is None:
            raise ApiError(404, "not_found", "no such transaction", "id")
        return answer


class VirtualClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def run(answers, timeout=10.0):
    clock = VirtualClock()
    seen: list[str] = []
    network = Network(ScriptedClient(answers), INFO)
    result = follow(network, TX_ID, timeout, seen.append, clock=clock, sleep=clock.sleep)
    return result, seen, clock


def test_shows_each_status_once_and_returns_at_finality():
    answers = [record("pending"), record("pending"), record("included", 4, 1), record("included", 4, 2),
               record("final", 4, 3)]
    result, seen, _ = run(answers)
    assert result.status == "final"
    assert seen == [
        "pending in the mempool",
        "included in block 4 (1 confirmation)",
        "included in block 4 (2 confirmations)",
        "final in block 4",
    ]


def test_times_out_with_the_last_status():
    with pytest.raises(TimedOut) as caught:
        run([record("included", 2, 1)], timeout=3.0)
    assert caught.value.code == ExitCode.TIMEOUT
    assert caught.value.data == {"id": TX_ID, "status": "included"}
    assert "wallet tx" in str(caught.value)


def test_a_transaction_the_node_forgets_was_dropped():
    with pytest.raises(Rejected) as caught:
        run([record("pending"), None])
    assert caught.value.reason == "dropped"
    assert caught.value.code == ExitCode.REJECTED


def test_a_brief_gap_is_not_a_drop():
    gap = int(DROP_GRACE_SECONDS / 0.25) - 2
    result, _, _ = run([record("pending")] + [None] * gap + [record("final", 1, 1)])
    assert result.status == "final"


def test_node_errors_in_words_with_exit_codes():
    cases = [
        (NodeUnreachable("http://127.0.0.1:9", httpx.ConnectError("refused")), Unreachable, ExitCode.UNREACHABLE),
        (ApiError(404, "not_found", "no transaction"), NotFound, ExitCode.NOT_FOUND),
        (ApiError(400, "bad_checksum", "address checksum does not match"), BadInput, ExitCode.USAGE),
        (ApiError(500, "internal_error", "boom"), WalletError, ExitCode.FAILURE),
    ]
    for raised, kind, code in cases:
        with pytest.raises(kind) as caught:
            with node_errors("http://127.0.0.1:9"):
                raise raised
        assert caught.value.code == code
        assert "\n" not in str(caught.value)
    with pytest.raises(Rejected, match="insufficient_balance"):
        with node_errors("http://x", submitting=True):
            raise ApiError(409, "insufficient_balance", "balance does not cover amount plus fee")


def test_unreachable_says_which_url_and_what_to_try():
    with pytest.raises(Unreachable) as caught:
        with node_errors("http://127.0.0.1:9"):
            LedgerClient("http://127.0.0.1:9", timeout=2).node_info()
    message = str(caught.value)
    assert "http://127.0.0.1:9" in message and "--node" in message and "make node" in message
