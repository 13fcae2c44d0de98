"""One durable submission at a time: its latency, and the rate of several callers at once
(issue 17's benchmark), side by side in one run with Huey's enqueue and the disk's floor.

    python bench/submit.py                      # ~1 minute on 2 cores
    python bench/submit.py --n 500 --seconds 2 --repeat 1

Rows, each over ``--n`` calls after a warm-up (p50 and p99 of the call's wall time):

- **floor**: ``os.write`` of a 200-byte record plus ``os.fdatasync``, appended to a file in the
  same temporary directory: what any durable enqueue on this disk costs at least.
- **Huey**: ``SqliteHuey`` enqueue of one task (SQLite WAL, ``synchronous=FULL``, one
  transaction per task), no consumer running.
- **taskmill, idle**: ``submit()`` of one task to a Scheduler started paused (nothing runs).
- **taskmill, running**: the same while the pool of 2 runs each task as it comes (a no-op), so
  the finished rows are being written meanwhile.

Then the aggregate rate of 1, 4 and 16 threads submitting one task at a time to one paused
Scheduler for ``--seconds`` (group commit: the coordinator makes every submission that arrived
while it wrote the last one durable with one record), against Huey's from the same threads.
Every figure is a median over ``--repeat`` runs; ratios are against Huey in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import taskmill as tm  # noqa: E402

try:
    from bench import huey_app
except ImportError:  # huey is an optional extra: pip install -e .[bench]
    huey_app = None  # type: ignore[assignment]

bench = tm.Domain("bench")


@bench.task
def noop(ctx: tm.TaskContext, t: int, i: int) -> None:
    return None


def latencies(call: Callable[[int], object], n: int, warm: int = 50) -> list[float]:
    for i in range(warm):
        call(-1 - i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - t0)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def floor(tmp: str, n: int) -> list[float]:
    fd = os.open(os.path.join(tmp, "floor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    record = b"x" * 200

    def call(_: int) -> None:
        os.write(fd, record)
        os.fdatasync(fd)

    try:
        return latencies(call, n)
    finally:
        os.close(fd)


def huey(tmp: str, n: int) -> list[float]:
    app = huey_app.make_huey(os.path.join(tmp, "huey.db"))
    try:
        return latencies(lambda i: app.noop(i=i, run="single"), n)
    finally:
        app.huey.storage.close()


def taskmill(tmp: str, n: int, running: bool) -> list[float]:
    with tm.Scheduler(os.path.join(tmp, f"tm-{running}.duckdb"), [bench], max_concurrency=2,
                      start_paused=not running) as s:
        h = s.domain(bench)
        if running:  # every worker has run a task before the clock starts
            for i in range(20):
                h.submit(noop, t=-2, i=i)
            s.wait_idle(timeout=60)
        return latencies(lambda i: h.submit(noop, t=-1, i=i), n)


def aggregate(submit: Callable[[int, int], object], threads: int, seconds: float) -> float:
    """Submissions per second from ``threads`` threads each submitting one at a time for ``seconds``."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def run(t: int) -> None:
        start.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            submit(t, n)
            n += 1
        counts[t] = n

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="calls per latency row (default 2000)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per aggregate row (default 3)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of everything (default 3)")
    args = ap.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {}
    rates: dict[str, list[float]] = {}
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="taskmill-bench-submit-") as tmp:
            lat = {"floor (write + fdatasync)": floor(tmp, args.n)}
            if huey_app is not None:
                lat["Huey enqueue"] = huey(tmp, args.n)
            lat["taskmill submit, idle"] = taskmill(tmp, args.n, running=False)
            lat["taskmill submit, workers running"] = taskmill(tmp, args.n, running=True)
            for name, xs in lat.items():
                rows.setdefault(name, []).append((statistics.median(xs), pct(xs, 0.99)))
            with tm.Scheduler(os.path.join(tmp, "agg.duckdb"), [bench], max_concurrency=2, start_paused=True) as s:
                h = s.domain(bench)
                for k in (1, 4, 16):
                    rates.setdefault(f"taskmill, {k} threads", []).append(
                        aggregate(lambda t, i, k=k: h.submit(noop, t=k * 100 + t, i=i), k, args.seconds))
            if huey_app is not None:
                app = huey_app.make_huey(os.path.join(tmp, "huey-agg.db"))
                try:
                    for k in (1, 4):
                        rates.setdefault(f"Huey, {k} threads", []).append(
                            aggregate(lambda t, i, k=k: app.noop(i=k * 10_000_000 + t * 1_000_000 + i, run="agg"),
                                      k, args.seconds))
                finally:
                    app.huey.storage.close()
        print(f"repeat {r + 1}/{args.repeat} done", file=sys.stderr, flush=True)

    print(f"machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
          f"{args.n} calls per latency row, {args.seconds:g} s per rate row, median of {args.repeat}")
    print()
    print("| one durable submission | p50 | p99 | p50 vs Huey |")
    print("|---|---|---|---|")
    ref = statistics.median(p50 for p50, _ in rows["Huey enqueue"]) if "Huey enqueue" in rows else None
    for name, vals in rows.items():
        p50 = statistics.median(v[0] for v in vals)
        p99 = statistics.median(v[1] for v in vals)
        ratio = f"{p50 / ref:.2f}×" if ref else "—"
        print(f"| {name} | {p50 * 1e3:.3f} ms | {p99 * 1e3:.3f} ms | {ratio} |")
    print()
    print("| callers submitting one at a time | submissions/s |")
    print("|---|---|")
    for name, vals in rates.items():
        print(f"| {name} | {statistics.median(vals):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
