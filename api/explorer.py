"""The block explorer: HTML pages rendered on the server from the same `NodeService`
the REST API uses (not over HTTP), with a little plain JavaScript that listens to
the events stream (GET /v1/events) and refreshes the live parts of a page.

Every page works without JavaScript.  Every asset is served by the node itself
(no CDN, no build step), so the explorer works offline.  Jinja2 autoescapes every
value; the pages also carry a Content-Security-Policy that allows only the node's
own scripts and styles.

Live parts: a page marks a region `data-live-src="<url>?fragment=live"`; on a block
(or tx) event the script fetches that URL and swaps the region, so the markup of a
live update is the same server-rendered template as the first render.

Performance: a page costs a handful of store queries, never one per row (the
dashboard's 100-block charts come from one `service.blocks(None, 100)` call).

This module holds the pages: what each reads from the service, how it renders, the
routes.  What a page shows once the records are read (text, charts, rows) is in
`api.explorer_format`, which needs no service; what a URL or the search box names is
parsed and looked up in `api.explorer_input`, mixed into `Explorer`.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api import explorer_consensus
from api.explorer_format import (
    BlockRow,
    PeerRow,
    TxRow,
    ValidatorRow,
    _FINALITY_NOTES,
    _NO_VALIDATOR_SET,
    _sole_validator,
    ago_text,
    dashboard_charts,
    duration_text,
    format_units,
    iso_time,
    network_events,
    payload_text,
    short_address,
    short_hex,
    utc_text,
)
from api.explorer_input import ExplorerInput, MAX_QUERY_LENGTH, PageError, _echo
from api.service import BlockRecord, NodeInfo, NodeService, TxRecord
from ledger.codec import MAX_AMOUNT
from ledger.engine_status import Finality, ValidatorStatus
from ledger.genesis import Genesis
from ledger.transaction import Transaction, TxKind

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")

CHART_BLOCKS = 100
LATEST_ROWS = 10
LATEST_PENDING_ROWS = 5
LATEST_BLOCKS_SCANNED = 10  # blocks opened at most to fill the dashboard's latest transactions
BLOCKS_PAGE = 25
ACCOUNT_PAGE = 25
BLOCK_TX_PAGE = 100
MEMPOOL_PAGE = 100

_CURSOR = re.compile(r"([0-9]{1,19}):([0-9]{1,10})")

_STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# `ledger compare`'s report is one self-contained file: its own inline style and SVG, no script.
_REPORT_HEADERS = {
    **_SECURITY_HEADERS,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
}
MAX_REPORT_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class StaticAsset:
    body: bytes
    media_type: str
    etag: str


def _load_static() -> dict[str, StaticAsset]:
    assets = {}
    for path in sorted(STATIC_DIR.iterdir()):
        media_type = _STATIC_TYPES.get(path.suffix)
        if media_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        assets[path.name] = StaticAsset(body, media_type, hashlib.sha256(body).hexdigest()[:16])
    return assets


# --- the explorer ---------------------------------------------------------------------------


class Explorer(ExplorerInput):
    """Builds each page's context from the service and renders it."""

    def __init__(self, service: NodeService, compare_report: Path | None = None):
        # The genesis is read when a page is rendered, not here: building the router must not
        # depend on more of the service than the page being asked for.
        self.service = service
        self.compare_report = compare_report  # `ledger compare`'s newest report: linked once it exists
        self.assets = _load_static()
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES_DIR),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            amount=self.amount,
            short=short_hex,
            short_address=short_address,
            utc=utc_text,
            iso=iso_time,
            ago=ago_text,
            duration=duration_text,
        )
        self.env.globals.update(static=self.static_url)

    # --- helpers --------------------------------------------------------------------------
    @property
    def genesis(self) -> Genesis:
        return self.service.genesis

    @property
    def prefix(self) -> str:
        return self.genesis.address_prefix

    @property
    def decimals(self) -> int:
        return self.genesis.denomination.decimals

    def amount(self, units: int) -> str:
        return format_units(units, self.decimals)

    def static_url(self, name: str) -> str:
        asset = self.assets[name]
        return f"/explorer/static/{name}?v={asset.etag}"  # a new file gets a new URL, so it can be cached for good

    def address(self, account: bytes) -> str:
        return self.genesis.address(account)

    def block_row(self, record: BlockRecord) -> BlockRow:
        header = record.header
        return BlockRow(header.height, header.hash.hex(), header.timestamp, header.tx_count,
                        self.address(header.proposer), record.status, record.confirmations)

    def tx_row(self, tx: Transaction, record: TxRecord | None = None, status: str = "pending",
               account: bytes | None = None) -> TxRow:
        direction = ""
        if account is not None:
            sent, received = tx.sender_address == account, tx.recipient == account
            direction = "self" if sent and received else "out" if sent else "in"
        if record is None:
            return TxRow(tx.id.hex(), self.address(tx.sender_address), self.address(tx.recipient), tx.amount, tx.fee,
                         tx.nonce, status, direction=direction)
        return TxRow(tx.id.hex(), self.address(tx.sender_address), self.address(tx.recipient), tx.amount, tx.fee,
                     tx.nonce, record.status, record.block_height, record.index, record.timestamp,
                     record.confirmations, direction)

    def render(self, template: str, context: dict[str, Any], status: int = 200, info: NodeInfo | None = None) -> HTMLResponse:
        info = info if info is not None else self.service.node_info()
        page = {"info": info, "chain_id": info.chain_id, "now_ms": int(time.time() * 1000), "query": "",
                "search_value": "", "denomination": self.genesis.denomination.name,
                "compare_ready": self.compare_report is not None and self.compare_report.is_file(), **context}
        html = self.env.get_template(template).render(page)
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    def error_page(self, error: PageError) -> HTMLResponse:
        return self.render(
            "error.html",
            {"status": error.status, "title": error.title, "message": error.message, "query": _echo(error.query),
             "search_value": error.query[:MAX_QUERY_LENGTH] if error.from_search else "", "nav": "",
             "page_title": error.title},
            status=error.status,
        )

    def page(self, request: Request, template: str, fragment: str, context: dict[str, Any],
             info: NodeInfo | None = None) -> HTMLResponse:
        """The whole page, or only its live region when the script asks for `?fragment=live`."""
        if request.query_params.get("fragment") == "live":
            return self.render(fragment, context, info=info)
        return self.render(template, context, info=info)

    # --- pages ----------------------------------------------------------------------------
    def dashboard(self, request: Request) -> HTMLResponse:
        info = self.service.node_info()
        window = self.service.blocks(None, CHART_BLOCKS)
        tx_chart, interval_chart = dashboard_charts(window)
        produced = [record.header for record in window if record.header.height > 0]
        average_interval = None
        window_rate = None
        if len(produced) >= 2:
            span_ms = produced[0].timestamp - produced[-1].timestamp
            average_interval = span_ms / (len(produced) - 1)
            if span_ms > 0:
                window_rate = sum(header.tx_count for header in produced[:-1]) * 1000 / span_ms
        rate = info.extra.get("tx_per_second")
        if not isinstance(rate, (int, float)):
            rate = window_rate
        mempool = self.service.mempool(LATEST_PENDING_ROWS)
        pending = [self.tx_row(tx) for tx in mempool.transactions[:LATEST_PENDING_ROWS]]
        context = {
            "nav": "dashboard",
            "page_title": "Dashboard",
            "blocks": [self.block_row(record) for record in window[:LATEST_ROWS]],
            "transactions": pending + self.latest_included(window, LATEST_ROWS - len(pending)),
            "mempool_size": mempool.size,
            "average_interval": average_interval,
            "tx_rate": rate,
            "engine_role": self.service.consensus_status().role,
            "charts": (tx_chart, interval_chart),
            "network_events": network_events(info.extra, self.address),
        }
        return self.page(request, "dashboard.html", "dashboard_live.html", context, info)

    def latest_included(self, window: Sequence[BlockRecord], limit: int) -> list[TxRow]:
        """The newest included transactions, opening at most a few of the newest non-empty blocks."""
        rows: list[TxRow] = []
        opened = 0
        for summary in window:
            if len(rows) >= limit or opened >= LATEST_BLOCKS_SCANNED:
                break
            if summary.header.tx_count == 0:
                continue
            opened += 1
            record = self.service.block(summary.header.hash, with_transactions=True)
            if record is None or record.transactions is None:
                continue  # reverted meanwhile
            header = record.header
            for index in range(len(record.transactions) - 1, -1, -1):
                if len(rows) >= limit:
                    break
                tx = record.transactions[index]
                rows.append(TxRow(tx.id.hex(), self.address(tx.sender_address), self.address(tx.recipient),
                                  tx.amount, tx.fee, tx.nonce, record.status, header.height, index,
                                  header.timestamp, record.confirmations))
        return rows

    def blocks_page(self, request: Request) -> HTMLResponse:
        before = self.query_int(request, "before")
        info = self.service.node_info()
        records = self.service.blocks(before, BLOCKS_PAGE)
        rows = [self.block_row(record) for record in records]
        newer = None
        if before is not None and before <= info.height:
            newer_before = before + BLOCKS_PAGE
            newer = "" if newer_before > info.height else str(newer_before)
        older = str(rows[-1].height) if rows and rows[-1].height > 0 else None
        context = {
            "nav": "blocks", "page_title": "Blocks", "blocks": rows, "before": before,
            "newer": newer, "older": older, "first_page": before is None,
        }
        return self.page(request, "blocks.html", "blocks_live.html", context, info)

    def block_page(self, request: Request, ref: str) -> HTMLResponse:
        live = request.query_params.get("fragment") == "live"
        offset = self.query_int(request, "offset") or 0
        record = self.find_block(ref, with_transactions=not live)
        info = self.service.node_info()
        header = record.header
        transactions = record.transactions or ()
        shown = [
            TxRow(tx.id.hex(), self.address(tx.sender_address), self.address(tx.recipient), tx.amount, tx.fee,
                  tx.nonce, record.status, header.height, offset + position, header.timestamp, record.confirmations)
            for position, tx in enumerate(transactions[offset : offset + BLOCK_TX_PAGE])
        ]
        context = {
            "nav": "blocks",
            "page_title": f"Block #{header.height}",
            "block": self.block_row(record),
            "header": header,
            "certificate": record.certificate.hex(),
            "seal": header.seal.hex(),
            "extra": header.extra.hex(),
            "size": record.size,
            "sealer": self.sealer_note(header.height, header.proposer),
            "signers": [{"address": self.address(address), "power": power} for address, power in record.signers],
            "labels": record.labels,
            "evidence": [
                {"validator": self.address(item.validator), "kind": item.kind.replace("_", " "), "height": item.height,
                 "round": item.round, "data": item.data.hex()}
                for item in record.evidence
            ],
            "transactions": shown,
            "tx_offset": offset,
            "tx_more": offset + BLOCK_TX_PAGE < len(transactions),
            "tx_page": BLOCK_TX_PAGE,
            "has_next": header.height < info.height,
            "is_genesis": header.height == 0,
            "ref": header.hash.hex(),
        }
        return self.page(request, "block.html", "block_live.html", context, info)

    def sealer_note(self, height: int, proposer: bytes) -> str:
        if height == 0:
            return "The genesis block is not sealed: every node derives it from the genesis file."
        if _sole_validator(self.service.consensus_status()) is not None:
            return (f"Sealed by the sole authority {self.address(proposer)}: the seal is its signature "
                    "over the header. One authority signs every block, so there is no certificate.")
        return ""

    def tx_page(self, request: Request, tx_id: str) -> HTMLResponse:
        parsed = self.parse_hash(tx_id)
        if parsed is None:
            raise PageError(404, "Not a transaction id", "A transaction id is 64 hex digits.", tx_id)
        record = self.service.transaction(parsed)
        if record is None:
            raise PageError(404, "Transaction not found",
                            "This node knows no such transaction: not pending in its mempool, not in its chain.",
                            tx_id)
        tx = record.tx
        block_tx_count = None
        waiting_for = None
        if record.status == "pending":
            confirmed_nonce = self.service.account(tx.sender_address).nonce
            if tx.nonce > confirmed_nonce:
                waiting_for = (confirmed_nonce, tx.nonce - 1)
        if record.block_hash is not None:
            block = self.service.block(record.block_hash, with_transactions=False)
            block_tx_count = block.header.tx_count if block is not None else None
        try:
            kind = TxKind(tx.kind).name.lower()
        except ValueError:
            kind = str(tx.kind)
        context = {
            "nav": "",
            "page_title": "Transaction",
            "tx": self.tx_row(tx, record),
            "kind": kind,
            "payload": tx.payload.hex(),
            "memo": payload_text(tx.payload) if tx.payload else None,
            "signature": tx.signature.hex(),
            "sender_key": tx.sender.hex(),
            "size": len(tx.encode()),
            "total": tx.amount + tx.fee,
            "block_tx_count": block_tx_count,
            "waiting_for": waiting_for,
        }
        return self.render("tx.html", context)

    def account_page(self, request: Request, address_text: str) -> HTMLResponse:
        account = self.parse_address(address_text)
        cursor_text = request.query_params.get("before")
        cursor = None
        if cursor_text:
            match = _CURSOR.fullmatch(cursor_text)
            if match is None or int(match.group(1)) > MAX_AMOUNT:
                raise PageError(400, "Bad page parameter", f"'before' is <height>:<index>, got '{_echo(cursor_text)}'.")
            cursor = (int(match.group(1)), int(match.group(2)))
        record = self.service.account(account)
        history = self.service.account_transactions(account, cursor, ACCOUNT_PAGE)
        rows = [self.tx_row(item.tx, item, account=account) for item in history]
        older = None
        if len(history) == ACCOUNT_PAGE and history[-1].block_height is not None and history[-1].index is not None:
            older = f"{history[-1].block_height}:{history[-1].index}"
        address = self.address(account)
        context = {
            "nav": "",
            "page_title": f"Account {short_address(address)}",
            "address": address,
            "account": record,
            "transactions": rows,
            "older": older,
            "first_page": cursor is None,
            "is_genesis_funded": account in self.genesis.allocations,
            **self.validator_flag(account),
        }
        return self.page(request, "account.html", "account_live.html", context)

    def mempool_page(self, request: Request) -> HTMLResponse:
        record = self.service.mempool(MEMPOOL_PAGE)
        context = {
            "nav": "mempool", "page_title": "Mempool", "mempool": record,
            "transactions": [self.tx_row(tx) for tx in record.transactions[:MEMPOOL_PAGE]],
            "shown_limit": MEMPOOL_PAGE,
        }
        return self.page(request, "mempool.html", "mempool_live.html", context)

    def validator_flag(self, account: bytes) -> dict[str, Any]:
        """Whether `account` is in the engine's validator set, for the account page's tag."""
        status = self.service.consensus_status()
        member = next((v for v in status.validators or () if v.address == account), None)
        return {"validator": member, "sole_validator": member is not None and _sole_validator(status) is member,
                "total_power": status.total_power}

    def validators(self) -> tuple[list[ValidatorRow], str]:
        """The validator set as the engine reports it, and a note on how blocks become final
        (or why there is no set)."""
        status = self.service.consensus_status()
        if status.validators is None:
            return [], _NO_VALIDATOR_SET.get(status.finality, f"The {status.engine} engine has no validator set.")
        sole = _sole_validator(status)
        rows = [
            ValidatorRow(self.address(v.address), self.power(v, status.finality), f"{v.blocks_proposed:,}", v.last_signed_height,
                         self.validator_note(v, sole is v))
            for v in status.validators
        ]
        note = _FINALITY_NOTES.get(status.finality, "").format(quorum=status.quorum_power, total=status.total_power)
        return rows, note

    def power(self, validator: ValidatorStatus, finality: Finality) -> str:
        if finality is Finality.CHECKPOINT:  # stake, in the chain's money
            return f"{self.amount(validator.power)} {self.genesis.denomination.name}"
        return f"{validator.power:,}"

    def validator_note(self, validator: ValidatorStatus, sole: bool) -> str:
        notes = ["sole authority: seals every block"] if sole else []
        if validator.status is not None:
            notes.append(validator.status)
        if validator.attested_previous_epoch is not None:
            notes.append("voted in the last epoch" if validator.attested_previous_epoch else "missed the last epoch's vote")
        if validator.jailed:
            notes.append("jailed")
        if validator.slashed:
            notes.append(f"slashed {self.amount(validator.slashed)} {self.genesis.denomination.name}")
        return "; ".join(notes)

    def validators_page(self, request: Request) -> HTMLResponse:
        info = self.service.node_info()
        rows, note = self.validators()
        status = self.service.consensus_status()
        context = {"nav": "validators", "page_title": "Validators", "validators": rows, "note": note,
                   "checkpoints": explorer_consensus.checkpoints(self.service, status),
                   "evidence": explorer_consensus.evidence(self.service, status, self.address),
                   "evidence_at": "Slot" if status.finality is Finality.CHECKPOINT else "Height"}
        return self.page(request, "validators.html", "validators_live.html", context, info)

    def peers_page(self, request: Request) -> HTMLResponse:
        info = self.service.node_info()
        listed = info.extra.get("peers")
        rows = []
        if isinstance(listed, list):
            for entry in listed:
                if isinstance(entry, dict):
                    height = entry.get("height")
                    rows.append(PeerRow(str(entry.get("node_id", entry.get("id", ""))), str(entry.get("address", "")),
                                        str(entry.get("direction", "")), height if isinstance(height, int) else None))
        context = {"nav": "peers", "page_title": "Peers", "peers": rows}
        return self.render("peers.html", context, info=info)

    def static(self, request: Request, name: str) -> Response:
        asset = self.assets.get(name)
        if asset is None:
            raise PageError(404, "Not found", "No such file.", name)
        etag = f'"{asset.etag}"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)


