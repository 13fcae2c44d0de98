"""Store contract: every test runs against a ``:memory:`` store and a file store.

Rows are built the way the coordinator builds them (the 40-column ``tasks`` tuple of
``TASK_INSERT_COLUMNS`` the appender takes; ``FinishedRow`` for history moves;
epoch-second floats in ``FinishedRow``, ``WriteBatch.running``, ``retries`` and ``updates``).
The tests that need a real file (reopening, bad files, locks) use ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import duckdb
import pytest

from taskmill.batch import utc
from taskmill.errors import NotATaskmillStore, QueryRefused, SchemaTooNew, StoreError, StoreLocked
from taskmill.payload import canonical_json, dedup_key
from taskmill.records import HistoryStatus, IoBudget, TaskStatus, TypeStats
from taskmill.store import LATEST_SCHEMA, TASK_INSERT_COLUMNS, FinishedRow, Recovered, Store, WriteBatch
from taskmill.store import store as store_module

#: A fixed epoch second (2023-11-14) with exact binary fractions, so timestamps round-trip exactly.
T0 = 1_700_000_000.0
TYPE_A = "media::thumbnail"
TYPE_B = "media::transcode"


# --------------------------------------------------------------------------- row builders


def task_row(
    tid: int,
    *,
    task_type: str = TYPE_A,
    domain: str | None = None,
    key: str | None = None,
    label: str | None = None,
    priority: int = 128,
    status: str = "pending",
    payload: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    group: str | None = None,
    created: float = T0,
    max_retries: int = 3,
    retry: str | None = None,
    timeout: float | None = None,
    cpus: float = 1.0,
    memory: int = 0,
    io: tuple[int, int, int, int] = (0, 0, 0, 0),
    parent_id: int | None = None,
    run_after: float | None = None,
    ttl: float | None = None,
    ttl_from: str = "submission",
    expires_at: float | None = None,
    on_dependency_failure: str = "cancel",
    fail_fast: bool = True,
    recurring: tuple[float, int | None, int, float | None, bool] | None = None,
    pause_reasons: list[str] | None = None,
    memo: Any = None,
    phase: str = "execute",
) -> tuple:
    """A full ``tasks`` row, column for column in ``TASK_INSERT_COLUMNS`` order.

    ``recurring`` is ``(interval, max_executions, execution_count, initial_delay, paused)``.
    """
    body = canonical_json(payload if payload is not None else {"n": tid})
    interval, max_exec, count, initial, rpaused = recurring if recurring is not None else (None, None, 0, None, False)
    row = (
        tid, task_type, domain or task_type.split("::")[0], key or dedup_key(task_type, body),
        label or task_type, priority, status, body, json.dumps(tags, sort_keys=True) if tags else None, group,
        utc(created), None if run_after is None else utc(run_after), None, 0, max_retries, retry, None, timeout, cpus,
        memory, io[0], io[1], io[2], io[3], False, None, parent_id,
        # schema 2
        ttl, ttl_from, None if expires_at is None else utc(expires_at), on_dependency_failure, fail_fast, interval,
        max_exec, count, initial, rpaused, pause_reasons, None if memo is None else json.dumps(memo), phase,
    )
    assert len(row) == len(TASK_INSERT_COLUMNS)
    return row


def finished(
    tid: int,
    status: str = "completed",
    *,
    result: Any = None,
    error: str | None = None,
    retry_count: int = 0,
    started: float | None = None,
    completed: float = T0 + 10,
    duration_ms: float | None = 500.0,
    io: tuple[int, int, int, int] = (0, 0, 0, 0),
    keep_active: bool = False,
) -> FinishedRow:
    return FinishedRow(
        tid, status, None if result is None else json.dumps(result), error, retry_count,
        completed - 1 if started is None else started, completed, duration_ms, *io, keep_active=keep_active)


def at(ts: float) -> datetime:
    """What the store returns for an epoch second: an aware UTC datetime."""
    return datetime.fromtimestamp(ts, timezone.utc)


def snapshot(s: Store) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order (to prove nothing was written)."""
    return {
        "tasks": s.con.execute("SELECT * FROM tasks ORDER BY id").fetchall(),
        "task_history": s.con.execute("SELECT * FROM task_history ORDER BY id, completed_at").fetchall(),
        "meta": s.con.execute("SELECT * FROM meta ORDER BY key").fetchall(),
        "tables": s.con.execute(
            "SELECT table_name FROM information_schema.tables ORDER BY table_name").fetchall(),
    }


def add_history(s: Store, rows: list[tuple[tuple, FinishedRow]]) -> None:
    """Insert tasks and finish them in one batch (a task that ended before its commit)."""
    s.apply(WriteBatch(inserts=[r for r, _ in rows], finished=[f for _, f in rows]))


# --------------------------------------------------------------------------- fixtures


# ``store`` (a ``:memory:`` and a file store) lives in conftest.py.


@pytest.fixture
def store_path(tmp_path: Any) -> str:
    return str(tmp_path / "tasks.duckdb")


# --------------------------------------------------------------------------- opening and migrations


