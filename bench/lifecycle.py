"""The lifecycle at scale, end to end through a real Scheduler: ``python bench/lifecycle.py``.

Sections (each prints a table with its target; ``--only`` picks some):

- **calls**: ``snapshot()``, ``pending_count()``, ``history_stats``,
  ``history(50, 0)``, ``history(50, 500000)``, ``failed_tasks(50)`` and
  ``task_lookup`` through the public API on a store with 1,000,000 history
  rows (the cached store of ``bench/queries.py``), median of 20 calls.
- **busy reader**: dispatch rate of 10 ms tasks while another thread runs a
  ``GROUP BY`` over the 1M history rows in a loop, against the same run
  without it (target ≥ 90 %).
- **dag**: 10,000 no-op tasks as a DAG (fan-out/fan-in groups and chains)
  against the same tasks without dependencies, submitted in the same batches
  (target: per-task time ≤ 1.5×).
- **skip_completed**: ``submit_batch`` of 10,000 items with
  ``duplicate="skip_completed"`` against ``"skip"``, 1M history rows.
- **restart**: 1,000,000 no-ops queued and draining, then a hard close and a
  new Scheduler on the store: ``start()`` until the first task runs (target
  < 2 s), and the drain rate after the restart against the rate before it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from typing import Any, Callable

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH_DIR]
sys.path.insert(0, REPO_ROOT)

import taskmill as tm  # noqa: E402
from bench.harness import run_sections  # noqa: E402
from bench.queries import (  # noqa: E402
    HISTORY_ROWS,
    RECOVER_ROWS,
    TYPES,
    build_history_store,
    table,  # noqa: E402
)

WORKERS = 2

# The cached stores name their types dom<d>::type<t>; register a no-op for each so the
# coordinator can run them (the payload is {"path": ...}).
DOMS = [tm.Domain(f"dom{d}") for d in range(4)]


def _noop(ctx: tm.TaskContext, **payload: Any) -> None:
    return None


for _d in DOMS:
    for _t in range(TYPES):
        _d.task(name=f"type{_t}")(_noop)

lc = tm.Domain("lc")


@lc.task
def nothing(ctx: tm.TaskContext, i: int, run: str) -> None:
    return None


@lc.task
def gate(ctx: tm.TaskContext, path: str, slot: int) -> None:
    while not os.path.exists(path):
        time.sleep(0.001)


@lc.task
def ten_ms(ctx: tm.TaskContext, i: int, run: str) -> None:
    end = time.perf_counter() + 0.010
    while time.perf_counter() < end:
        pass


def copy_store(src: str, d: str) -> str:
    p = os.path.join(d, "store.duckdb")
    shutil.copy(src, p)
    return p


def median_ms(fn: Callable[[], Any], runs: int = 20) -> float:
    fn(), fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


def mark(ok: bool, ratio: str = "") -> str:
    return "✅" if ok else f"❌ {ratio}"


# --------------------------------------------------------------------------- sections


def calls(d: str, n: int | None = None) -> bool:
    path = copy_store(build_history_store(HISTORY_ROWS), d)
    with tm.Scheduler(path, DOMS, max_concurrency=WORKERS, start_paused=True) as s:
        st = s.store
        key = s.sql("SELECT key FROM task_history WHERE id = 123457")[0]["key"]
        rows = [
            ("snapshot()", s.snapshot, 5.0),
            ("pending_count()", st.pending_count, 20.0),
            ("history_stats('dom1::type5')", lambda: st.history_stats("dom1::type5"), 20.0),
            ("history(50, 0)", lambda: st.history(50, 0), 20.0),
            ("history(50, 500000)", lambda: st.history(50, 500_000), 20.0),
            ("failed_tasks(50)", lambda: st.failed_tasks(50), 20.0),
            ("task_lookup", lambda: st.task_lookup("dom1::type17", key), 20.0),
        ]
        out, ok = [], True
        for name, fn, target in rows:
            ms = median_ms(fn)
            good = ms < target
            ok &= good
            out.append((name, f"{ms:.2f} ms", f"< {target:g} ms", mark(good, f"{ms / target:.1f}×")))
    table(f"public calls with {HISTORY_ROWS:,} history rows and 10,000 active tasks (median of 20)",
          ("call", "median", "target", ""), out)
    return ok


def _drain_rate(s: tm.Scheduler, n: int, run: str) -> float:
    h = s.domain(lc)
    t = time.perf_counter()
    h.submit_batch([ten_ms.call(i=i, run=run) for i in range(n)])
    s.wait_idle(timeout=600)
    return n / (time.perf_counter() - t)


def busy_reader(d: str, n: int) -> bool:
    path = copy_store(build_history_store(HISTORY_ROWS), d)
    with tm.Scheduler(path, [lc, *DOMS], max_concurrency=WORKERS) as s:
        for dom in DOMS:  # the store's own queued tasks are not what is measured
            s.domain(dom).cancel_all()
        s.wait_idle(timeout=600)
        quiet = _drain_rate(s, n, "quiet")
        stop = threading.Event()
        queries = [0]

        def reader() -> None:
            while not stop.is_set():
                s.sql("SELECT task_type, count(*) AS n, avg(duration_ms) AS ms FROM task_history GROUP BY 1")
                queries[0] += 1

        th = threading.Thread(target=reader)
        th.start()
        try:
            busy = _drain_rate(s, n, "busy")
        finally:
            stop.set()
            th.join()
    ratio = busy / quiet
    table(f"dispatch of {n} × 10 ms tasks, {WORKERS} workers, with a GROUP BY over {HISTORY_ROWS:,} rows in a loop",
          ("run", "tasks/s", "ratio", "target"), [
              ("no reader", f"{quiet:,.0f}", "1.00", ""),
              (f"reader ({queries[0]} queries)", f"{busy:,.0f}", f"{ratio:.2f}", f"≥ 0.90 {mark(ratio >= 0.9)}"),
          ])
    return ratio >= 0.9


def dag(d: str, n: int) -> bool:
    groups = n // 2 // 102
    chains, length = 50, (n - groups * 102) // 50

    def run(store: str, with_deps: bool) -> float:
        with tm.Scheduler(store, [lc], max_concurrency=WORKERS) as s:
            h = s.domain(lc)
            h.submit(nothing, i=-1, run="warm")
            s.wait_idle(timeout=600)
            tag = "dag" if with_deps else "flat"
            t = time.perf_counter()
            k = 0

            def batch(items: list) -> list[int]:
                return h.submit_batch(items).inserted

            roots = batch([nothing.call(i=(k := k + 1), run=tag) for _ in range(groups)])
            fans = batch([nothing.options(depends_on=[r] if with_deps else None).call(i=(k := k + 1), run=tag)
                          for r in roots for _ in range(100)])
            batch([nothing.options(depends_on=fans[g * 100:(g + 1) * 100] if with_deps else None)
                   .call(i=(k := k + 1), run=tag) for g in range(groups)])
            prev: list[int | None] = [None] * chains
            for _ in range(length):
                prev = batch([nothing.options(depends_on=[p] if with_deps and p is not None else None)
                              .call(i=(k := k + 1), run=tag) for p in prev])
            s.wait_idle(timeout=600)
            elapsed = time.perf_counter() - t
            assert s.sql("SELECT count(*) AS n FROM task_history WHERE status = 'completed' AND task_type = "
                         "'lc::nothing'")[0]["n"] == k + 1
            return elapsed / k

    flat = run(os.path.join(d, "flat.duckdb"), False)
    deps = run(os.path.join(d, "dag.duckdb"), True)
    ratio = deps / flat
    total = groups * 102 + chains * length
    table(f"{total:,} no-op tasks: {groups} groups root → 100 → sink and {chains} chains of {length}",
          ("run", "µs per task", "ratio", "target"), [
              ("no dependencies", f"{flat * 1e6:.0f}", "1.00", ""),
              ("as a DAG", f"{deps * 1e6:.0f}", f"{ratio:.2f}", f"≤ 1.5 {mark(ratio <= 1.5, f'{ratio / 1.5:.2f}×')}"),
          ])
    return ratio <= 1.5


def skip_completed(d: str, n: int) -> bool:
    path = copy_store(build_history_store(HISTORY_ROWS), d)
    out = []
    with tm.Scheduler(path, [lc, *DOMS], max_concurrency=WORKERS, start_paused=True) as s:
        h = s.domain(lc)
        times: dict[str, list[float]] = {"skip": [], "skip_completed": []}
        for rep in range(3):
            for strategy in ("skip", "skip_completed"):
                items = [nothing.options(duplicate=strategy).call(i=i, run=f"{strategy}-{rep}") for i in range(n)]
                t = time.perf_counter()
                got = h.submit_batch(items)
                times[strategy].append(time.perf_counter() - t)
                assert len(got.inserted) == n
                h.cancel_all()
        for strategy, ts in times.items():
            out.append((strategy, f"{statistics.median(ts) * 1000:.0f} ms"))
    extra = (statistics.median(times["skip_completed"]) - statistics.median(times["skip"])) * 1000
    out.append(("history look-up (difference)", f"{extra:.0f} ms per {n:,} items"))
    table(f"submit_batch of {n:,} new items with {HISTORY_ROWS:,} history rows (median of 3)", ("strategy", "time"), out)
    return True


def _drained(s: tm.Scheduler, seconds: float) -> float:
    """Completions per second over ``seconds`` (history rows counted through sql())."""
    count = "SELECT count(*) AS n FROM task_history"
    t, h0 = time.perf_counter(), s.sql(count)[0]["n"]
    time.sleep(seconds)
    return (s.sql(count)[0]["n"] - h0) / (time.perf_counter() - t)


def restart(d: str, n: int) -> bool:
    """``n`` no-ops queued behind gate tasks (payloads cached in memory), drained for a while;
    then a hard close (what a crash leaves) and a new Scheduler on the same store."""
    path = os.path.join(d, "store.duckdb")
    flag = os.path.join(d, "open")
    with tm.Scheduler(path, [lc], max_concurrency=WORKERS) as s:
        h = s.domain(lc)
        h.submit_batch([gate.call(path=flag, slot=i) for i in range(WORKERS)])
        t = time.perf_counter()
        for start in range(0, n, 50_000):
            h.submit_batch([nothing.call(i=i, run="deep") for i in range(start, min(n, start + 50_000))])
        submitted = time.perf_counter() - t
        open(flag, "w").close()
        before = _drained(s, 5.0)
    t = time.perf_counter()
    s = tm.Scheduler(path, [lc], max_concurrency=WORKERS).start()
    started = time.perf_counter() - t
    try:
        left = s.snapshot().pending_count + s.snapshot().running_count
        while True:  # a task running, or one already done
            snap = s.snapshot()
            if snap.running_count or snap.pending_count < left:
                break
            time.sleep(0.001)
        first = time.perf_counter() - t
        after = _drained(s, 5.0)
    finally:
        s.close()
    good = first < 2.0
    ratio = after / before
    table(f"restart with {left:,} queued no-ops ({n:,} submitted in {submitted:.0f} s)", ("measure", "value", "target", ""), [
        ("start() returned", f"{started:.2f} s", "", ""),
        ("first task running after start() began", f"{first:.2f} s", "< 2 s", mark(good, f"{first / 2:.1f}×")),
        ("drain rate before the restart", f"{before:,.0f} tasks/s", "", ""),
        ("drain rate after it", f"{after:,.0f} tasks/s", "same", f"{ratio:.2f}×"),
    ])
    return good


SECTIONS = {"calls": calls, "busy": busy_reader, "dag": dag, "skip": skip_completed, "restart": restart}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections: {','.join(SECTIONS)}")
    ap.add_argument("--tasks", type=int, default=400, help="10 ms tasks in the busy-reader section")
    ap.add_argument("--dag", type=int, default=10_000, help="tasks in the DAG section")
    args = ap.parse_args(argv)
    sizes = {"busy": args.tasks, "dag": args.dag, "skip": 10_000, "restart": RECOVER_ROWS}

    def run(name: str, d: str) -> bool:
        size = sizes.get(name)
        return SECTIONS[name](d) if size is None else SECTIONS[name](d, size)
    return run_sections("taskmill lifecycle at scale", REPO_ROOT, args.only, SECTIONS, ap.error, run)


if __name__ == "__main__":
    sys.exit(main())
