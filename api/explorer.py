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
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api import explorer_consensus
from api.service import BlockRecord, NodeInfo, NodeService, TxRecord
from ledger import crypto
from ledger.address import ADDRESS_SIZE, InvalidAddress, address_of, bech32m_decode, decode_address
from ledger.codec import MAX_AMOUNT
from ledger.engine_status import EngineStatus, Finality, ValidatorStatus
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
MAX_QUERY_LENGTH = 200  # longer search input cannot be a height, hash or address
MAX_ECHO = 80  # how much of a bad input a page repeats back

_HEX64 = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
_HEIGHT = re.compile(r"#?([0-9]{1,19})")
_PUBLIC_KEY = re.compile(r"(?:0x)?((?:02|03)[0-9a-fA-F]{64})")
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


# --- formatting (also the Jinja2 filters) ---------------------------------------------------


def format_units(units: int, decimals: int) -> str:
    """`units` of the smallest denomination as a decimal string, in integer arithmetic
    (a float would round 9,007,199,254,740,993 units): 1234500000 at 9 decimals is "1.2345"."""
    if units < 0:
        return "-" + format_units(-units, decimals)
    whole, fraction = divmod(units, 10**decimals)
    text = f"{whole:,}"
    if decimals and fraction:
        text += "." + f"{fraction:0{decimals}d}".rstrip("0")
    return text


def short_hex(value: str, keep: int = 8) -> str:
    """The ends of a long hex string, for lists where the full value sits in a link title."""
    return value if len(value) <= 2 * keep + 1 else f"{value[:keep]}…{value[-keep:]}"


def short_address(value: str) -> str:
    prefix, sep, data = value.rpartition("1")
    if not sep or len(data) <= 14:
        return value
    return f"{prefix}1{data[:6]}…{data[-6:]}"