def test_fresh_store_is_at_latest_schema_and_marked_as_taskmill(store: Store) -> None:
    meta = dict(store.con.execute("SELECT key, value FROM meta").fetchall())
    assert meta["app"] == "taskmill"
    assert int(meta["schema_version"]) == LATEST_SCHEMA
    assert store.schema_version == LATEST_SCHEMA
    tables = {r[0] for r in store.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"meta", "tasks", "task_history"} <= tables


def test_fresh_store_is_empty(store: Store) -> None:
    assert store.running_count() == 0
    assert store.pending_count() == 0
    assert store.paused_count() == 0
    assert store.history(10) == []
    assert store.running_io_totals() == (0, 0)
    assert store.recover() == Recovered(next_id=1, tasks=[], edges=[], scopes=[])


def test_reopening_a_file_store_keeps_its_tasks_history_and_next_id(store_path: str) -> None:
    s = Store(store_path)
    s.apply(WriteBatch(inserts=[task_row(1), task_row(2)], next_id=3))
    s.apply(WriteBatch(finished=[finished(1, result={"ok": True})]))
    s.close()

    s = Store(store_path)
    try:
        assert [t.id for t in s.pending_tasks(10)] == [2]
        assert [(h.id, h.result) for h in s.history(10)] == [(1, {"ok": True})]
        assert s.recover().next_id == 3
        assert dict(s.con.execute("SELECT key, value FROM meta").fetchall())["schema_version"] == str(LATEST_SCHEMA)
    finally:
        s.close()


def test_reopening_a_current_store_runs_no_migration(store_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(store_path).close()
    broken = [(v, "THIS IS NOT SQL") for v, _ in store_module._migrations()]
    monkeypatch.setattr(store_module, "_migrations", lambda: broken)

    # control: the patched migrations are the ones used — a fresh store cannot be built with them
    with pytest.raises(StoreError):
        Store(":memory:")
    # a store already at the latest version never executes them
    Store(store_path).close()


def test_reopening_an_older_store_applies_only_the_newer_migrations(
    store_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Store(store_path)
    s.apply(WriteBatch(inserts=[task_row(1)], next_id=2))
    s.close()
    newer = LATEST_SCHEMA + 1
    real = store_module._migrations()
    monkeypatch.setattr(store_module, "_migrations", lambda: real + [(newer, "CREATE TABLE extra_table (x INTEGER)")])

    s = Store(store_path)  # the real migrations would fail if re-run (CREATE TABLE meta exists)
    try:
        meta = dict(s.con.execute("SELECT key, value FROM meta").fetchall())
        assert meta["schema_version"] == str(newer)
        assert meta["app"] == "taskmill"
        assert s.con.execute("SELECT count(*) FROM extra_table").fetchone()[0] == 0
        assert [t.id for t in s.pending_tasks(10)] == [1]
    finally:
        s.close()


# --------------------------------------------------------------------------- bad stores


def test_a_file_of_random_bytes_is_not_a_taskmill_store(tmp_path: Any) -> None:
    path = tmp_path / "random.bin"
    path.write_bytes(os.urandom(16384))
    with pytest.raises(NotATaskmillStore):
        Store(str(path))


def test_a_duckdb_file_with_a_foreign_table_is_not_a_taskmill_store(store_path: str) -> None:
    con = duckdb.connect(store_path)
    con.execute("CREATE TABLE customers (id INTEGER, name VARCHAR)")
    con.execute("INSERT INTO customers VALUES (1, 'ada')")
    con.close()

    with pytest.raises(NotATaskmillStore, match="customers"):
        Store(store_path)

    # the refused file is untouched and released
    con = duckdb.connect(store_path)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert tables == {"customers"}
    finally:
        con.close()


def test_a_meta_table_not_written_by_taskmill_is_not_a_taskmill_store(store_path: str) -> None:
    con = duckdb.connect(store_path)
    con.execute("CREATE TABLE meta (key VARCHAR, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('app', 'someone-else'), ('schema_version', '1')")
    con.close()
    with pytest.raises(NotATaskmillStore):
        Store(store_path)


def test_a_store_written_by_a_newer_schema_is_refused(store_path: str) -> None:
    s = Store(store_path)
    s.con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(LATEST_SCHEMA + 1)])
    s.close()
    with pytest.raises(SchemaTooNew, match=str(LATEST_SCHEMA + 1)):
        Store(store_path)


def test_a_file_held_open_by_another_process_is_locked(store_path: str) -> None:
    Store(store_path).close()
    holder = "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); print('ok', flush=True); time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", holder, store_path], stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ok"
            with pytest.raises(StoreLocked):
                Store(store_path)
        finally:
            proc.kill()
            proc.wait(timeout=10)
    # once the other process is gone the store opens again
    Store(store_path).close()


def test_store_open_errors_are_store_errors() -> None:
    for exc in (NotATaskmillStore, SchemaTooNew, StoreLocked, QueryRefused):
        assert issubclass(exc, StoreError)
    assert issubclass(QueryRefused, ValueError)


