"""The explorer in a real browser: Playwright drives Debian's Chromium (headless) against a
real node process.  A transfer submitted through the REST API shows up on the open
dashboard without a reload; a transaction page follows its transfer from pending to
final; links lead block -> transaction -> account; the search box finds each kind of
key; unknown keys get the 404 page; on a 4-validator BFT network the Validators page shows
what GET /v1/validators reports and links each validator to its account.  Every page is
saved as a screenshot under test-output/explorer/ (gitignored) for a person to look at.

Needs /usr/bin/chromium (`apt-get install -y chromium`).  Without it these tests skip,
unless LEDGER_TEST_BROWSER is set: then they fail, so CI cannot pass without a browser.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.client import LedgerClient
from ledger.address import address_of
from ledger.crypto import PrivateKey
from ledger.hdkeys import dev_keys
from ledger.transaction import Transaction, new_transfer

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "explorer"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
KEYS = dev_keys(6)  # funded by the dev genesis a fresh node writes
RECIPIENT = address_of(PrivateKey(bytes(31) + b"\x2a").public_key)
LIVE_TIMEOUT_MS = 10_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningNode:
    def __init__(self, url: str):
        self.url = url
        self.client = LedgerClient(url)
        info = self.client.node_info()
        self.chain_id = info.chain_id
        self.prefix = info.address_prefix

    def address(self, key: PrivateKey) -> str:
        from ledger.address import encode_address

        return encode_address(self.prefix, address_of(key.public_key))

    def next_nonce(self, key: PrivateKey) -> int:
        return self.client.account(self.address(key)).pending_nonce

    def transfer(self, key: PrivateKey, nonce: int | None = None, amount: int = 1_500_000_000) -> Transaction:
        nonce = self.next_nonce(key) if nonce is None else nonce
        tx = new_transfer(key, self.chain_id, nonce, RECIPIENT, amount, fee=21_000)
        answer = self.client.submit(tx)
        assert answer.id == tx.id.hex()
        return tx

    def wait_included(self, tx: Transaction, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.client.transaction(tx.id)
            if shown.block_height is not None:
                return shown.block_height
            time.sleep(0.05)
        raise AssertionError(f"transaction {tx.id.hex()} was not included within {timeout} s")


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[RunningNode]:
    """`python -m node.cli node` on a fresh data dir and free ports; stopped with SIGTERM at the end."""
    data_dir = tmp_path_factory.mktemp("explorer-node")
    api_port, p2p_port = free_port(), free_port()
    log_path = data_dir / "node.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "--data-dir", str(data_dir / "node"),
             "--api-port", str(api_port), "--p2p-port", str(p2p_port), "--log-level", "warning"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"the node exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the node did not answer within 30 s:\n{log_path.read_text()}")
            time.sleep(0.1)
        running = RunningNode(url)
        yield running
        running.client.close()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
        if os.environ.get("LEDGER_TEST_BROWSER"):
            pytest.fail(f"{message}; LEDGER_TEST_BROWSER is set, so browser tests must run", pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, **context_options):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, **context_options)
    page = context.new_page()
    page.set_default_timeout(LIVE_TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    # A 404 page makes the console log the failed load; any other console error is a bug.
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and "status of 404" not in message.text else None)
    return context, page, problems


@pytest.fixture
def page(browser):
    context, page, problems = open_page(browser)
    yield page
    context.close()
    assert not problems, problems


def shot(page, name: str) -> None:
    """Keep a picture of the page for a person to look at.  Headless Chromium on a loaded
    machine sometimes answers "Unable to capture screenshot" to a full-page capture (seen
    once in a CI run): try again before calling it a failure."""
    from playwright.sync_api import Error as PlaywrightError

    for attempt in range(3):
        try:
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
            return
        except PlaywrightError as exc:
            if "Unable to capture screenshot" not in str(exc) or attempt == 2:
                raise
            page.wait_for_timeout(500)


def wait_live(page) -> None:
    page.locator('#live-status[data-state="live"]').wait_for()


def mark_document(page) -> None:
    """A flag that only survives if the page is never reloaded."""
    page.evaluate("window.__explorerTestSameDocument = true")


def same_document(page) -> bool:
    return page.evaluate("window.__explorerTestSameDocument === true")


# --- the stories --------------------------------------------------------------------------


def test_dashboard_shows_a_new_block_without_reloading(page, node):
    from playwright.sync_api import expect

    page.goto(node.url + "/explorer")
    expect(page.locator("h1")).to_have_text("Dashboard")
    wait_live(page)
    mark_document(page)

    tx = node.transfer(KEYS[0])
    height = node.wait_included(tx)
    block = node.client.block(height, with_transactions=False)

    expect(page.locator(f'tr[data-key="{block.hash}"]')).to_be_visible()
    expect(page.locator(f'tr[data-key="{tx.id.hex()}"]')).to_be_visible()
    expect(page.locator(".stats-dashboard .stat").first.locator("dd").first).to_have_text(f"#{height}")
    expect(page.locator("[data-head-height]")).to_have_text(str(height))
    assert same_document(page)
    shot(page, "dashboard")


def test_a_transfer_goes_from_pending_to_final_and_links_lead_block_tx_account(page, node):
    from playwright.sync_api import expect

    key = KEYS[1]
    nonce = node.next_nonce(key)
    # Sent one nonce ahead, it waits in the mempool (pending) until the gap is filled.
    waiting = node.transfer(key, nonce + 1, amount=2_500_000_000)
    page.goto(f"{node.url}/explorer/tx/{waiting.id.hex()}")
    status = page.locator('[data-field="status"] .badge')
    expect(status).to_have_text("pending")
    expect(page.locator('.step[aria-current="step"]')).to_have_attribute("data-step", "pending")
    expect(page.locator('[data-field="block"]')).to_contain_text("not in a block yet")
    expect(page.locator('[data-field="live-note"]')).to_contain_text(f"Queued behind the sender's earlier transaction with nonce {nonce}")
    wait_live(page)
    mark_document(page)
    shot(page, "transaction-pending")

    node.transfer(key, nonce)  # fills the gap: both enter blocks, and the solo engine finalizes at commit
    height = node.wait_included(waiting)
    expect(status).to_have_text("final")
    expect(page.locator('.step[aria-current="step"]')).to_have_attribute("data-step", "final")
    expect(page.locator('[data-field="block"] a')).to_have_text(f"#{height}")
    expect(page.locator('[data-field="live-note"]')).to_contain_text("Final")
    assert same_document(page)
    expect(page.locator(".big-amount")).to_contain_text("2.5")
    shot(page, "transaction-final")

    page.locator('[data-field="block"] a').click()
    page.wait_for_url(f"**/explorer/block/{height}")
    expect(page.locator("h1")).to_have_text(f"Block #{height}")
    expect(page.locator(".summary-bar .badge")).to_have_text("final")
    shot(page, "block")

    page.locator(f'tr[data-key="{waiting.id.hex()}"] a[href^="/explorer/tx/"]').click()
    page.wait_for_url(f"**/explorer/tx/{waiting.id.hex()}")
    sender = node.address(key)
    page.locator(f'dd a[href="/explorer/account/{sender}"]').click()
    page.wait_for_url(f"**/explorer/account/{sender}")
    expect(page.locator("h1")).to_have_text("Account")
    expect(page.locator(f'tr[data-key="{waiting.id.hex()}"]')).to_be_visible()
    shot(page, "account")


def test_search_box_finds_each_kind_of_key_and_unknown_keys_get_the_404_page(page, node):
    from playwright.sync_api import expect

    tx = node.transfer(KEYS[2])
    height = node.wait_included(tx)
    block_hash = node.client.block(height, with_transactions=False).hash
    address = node.address(KEYS[2])
    page.goto(node.url + "/explorer")
    for query, path, heading in [
        (str(height), f"/explorer/block/{height}", f"Block #{height}"),
        (block_hash, f"/explorer/block/{block_hash}", f"Block #{height}"),
        (tx.id.hex(), f"/explorer/tx/{tx.id.hex()}", "Transaction"),
        (address, f"/explorer/account/{address}", "Account"),
    ]:
        page.get_by_label("Search by block height, block hash, transaction id or address").fill(query)
        page.keyboard.press("Enter")
        page.wait_for_url(f"**{path}")
        expect(page.locator("h1")).to_have_text(heading)

    with page.expect_response(lambda response: "/explorer/search" in response.url) as answer:
        page.locator("#search-q").fill("no-such-thing")
        page.keyboard.press("Enter")
    assert answer.value.status == 404
    expect(page.locator("h1")).to_have_text("Not found")
    expect(page.locator("#search-q")).to_have_value("no-such-thing")
    shot(page, "not-found")

    response = page.goto(f"{node.url}/explorer/tx/{'ab' * 32}")
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("Transaction not found")


def test_keyboard_skip_link_and_the_theme_toggle_that_sticks(page, node):
    from playwright.sync_api import expect

    page.goto(node.url + "/explorer")
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()

    toggle = page.locator("#theme-toggle")
    expect(toggle).to_be_visible()
    before = page.evaluate("getComputedStyle(document.body).backgroundColor")
    toggle.focus()
    page.keyboard.press("Enter")
    chosen = page.evaluate("document.documentElement.dataset.theme")
    assert chosen in ("dark", "light")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != before
    page.reload()
    assert page.evaluate("document.documentElement.dataset.theme") == chosen
    shot(page, f"dashboard-{chosen}")


def test_list_pages_and_the_phone_layout(browser, node):
    from playwright.sync_api import expect

    tx = node.transfer(KEYS[3])
    node.wait_included(tx)
    context, page, problems = open_page(browser)
    try:
        for path, heading, content in [
            ("/explorer/blocks", "Blocks", "#1"),
            ("/explorer/mempool", "Mempool", "Pending"),
            ("/explorer/validators", "Validators", "sole authority"),
            ("/explorer/peers", "Peers", "No peers: single node"),
        ]:
            page.goto(node.url + path)
            expect(page.locator("h1")).to_have_text(heading)
            expect(page.locator("main")).to_contain_text(content)
            shot(page, path.rsplit("/", 1)[1])
    finally:
        context.close()
    assert not problems, problems

    context, phone, problems = open_page(browser, is_mobile=True, has_touch=True, device_scale_factor=2)
    phone.set_viewport_size({"width": 390, "height": 844})
    try:
        for path, name in [("/explorer", "phone-dashboard"), (f"/explorer/tx/{tx.id.hex()}", "phone-transaction"),
                           (f"/explorer/account/{node.address(KEYS[3])}", "phone-account")]:
            phone.goto(node.url + path)
            # Nothing wider than the screen: tables give way, long hashes wrap.
            assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), path
            shot(phone, name)
    finally:
        context.close()
    assert not problems, problems


# --- the validators of a BFT network ------------------------------------------------------------

BFT_VALIDATORS = 4
BFT_BLOCKS = 4  # blocks to wait for before the page is read: every row has something to show
BFT_TIMEOUT = 40.0  # four Python start-ups on a shared 2-core machine


@pytest.fixture
def bft_network(tmp_path) -> Iterator[list]:
    """Four validator processes as `ledger testnet --consensus bft` lays them out, with empty
    blocks every 300 ms so the chain moves without transfers (and while the page is read)."""
    import dataclasses

    from ledger.genesis import Genesis
    from node.testnet import write_network
    from tests.test_network_process import ConfiguredNode, free_port_run, stop_with_children

    api_port = free_port_run(BFT_VALIDATORS)
    p2p_port = free_port_run(BFT_VALIDATORS, avoid=range(api_port, api_port + BFT_VALIDATORS))
    directory = tmp_path / "net"
    write_network(directory, BFT_VALIDATORS, "bft", api_port, p2p_port)
    genesis = Genesis.load(directory / "genesis.json")
    params = dict(genesis.engine_params, create_empty_blocks=True, min_block_interval_ms=300)
    dataclasses.replace(genesis, engine_params=params).save(directory / "genesis.json")
    nodes = [ConfiguredNode(directory / f"node{i}", api_port + i, tmp_path / f"node{i}-logs")
             for i in range(BFT_VALIDATORS)]
    try:
        for node in nodes:  # started together: four start-ups overlap instead of queueing
            node.start(wait=False)
        for node in nodes:
            node.wait_ready(BFT_TIMEOUT)
        yield nodes
    finally:
        stop_with_children(nodes)


def test_bft_validators_page_shows_what_the_api_reports(browser, bft_network):
    from playwright.sync_api import expect

    from tests.validators_view import assert_between, from_api, page_row

    url = bft_network[0].url
    with httpx.Client(base_url=url, timeout=5.0) as http:
        deadline = time.monotonic() + BFT_TIMEOUT
        while http.get("/v1/node").json()["height"] < BFT_BLOCKS:
            assert time.monotonic() < deadline, f"the network made no {BFT_BLOCKS} blocks in {BFT_TIMEOUT:.0f} s"
            time.sleep(0.2)
        prefix = http.get("/v1/node").json()["address_prefix"]
        context, page, problems = open_page(browser)
        try:
            before = from_api(http.get("/v1/validators").json())
            page.goto(url + "/explorer/validators")
            expect(page.locator("h1")).to_have_text("Validators")
            # Read in one go: the live region is swapped on every block.
            cells = page.evaluate("""() => [...document.querySelectorAll('tr[data-key]')].map(row => [
                row.dataset.key,
                row.querySelector('[data-field="blocks-proposed"]').textContent,
                row.querySelector('[data-field="last-signed"]').textContent,
                row.querySelector('a[href^="/explorer/account/"]').getAttribute('href'),
            ])""")
            after = from_api(http.get("/v1/validators").json())
            shot(page, "validators-bft")
            shown = [page_row(address, proposed, last) for address, proposed, last, _ in cells]
            assert len(shown) == BFT_VALIDATORS
            assert_between(before, shown, after, prefix)
            assert sum(row.blocks_proposed for row in shown) >= BFT_BLOCKS - 1  # counted since the nodes started
            assert all(row.last_signed_height is not None for row in shown)
            for address, _, _, href in cells:
                assert href == f"/explorer/account/{address}"
                with page.expect_navigation(url=f"**{href}") as followed:
                    page.locator(f'tr[data-key="{address}"] a[href="{href}"]').first.click()
                assert followed.value is not None and followed.value.status == 200, href
                expect(page.locator(".tag-line")).to_contain_text("in the validator set")
                page.go_back()
        finally:
            context.close()
        assert not problems, problems
