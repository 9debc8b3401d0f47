"""What `ledger compare` writes: the terminal table, results.json, results.csv and report.html
(SVG plots drawn here, no plotting library: a few polylines and rectangles).  A simulated
run's figures come from virtual time, so the same run writes the same bytes; a real one's
(`--real`) are wall-clock, and every output says which."""

from __future__ import annotations

import csv
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from node.compare import DURATION, FAULT_END, FAULT_START, TX_PER_SECOND, Outcome

COLUMNS = (
    ("engine", "engine"), ("faults", "faults"), ("nodes", "nodes"), ("status", "outcome"),
    ("final_per_s", "final tx/s"), ("committed_per_s", "committed tx/s"),
    ("latency_p50", "final p50 s"), ("latency_p99", "final p99 s"),
    ("reorgs", "reorgs"), ("reverted_blocks", "blocks reverted"), ("deepest_reorg", "deepest reorg"),
    ("stall_during", "longest stall in fault s"), ("stall_after", "longest stall after s"),
    ("recovery", "recovery s"), ("messages_per_block_per_node", "msgs/block/node"),
    ("bytes_per_block_per_node", "bytes/block/node"),
)
STALL_NOTE = ("stall: the longest time without a new final block in the fault window (the whole run without "
              "faults); after: the same from its end; recover: from its end to the next final block")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def clock(outcomes: Sequence[Outcome]) -> str:
    """The seconds the figures are in: the simulator's virtual ones, or real processes' wall-clock."""
    return "wall-clock" if any(o.mode == "real" for o in outcomes) else "virtual"


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def side_text(outcome: Outcome) -> str:
    """Partition: what each side did during the cut."""
    return "; ".join(f"{side['side']} ({','.join(side['nodes'])}): head +{side['head_growth']}, "
                     f"final +{side['final_growth']}" for side in outcome.sides)


TERMINAL_COLUMNS = ("engine", "faults", "nodes", "outcome", "final/s", "commit/s", "p50 s", "p99 s",
                    "reorgs", "stall s", "after s", "recover s", "msgs/blk/node", "B/blk/node")