# --------------------------------------------------------------------------- the group commit


def test_inserted_rows_come_back_as_task_records_with_every_column(store: Store) -> None:
    row = task_row(
        7, task_type=TYPE_B, key="k-7", label="clip.mp4", priority=64, payload={"path": "/a", "n": [1, 2]},
        tags={"team": "video"}, group="uploads", created=T0 + 0.5, max_retries=5, timeout=30.0, cpus=2.0,
        memory=1 << 20, io=(100, 200, 300, 400), parent_id=3)
    store.apply(WriteBatch(inserts=[row], next_id=8))

    t = store.task_by_id(7)
    assert t is not None
    assert (t.id, t.task_type, t.domain, t.key, t.label, t.priority, t.status) == (
        7, TYPE_B, "media", "k-7", "clip.mp4", 64, TaskStatus.PENDING)
    assert t.payload == {"path": "/a", "n": [1, 2]}
    assert t.tags == {"team": "video"}
    assert t.group == "uploads"
    assert t.created_at == at(T0 + 0.5)
    assert t.run_after is None and t.started_at is None
    assert (t.retry_count, t.max_retries, t.last_error, t.timeout) == (0, 5, None, 30.0)
    assert (t.cpus, t.memory) == (2.0, 1 << 20)
    assert t.expected_io == IoBudget(disk_read=100, disk_write=200, net_rx=300, net_tx=400)
    assert t.requeue is False
    assert t.parent_id == 3


def test_running_marks_set_status_and_started_at(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1), task_row(2)]))
    store.apply(WriteBatch(running={1: T0 + 5.25}))
    t1, t2 = store.task_by_id(1), store.task_by_id(2)
    assert t1 is not None and t2 is not None
    assert t1.status == TaskStatus.RUNNING and t1.started_at == at(T0 + 5.25)
    assert t2.status == TaskStatus.PENDING and t2.started_at is None


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "dead_letter", "superseded", "expired"])
def test_finished_rows_move_to_history_and_leave_tasks(store: Store, status: str) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, tags={"a": "b"}, io=(10, 20, 30, 40), parent_id=9), task_row(2)]))
    store.apply(WriteBatch(running={1: T0 + 1}))
    result = {"out": [1, 2]} if status == "completed" else None
    error = None if status == "completed" else f"{status}: boom"
    store.apply(WriteBatch(finished=[finished(
        1, status, result=result, error=error, retry_count=2, started=T0 + 1, completed=T0 + 3.5,
        duration_ms=2500.0, io=(1, 2, 3, 4))]))

    assert store.task_by_id(1) is None
    assert [t.id for t in store.pending_tasks(10)] == [2]
    [h] = store.history(10)
    assert (h.id, h.status, h.result, h.last_error, h.retry_count) == (1, HistoryStatus(status), result, error, 2)
    assert (h.started_at, h.completed_at, h.duration_ms) == (at(T0 + 1), at(T0 + 3.5), 2500.0)
    assert h.actual_io == IoBudget(disk_read=1, disk_write=2, net_rx=3, net_tx=4)
    # the task's own columns are carried over
    assert (h.task_type, h.domain, h.label, h.priority, h.payload, h.tags, h.parent_id) == (
        TYPE_A, "media", TYPE_A, 128, {"n": 1}, {"a": "b"}, 9)
    assert h.key == dedup_key(TYPE_A, canonical_json({"n": 1}))
    assert h.created_at == at(T0)
    assert h.expected_io == IoBudget(disk_read=10, disk_write=20, net_rx=30, net_tx=40)


def test_a_task_inserted_and_finished_in_one_batch_goes_straight_to_history(store: Store) -> None:
    batch = WriteBatch(inserts=[task_row(1)], running={1: T0}, next_id=2)
    batch.forget_running(1)
    batch.finished.append(finished(1, result=42))
    store.apply(batch)
    assert store.task_by_id(1) is None
    assert [(h.id, h.result) for h in store.history(5)] == [(1, 42)]


def test_finished_with_keep_active_writes_history_but_keeps_the_task(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1)]))
    store.apply(WriteBatch(running={1: T0}))
    store.apply(WriteBatch(finished=[finished(1, result="first", keep_active=True)]))
    t = store.task_by_id(1)
    assert t is not None and t.status == TaskStatus.RUNNING
    assert [(h.id, h.result) for h in store.history(5)] == [(1, "first")]


def test_requeued_runs_reset_the_kept_task_to_pending_at_the_requeue_priority(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, priority=128)]))
    store.apply(WriteBatch(running={1: T0}, requeue_marks={1: 64}))
    marked = store.task_by_id(1)
    assert marked is not None and marked.requeue is True

    store.apply(WriteBatch(
        retries={},
        finished=[finished(1, result="run-1", retry_count=1, keep_active=True)],
        requeued_runs={1: 64},
    ))
    t = store.task_by_id(1)
    assert t is not None
    assert (t.status, t.priority, t.retry_count, t.requeue, t.started_at) == (TaskStatus.PENDING, 64, 0, False, None)
    assert store.con.execute("SELECT requeue_priority FROM tasks WHERE id = 1").fetchone() == (None,)
    assert [(h.id, h.result, h.priority) for h in store.history(5)] == [(1, "run-1", 128)]


