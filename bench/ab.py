"""Two checkouts of taskmill side by side on W1 and W2, alternating: did a change slow the hot path?

    git worktree add /tmp/before <commit>              # the code to compare with
    python bench/ab.py /tmp/before --rounds 10         # this checkout against that one

Each sample is a fresh process started in that checkout (so the coordinator and the
workers import that checkout's taskmill), a scheduler warmed up untimed, then W1
(20,000 no-ops end to end) or W2 (200 CPU tasks of a fixed length, calibrated once here)
timed from the first submission to ``wait_idle``. Samples alternate between the two
checkouts, so machine drift hits both alike; medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What one sample runs, in the checkout given as its first argument.
SAMPLE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from bench.systems import TaskmillSystem
work, n, loops = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with TaskmillSystem(5000) as s:
    kind = "noop" if work == "W1" else "busy"
    extra = {} if work == "W1" else {"loops": loops}
    payloads = [{"i": i, "run": f"ab-{time.time()}", **extra} for i in range(n)]
    t0 = time.perf_counter()
    s.submit(kind, payloads)
    s.wait_all()
    seconds = time.perf_counter() - t0
    s.verify_finished()
print(json.dumps(seconds))
"""


def sample(checkout: str, work: str, n: int, loops: int) -> float:
    out = subprocess.run([sys.executable, "-c", SAMPLE, checkout, work, str(n), str(loops)], cwd=checkout,
                         capture_output=True, text=True, timeout=600, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", help="the other checkout (a git worktree of the commit to compare with)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--ms", type=float, default=10.0, help="W2's task length in milliseconds")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    from bench.tasks import calibrate_spin

    loops, _ = calibrate_spin(args.ms / 1000.0)
    checkouts = {"this": HERE, "other": os.path.abspath(args.other)}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for work, n in (("W1", 20_000), ("W2", 200)):
            for name, path in checkouts.items():
                t = sample(path, work, n, loops)
                times.setdefault((work, name), []).append(t)
                print(f"  [{r + 1}/{args.rounds}] {work} {name}: {t:.3f} s", file=sys.stderr, flush=True)
    print(f"| workload | this ({HERE}) | other ({checkouts['other']}) | other ÷ this |")
    print("|---|---|---|---|")
    for work in ("W1", "W2"):
        this, other = statistics.median(times[(work, "this")]), statistics.median(times[(work, "other")])
        print(f"| {work} | {this:.3f} s | {other:.3f} s | {other / this:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