def utc_text(ms: int | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_time(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ago_text(ms: int | None, now_ms: int | None = None) -> str:
    """'12 s ago' style; the page's script keeps it current."""
    if ms is None:
        return "—"
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    seconds = max(0, (now_ms - ms) // 1000)
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def duration_text(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{ms / 60_000:.1f} min"


def payload_text(payload: bytes) -> str | None:
    """The payload as text when it is printable UTF-8 (a memo), else None."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


# --- charts (SVG drawn on the server) ------------------------------------------------------

CHART_WIDTH = 600
CHART_HEIGHT = 140
CHART_MIN_SLOTS = 30


@dataclass(frozen=True)
class ChartMark:
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    summary: str  # the chart in words, for screen readers
    kind: str  # "bars" or "line"
    marks: list[ChartMark]
    line_points: str  # SVG polyline points (kind "line")
    area_points: str
    y_top: str  # axis labels
    y_middle: str
    x_first: str
    x_last: str
    slot: float = 0.0  # the width one block takes
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT

    @property
    def empty(self) -> bool:
        return not self.marks


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (an axis top)."""
    if value <= 0:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def _axis_number(value: float, unit: str) -> str:
    text = f"{value:g}" if value < 1e6 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def build_chart(
    key: str, title: str, unit: str, points: Sequence[tuple[int, float]], kind: str, describe: Callable[[int, float], str]
) -> Chart:
    """`points` are (block height, value), oldest first."""
    if not points:
        return Chart(key, title, f"{title}: not enough blocks yet", kind, [], "", "", "", "", "", "")
    values = [value for _, value in points]
    top = nice_ceiling(max(values))
    # A young chain's few blocks keep a bar's width; they fill the chart from the left.
    slots = max(len(points), CHART_MIN_SLOTS)
    step = CHART_WIDTH / slots
    marks = []
    line = []
    for position, (height, value) in enumerate(points):
        bar_height = CHART_HEIGHT * value / top
        x = position * step
        marks.append(ChartMark(round(x, 2), round(CHART_HEIGHT - bar_height, 2), round(max(step * 0.8, 0.5), 2),
                               round(bar_height, 2), describe(height, value)))
        line.append(f"{x + step / 2:.2f},{CHART_HEIGHT - bar_height:.2f}")
    area = ""
    if line:
        first_x = line[0].split(",")[0]
        last_x = line[-1].split(",")[0]
        area = f"{first_x},{CHART_HEIGHT} " + " ".join(line) + f" {last_x},{CHART_HEIGHT}"
    average = sum(values) / len(values)
    summary = (
        f"{title}, blocks {points[0][0]} to {points[-1][0]}: "
        f"highest {_axis_number(max(values), unit)}, average {_axis_number(round(average, 2), unit)}"
    )
    first, last = f"#{points[0][0]}", f"#{points[-1][0]}"
    if slots > len(points):  # the right edge is not the newest block: name the range on the left
        first, last = (f"{first} – {last}" if first != last else first), ""
    return Chart(
        key, title, summary, kind, marks, " ".join(line), area,
        _axis_number(top, unit), _axis_number(top / 2, unit), first, last, round(step, 3),
    )


NETWORK_EVENT_ROWS = 8


def network_events(extra: dict, address: Callable[[bytes], str] = lambda raw: raw.hex()) -> list[dict]:
    """Faults laid on the node's links, reorgs and elections (an engine with a leader says
    who led each term), newest first, as one line each: when the network was cut, slowed or
    healed, and what that did to the chain."""
    events = []
    for fault in extra.get("faults") or []:
        if isinstance(fault, dict) and isinstance(fault.get("at"), int):
            events.append({"at": fault["at"], "kind": "fault", "text": str(fault.get("description", ""))})
    for reorg in extra.get("reorgs") or []:
        if isinstance(reorg, dict) and isinstance(reorg.get("at"), int):
            events.append({"at": reorg["at"], "kind": "reorg", "text": (
                f"{reorg.get('depth')} blocks replaced above height {reorg.get('fork_height')}, "
                f"{reorg.get('returned_to_mempool')} transactions back to the mempool")})
    engine = extra.get("engine") if isinstance(extra.get("engine"), dict) else {}
    details = engine.get("details") if isinstance(engine.get("details"), dict) else {}
    for seen in details.get("leaders_seen") or []:
        try:
            leader = address(bytes.fromhex(seen["leader"]))
        except (TypeError, KeyError, ValueError):
            continue
        if isinstance(seen.get("at"), int):
            events.append({"at": seen["at"], "kind": "election", "text": f"{leader} leads term {seen.get('term')}"})
    events.sort(key=lambda event: event["at"], reverse=True)
    return events[:NETWORK_EVENT_ROWS]


def dashboard_charts(newest_first: Sequence[BlockRecord]) -> tuple[Chart, Chart]:
    headers = [record.header for record in reversed(newest_first)]
    produced = [header for header in headers if header.height > 0]  # the genesis block carries no transactions
    tx_points = [(header.height, float(header.tx_count)) for header in produced]
    # The genesis timestamp is fixed in the genesis file, so the gap to block 1 says nothing.
    interval_points = [
        (current.height, (current.timestamp - previous.timestamp) / 1000)
        for previous, current in zip(headers, headers[1:])
        if previous.height > 0 and current.height == previous.height + 1
    ]
    transactions = build_chart(
        "tx-per-block", "Transactions per block", "", tx_points, "bars",
        lambda height, value: f"Block #{height}: {value:.0f} transaction{'' if value == 1 else 's'}",
    )
    intervals = build_chart(
        "block-interval", "Block interval", "s", interval_points, "line",
        lambda height, value: f"Block #{height}: {value:.3f} s after its parent",
    )
    return transactions, intervals


# --- rows the templates show ----------------------------------------------------------------


@dataclass(frozen=True)
class BlockRow:
    height: int
    hash: str
    timestamp: int
    tx_count: int
    proposer: str
    status: str
    confirmations: int


@dataclass(frozen=True)
class TxRow:
    id: str
    sender: str
    recipient: str
    amount: int
    fee: int
    nonce: int
    status: str
    block_height: int | None = None
    index: int | None = None
    timestamp: int | None = None
    confirmations: int = 0
    direction: str = ""  # on an account page: "in", "out" or "self"


@dataclass(frozen=True)
class ValidatorRow:
    address: str  # bech32m
    power: str
    blocks_proposed: str
    last_signed: int | None
    note: str = ""


# What the validators page says about finality, by how the engine finalizes (not by its name).
_FINALITY_NOTES = {
    Finality.AT_COMMIT: "One authority seals every block; a block is final when it commits.",
    Finality.CERTIFICATE: ("A block is final once validators holding {quorum} of the {total} voting power "
                           "sign its commit certificate."),
    Finality.REPLICATION: "A block is final once a majority of the members store it.",
    Finality.CHECKPOINT: "A block is final once 2/3 of the stake finalizes its epoch's checkpoint.",
}
_NO_VALIDATOR_SET = {
    Finality.DEPTH: "Proof of work has no validator set: any miner may extend the chain.",
}


def _sole_validator(status: EngineStatus) -> ValidatorStatus | None:
    """The one authority that seals every block on its own (a dev chain), if that is the set."""
    if status.finality is Finality.AT_COMMIT and status.validators is not None and len(status.validators) == 1:
        return status.validators[0]
    return None


@dataclass(frozen=True)
class PeerRow:
    node_id: str
    address: str
    direction: str
    height: int | None


@dataclass(frozen=True)
class StaticAsset:
    body: bytes
    media_type: str
    etag: str


class PageError(Exception):
    """Answered with the explorer's error page (HTML), never the API's problem+json."""

    def __init__(self, status: int, title: str, message: str, query: str = ""):
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.query = query
        self.from_search = False  # the search box then shows the query again, ready to be corrected


def _echo(text: str) -> str:
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "…"


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


class Explorer:
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

    # --- parsing outside input ------------------------------------------------------------
    @staticmethod
    def parse_height(text: str) -> int | None:
        match = _HEIGHT.fullmatch(text)
        if match is None:
            return None
        height = int(match.group(1))
        return height if height <= MAX_AMOUNT else None

    @staticmethod
    def parse_hash(text: str) -> bytes | None:
        match = _HEX64.fullmatch(text)
        return bytes.fromhex(match.group(1)) if match else None

    def parse_address(self, text: str) -> bytes:
        """The account of an address of this network; PageError(404) naming what is wrong."""
        if len(text) > MAX_QUERY_LENGTH:
            raise PageError(404, "Not an address", "That is too long to be an address.", text)
        try:
            return decode_address(text, self.prefix)
        except ValueError as exc:
            reason = str(exc)
            raise PageError(404, "Not an address of this network",
                            f"{reason[:1].upper()}{reason[1:]}. Addresses here start with '{self.prefix}1'.", text) from None

    @staticmethod
    def query_int(request: Request, name: str) -> int | None:
        text = request.query_params.get(name)
        if text is None or text == "":
            return None
        if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_AMOUNT:
            raise PageError(400, "Bad page parameter", f"'{name}' is a whole number, got '{_echo(text)}'.")
        return int(text)

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

    def find_block(self, ref: str, with_transactions: bool = True) -> BlockRecord:
        parsed: int | bytes | None = self.parse_height(ref)
        if parsed is None:
            parsed = self.parse_hash(ref)
        if parsed is None:
            raise PageError(404, "Not a block", "A block is named by its height or its 64-hex-digit hash.", ref)
        record = self.service.block(parsed, with_transactions=with_transactions)
        if record is None:
            what = f"at height {parsed}" if isinstance(parsed, int) else parsed.hex()
            raise PageError(404, "Block not found", f"This chain has no block {what}.", ref)
        return record

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

    def search(self, request: Request) -> Response:
        query = (request.query_params.get("q") or "").strip()
        try:
            return self.find(query)
        except PageError as error:
            error.from_search = True
            raise

    def find(self, query: str) -> Response:
        """A 303 redirect to the page of a height, block hash, transaction id or address."""
        if not query:
            raise PageError(404, "Nothing to search for",
                            "Type a block height, a block hash, a transaction id or an address.")
        if len(query) > MAX_QUERY_LENGTH:
            raise PageError(404, "Not found", "No height, hash, id or address is that long.", query)
        height = self.parse_height(query)
        if height is not None:
            if self.service.block(height, with_transactions=False) is None:
                head = self.service.node_info().height
                raise PageError(404, "Block not found", f"No block at height {height} yet: the head is at {head}.", query)
            return RedirectResponse(f"/explorer/block/{height}", status_code=303)
        digest = self.parse_hash(query)
        if digest is not None:
            if self.service.block(digest, with_transactions=False) is not None:
                return RedirectResponse(f"/explorer/block/{digest.hex()}", status_code=303)
            if self.service.transaction(digest) is not None:
                return RedirectResponse(f"/explorer/tx/{digest.hex()}", status_code=303)
            raise PageError(404, "Not found", "No block hash and no transaction id on this node matches.", query)
        public_key = _PUBLIC_KEY.fullmatch(query)
        if public_key is not None and crypto.is_valid_public_key(bytes.fromhex(public_key.group(1))):
            # A sender's public key (as a transaction shows it) names its account too.
            account = address_of(bytes.fromhex(public_key.group(1)))
            return RedirectResponse(f"/explorer/account/{self.address(account)}", status_code=303)
        if query.lower().startswith(self.prefix + "1"):
            account = self.parse_address(query)
            return RedirectResponse(f"/explorer/account/{self.address(account)}", status_code=303)
        try:
            _, data = bech32m_decode(query)
        except InvalidAddress:
            data = b""
        if len(data) == ADDRESS_SIZE:
            # The same key's account under another prefix (a wallet that showed dev1... on a
            # tst network): the 20 bytes name the account, the prefix only the network.
            return RedirectResponse(f"/explorer/account/{self.address(data)}", status_code=303)
        raise PageError(
            404, "Not found",
            f"Search takes a block height, a block hash, a transaction id or an address starting with '{self.prefix}1'.",
            query,
        )

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