def test_priority_upgrades_change_the_stored_priority(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, priority=128), task_row(2, priority=128)]))
    store.apply(WriteBatch(priorities={2: 10}))
    assert [(t.id, t.priority) for t in store.pending_tasks(10)] == [(2, 10), (1, 128)]


def test_retries_update_count_run_after_and_last_error(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1), task_row(2)]))
    store.apply(WriteBatch(running={1: T0, 2: T0}))
    store.apply(WriteBatch(retries={1: (1, T0 + 30.5, "ValueError: boom"), 2: (2, None, "Retryable: later")}))

    t1, t2 = store.task_by_id(1), store.task_by_id(2)
    assert t1 is not None and t2 is not None
    assert (t1.status, t1.retry_count, t1.run_after, t1.last_error, t1.started_at) == (
        TaskStatus.PENDING, 1, at(T0 + 30.5), "ValueError: boom", None)
    assert (t2.status, t2.retry_count, t2.run_after, t2.last_error) == (TaskStatus.PENDING, 2, None, "Retryable: later")


def test_to_pending_resets_interrupted_runs_without_counting_a_retry(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1), task_row(2)]))
    store.apply(WriteBatch(running={1: T0, 2: T0}))
    store.apply(WriteBatch(retries={1: (2, None, "e")}))
    store.apply(WriteBatch(running={1: T0 + 1}))
    store.apply(WriteBatch(to_pending={1}))

    t1 = store.task_by_id(1)
    assert t1 is not None
    assert (t1.status, t1.started_at, t1.retry_count) == (TaskStatus.PENDING, None, 2)
    t2 = store.task_by_id(2)
    assert t2 is not None and t2.status == TaskStatus.RUNNING


def test_an_empty_batch_changes_nothing(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1)]))
    before = snapshot(store)
    store.apply(WriteBatch())
    assert snapshot(store) == before


def test_write_batch_counts_its_writes_and_forgets_running_marks() -> None:
    b = WriteBatch(inserts=[task_row(1)], running={1: T0, 2: T0}, finished=[finished(3)], to_pending={4})
    assert len(b) == 5
    b.forget_running(2)
    b.forget_running(99)  # unknown ids are ignored
    assert b.running == {1: T0}
    assert len(b) == 4


def test_a_batch_applied_on_another_thread_is_visible_after_joining_it(store: Store) -> None:
    # the coordinator's write-behind commits run on a writer thread; the loop joins it before reading
    errors: list[BaseException] = []

    def write() -> None:
        try:
            store.apply(WriteBatch(inserts=[task_row(1), task_row(2)], running={1: T0}, next_id=3))
        except BaseException as e:  # noqa: BLE001 - reported on the test thread
            errors.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(timeout=30)
    assert not writer.is_alive() and errors == []
    assert [t.id for t in store.running_tasks()] == [1]
    assert store.recover().next_id == 3


# --------------------------------------------------------------------------- failed commits


def _bad_result_batch() -> WriteBatch:
    # malformed JSON as a result: the history INSERT fails after the appender and the updates ran
    return WriteBatch(
        inserts=[task_row(10), task_row(11)], priorities={1: 5}, running={2: T0 + 9},
        retries={3: (1, T0 + 60, "err")}, finished=[FinishedRow(1, "completed", "{not json", None, 0, T0, T0 + 1, 1.0)],
        next_id=99)


def _null_column_batch() -> WriteBatch:
    bad = list(task_row(11))
    bad[1] = None  # task_type is NOT NULL
    return WriteBatch(inserts=[task_row(10), tuple(bad)], priorities={1: 5}, next_id=99)


def _out_of_range_priority_batch() -> WriteBatch:
    return WriteBatch(inserts=[task_row(10)], running={2: T0 + 9}, requeued_runs={3: 1 << 20}, next_id=99)


@pytest.mark.parametrize("make_batch", [_bad_result_batch, _null_column_batch, _out_of_range_priority_batch],
                         ids=["malformed-result-json", "null-in-not-null-column", "priority-overflow"])
def test_a_failing_apply_rolls_back_completely_and_raises_store_error(store: Store, make_batch: Any) -> None:
    store.apply(WriteBatch(inserts=[task_row(1), task_row(2), task_row(3)], next_id=4))
    store.apply(WriteBatch(running={3: T0}))
    before = snapshot(store)

    with pytest.raises(StoreError) as info:
        store.apply(make_batch())
    assert isinstance(info.value.__cause__, duckdb.Error)
    assert snapshot(store) == before

    # the store is still usable after the rollback
    store.apply(WriteBatch(inserts=[task_row(4)], next_id=5))
    assert store.pending_count() == 3
    assert store.recover().next_id == 5


# --------------------------------------------------------------------------- recovery


