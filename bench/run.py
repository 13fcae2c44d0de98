"""Run the taskmill benchmark suite: ``python bench/run.py [--quick] [--repeat N] [--only W1,W2,W3,D]``.

Prints machine info and a markdown results table (medians over repeats, ratios
versus taskmill, targets) and writes the same text to bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
# Run as a script, sys.path[0] is bench/; import everything as the `bench` package instead.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH_DIR]
sys.path.insert(0, REPO_ROOT)

from bench.harness import machine_info, markdown_table  # noqa: E402
from bench.workloads import FULL, QUICK, SEED, WORKLOADS, Report, log  # noqa: E402

RESULTS = os.path.join(BENCH_DIR, "results", "latest.md")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    ap.add_argument("--repeat", type=int, default=None, help="repeats per system (default 3; 1 with --quick)")
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help=f"comma-separated workloads to run (default: {','.join(WORKLOADS)})")
    args = ap.parse_args(argv)
    wanted = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    unknown = sorted(wanted - set(WORKLOADS))
    if unknown or not wanted:
        ap.error(f"unknown workload(s) {unknown}; choose from {','.join(WORKLOADS)}")
    args.only = [w for w in WORKLOADS if w in wanted]  # always in the canonical order
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    return args


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def render(args: argparse.Namespace, reports: dict[str, Report], elapsed: float, load_before: str) -> str:
    info = machine_info(REPO_ROOT)
    mode = "quick (smoke run: sizes reduced, ratios indicative only)" if args.quick else "full"
    lines = [
        "# taskmill benchmark results",
        "",
        *(f"- **{k}**: {v}" for k, v in info.items()),
        f"- **load average** (1/5/15 min): {load_before} before, {_load()} after",
        f"- **run**: {mode}; {args.repeat} repeat(s) per system; medians; seed {SEED}; {elapsed:.0f} s total",
        "",
        markdown_table([row for r in reports.values() for row in r.rows]),
        "",
        "Ratios are taskmill's speed ÷ the peer's (> 1 means taskmill is faster); start-up is never timed "
        "(every system first runs warm-up tasks on all its workers). Every system uses 2 workers; Huey is "
        "SqliteHuey with a `huey_consumer -w 2 -k process` subprocess (process workers, default polling).",
        "",
        *(f"- {note}" for r in reports.values() for note in r.notes),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    t0, load_before = time.perf_counter(), _load()
    reports: dict[str, Report] = {}
    for name in args.only:
        log(WORKLOADS[name].__doc__.splitlines()[0])
        reports[name] = WORKLOADS[name](sizes, args.repeat)
    text = render(args, reports, time.perf_counter() - t0, load_before)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    print(text)
    log(f"written to {os.path.relpath(RESULTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
