"""`ledger compare`: the command around node/compare.py (arguments, progress, the files)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ledger.genesis import ENGINES
from node.compare import FAULTS, CompareError, check_arguments, plan, run_one
from node.compare_real import Terminated, check_real_arguments, run_real_one
from node.compare_report import growth, notes, table, write_all
from node.config import NodeConfig

REPORT_FOLDER = "compare"  # inside a node's data folder, where the explorer looks
DEFAULT_OUT = NodeConfig().data_dir / REPORT_FOLDER  # the default node's: its explorer shows the report


def _names(text: str) -> list[str]:
    return [part.strip().lower() for part in text.split(",") if part.strip()]


def _counts(text: str) -> list[int]:
    counts = []
    for part in _names(text):
        if not (part.isascii() and part.isdigit()):
            raise CompareError(f"--nodes {text!r}: node counts like 4 or 4,7,10,16")
        counts.append(int(part))
    return counts


def _unwritable(out: Path) -> str | None:
    """Why the report cannot go into `out` (checked before the runs, which take a while)."""
    if out.exists() and not out.is_dir():
        return "is a file; name a folder (it is created if missing)"
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so no folder can be made under it"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def _stop_on_sigterm(signum, frame) -> None:
    raise Terminated


def add_compare_command(app: typer.Typer, fail: Callable[..., None]) -> None:
    @app.command()
    def compare(
        engines: str = typer.Option(",".join(ENGINES), help="Engines to compare, comma-separated"),
        nodes: str = typer.Option("5", help="Node count, or several (4,7,10,16) to see how each engine scales"),
        faults: str = typer.Option(",".join(FAULTS), help=f"Fault schedules: {', '.join(FAULTS)}"),
        seed: int = typer.Option(1, min=0, help="The seed of the workload and the network: same seed, same table"),
        out: str = typer.Option(str(DEFAULT_OUT), help="Folder for report.html, results.json and results.csv"),
        real: bool = typer.Option(False, "--real", help="Real processes of `ledger testnet` on loopback, "
                                  "wall-clock (30-60 s a run, more if nodes are slow; figures change from run to run)"),
    ) -> None:
        """Every engine on the same workload under the same faults, in the simulator (virtual
        time: the same seed prints the same table), or with --real on processes of `ledger
        testnet`.  Five nodes by default: the fewest where a simple majority (3) is less than
        two thirds, so a partition tells the engines apart."""
        try:
            engine_names, schedule_names, node_counts = _names(engines), _names(faults), _counts(nodes)
            check_arguments(engine_names, schedule_names, node_counts)
            if real:
                check_real_arguments(node_counts)
        except CompareError as exc:
            fail(str(exc))
        if not out.strip():
            fail(f"--out is empty: name a folder (the default is {DEFAULT_OUT})")
        problem = _unwritable(Path(out))
        if problem:
            fail(f"--out {out}: {problem}")
        command = (f"ledger compare --engines {','.join(engine_names)} --nodes {','.join(map(str, node_counts))} "
                   f"--faults {','.join(schedule_names)} --seed {seed}" + (" --real" if real else ""))
        runs = plan(engine_names, schedule_names, node_counts)
        if all(schedule.not_applicable(engine, real) for engine, schedule in runs):
            reasons = sorted({schedule.not_applicable(engine, real) for engine, schedule in runs})
            fail("nothing to run: every engine and schedule asked for is not applicable (" + "; ".join(reasons) + ")")
        if real:
            # A SIGTERM (a closed terminal, a supervisor) unwinds like Ctrl-C: the runs stop their
            # nodes and remove their temporary folders on the way out.
            signal.signal(signal.SIGTERM, _stop_on_sigterm)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            console=Console(stderr=True), transient=True)
        outcomes = []
        run = run_real_one if real else run_one
        try:
            with progress:
                task = progress.add_task("", total=len(runs))
                for engine, schedule in runs:
                    progress.update(task, description=f"{'running' if real else 'simulating'} {engine} "
                                                      f"{schedule.name} n={schedule.nodes}")
                    outcomes.append(run(engine, schedule, seed))
                    progress.update(task, advance=1)
        except KeyboardInterrupt as stop:
            cause = "stopped by SIGTERM" if isinstance(stop, Terminated) else "interrupted"
            if outcomes:
                Console(width=170, soft_wrap=False).print(table(outcomes, seed))
            fail(f"{cause} after {len(outcomes)} of {len(runs)} runs{' (the finished ones above)' if outcomes else ''}; "
                 f"{'every node is stopped and its folder removed; ' if real else ''}nothing written to {out}",
                 143 if isinstance(stop, Terminated) else 130)
        # Wide enough for the table whatever the terminal (or pipe) is: the same simulated run prints the same text.
        wide = Console(width=170, soft_wrap=False)
        wide.print(table(outcomes, seed))
        for line in notes(outcomes):
            wide.print(line, highlight=False, markup=False, soft_wrap=True)
        if len(node_counts) > 1:
            for engine, text in growth(outcomes, "messages_per_block_per_node").items():
                wide.print(f"messages per final block per node, {engine}: {text}", highlight=False, soft_wrap=True)
        try:
            paths = write_all(Path(out), outcomes, seed, command)
        except OSError as exc:
            fail(f"cannot write the report into {out}: {exc.strerror or exc}", 1)
        wide.print(f"wrote {', '.join(str(path) for path in paths)}", highlight=False, markup=False, soft_wrap=True)