def test_recover_resets_running_to_pending_and_keeps_retry_counts(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, priority=3), task_row(2), task_row(3, status="paused")], next_id=4))
    store.apply(WriteBatch(running={1: T0, 2: T0}))
    store.apply(WriteBatch(retries={2: (2, None, "e")}))
    store.apply(WriteBatch(running={2: T0 + 5}))

    rec = store.recover()
    next_id, rows = rec.next_id, rec.tasks
    assert next_id == 4
    by_id = {r[0]: r for r in rows}
    assert sorted(by_id) == [1, 2, 3]
    assert [r[0] for r in rows] == [1, 2, 3]  # dispatch order: priority, then id
    assert by_id[1][6] == "pending" and by_id[1][5] == 3
    assert by_id[2][6] == "pending" and by_id[2][9] == 2  # retry_count untouched
    assert by_id[3][6] == "paused"
    assert by_id[1][7] == pytest.approx(T0)  # created_at as epoch seconds
    assert by_id[1][8] is None  # run_after
    assert store.running_count() == 0
    t2 = store.task_by_id(2)
    assert t2 is not None and t2.started_at is None and t2.retry_count == 2


def test_recover_returns_the_persisted_next_id(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1)], next_id=50))
    assert store.recover().next_id == 50


def test_recover_returns_a_next_id_above_every_id_seen_even_if_next_id_lags(store: Store) -> None:
    # next_id in meta was never advanced: the ids in tasks and task_history still win
    store.apply(WriteBatch(inserts=[task_row(5), task_row(12)]))
    store.apply(WriteBatch(finished=[finished(12)]))
    rec = store.recover()
    next_id, rows = rec.next_id, rec.tasks
    assert next_id == 13
    assert [r[0] for r in rows] == [5]


def test_recover_after_reopen_uses_the_persisted_next_id(store_path: str) -> None:
    s = Store(store_path)
    s.apply(WriteBatch(inserts=[task_row(1), task_row(2)], next_id=3))
    s.apply(WriteBatch(running={1: T0}))
    s.apply(WriteBatch(inserts=[task_row(3)], next_id=4))
    s.apply(WriteBatch(finished=[finished(3)]))
    s.close()

    s = Store(store_path)
    try:
        rec = s.recover()
        next_id, rows = rec.next_id, rec.tasks
        assert next_id == 4
        assert [(r[0], r[6]) for r in rows] == [(1, "pending"), (2, "pending")]
    finally:
        s.close()


# --------------------------------------------------------------------------- seed: active task queries


def _active_fixture(s: Store) -> None:
    """ids 1..8 across two types and every active status."""
    s.apply(WriteBatch(inserts=[
        task_row(1, priority=128, io=(100, 10, 0, 0)),
        task_row(2, priority=64, io=(200, 20, 0, 0)),
        task_row(3, priority=128, io=(400, 40, 0, 0)),
        task_row(4, priority=200, task_type=TYPE_B),
        task_row(5, priority=64, task_type=TYPE_B),
        task_row(6, priority=128),
        task_row(7, priority=10, status="paused", io=(1000, 1000, 0, 0)),
        task_row(8, priority=5, status="paused"),
    ], next_id=9))
    s.apply(WriteBatch(running={1: T0, 2: T0, 3: T0}))


def test_running_tasks_are_ordered_by_priority_then_id(store: Store) -> None:
    _active_fixture(store)
    assert [(t.id, t.priority) for t in store.running_tasks()] == [(2, 64), (1, 128), (3, 128)]
    assert all(t.status == TaskStatus.RUNNING for t in store.running_tasks())
    assert store.running_count() == 3


def test_pending_tasks_are_ordered_by_priority_then_id_and_limited(store: Store) -> None:
    _active_fixture(store)
    assert [t.id for t in store.pending_tasks(10)] == [5, 6, 4]
    assert [t.id for t in store.pending_tasks(2)] == [5, 6]
    assert store.pending_tasks(0) == []
    assert store.pending_count() == 3


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3", None])
def test_pending_tasks_rejects_a_bad_limit(store: Store, bad: Any) -> None:
    with pytest.raises(ValueError):
        store.pending_tasks(bad)


def test_pending_by_type_filters_on_the_qualified_type(store: Store) -> None:
    _active_fixture(store)
    assert [t.id for t in store.pending_by_type(TYPE_B)] == [5, 4]
    assert [t.id for t in store.pending_by_type(TYPE_A)] == [6]
    assert store.pending_by_type("transcode") == []  # unqualified names match nothing


def test_paused_tasks_and_paused_count(store: Store) -> None:
    _active_fixture(store)
    paused = store.paused_tasks()
    assert [t.id for t in paused] == [8, 7]
    assert all(t.status == TaskStatus.PAUSED for t in paused)
    assert store.paused_count() == 2


def test_task_by_id_finds_active_tasks_only(store: Store) -> None:
    _active_fixture(store)
    t = store.task_by_id(7)
    assert t is not None and t.status == TaskStatus.PAUSED
    store.apply(WriteBatch(finished=[finished(6)]))
    assert store.task_by_id(6) is None
    assert store.task_by_id(12345) is None


