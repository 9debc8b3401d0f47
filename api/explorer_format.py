"""What the explorer's pages show, shaped from chain data: amounts, hashes, addresses and
times as text (the Jinja2 filters), the dashboard's SVG charts and network events, and the
rows and notes the templates lay out.

Kept apart from `api.explorer` because none of it reads the service or a request: it
takes what the service returned (records, a status, `extra`) and returns what a template
lays out, so it is tested without a node (the integer arithmetic of `format_units`, the
axis of `nice_ceiling`, `network_events`), and a page handler only gathers the records.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from api.service import BlockRecord
from ledger.engine_status import EngineStatus, Finality, ValidatorStatus


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
