"""Run the simulator over many seeds: `python -m node.sim --seeds 1-200 --consensus solo --nodes 4`.

`--consensus bft --byzantine 1 --byzantine-kind mix` makes that many validators Byzantine
(equivocate, invalid, silent or mix: see node/sim/byzantine.py).  `--consensus pos` runs
proof of stake, every node a validator of equal stake (node/sim/pos_setup.py); its
Byzantine kinds are equivocate, double_vote, surround_vote, silent or mix
(node/sim/pos_byzantine.py).

Prints one line per failing seed (its reason and the command that replays it) and a
summary; exits 1 when any seed failed, 2 on bad arguments.  `--trace` prints every
event of the run as it happens (use it when replaying one seed); `--verbose` prints a
line per passing seed too, with its figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time

from node.sim.config import BYZANTINE_KINDS, CONSENSUS, FAULT_KINDS, SimConfig, SimulationFailure
from node.sim.harness import run_seed

MAX_SEEDS = 1_000_000


def parse_seeds(text: str) -> list[int]:
    """"1-200", "7" or "1,5,10-20" -> the seeds, in order, each once."""
    seeds: dict[int, None] = {}
    for part in text.split(","):
        part = part.strip()
        low_text, dash, high_text = part.partition("-")
        if not low_text.isdigit() or (dash and not high_text.isdigit()):
            raise argparse.ArgumentTypeError(f"'{part}' is not a seed or a range like 1-200")
        low = int(low_text)
        high = int(high_text) if dash else low
        if high < low:
            raise argparse.ArgumentTypeError(f"'{part}': the range ends before it starts")
        if high - low + 1 + len(seeds) > MAX_SEEDS:
            raise argparse.ArgumentTypeError(f"more than {MAX_SEEDS} seeds")
        for seed in range(low, high + 1):
            seeds[seed] = None
    return list(seeds)


def parse_faults(text: str) -> frozenset[str]:
    text = text.strip().lower()
    if text == "all":
        return frozenset(FAULT_KINDS)
    if text == "none":
        return frozenset()
    kinds = {kind.strip() for kind in text.split(",") if kind.strip()}
    unknown = sorted(kinds - set(FAULT_KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault kinds: {', '.join(unknown) or text!r} (use all, none or a list of: {', '.join(FAULT_KINDS)})"
        )
    return frozenset(kinds)


def parse_gap(text: str) -> tuple[float, float]:
    """"0.5,3" -> (0.5, 3.0): the least and most virtual seconds between two faults."""
    low_text, comma, high_text = text.partition(",")
    try:
        low, high = float(low_text), float(high_text if comma else low_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not two numbers like 0.5,3") from None
    if not 0 < low <= high < float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}': need 0 < low <= high")
    return low, high


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"'{text}' must be positive")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m node.sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("1-20"), help="e.g. 1-200, 7 or 1,5,10-20")
    parser.add_argument("--consensus", choices=CONSENSUS, default="solo")
    parser.add_argument("--nodes", type=_positive(int), default=4)
    parser.add_argument("--faults", type=parse_faults, default=frozenset(FAULT_KINDS),
                        help=f"all (default), none, or some of: {','.join(FAULT_KINDS)}")
    parser.add_argument("--duration", type=_positive(float), default=20.0,
                        help="virtual seconds of workload under faults (default 20)")
    parser.add_argument("--converge-within", type=_positive(float), default=60.0,
                        help="virtual seconds the nodes have to reach one head after the faults heal (default 60)")
    parser.add_argument("--tx-rate", type=_positive(float), default=20.0, help="transfers per virtual second")
    parser.add_argument("--max-down", type=int, default=None,
                        help="at most this many nodes crashed at once (default: all but one)")
    parser.add_argument("--fault-gap", type=parse_gap, default=(0.5, 3.0),
                        help="virtual seconds between faults, LOW,HIGH (default 0.5,3)")
    parser.add_argument("--byzantine", type=int, default=0,
                        help="bft, pos: this many validators are Byzantine (safe up to f of 3f+1; default 0)")
    parser.add_argument("--byzantine-kind", choices=BYZANTINE_KINDS, default="mix",
                        help="what the Byzantine validators do: bft equivocate, invalid, silent; pos equivocate, "
                             "double_vote, surround_vote, silent; both mix (default: a kind per round or slot, by seed)")
    parser.add_argument("--membership", action="store_true",
                        help="raft: genesis names all nodes but the last, and the leader is asked every 1-4 virtual "
                             "seconds to add a node or remove one")
    parser.add_argument("--jobs", type=_positive(int), default=1, help="seeds run in parallel processes")
    parser.add_argument("--trace", action="store_true", help="print every event of each run")
    parser.add_argument("--verbose", "-v", action="store_true", help="a line for passing seeds too")
    return parser


def _config(args: argparse.Namespace, seed: int) -> SimConfig:
    return SimConfig(
        seed=seed, nodes=args.nodes, consensus=args.consensus, faults=args.faults, duration=args.duration,
        converge_within=args.converge_within, tx_per_second=args.tx_rate, max_down=args.max_down,
        fault_gap=args.fault_gap, byzantine=args.byzantine, byzantine_kind=args.byzantine_kind,
        membership_changes=args.membership,
    )


def run_one(args: argparse.Namespace, seed: int) -> tuple[bool, str, str]:
    """(passed, one-line summary, details) for a seed; plain strings so a worker process can return them."""
    config = _config(args, seed)
    try:
        result = run_seed(config, echo=print if args.trace else None)
    except SimulationFailure as failure:
        line = f"FAIL seed {seed}: {failure.reason} (step {failure.step}, t={failure.at:.3f}s) -- replay: {failure.replay}"
        return False, line, str(failure)
    faults = ",".join(f"{kind}x{count}" for kind, count in sorted(result.faults.items())) or "none"
    line = (
        f"ok   seed {seed}: height {result.head_height}, {result.final}/{result.submitted} transfers final, "
        f"one head {result.converged_after:.1f}s after the heal, {result.stats.messages()} messages "
        f"({result.messages_per_tx():.1f}/tx, {result.announces_per_tx_link():.2f} announces/tx/link), "
        f"faults {faults}, {result.wall_seconds:.2f}s, digest {result.digest[:16]}"
    )
    if result.byzantine:
        lies = ",".join(f"{kind.replace(' ', '-')}x{count}" for kind, count in sorted(result.byzantine_actions.items()))
        caught = ",".join(f"{label}x{count}" for label, count in sorted(result.evidence.items())) or "none"
        line += f"; byzantine {','.join(result.byzantine)}: {lies or 'nothing'}; evidence against {caught}"
    return True, line, ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _config(args, 0)  # the other settings are checked once, before any run
    except ValueError as exc:
        print(f"python -m node.sim: error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    failures = 0
    if args.jobs > 1 and len(args.seeds) > 1 and not args.trace:
        with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
            outcomes = pool.map(run_one, [args] * len(args.seeds), args.seeds)
            for passed, line, details in outcomes:
                failures += _report(args, passed, line, details)
    else:
        for seed in args.seeds:
            failures += _report(args, *run_one(args, seed))
    elapsed = time.perf_counter() - started
    byzantine = ""
    if args.byzantine:
        f = SimConfig(seed=0, nodes=args.nodes).max_faulty
        beyond = f", more than f = {f}: safety not promised" if args.byzantine > f else ""
        byzantine = f", {args.byzantine} byzantine ({args.byzantine_kind}{beyond})"
    print(f"{len(args.seeds)} seeds, {failures} failed ({args.consensus}, {args.nodes} nodes{byzantine}, "
          f"faults {','.join(sorted(args.faults)) or 'none'}) in {elapsed:.1f}s")
    return 1 if failures else 0


def _report(args: argparse.Namespace, passed: bool, line: str, details: str) -> int:
    if not passed:
        print(line, flush=True)
        if args.verbose or args.trace:
            print(details, flush=True)
        return 1
    if args.verbose:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