def test_task_by_key_finds_the_active_task_of_a_dedup_key(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, key="k1"), task_row(2, key="k2")]))
    t = store.task_by_key("k2")
    assert t is not None and t.id == 2
    assert store.task_by_key("missing") is None
    store.apply(WriteBatch(finished=[finished(2)]))
    assert store.task_by_key("k2") is None


def test_running_io_totals_sum_expected_io_of_running_tasks_only(store: Store) -> None:
    _active_fixture(store)
    assert store.running_io_totals() == (700, 70)
    store.apply(WriteBatch(finished=[finished(3)]))
    assert store.running_io_totals() == (300, 30)


# --------------------------------------------------------------------------- seed: history queries


def _history_fixture(s: Store) -> None:
    """Five finished runs, completed one second apart (id 5 newest); ids 6 and 7 finish at the same instant."""
    add_history(s, [
        (task_row(1, key="ka"), finished(1, "completed", completed=T0 + 1, result=1)),
        (task_row(2, key="kb", task_type=TYPE_B), finished(2, "failed", completed=T0 + 2, error="e2")),
        (task_row(3, key="ka"), finished(3, "completed", completed=T0 + 3, result=3)),
        (task_row(4, key="kc", domain="other", task_type="other::job"),
         finished(4, "dead_letter", completed=T0 + 4, error="e4")),
        (task_row(5, key="kd", task_type=TYPE_B), finished(5, "cancelled", completed=T0 + 5)),
        (task_row(6, key="ke"), finished(6, "dead_letter", completed=T0 + 6, error="e6")),
        (task_row(7, key="kf"), finished(7, "completed", completed=T0 + 6)),
    ])


def test_history_is_newest_first_with_paging(store: Store) -> None:
    _history_fixture(store)
    assert [h.id for h in store.history(100)] == [7, 6, 5, 4, 3, 2, 1]
    pages = [[h.id for h in store.history(3, off)] for off in (0, 3, 6, 9)]
    assert pages == [[7, 6, 5], [4, 3, 2], [1], []]
    assert [h.id for h in store.history(2)] == [7, 6]


def test_history_rejects_a_bad_offset(store: Store) -> None:
    with pytest.raises(ValueError):
        store.history(10, -1)


def test_history_by_type_is_filtered_newest_first_and_limited(store: Store) -> None:
    _history_fixture(store)
    assert [h.id for h in store.history_by_type(TYPE_B, 10)] == [5, 2]
    assert [h.id for h in store.history_by_type(TYPE_A, 2)] == [7, 6]
    assert store.history_by_type("thumbnail", 10) == []


def test_history_by_key_returns_every_run_of_a_dedup_key(store: Store) -> None:
    _history_fixture(store)
    assert [h.id for h in store.history_by_key("ka")] == [3, 1]
    assert store.history_by_key("nope") == []


def test_history_by_key_includes_every_execution_of_a_requeued_task(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, key="rq")]))
    first = finished(1, result="a", completed=T0 + 1, keep_active=True)
    store.apply(WriteBatch(finished=[first], requeued_runs={1: 128}))
    store.apply(WriteBatch(finished=[finished(1, result="b", completed=T0 + 2)]))
    assert [(h.id, h.result) for h in store.history_by_key("rq")] == [(1, "b"), (1, "a")]


def test_failed_tasks_are_failed_and_dead_letter_newest_first(store: Store) -> None:
    _history_fixture(store)
    failed = store.failed_tasks(10)
    assert [(h.id, h.status, h.last_error) for h in failed] == [
        (6, HistoryStatus.DEAD_LETTER, "e6"), (4, HistoryStatus.DEAD_LETTER, "e4"), (2, HistoryStatus.FAILED, "e2")]
    assert [h.id for h in store.failed_tasks(1)] == [6]


def test_dead_letter_tasks_filter_by_domain_with_paging(store: Store) -> None:
    _history_fixture(store)
    assert [h.id for h in store.dead_letter_tasks(None, 10)] == [6, 4]
    assert [h.id for h in store.dead_letter_tasks("media", 10)] == [6]
    assert [h.id for h in store.dead_letter_tasks("other", 10)] == [4]
    assert [h.id for h in store.dead_letter_tasks(None, 1, 1)] == [4]
    assert store.dead_letter_tasks("nobody", 10) == []


def test_history_stats_averages_completed_runs_and_computes_the_failure_rate(store: Store) -> None:
    add_history(store, [
        (task_row(1), finished(1, "completed", duration_ms=100.0, io=(10, 1, 0, 0))),
        (task_row(2), finished(2, "completed", duration_ms=300.0, io=(30, 3, 0, 0))),
        (task_row(3), finished(3, "completed", duration_ms=200.0, io=(20, 2, 0, 0))),
        (task_row(4), finished(4, "failed", duration_ms=9999.0, io=(9999, 9999, 0, 0))),
        (task_row(5), finished(5, "dead_letter", duration_ms=9999.0)),
        (task_row(6), finished(6, "cancelled", duration_ms=9999.0)),
        (task_row(7), finished(7, "superseded")),
        (task_row(8, task_type=TYPE_B), finished(8, "failed")),
    ])
    stats = store.history_stats(TYPE_A)
    assert stats == TypeStats(count=3, avg_duration_ms=200.0, avg_read_bytes=20.0, avg_write_bytes=2.0,
                              failure_rate=pytest.approx(2 / 5))
    assert store.history_stats(TYPE_B).failure_rate == 1.0
    assert store.history_stats(TYPE_B).count == 0


