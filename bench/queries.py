"""Store query costs at scale: ``python bench/queries.py [--rows N] [--runs 20] [--rebuild]``.

Builds (once, cached in the temp directory, fixed seed, plain SQL) a store with
1,000,000 history rows over 20 task types with ~5 % failures plus 10,000 active
tasks, then times the seed's queries on ``Store``'s ``Queries`` (median of
``--runs`` calls after two warm-up calls) against their targets. Further
sections: ``completed_keys`` through the key index versus a hash join, the cost
of writing history rows into the big store, and ``recover()`` with 1,000,000
active tasks. Prints machine, Python and DuckDB versions with the tables.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH_DIR]
sys.path.insert(0, REPO_ROOT)

from bench.harness import machine_info  # noqa: E402
from taskmill.batch import utc  # noqa: E402
from taskmill.store import LATEST_SCHEMA, FinishedRow, Store, WriteBatch  # noqa: E402
from taskmill.store import queries as queries_module  # noqa: E402
from taskmill.store.store import _RECOVER_SELECT  # noqa: E402

SEED = 20240917
HISTORY_ROWS = 1_000_000
ACTIVE_ROWS = 10_000
RECOVER_ROWS = 1_000_000
TYPES = 20
#: Every query of the first table must answer within this median (ms).
QUERY_TARGET_MS = 20.0
#: recover() with RECOVER_ROWS active tasks: DuckDB's own part (the statements, not the
#: conversion of rows to Python tuples) should stay well under this (s).
RECOVER_TARGET_S = 2.0

T0 = 1_700_000_000.0


def _cache_path(kind: str, rows: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"taskmill-bench-{kind}-s{LATEST_SCHEMA}-{rows}-{SEED}.duckdb")


def _marker(kind: str, rows: int) -> str:
    return f"{kind}:{rows}:{SEED}"


def _cached(path: str, marker: str) -> bool:
    """The file exists, opens at the current schema and was built with these parameters."""
    if not os.path.exists(path):
        return False
    try:
        s = Store(path)
    except Exception:  # noqa: BLE001 - anything wrong with a cache file: rebuild it
        return False
    try:
        row = s.con.execute("SELECT value FROM meta WHERE key = 'bench'").fetchone()
        return row is not None and row[0] == marker
    finally:
        s.close()


def _fresh(path: str) -> Store:
    for p in (path, path + ".wal"):
        if os.path.exists(p):
            os.remove(p)
    return Store(path)


# Deterministic pseudo-random numbers from the row number and the seed (DuckDB's hash()).
_R = f"hash(i, {SEED})"


def build_history_store(rows: int) -> str:
    path = _cache_path("history", rows)
    marker = _marker("history", rows)
    if _cached(path, marker):
        return path
    t = time.perf_counter()
    s = _fresh(path)
    try:
        con = s.con
        # ~5 % failures (3 % failed, 2 % dead letter), 1 % cancelled, the rest completed; every 10th key
        # repeats an older one (requeued and resubmitted work), so some keys have several rows.
        con.execute(f"""
            INSERT INTO task_history
            SELECT i, 'dom' || (i % 4) || '::type' || (i % {TYPES}), 'dom' || (i % 4),
                   sha256(CASE WHEN i % 10 = 0 THEN (i // 2)::VARCHAR ELSE i::VARCHAR END || '{SEED}'),
                   'dom' || (i % 4) || '::type' || (i % {TYPES}), ({_R} % 256)::SMALLINT,
                   CASE WHEN {_R} % 100 < 3 THEN 'failed' WHEN {_R} % 100 < 5 THEN 'dead_letter'
                        WHEN {_R} % 100 < 6 THEN 'cancelled' ELSE 'completed' END,
                   '{{"path": "/data/file-' || i || '.bin", "size": ' || ({_R} % 100000) || '}}',
                   CASE WHEN {_R} % 100 >= 6 THEN '{{"ok": true, "bytes": ' || ({_R} % 5000) || '}}' END,
                   CASE WHEN {_R} % 100 < 5 THEN 'RuntimeError: simulated failure ' || i END,
                   CASE WHEN i % 3 = 0 THEN '{{"team": "t' || (i % 7) || '"}}' END, NULL, 0,
                   TIMESTAMP '2024-01-01' + to_microseconds(i * 1000),
                   TIMESTAMP '2024-01-01' + to_microseconds(i * 1000 + 50),
                   TIMESTAMP '2024-01-01' + to_microseconds(i * 1000 + 500),
                   ({_R} % 2000)::DOUBLE, {_R} % 1000000, {_R} % 500000, 0, 0, 100000, 50000, 0, 0, 1.0, 0, NULL,
                   i, NULL, NULL, NULL, NULL, true
            FROM range(1, {rows} + 1) r(i) ORDER BY i""")
        con.execute("""
            INSERT INTO type_stats
            SELECT task_type, count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
                   count(*) FILTER (WHERE status = 'dead_letter'), count(*),
                   coalesce(sum(duration_ms) FILTER (WHERE status = 'completed'), 0),
                   coalesce(sum(read_bytes) FILTER (WHERE status = 'completed'), 0),
                   coalesce(sum(write_bytes) FILTER (WHERE status = 'completed'), 0)
            FROM task_history GROUP BY task_type""")
        _insert_tasks(con, rows + 1, ACTIVE_ROWS)
        con.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", [str(rows + ACTIVE_ROWS + 1)])
        con.execute("INSERT INTO meta VALUES ('bench', ?)", [marker])
        con.execute("CHECKPOINT")
    finally:
        s.close()
    print(f"built {path} ({rows:,} history rows) in {time.perf_counter() - t:.1f} s", flush=True)
    return path


def _insert_tasks(con: Any, first: int, n: int) -> None:
    """``n`` active tasks (1 % running, 2 % paused, the rest pending) with the same key scheme."""
    con.execute(f"""
        INSERT INTO tasks
        SELECT i, 'dom' || (i % 4) || '::type' || (i % {TYPES}), 'dom' || (i % 4), sha256(i::VARCHAR || '{SEED}'),
               'dom' || (i % 4) || '::type' || (i % {TYPES}), ({_R} % 256)::SMALLINT,
               CASE WHEN i % 100 = 0 THEN 'running' WHEN i % 50 = 1 THEN 'paused' ELSE 'pending' END,
               '{{"path": "/data/file-' || i || '.bin"}}', CASE WHEN i % 3 = 0 THEN '{{"team": "t' || (i % 7) || '"}}' END,
               NULL, TIMESTAMP '2024-06-01' + to_microseconds(i), NULL, NULL, 0, 3, NULL, NULL, NULL, 1.0, 0,
               100000, 50000, 0, 0, false, NULL, NULL,
               NULL, 'submission', NULL, 'cancel', true, NULL, NULL, 0, NULL, false, NULL, NULL, 'execute'
        FROM range({first}, {first} + {n}) r(i)""")


def build_tasks_store(rows: int) -> str:
    path = _cache_path("tasks", rows)
    marker = _marker("tasks", rows)
    if _cached(path, marker):
        return path
    t = time.perf_counter()
    s = _fresh(path)
    try:
        _insert_tasks(s.con, 1, rows)
        s.con.execute("INSERT INTO task_deps SELECT i, i - 1 FROM range(2, 2000, 2) r(i)")
        s.con.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", [str(rows + 1)])
        s.con.execute("INSERT INTO meta VALUES ('bench', ?)", [marker])
        s.con.execute("CHECKPOINT")
    finally:
        s.close()
    print(f"built {path} ({rows:,} active tasks) in {time.perf_counter() - t:.1f} s", flush=True)
    return path


# --------------------------------------------------------------------------- measuring


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000.0


def table(title: str, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def query_section(path: str, runs: int) -> bool:
    s = Store(path)
    try:
        con = s.con
        key_hist = con.execute("SELECT key FROM task_history WHERE id = 777777").fetchall()[0][0]
        key_multi = con.execute("SELECT key FROM task_history WHERE id = 500000").fetchall()[0][0]  # shared by id 250000
        some_ids = [r[0] for r in con.execute("SELECT id FROM task_history USING SAMPLE 100 ROWS (reservoir, 1)").fetchall()]
        recent_ids = list(range(HISTORY_ROWS - 99, HISTORY_ROWS + 1))
        checks: list[tuple[str, Callable[[], Any], float | None]] = [
            ("history_stats('dom1::type1')", lambda: s.history_stats("dom1::type1"), QUERY_TARGET_MS),
            ("history(50, 0)", lambda: s.history(50, 0), QUERY_TARGET_MS),
            ("history(50, 500000)", lambda: s.history(50, 500_000), QUERY_TARGET_MS),
            ("failed_tasks(50)", lambda: s.failed_tasks(50), QUERY_TARGET_MS),
            ("task_lookup (history hit)", lambda: s.task_lookup_by_dedup_key(key_hist), QUERY_TARGET_MS),
            ("task_lookup (not found)", lambda: s.task_lookup_by_dedup_key("0" * 64), QUERY_TARGET_MS),
            ("history(50, 999900)", lambda: s.history(50, 999_900), None),
            ("history_by_type(t, 100)", lambda: s.history_by_type("dom2::type2", 100), None),
            ("history_by_key (2 rows)", lambda: s.history_by_key(key_multi), None),
            ("dead_letter_tasks(None, 50)", lambda: s.dead_letter_tasks(None, 50), None),
            ("dead_letter_tasks('dom1', 50, 1000)", lambda: s.dead_letter_tasks("dom1", 50, 1000), None),
            ("avg_throughput(t, 100)", lambda: s.avg_throughput("dom3::type3", 100), None),
            ("history_row(id)", lambda: s.history_row(777777), None),
            ("history_rows(100 recent ids)", lambda: s.history_rows(recent_ids), None),
            ("history_outcomes(100 recent ids)", lambda: s.history_outcomes(recent_ids), None),
            ("history_outcomes(100 random ids)", lambda: s.history_outcomes(some_ids), None),
            ("pending_tasks(50)", lambda: s.pending_tasks(50), None),
            ("pending_count()", lambda: s.pending_count(), None),
            ("task_by_id (active)", lambda: s.task_by_id(HISTORY_ROWS + 5), None),
            ("count_by_tag(None, 'team')", lambda: s.count_by_tag(None, "team"), None),
        ]
        ok = True
        rows: list[tuple[str, ...]] = []
        for name, fn, target in checks:
            ms = median_ms(fn, runs)
            if target is None:
                rows.append((name, f"{ms:.2f} ms", "—", ""))
            else:
                good = ms < target
                ok &= good
                verdict = "✅" if good else f"❌ {ms / target:.1f}× over"
                rows.append((name, f"{ms:.2f} ms", f"< {target:g} ms", verdict))
        table(f"Queries on {HISTORY_ROWS:,} history rows and {ACTIVE_ROWS:,} active tasks (median of {runs})",
              ("query", "median", "target", ""), rows)

        # completed_keys: the ART index on key (one probe per key) against one hash join
        keys_all = [r[0] for r in con.execute(
            "SELECT key FROM task_history USING SAMPLE 10000 ROWS (reservoir, 2)").fetchall()]
        rows = []
        real = queries_module.COMPLETED_KEYS_INDEX_MAX
        try:
            for n in (10, 100, 1000, 2000, 10_000):
                keys = keys_all[:n]
                cells = [f"{n:,}"]
                for index_max in (10**9, 0):
                    queries_module.COMPLETED_KEYS_INDEX_MAX = index_max
                    cells.append(f"{median_ms(lambda: s.completed_keys(keys), max(3, runs // 4)):.1f} ms")
                queries_module.COMPLETED_KEYS_INDEX_MAX = real
                cells.append(f"{median_ms(lambda: s.completed_keys(keys), max(3, runs // 4)):.1f} ms")
                rows.append(tuple(cells))
        finally:
            queries_module.COMPLETED_KEYS_INDEX_MAX = real
        table(f"completed_keys over {HISTORY_ROWS:,} history rows", (
            "keys", "ART index (IN list)", "hash join", f"as built (index up to {real:,})"), rows)
        return ok
    finally:
        s.close()


def _finish_batch(s: Store, first: int, n: int) -> float:
    """Insert ``n`` tasks, then time the commit that moves them to history."""
    s.apply(WriteBatch(inserts=[_task(i) for i in range(first, first + n)], next_id=first + n))
    b = WriteBatch(finished=[FinishedRow(i, "completed", '{"ok": true}', None, 0, T0, T0 + 1, 5.0, 100, 10)
                             for i in range(first, first + n)])
    t = time.perf_counter()
    s.apply(b)
    return time.perf_counter() - t


def _task(i: int) -> tuple:
    return (i, "dom1::type1", "dom1", f"{i:064x}", "dom1::type1", 128, "pending", '{"n": 1}', None, None,
            utc(T0), None, None, 0, 3, None, None, None, 1.0, 0, 0, 0, 0, 0, False, None, None,
            None, "submission", None, "cancel", True, None, None, 0, None, False, None, None, "execute")


def insert_section(path: str, reps: int = 7) -> None:
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory() as d:
        big, bare = os.path.join(d, "big.duckdb"), os.path.join(d, "bare.duckdb")
        shutil.copy(path, big)
        shutil.copy(path, bare)
        s = Store(bare)
        s.con.execute("DROP INDEX task_history_key")
        s.con.execute("DROP INDEX task_history_id")
        s.close()
        for label, p in (("empty store", os.path.join(d, "empty.duckdb")), (f"{HISTORY_ROWS:,} history rows", big),
                         (f"{HISTORY_ROWS:,} history rows, indexes dropped", bare)):
            s = Store(p)
            try:
                nid = int(s.con.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchall()[0][0]) + 10
                for n in (2, 5000):
                    times = []
                    for _ in range(reps):
                        times.append(_finish_batch(s, nid, n))
                        nid += n
                    rows.append((label, f"{n:,}", f"{statistics.median(times) * 1000:.1f} ms"))
            finally:
                s.close()
    table("Writing history rows (one apply() of finished rows, commit included)",
          ("store", "rows per commit", "median"), rows)


def recover_section(rows: int) -> bool:
    path = build_tasks_store(rows)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "recover.duckdb")
        shutil.copy(path, p)
        s = Store(p)
        try:
            t = time.perf_counter()
            rec = s.recover()
            total = time.perf_counter() - t
            n = len(rec.tasks)
            del rec
            # The same statements as recover() once more, timed apart: DuckDB's part (the statements,
            # its result materialised) versus the conversion of the rows to Python tuples.
            con = s.con
            con.execute("UPDATE tasks SET status = 'running' WHERE id % 100 = 0")
            parts = {"duck": 0.0, "py": 0.0}
            t = time.perf_counter()
            con.execute("BEGIN TRANSACTION")
            con.execute("UPDATE tasks SET status = 'pending', started_at = NULL WHERE status = 'running'")
            cur = con.execute(f"SELECT {_RECOVER_SELECT} FROM tasks ORDER BY priority, id")
            parts["duck"] += time.perf_counter() - t
            t = time.perf_counter()
            gc.disable()
            try:
                got = cur.fetchall()
            finally:
                gc.enable()
            parts["py"] += time.perf_counter() - t
            t = time.perf_counter()
            con.execute("SELECT task_id, depends_on FROM task_deps ORDER BY task_id, depends_on").fetchall()
            con.execute("COMMIT")
            parts["duck"] += time.perf_counter() - t
            assert len(got) == n
            del got
        finally:
            s.close()
    duck = parts["duck"]
    good = duck < RECOVER_TARGET_S
    table(f"recover() with {n:,} active tasks (1 % running)", ("part", "seconds", "target", ""), [
        ("recover() in total", f"{total:.2f} s", "—", ""),
        ("DuckDB: reset running, select + sort, edges, commit", f"{duck:.2f} s", f"< {RECOVER_TARGET_S:g} s",
         "✅" if good else f"❌ {duck / RECOVER_TARGET_S:.1f}× over"),
        ("Python: the rows as tuples (fetchall, collector paused)", f"{parts['py']:.2f} s", "—", ""),
    ])
    return good


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="timed calls per query (median), after 2 warm-ups")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached stores")
    ap.add_argument("--skip-recover", action="store_true", help="leave out the 1M-task recover() section")
    args = ap.parse_args(argv)
    if args.rebuild:
        for kind, n in (("history", HISTORY_ROWS), ("tasks", RECOVER_ROWS)):
            for p in (_cache_path(kind, n), _cache_path(kind, n) + ".wal"):
                if os.path.exists(p):
                    os.remove(p)
    print("# taskmill store queries\n")
    for k, v in machine_info(REPO_ROOT).items():
        print(f"- **{k}**: {v}")
    path = build_history_store(HISTORY_ROWS)
    ok = query_section(path, args.runs)
    insert_section(path)
    if not args.skip_recover:
        ok &= recover_section(RECOVER_ROWS)
    print()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