def _short(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(outcomes: Sequence[Outcome], seed: int) -> Table:
    real = clock(outcomes) == "wall-clock"
    result = Table(title=f"ledger compare, seed {seed}{', real processes' if real else ''}: {TX_PER_SECOND:g} transfers/s "
                         f"for {DURATION:g} {clock(outcomes)} s, faults from {FAULT_START:g} s to {FAULT_END:g} s"
                         f"{' (wall-clock figures change from run to run)' if real else ''}", title_justify="left",
                   caption=STALL_NOTE + "; B: bytes", caption_justify="left")
    for title in TERMINAL_COLUMNS:
        result.add_column(title, justify="left" if title in ("engine", "faults", "outcome") else "right")
    for o in outcomes:
        if o.status == "not applicable":
            result.add_row(o.engine, o.faults, str(o.nodes), "[dim]not applicable[/]", *["-"] * (len(TERMINAL_COLUMNS) - 4))
            continue
        status = o.status if o.status == "ok" else f"[bold red]{o.status}[/]"
        reorgs = f"{o.reorgs} (max {o.deepest_reorg})" if o.reorgs else "0"
        result.add_row(o.engine, o.faults, str(o.nodes), status, _short(o.final_per_s, 1), _short(o.committed_per_s, 1),
                       _short(o.latency_p50, 3), _short(o.latency_p99, 3), reorgs, _short(o.stall_during),
                       _short(o.stall_after), _short(o.recovery), _short(o.messages_per_block_per_node, 1),
                       _short(o.bytes_per_block_per_node, 0))
    return result


def notes(outcomes: Sequence[Outcome]) -> list[str]:
    """The lines under the table: each partition's sides, and why a run is not ok."""
    lines = []
    for o in outcomes:
        if o.sides:
            lines.append(f"{o.engine} {o.faults} n={o.nodes}: during the cut, {side_text(o)}")
        if o.note:
            lines.append(f"{o.engine} {o.faults} n={o.nodes}: {o.status}: {o.note}")
    return lines


def write_json(path: Path, outcomes: Sequence[Outcome], seed: int, command: str) -> None:
    document = {
        "command": command, "seed": seed, "duration_s": DURATION, "fault_window_s": [FAULT_START, FAULT_END],
        "tx_per_second": TX_PER_SECOND,
        "time": "wall-clock seconds of real processes: the figures change from run to run" if clock(outcomes) == "wall-clock"
        else "virtual seconds of the simulator: the same seed gives the same figures",
        "results": [{**outcome.summary(), "final_series": outcome.final_series, "head_series": outcome.head_series}
                    for outcome in outcomes],
    }
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


def write_csv(path: Path, outcomes: Sequence[Outcome]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([key for key, _ in COLUMNS] + ["partition_sides", "note"])
    for outcome in outcomes:
        row = outcome.summary()
        writer.writerow(["" if row[key] is None else row[key] for key, _ in COLUMNS] + [side_text(outcome), outcome.note])
    path.write_text(buffer.getvalue())


# ---------------------------------------------------------------------------- HTML and SVG

WIDTH, HEIGHT, MARGIN = 520, 220, 40


def plot_end(outcomes: Sequence[Outcome]) -> float:
    """One time axis for every plot: the longest run's last final block, at least the workload."""
    return max([DURATION] + [points[-1][0] for o in outcomes for points in o.final_series.values() if points])


def _height_plot(outcome: Outcome, title: str, end: float) -> str:
    """Final height over time, one step line per node, the fault window shaded."""
    series = outcome.final_series
    top = max([1] + [points[-1][1] for points in series.values() if points])

    def x(t: float) -> float:
        return MARGIN + (WIDTH - 2 * MARGIN) * t / end

    def y(h: float) -> float:
        return HEIGHT - MARGIN + (2 * MARGIN - HEIGHT) * h / top

    parts = [f'<svg class="plot heights" data-engine="{outcome.engine}" data-faults="{outcome.faults}" '
             f'data-nodes="{outcome.nodes}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
             f'role="img" aria-label="{html.escape(title)}">', f"<title>{html.escape(title)}</title>"]
    if outcome.window is not None:
        start, stop = outcome.window
        parts.append(f'<rect class="fault-window" x="{x(start):.1f}" y="{MARGIN / 2:.1f}" width="{x(stop) - x(start):.1f}" '
                     f'height="{HEIGHT - 1.5 * MARGIN:.1f}" fill="#f4c7c3" opacity="0.6"/>')
    parts.append(_axes(end, top, x, y, f"{clock([outcome])} s", "final height"))
    for index, (label, points) in enumerate(sorted(series.items())):
        # Nodes that agree draw the same line: each is lifted by a pixel more than the last,
        # so every node stays visible.
        lift = 1.2 * index
        steps = []
        for (t0, h0), (t1, _) in zip(points, points[1:] + [(end, points[-1][1])]):
            steps += [f"{x(t0):.1f},{y(h0) - lift:.1f}", f"{x(t1):.1f},{y(h0) - lift:.1f}"]
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<polyline class="series" data-node="{label}" fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{" ".join(steps)}"><title>{label}</title></polyline>')
        parts.append(f'<text x="{WIDTH - MARGIN + 4}" y="{MARGIN / 2 + 12 * (index + 1):.1f}" font-size="10" '
                     f'fill="{colour}">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _axes(x_max: float, y_max: float, x, y, x_label: str, y_label: str) -> str:
    return (f'<line x1="{x(0):.1f}" y1="{y(0):.1f}" x2="{x(x_max):.1f}" y2="{y(0):.1f}" stroke="#333"/>'
            f'<line x1="{x(0):.1f}" y1="{y(0):.1f}" x2="{x(0):.1f}" y2="{y(y_max):.1f}" stroke="#333"/>'
            f'<text x="{x(0):.1f}" y="{y(0) + 14:.1f}" font-size="10">0</text>'
            f'<text x="{x(x_max) - 20:.1f}" y="{y(0) + 14:.1f}" font-size="10">{cell(x_max)}</text>'
            f'<text x="{x(x_max) / 2:.1f}" y="{y(0) + 28:.1f}" font-size="10">{x_label}</text>'
            f'<text x="4" y="{y(y_max) + 4:.1f}" font-size="10">{cell(y_max)}</text>'
            f'<text x="4" y="{y(0) - 4:.1f}" font-size="10">{y_label}</text>')


def _latency_plot(outcomes: Sequence[Outcome]) -> str:
    """Submit to final, as a distribution (the share of transfers final within t) per engine and schedule."""
    shown = [o for o in outcomes if o.latencies]
    if not shown:
        return "<p>No transfer became final.</p>"
    end = max(max(o.latencies) for o in shown) or 1.0

    def x(t: float) -> float:
        return MARGIN + (WIDTH - 2 * MARGIN) * t / end

    def y(share: float) -> float:
        return HEIGHT - MARGIN + (2 * MARGIN - HEIGHT) * share

    parts = [f'<svg class="plot latency" viewBox="0 0 {WIDTH + 160} {HEIGHT}" width="{WIDTH + 160}" height="{HEIGHT}" '
             'role="img" aria-label="submit to final">', "<title>submit to final, cumulative</title>",
             _axes(end, 1.0, x, y, f"{clock(outcomes)} s from submission to final", "share final")]
    for index, outcome in enumerate(shown):
        values = sorted(outcome.latencies)
        step = max(1, len(values) // 200)
        points = [f"{x(v):.1f},{y((i + 1) / len(values)):.1f}" for i, v in enumerate(values) if i % step == 0 or
                  i == len(values) - 1]
        colour = PALETTE[index % len(PALETTE)]
        name = f"{outcome.engine} {outcome.faults} n={outcome.nodes}"
        parts.append(f'<polyline class="series" data-engine="{outcome.engine}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.5" points="{" ".join(points)}"><title>{name}</title></polyline>')
        parts.append(f'<text x="{WIDTH - MARGIN + 8}" y="{MARGIN / 2 + 12 * (index + 1):.1f}" font-size="10" '
                     f'fill="{colour}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _scale_plot(outcomes: Sequence[Outcome], key: str, label: str) -> str:
    """A figure against the node count, one line per engine (the schedule without faults)."""
    by_engine: dict[str, list[tuple[int, float]]] = {}
    for outcome in outcomes:
        value = getattr(outcome, key)
        if outcome.faults == "none" and value is not None:
            by_engine.setdefault(outcome.engine, []).append((outcome.nodes, value))
    counts = sorted({n for points in by_engine.values() for n, _ in points})
    if len(counts) < 2:
        return ""
    top = max(v for points in by_engine.values() for _, v in points) or 1.0

    def x(n: float) -> float:
        return MARGIN + (WIDTH - 2 * MARGIN) * (n - counts[0]) / (counts[-1] - counts[0])

    def y(v: float) -> float:
        return HEIGHT - MARGIN + (2 * MARGIN - HEIGHT) * v / top

    parts = [f'<svg class="plot scale" data-figure="{key}" viewBox="0 0 {WIDTH + 80} {HEIGHT}" width="{WIDTH + 80}" '
             f'height="{HEIGHT}" role="img" aria-label="{label}"><title>{label}</title>',
             f'<line x1="{x(counts[0]):.1f}" y1="{y(0):.1f}" x2="{x(counts[-1]):.1f}" y2="{y(0):.1f}" stroke="#333"/>',
             f'<text x="4" y="{y(top) + 4:.1f}" font-size="10">{cell(top)}</text>',
             f'<text x="4" y="{y(0) - 4:.1f}" font-size="10">{html.escape(label)}</text>']
    for n in counts:
        parts.append(f'<text x="{x(n) - 4:.1f}" y="{y(0) + 14:.1f}" font-size="10">{n}</text>')
    for index, (engine, points) in enumerate(sorted(by_engine.items())):
        colour = PALETTE[index % len(PALETTE)]
        coordinates = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in sorted(points))
        parts.append(f'<polyline class="series" data-engine="{engine}" fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{coordinates}"><title>{engine}</title></polyline>')
        parts.append(f'<text x="{WIDTH - MARGIN + 8}" y="{MARGIN / 2 + 12 * (index + 1):.1f}" font-size="10" '
                     f'fill="{colour}">{engine}</text>')
    parts.append("</svg>")
    return "".join(parts)


def growth(outcomes: Sequence[Outcome], key: str) -> dict[str, str]:
    """Per engine, how a figure of the fault-free runs grows from the fewest nodes to the most."""
    result = {}
    for engine in dict.fromkeys(o.engine for o in outcomes):
        points = sorted((o.nodes, getattr(o, key)) for o in outcomes
                        if o.engine == engine and o.faults == "none" and getattr(o, key) is not None)
        if len(points) >= 2 and points[0][1]:
            (n0, v0), (n1, v1) = points[0], points[-1]
            result[engine] = f"x{v1 / v0:.2f} from {n0} to {n1} nodes ({cell(v0)} -> {cell(v1)})"
    return result


def write_html(path: Path, outcomes: Sequence[Outcome], seed: int, command: str) -> None:
    rows = []
    for outcome in outcomes:
        row = outcome.summary()
        shown = ("engine", "faults", "nodes", "status")
        cells = "".join(f"<td>{html.escape(cell(row[key]) if outcome.status != 'not applicable' or key in shown else '-')}"
                        "</td>" for key, _ in COLUMNS)
        rows.append(f'<tr class="{html.escape(outcome.status.replace(" ", "-"))}">{cells}'
                    f"<td>{html.escape(side_text(outcome) or outcome.note)}</td></tr>")
    header = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS) + "<th>during the fault / notes</th>"
    end = plot_end(outcomes)
    plots = "".join(
        f'<figure>{_height_plot(o, f"{o.engine}, {o.faults}, {o.nodes} nodes", end)}'
        f"<figcaption>{html.escape(o.engine)} &middot; {html.escape(o.faults)} &middot; {o.nodes} nodes"
        f"{' &middot; ' + html.escape(o.status) if o.status != 'ok' else ''}</figcaption></figure>"
        for o in outcomes if o.final_series
    )
    scale = ""
    for key, label in (("messages_per_block_per_node", "messages per final block per node"),
                       ("latency_p50", f"submit to final, p50 ({clock(outcomes)} s)")):
        svg = _scale_plot(outcomes, key, label)
        if svg:
            notes = "".join(f"<li>{html.escape(engine)}: {html.escape(text)}</li>"
                            for engine, text in growth(outcomes, key).items())
            scale += f"<figure>{svg}<figcaption>{html.escape(label)} against the node count</figcaption></figure>"
            scale += f"<ul>{notes}</ul>"
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ledger compare, seed {seed}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.8rem; }}
td:last-child {{ min-width: 14rem; max-width: 24rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.4rem; text-align: right; }}
td:first-child, td:nth-child(2), td:nth-child(4), td:last-child {{ text-align: left; }}
tr.safety-violated td, tr.no-recovery td, tr.check-failed td {{ background: #fde2e1; }}
tr.not-applicable td {{ color: #777; }}
figure {{ display: inline-block; margin: 0.5rem; }}
figcaption {{ font-size: 0.85rem; text-align: center; }}
code {{ background: #f3f3f3; padding: 0.1rem 0.3rem; }}
</style></head><body>
<h1>Engines compared, seed {seed}</h1>
<p><code>{html.escape(command)}</code></p>
<p>{_how(outcomes)}</p>
<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>
<p>{html.escape(STALL_NOTE)}</p>
<h2>Final height over time, per node</h2>
{plots}
<h2>Submit to final</h2>
{_latency_plot(outcomes)}
{('<h2>As nodes are added</h2>' + scale) if scale else ''}
</body></html>
"""
    path.write_text(document)


def _how(outcomes: Sequence[Outcome]) -> str:
    if clock(outcomes) == "wall-clock":
        return (f"Real processes of <code>ledger testnet</code> on loopback, wall-clock: the seed's transfers, "
                f"{TX_PER_SECOND:g} a second for {DURATION:g} s, sent to the nodes' APIs at their moments; each fault "
                f"from {FAULT_START:g} s to {FAULT_END:g} s (shaded): node0 killed (SIGKILL) and restarted, or the "
                f"partition laid through the nodes' admin endpoints. The figures are wall-clock and change from run "
                f"to run with the machine's load.")
    return (f"The simulator on virtual time: the production nodes, {TX_PER_SECOND:g} transfers a second for "
            f"{DURATION:g} virtual seconds (the same transfers at the same moments for every engine), each fault "
            f"from {FAULT_START:g} s to {FAULT_END:g} s (shaded). The same command prints the same figures.")


def write_all(directory: Path, outcomes: Sequence[Outcome], seed: int, command: str) -> list[Path]:
    """Each file written beside its place and moved there whole: a node's explorer serving the
    report never reads half of it."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "report.html", directory / "results.json", directory / "results.csv"]
    writers = (lambda p: write_html(p, outcomes, seed, command), lambda p: write_json(p, outcomes, seed, command),
               lambda p: write_csv(p, outcomes))
    for path, write in zip(paths, writers):
        partial = path.with_name(f".{path.name}.partial")
        write(partial)
        os.replace(partial, path)
    return paths