def test_history_stats_of_an_unknown_type_are_zero(store: Store) -> None:
    assert store.history_stats("nobody::nothing") == TypeStats(
        count=0, avg_duration_ms=0.0, avg_read_bytes=0.0, avg_write_bytes=0.0, failure_rate=0.0)


def test_avg_throughput_averages_bytes_per_second_of_recent_completions(store: Store) -> None:
    add_history(store, [
        (task_row(1), finished(1, "completed", completed=T0 + 1, duration_ms=1000.0, io=(1000, 2000, 0, 0))),
        (task_row(2), finished(2, "completed", completed=T0 + 2, duration_ms=2000.0, io=(4000, 0, 0, 0))),
        (task_row(3), finished(3, "failed", completed=T0 + 3, duration_ms=1.0, io=(10**9, 10**9, 0, 0))),
        (task_row(4), finished(4, "completed", completed=T0 + 4, duration_ms=0.0, io=(10**9, 10**9, 0, 0))),
        (task_row(5), finished(5, "completed", completed=T0 + 5, duration_ms=None, io=(10**9, 10**9, 0, 0))),
    ])
    assert store.avg_throughput(TYPE_A, 10) == (pytest.approx(1500.0), pytest.approx(1000.0))
    assert store.avg_throughput(TYPE_A, 1) == (pytest.approx(2000.0), pytest.approx(0.0))
    assert store.avg_throughput(TYPE_B, 10) == (0.0, 0.0)


def test_task_lookup_by_dedup_key_prefers_active_then_newest_history(store: Store) -> None:
    add_history(store, [
        (task_row(1, key="both"), finished(1, completed=T0 + 1, result="old")),
        (task_row(2, key="done"), finished(2, completed=T0 + 1, result="first")),
        (task_row(3, key="done"), finished(3, completed=T0 + 2, result="second")),
    ])
    store.apply(WriteBatch(inserts=[task_row(4, key="both"), task_row(5, key="live")]))

    both = store.task_lookup_by_dedup_key("both")
    assert both.active is not None and both.active.id == 4 and both.history is None
    live = store.task_lookup_by_dedup_key("live")
    assert live.active is not None and live.active.id == 5
    done = store.task_lookup_by_dedup_key("done")
    assert done.active is None and done.history is not None
    assert (done.history.id, done.history.result) == (3, "second")
    missing = store.task_lookup_by_dedup_key("missing")
    assert missing.not_found
    assert not both.not_found and not done.not_found


# --------------------------------------------------------------------------- pruning


def test_prune_history_by_count_keeps_the_newest_rows(store: Store) -> None:
    _history_fixture(store)
    assert store.prune_history_by_count(3) == 4
    assert [h.id for h in store.history(10)] == [7, 6, 5]
    assert store.prune_history_by_count(10) == 0
    assert store.prune_history_by_count(0) == 3
    assert store.history(10) == []


def test_prune_history_by_count_keeps_the_newest_run_of_a_requeued_task(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1)]))
    first = finished(1, result="a", completed=T0 + 1, keep_active=True)
    store.apply(WriteBatch(finished=[first], requeued_runs={1: 128}))
    store.apply(WriteBatch(finished=[finished(1, result="b", completed=T0 + 2)]))
    assert store.prune_history_by_count(1) == 1
    assert [(h.id, h.result) for h in store.history(10)] == [(1, "b")]


def test_prune_history_by_age_deletes_rows_older_than_the_cutoff(store: Store) -> None:
    now = time.time()
    day = 86400.0
    add_history(store, [
        (task_row(1), finished(1, completed=now - 30 * day)),
        (task_row(2), finished(2, completed=now - 8 * day)),
        (task_row(3), finished(3, completed=now - 2 * day)),
        (task_row(4), finished(4, completed=now - 60)),
    ])
    assert store.prune_history_by_age(7) == 2
    assert sorted(h.id for h in store.history(10)) == [3, 4]
    assert store.prune_history_by_age(7) == 0
    assert store.prune_history_by_age(0.5) == 1
    assert [h.id for h in store.history(10)] == [4]


@pytest.mark.parametrize("bad", [-1, True, "3", None, 1.5])
def test_prune_history_by_count_rejects_a_bad_keep(store: Store, bad: Any) -> None:
    with pytest.raises(ValueError):
        store.prune_history_by_count(bad)


@pytest.mark.parametrize("bad", [-1, True, "3", None])
def test_prune_history_by_age_rejects_bad_days(store: Store, bad: Any) -> None:
    with pytest.raises(ValueError):
        store.prune_history_by_age(bad)


