"""Submissions through ``taskmill.connect`` from 1, 2 and 4 producer processes, against one
producer in the process that owns the scheduler (issue 16's benchmark).

    python bench/connect.py                 # singles and batches, 3 repeats (~2 minutes on 2 cores)
    python bench/connect.py --repeat 1 --singles 100 --batches 2

Each configuration gets a fresh store served by ``taskmill serve`` with
``start_paused=True`` (nothing runs: only durable submission is measured, as
W3 does). Producers connect, say they are ready, and start together; the
aggregate rate is all their submissions over the span from the first start to
the last end. "singles" is one ``submit`` per task, "batches" ``submit_batch``
of 1,000. The in-process row is the same loop in the serving process's shoes:
an embedded ``Scheduler`` in the measuring process. Ratios are against it, in
the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

JOBS = """
import taskmill as tm

bench = tm.Domain("bench")

@bench.task
def noop(ctx, i: int) -> None:
    return None

def make():
    return tm.Scheduler("jobs.duckdb", [bench], max_concurrency=2, start_paused=True)
"""

PRODUCER = """
import json, sys, time
import taskmill as tm
from jobs import bench, noop

me, mode, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sched = tm.connect(sys.argv[4]) if sys.argv[4] != "-" else tm.Scheduler("jobs.duckdb", [bench], start_paused=True).start()
h = sched.domain(bench)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.time()
if mode == "singles":
    for i in range(n):
        h.submit(noop, i=me * 10_000_000 + i)
else:
    for b in range(n):
        h.submit_batch([noop.call(i=me * 10_000_000 + b * 1000 + j) for j in range(1000)])
t1 = time.time()
sched.close()
print(json.dumps({"start": t0, "end": t1}), flush=True)
"""


def run_once(directory: Path, producers: int, mode: str, n: int) -> float:
    """Aggregate submissions per second of ``producers`` connected processes (0: one in-process)."""
    for f in directory.glob("jobs.duckdb*"):
        f.unlink()
    server = None
    if producers:
        server = subprocess.Popen([sys.executable, "-m", "taskmill", "serve", "jobs:make"], cwd=directory,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not (directory / "jobs.duckdb.taskmill.json").exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("taskmill serve did not start")
            time.sleep(0.05)
    target = str(directory / "jobs.duckdb") if producers else "-"
    procs = [subprocess.Popen([sys.executable, str(directory / "producer.py"), str(i), mode, str(n), target],
                              cwd=directory, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(max(producers, 1))]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        spans = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        for p in procs:
            p.wait(120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    total = len(procs) * n * (1 if mode == "singles" else 1000)
    return total / (max(s["end"] for s in spans) - min(s["start"] for s in spans))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--singles", type=int, default=300, help="single submits per producer")
    ap.add_argument("--batches", type=int, default=5, help="batches of 1,000 per producer")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="taskmill-bench-connect-") as tmp:
        directory = Path(tmp)
        (directory / "jobs.py").write_text(textwrap.dedent(JOBS))
        (directory / "producer.py").write_text(textwrap.dedent(PRODUCER))
        print(f"# connect(): aggregate submissions/s, median of {args.repeat} (cpus: {os.cpu_count()})\n")
        print("| mode | producers | submissions/s | × in-process |")
        print("|---|---|---|---|")
        for mode, n in (("singles", args.singles), ("batches", args.batches)):
            base = None
            for producers in (0, 1, 2, 4):
                rates = [run_once(directory, producers, mode, n) for _ in range(args.repeat)]
                rate = statistics.median(rates)
                base = rate if producers == 0 else base
                assert base is not None
                who = "1 (in-process)" if producers == 0 else f"{producers} (connect)"
                print(f"| {mode} | {who} | {rate:,.0f} (range {min(rates):,.0f}–{max(rates):,.0f}) | "
                      f"{rate / base:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