def explorer_router(service: NodeService, compare_report: Path | None = None) -> APIRouter:
    """The explorer's routes: `/explorer/...`, its assets, and `/` redirecting to it.
    `compare_report` is where `ledger compare` leaves its newest report for this node."""
    explorer = Explorer(service, compare_report)
    router = APIRouter(include_in_schema=False)

    def guarded(handler: Callable[..., Response]) -> Callable[..., Response]:
        # A PageError becomes the explorer's HTML page; the app's problem+json handlers never see it.
        # Plain functions: FastAPI runs them in worker threads, where service reads may touch the database.
        @functools.wraps(handler)
        def run(*args: Any, **kwargs: Any) -> Response:
            try:
                return handler(*args, **kwargs)
            except PageError as error:
                return explorer.error_page(error)

        return run

    def root() -> Response:
        return RedirectResponse("/explorer", status_code=307)

    def unknown(rest: str) -> Response:
        if rest.endswith("/") or not rest:
            # The catch-all would otherwise shadow the app's trailing-slash redirect.
            return RedirectResponse(("/explorer/" + rest).rstrip("/"), status_code=307)
        raise PageError(404, "Page not found", "The explorer has no such page.", "/explorer/" + rest)

    def compare() -> Response:
        # The messages name no path: the page is public, the node's folders are not.
        missing = PageError(404, "No comparison yet",
                            "`ledger compare` runs every engine on the same workload and faults; with --out set to "
                            "this node's data folder followed by /compare (the default, data/node/compare, is the "
                            "default node's), its newest report shows here.")
        if compare_report is None:
            raise missing
        try:
            if compare_report.stat().st_size > MAX_REPORT_BYTES:
                raise PageError(500, "Report too large", f"The report is over {MAX_REPORT_BYTES // 2**20} MiB.")
            body = compare_report.read_bytes()
        except OSError:  # none, a folder in its place, or unreadable
            raise missing from None
        return HTMLResponse(body, headers=_REPORT_HEADERS)

    pages: list[tuple[str, Callable[..., Response]]] = [
        ("/", root),
        ("/explorer", explorer.dashboard),
        ("/explorer/blocks", explorer.blocks_page),
        ("/explorer/block/{ref}", explorer.block_page),
        ("/explorer/tx/{tx_id}", explorer.tx_page),
        ("/explorer/account/{address_text}", explorer.account_page),
        ("/explorer/mempool", explorer.mempool_page),
        ("/explorer/validators", explorer.validators_page),
        ("/explorer/peers", explorer.peers_page),
        ("/explorer/search", explorer.search),
        ("/explorer/compare", compare),
        ("/explorer/static/{name}", explorer.static),
        ("/explorer/{rest:path}", unknown),  # last: anything else under /explorer is the HTML 404 page
    ]
    for path, handler in pages:
        router.add_api_route(path, guarded(handler), methods=["GET"])
    return router