def test_pruning_leaves_active_tasks_alone(store: Store) -> None:
    _active_fixture(store)
    done = [(task_row(100 + i), finished(100 + i, completed=T0 + i)) for i in range(3)]
    add_history(store, done)
    before = store.con.execute("SELECT * FROM tasks ORDER BY id").fetchall()
    store.prune_history_by_count(0)
    store.prune_history_by_age(0)
    assert store.con.execute("SELECT * FROM tasks ORDER BY id").fetchall() == before


# --------------------------------------------------------------------------- sql()


def test_sql_returns_column_names_and_rows(store: Store) -> None:
    _history_fixture(store)
    names, rows, _json = store.sql(
        "SELECT status, count(*) AS n FROM task_history GROUP BY status ORDER BY status")
    assert names == ["status", "n"]
    assert rows == [("cancelled", 1), ("completed", 3), ("dead_letter", 2), ("failed", 1)]


def test_sql_takes_parameters_and_reaches_inside_json(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, payload={"path": "/x.jpg"}), task_row(2, payload={"path": "/y"})]))
    names, rows, _json = store.sql("SELECT id, payload->>'path' AS path FROM tasks WHERE id = ?", [2])
    assert names == ["id", "path"]
    assert rows == [(2, "/y")]


def test_sql_accepts_with_queries_and_a_trailing_semicolon(store: Store) -> None:
    assert store.sql("WITH x AS (SELECT 41 AS v) SELECT v + 1 AS answer FROM x;") == (["answer"], [(42,)], [])


def test_sql_refuses_explain_because_explain_analyze_executes_its_statement(store: Store) -> None:
    with pytest.raises(QueryRefused):
        store.sql("EXPLAIN SELECT * FROM tasks")


@pytest.mark.parametrize("query", [
    "INSERT INTO meta VALUES ('x', 'y')",
    "DELETE FROM task_history",
    "UPDATE meta SET value = '0' WHERE key = 'next_id'",
    "CREATE TABLE evil (x INTEGER)",
    "DROP TABLE tasks",
    "COPY task_history TO 'out.csv'",
    "ATTACH ':memory:' AS other",
    "SET threads = 1",
    "PRAGMA threads = 1",
    "CHECKPOINT",
    "SELECT 1; DELETE FROM meta",
    "SELECT 1; SELECT 2",
    "",
    "   ;  ",
])
def test_sql_refuses_anything_but_one_read_only_statement(store: Store, query: str) -> None:
    _history_fixture(store)
    before = snapshot(store)
    with pytest.raises(QueryRefused):
        store.sql(query)
    assert snapshot(store) == before


@pytest.mark.parametrize("query", [
    "SELEC * FROM tasks",
    "SELECT * FROM no_such_table",
    "SELECT no_such_column FROM tasks",
    "SELECT 1 / 'x'::INTEGER",
    "SELECT error('raised on purpose')",
])
def test_sql_raises_store_error_for_a_failing_query(store: Store, query: str) -> None:
    _history_fixture(store)
    before = snapshot(store)
    with pytest.raises(StoreError) as info:
        store.sql(query)
    assert not isinstance(info.value, QueryRefused)
    assert isinstance(info.value.__cause__, duckdb.Error)
    assert snapshot(store) == before
    # the store keeps working afterwards
    assert store.sql("SELECT count(*) FROM task_history") == (["count_star()"], [(7,)], [])
    store.apply(WriteBatch(inserts=[task_row(50)]))
    assert store.task_by_id(50) is not None


def test_sql_rejects_a_non_string_query(store: Store) -> None:
    with pytest.raises(TypeError):
        store.sql(b"SELECT 1")  # type: ignore[arg-type]


@pytest.mark.parametrize("query", [
    "EXPLAIN ANALYZE DELETE FROM task_history",
    "EXPLAIN ANALYZE UPDATE meta SET value = '0'",
    "EXPLAIN ANALYZE CREATE TABLE evil AS SELECT 1 AS x",
])
def test_sql_explain_analyze_of_a_write_leaves_the_store_unchanged(store: Store, query: str) -> None:
    _history_fixture(store)
    before = snapshot(store)
    try:
        store.sql(query)
    except QueryRefused:
        pass
    assert snapshot(store) == before


def test_sql_explain_analyze_copy_cannot_write_a_file(store: Store, tmp_path: Any) -> None:
    target = tmp_path / "leak.csv"
    try:
        store.sql(f"EXPLAIN ANALYZE COPY (SELECT * FROM meta) TO '{target}'")
    except QueryRefused:
        pass
    assert not target.exists()


def test_sql_explain_analyze_cannot_change_the_store_settings(store: Store) -> None:
    def settings() -> list[tuple]:
        return store.con.execute("SELECT current_setting('threads'), current_setting('memory_limit')").fetchall()

    before = settings()
    for query in ("EXPLAIN ANALYZE SET threads = 1", "EXPLAIN ANALYZE RESET memory_limit"):
        try:
            store.sql(query)
        except QueryRefused:
            pass
    assert settings() == before
