"""Store contract, schema 2: the lifecycle writes (edges, updates, scopes, retention in a
batch), the history order (``seq``), type_stats, recovery, the v1 → v2 migration and the
queries added for the whole lifecycle. Every test that takes ``store`` runs against a
``:memory:`` and a file store (see conftest.py).
"""

from __future__ import annotations

import json
import random
import time
from importlib import resources
from typing import Any

import duckdb
import pytest

from taskmill.batch import UPDATE_COLUMNS
from taskmill.errors import StoreError
from taskmill.records import HistoryStatus, IoBudget, RecurringScheduleInfo, TaskStatus, TypeStats
from taskmill.store import (
    LATEST_SCHEMA,
    RECOVER_COLUMNS,
    TASK_INSERT_COLUMNS,
    FinishedRow,
    Queries,
    Store,
    WriteBatch,
)
from taskmill.store import queries as queries_module
from taskmill.store.queries import HISTORY_INSERT_COLUMNS

from .test_store_contract import T0, TYPE_A, TYPE_B, add_history, at, finished, snapshot, task_row

DAY = 86400.0


def edges(s: Store) -> list[tuple[int, int]]:
    return s.con.execute("SELECT task_id, depends_on FROM task_deps ORDER BY ALL").fetchall()


def seqs(s: Store) -> list[tuple[int, int]]:
    """(seq, id) of every history row, oldest first."""
    return s.con.execute("SELECT seq, id FROM task_history ORDER BY seq").fetchall()


def type_stats(s: Store) -> dict[str, tuple]:
    return {r[0]: tuple(r[1:]) for r in s.con.execute("SELECT * FROM type_stats").fetchall()}


def recomputed_type_stats(s: Store) -> dict[str, tuple]:
    """type_stats as computed from scratch over task_history (what the kept table must equal)."""
    rows = s.con.execute(
        "SELECT task_type, count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'), "
        "count(*) FILTER (WHERE status = 'dead_letter'), count(*), "
        "coalesce(sum(duration_ms) FILTER (WHERE status = 'completed'), 0), "
        "coalesce(sum(read_bytes) FILTER (WHERE status = 'completed'), 0), "
        "coalesce(sum(write_bytes) FILTER (WHERE status = 'completed'), 0) FROM task_history GROUP BY task_type"
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def assert_type_stats_consistent(s: Store) -> None:
    kept, fresh = type_stats(s), recomputed_type_stats(s)
    assert kept.keys() == fresh.keys()
    for t in kept:
        assert kept[t][:4] == fresh[t][:4], t
        assert kept[t][4:] == pytest.approx(fresh[t][4:]), t


class Counting:
    """A connection proxy counting the statements that start with a prefix (to prove set-based SQL)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self.statements: list[str] = []

    def execute(self, sql: str, *args: Any) -> Any:
        self.statements.append(sql)
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


# --------------------------------------------------------------------------- schema 2


def test_the_column_constants_are_the_tables_column_order(store: Store) -> None:
    tasks = [r[0] for r in store.con.execute("DESCRIBE tasks").fetchall()]
    history = [r[0] for r in store.con.execute("DESCRIBE task_history").fetchall()]
    assert tuple(tasks) == TASK_INSERT_COLUMNS
    assert tuple(history) == HISTORY_INSERT_COLUMNS
    assert len(TASK_INSERT_COLUMNS) == 27 + 13
    assert TASK_INSERT_COLUMNS[27:] == (
        "ttl_seconds", "ttl_from", "expires_at", "on_dependency_failure", "fail_fast", "recurring_interval_secs",
        "recurring_max_executions", "recurring_execution_count", "recurring_initial_delay", "recurring_paused",
        "pause_reasons", "memo", "phase")
    assert LATEST_SCHEMA == 2


def test_history_is_indexed_by_key_and_id(store: Store) -> None:
    indexed = {r[0] for r in store.con.execute(
        "SELECT expressions FROM duckdb_indexes() WHERE table_name = 'task_history'").fetchall()}
    assert len(indexed) == 2
    assert any("key" in e for e in indexed) and any("id" in e for e in indexed)


def test_new_tables_exist_and_are_empty(store: Store) -> None:
    for table in ("task_deps", "paused_scopes", "type_stats"):
        assert store.con.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


# --------------------------------------------------------------------------- migration of a v1 store


V1_HISTORY = (
    "id, task_type, domain, key, label, priority, status, payload, result, error, tags, group_key, retry_count, "
    "created_at, started_at, completed_at, duration_ms, read_bytes, write_bytes, net_rx_bytes, net_tx_bytes, "
    "expected_read_bytes, expected_write_bytes, expected_net_rx_bytes, expected_net_tx_bytes, cpus, memory, parent_id")


def build_v1_store(path: str) -> None:
    """A store exactly as schema 1 wrote it: 001_initial.sql, its meta rows, 27-column task rows and
    history rows with an ``error`` column, inserted out of completion order."""
    sql = resources.files("taskmill.store").joinpath("migrations").joinpath("001_initial.sql").read_text()
    con = duckdb.connect(path)
    try:
        con.execute(sql)
        con.execute("INSERT INTO meta VALUES ('app', 'taskmill'), ('schema_version', '1'), ('next_id', '20')")
        app = con.appender("tasks")
        app.append_rows([task_row(10, priority=5)[:27], task_row(11, status="paused", tags={"t": "v"})[:27]])
        app.flush()
        hist = [  # (id, type, key, status, error, completed, duration, read, write)
            (4, TYPE_A, "k4", "completed", None, T0 + 4, 40.0, 400, 40),
            (1, TYPE_A, "k1", "completed", None, T0 + 1, 10.0, 100, 10),
            (3, TYPE_B, "k3", "failed", "boom", T0 + 2, 30.0, 0, 0),
            (2, TYPE_A, "k2", "dead_letter", "gave up", T0 + 2, 20.0, 0, 0),
            (5, TYPE_B, "k1", "cancelled", "cancelled", T0 + 5, None, 0, 0),
        ]
        for i, t, k, st, err, done, dur, rb, wb in hist:
            con.execute(
                f"INSERT INTO task_history ({V1_HISTORY}) VALUES (?, ?, 'media', ?, 'lbl', 128, ?, '{{}}', NULL, ?, "
                "NULL, NULL, 0, make_timestamp((? * 1e6)::BIGINT), NULL, make_timestamp((? * 1e6)::BIGINT), ?, ?, ?, "
                "0, 0, 0, 0, 0, 0, 1.0, 0, NULL)", [i, t, k, st, err, T0, done, dur, rb, wb])
    finally:
        con.close()


def test_a_v1_store_migrates_to_v2_keeping_its_data(store_path: str) -> None:
    build_v1_store(store_path)
    s = Store(store_path)
    try:
        meta = dict(s.con.execute("SELECT key, value FROM meta").fetchall())
        assert meta["schema_version"] == str(LATEST_SCHEMA) and meta["next_id"] == "20"
        # same columns, same order as a store created at v2
        fresh = Store(":memory:")
        try:
            for table in ("tasks", "task_history", "task_deps", "paused_scopes", "type_stats"):
                assert s.con.execute(f"DESCRIBE {table}").fetchall() == fresh.con.execute(f"DESCRIBE {table}").fetchall()
        finally:
            fresh.close()

        # active tasks keep every value and take the new columns' defaults
        t10, t11 = s.task_by_id(10), s.task_by_id(11)
        assert t10 is not None and t11 is not None
        assert (t10.priority, t10.status, t11.status, t11.tags) == (5, TaskStatus.PENDING, TaskStatus.PAUSED, {"t": "v"})
        assert (t10.ttl_seconds, t10.ttl_from, t10.expires_at, t10.on_dependency_failure, t10.fail_fast) == (
            None, "submission", None, "cancel", True)
        assert (t10.recurring_interval_secs, t10.recurring_execution_count, t10.recurring_paused) == (None, 0, False)
        assert (t10.pause_reasons, t10.memo, t10.dependencies) == ([], None, [])
        assert s.con.execute("SELECT DISTINCT phase FROM tasks").fetchall() == [("execute",)]

        # history: error -> last_error, seq backfilled in (completed_at, id) order
        assert seqs(s) == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
        assert [(h.id, h.last_error) for h in s.history(10)] == [
            (5, "cancelled"), (4, None), (3, "boom"), (2, "gave up"), (1, None)]
        assert s.history_by_key("k1")[0].id == 5
        # type_stats backfilled from the old rows
        assert s.history_stats(TYPE_A) == TypeStats(count=2, avg_duration_ms=25.0, avg_read_bytes=250.0,
                                                    avg_write_bytes=25.0, failure_rate=pytest.approx(1 / 3))
        assert s.history_stats(TYPE_B).failure_rate == 1.0
        assert_type_stats_consistent(s)

        # new history rows continue after the backfilled seq
        s.apply(WriteBatch(finished=[finished(10, completed=T0 + 1)]))  # completed_at older than the rest
        assert seqs(s)[-1] == (6, 10)
        assert s.history(1)[0].id == 10
        assert s.recover().next_id == 20
    finally:
        s.close()


# --------------------------------------------------------------------------- inserts and history columns


def test_schema_2_columns_round_trip_through_task_records(store: Store) -> None:
    store.apply(WriteBatch(inserts=[
        task_row(1, run_after=T0 + 60, ttl=300.0, ttl_from="first_attempt", expires_at=T0 + 300,
                 on_dependency_failure="ignore", fail_fast=False, recurring=(60.0, 10, 3, 5.0, True),
                 pause_reasons=["global", "group"], memo={"done": [1, 2]}, phase="finalize"),
        task_row(2),  # pause_reasons None: no reasons
    ]))
    t = store.task_by_id(1)
    assert t is not None
    assert (t.run_after, t.ttl_seconds, t.ttl_from, t.expires_at) == (at(T0 + 60), 300.0, "first_attempt", at(T0 + 300))
    assert (t.on_dependency_failure, t.fail_fast) == ("ignore", False)
    assert (t.recurring_interval_secs, t.recurring_max_executions, t.recurring_execution_count,
            t.recurring_paused) == (60.0, 10, 3, True)
    assert (t.pause_reasons, t.memo) == (["global", "group"], {"done": [1, 2]})
    assert t.effective_priority == t.priority == 128
    t2 = store.task_by_id(2)
    assert t2 is not None and t2.pause_reasons == [] and t2.memo is None and t2.fail_fast is True


def test_history_rows_copy_the_schema_2_columns_of_the_task(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, run_after=T0 + 1, ttl=30.0, ttl_from="first_attempt",
                                             expires_at=T0 + 31, fail_fast=False)]))
    store.apply(WriteBatch(finished=[finished(1, "expired", error="ttl", io=(5, 6, 7, 8))]))
    [h] = store.history(1)
    assert (h.status, h.last_error, h.run_after, h.ttl_seconds, h.ttl_from, h.expires_at, h.fail_fast) == (
        HistoryStatus.EXPIRED, "ttl", at(T0 + 1), 30.0, "first_attempt", at(T0 + 31), False)
    assert h.actual_io == IoBudget(disk_read=5, disk_write=6, net_rx=7, net_tx=8)


def test_a_finished_row_may_carry_its_own_priority(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, priority=100), task_row(2, priority=100)]))
    row = finished(1)
    row.priority = 7
    store.apply(WriteBatch(finished=[row, finished(2)]))
    assert {h.id: h.priority for h in store.history(5)} == {1: 7, 2: 100}


# --------------------------------------------------------------------------- dependency edges


def test_deps_are_inserted_once_and_answer_both_directions(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(i, status="blocked" if i > 2 else "pending") for i in range(1, 6)]))
    store.apply(WriteBatch(deps=[(3, 2), (3, 1), (4, 1), (3, 1)]))
    store.apply(WriteBatch(deps=[(4, 1), (5, 3)]))  # an existing edge is not an error
    assert edges(store) == [(3, 1), (3, 2), (4, 1), (5, 3)]
    assert store.task_dependencies(3) == [1, 2]
    assert store.task_dependents(1) == [3, 4]
    assert store.task_dependencies(1) == [] and store.task_dependents(5) == []
    # records carry their prerequisites, one query or many
    t3 = store.task_by_id(3)
    assert t3 is not None and t3.dependencies == [1, 2]
    assert {t.id: t.dependencies for t in store.blocked_tasks()} == {3: [1, 2], 4: [1], 5: [3]}
    assert store.blocked_count() == 3


def test_dep_moves_hand_the_dependents_to_the_replacement_in_order(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(i) for i in range(1, 8)]))
    store.apply(WriteBatch(deps=[(5, 1), (6, 1), (6, 2), (7, 3)]))
    # 1 -> 2 (6 already waits on 2: no duplicate edge), then 2 -> 4 (a chain), and 3 -> 4
    store.apply(WriteBatch(dep_moves=[(1, 2), (2, 4), (3, 4)]))
    assert edges(store) == [(5, 4), (6, 4), (7, 4)]


def test_deps_released_drop_the_outgoing_edges_of_a_task_that_stays(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(i) for i in range(1, 5)]))
    store.apply(WriteBatch(deps=[(2, 1), (3, 1), (1, 4)]))
    store.apply(WriteBatch(finished=[finished(1, keep_active=True)], deps_released={1}))
    assert store.task_by_id(1) is not None
    assert edges(store) == [(1, 4)]  # what 1 itself waits on stays


def test_a_task_that_leaves_takes_its_edges_in_both_directions(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(i) for i in range(1, 6)]))
    store.apply(WriteBatch(deps=[(2, 1), (1, 3), (4, 5)]))
    store.apply(WriteBatch(finished=[finished(1, "cancelled")]))
    assert edges(store) == [(4, 5)]
    store.apply(WriteBatch(finished=[finished(2, keep_active=True)]))  # a requeued run keeps its edges
    assert edges(store) == [(4, 5)]
    store.apply(WriteBatch(finished=[finished(4)]))
    assert edges(store) == []
    # once empty, a later edge is still seen (the store's "no edges" shortcut is reset)
    store.apply(WriteBatch(deps=[(5, 3)]))
    store.apply(WriteBatch(finished=[finished(3)]))
    assert edges(store) == []


# --------------------------------------------------------------------------- generic updates


def test_updates_set_every_allowed_column(store: Store) -> None:
    store.apply(WriteBatch(inserts=[
        task_row(1), task_row(2),
        task_row(3, run_after=T0 + 1, expires_at=T0 + 2, memo={"x": 1}, pause_reasons=["domain"]),
    ]))
    b = WriteBatch()
    b.update(1, status="paused", pause_reasons=["global", "group"], priority=5)
    b.update(1, priority=7)  # merged; the last value wins
    b.update(2, retry_count=2, run_after=T0 + 5.5, started_at=T0 + 1.25, last_error="e", requeue=True,
             requeue_priority=3, expires_at=T0 + 100, memo=json.dumps({"m": [1]}), phase="finalize",
             recurring_execution_count=4, recurring_paused=True, parent_id=9, status="waiting")
    b.update(3, run_after=None, expires_at=None, memo=None, pause_reasons=[])
    store.apply(b)

    t1, t2, t3 = (store.task_by_id(i) for i in (1, 2, 3))
    assert t1 is not None and t2 is not None and t3 is not None
    assert (t1.status, t1.pause_reasons, t1.priority) == (TaskStatus.PAUSED, ["global", "group"], 7)
    assert (t2.status, t2.retry_count, t2.run_after, t2.started_at, t2.last_error) == (
        TaskStatus.WAITING, 2, at(T0 + 5.5), at(T0 + 1.25), "e")
    assert (t2.requeue, t2.requeue_priority, t2.expires_at, t2.memo) == (True, 3, at(T0 + 100), {"m": [1]})
    assert (t2.recurring_execution_count, t2.recurring_paused, t2.parent_id) == (4, True, 9)
    assert store.con.execute("SELECT phase FROM tasks WHERE id = 2").fetchone() == ("finalize",)
    assert (t3.run_after, t3.expires_at, t3.memo, t3.pause_reasons) == (None, None, None, [])
    assert set(UPDATE_COLUMNS) == {
        "status", "pause_reasons", "priority", "retry_count", "run_after", "started_at", "last_error", "requeue",
        "requeue_priority", "expires_at", "memo", "phase", "recurring_execution_count", "recurring_paused",
        "parent_id"}


def test_update_rejects_an_unknown_column_at_once() -> None:
    b = WriteBatch()
    with pytest.raises(ValueError, match="payload"):
        b.update(1, status="paused", payload="{}")
    assert b.updates == {}


def test_updates_are_one_statement_per_set_of_columns(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(i) for i in range(1, 201)]))
    b = WriteBatch()
    for i in range(1, 201):
        if i % 2:
            b.update(i, status="paused", pause_reasons=["global"])
        else:
            b.update(i, priority=i % 250)
    counting = Counting(store.con)
    store.con = counting  # type: ignore[assignment]
    try:
        store.apply(b)
    finally:
        store.con = counting._con
    assert sum(sql.startswith("UPDATE tasks") for sql in counting.statements) == 2
    assert store.paused_count() == 100
    t = store.task_by_id(10)
    assert t is not None and t.priority == 10


# --------------------------------------------------------------------------- the order of apply()


def test_a_running_mark_is_applied_after_the_updates(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1)]))
    b = WriteBatch(running={1: T0 + 3})
    b.update(1, status="paused", started_at=None, pause_reasons=["preempted"])
    store.apply(b)
    t = store.task_by_id(1)
    assert t is not None and (t.status, t.started_at, t.pause_reasons) == (TaskStatus.RUNNING, at(T0 + 3), ["preempted"])


def test_updates_come_after_requeued_runs_and_to_pending(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1), task_row(2)], running={1: T0, 2: T0}))
    b = WriteBatch(finished=[finished(1, keep_active=True)], requeued_runs={1: 64}, to_pending={2})
    b.update(1, priority=10, run_after=T0 + 9)
    b.update(2, status="paused", pause_reasons=["global"])
    store.apply(b)
    t1, t2 = store.task_by_id(1), store.task_by_id(2)
    assert t1 is not None and (t1.status, t1.priority, t1.run_after) == (TaskStatus.PENDING, 10, at(T0 + 9))
    assert t2 is not None and (t2.status, t2.pause_reasons) == (TaskStatus.PAUSED, ["global"])


def test_inserts_deps_and_moves_of_one_batch_are_applied_in_order(store: Store) -> None:
    # the prerequisite 1 is inserted, depended on, superseded by 3 and leaves, all in one batch
    b = WriteBatch(inserts=[task_row(1), task_row(2, status="blocked"), task_row(3)], deps=[(2, 1)],
                   dep_moves=[(1, 3)], finished=[finished(1, "superseded")], next_id=4)
    store.apply(b)
    assert edges(store) == [(2, 3)]
    assert store.task_by_id(1) is None and store.recover().next_id == 4


def test_priorities_are_applied_before_the_history_row_is_written(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, priority=128)]))
    store.apply(WriteBatch(priorities={1: 3}, finished=[finished(1)]))
    assert store.history(1)[0].priority == 3


def test_retention_in_a_batch_runs_after_its_history_rows(store: Store) -> None:
    add_history(store, [(task_row(i), finished(i, completed=T0 + i)) for i in range(1, 4)])
    store.apply(WriteBatch(inserts=[task_row(4), task_row(5)]))
    store.apply(WriteBatch(finished=[finished(4, completed=T0 + 4), finished(5, completed=T0 + 5)],
                           prune=("count", 2)))
    assert [h.id for h in store.history(10)] == [5, 4]
    assert_type_stats_consistent(store)


def test_retention_by_age_in_a_batch(store: Store) -> None:
    now = time.time()
    add_history(store, [(task_row(1), finished(1, completed=now - 10 * DAY)),
                        (task_row(2), finished(2, completed=now - 60))])
    store.apply(WriteBatch(inserts=[task_row(3)]))
    store.apply(WriteBatch(finished=[finished(3, completed=now - 20 * DAY)], prune=("age_days", 7)))
    assert [h.id for h in store.history(10)] == [2]
    assert_type_stats_consistent(store)


def test_a_bad_retention_kind_rolls_the_batch_back(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1)]))
    before = snapshot(store)
    with pytest.raises(ValueError, match="prune"):
        store.apply(WriteBatch(finished=[finished(1)], prune=("rows", 3)))
    assert snapshot(store) == before


def test_write_batch_counts_every_kind_of_write() -> None:
    b = WriteBatch(deps=[(1, 2)], dep_moves=[(2, 3)], deps_released={4}, scopes={("global", ""): None},
                   prune=("count", 5))
    b.update(7, status="paused")
    b.update(7, priority=3)
    assert len(b) == 6
    assert len(WriteBatch()) == 0


# --------------------------------------------------------------------------- paused scopes


def test_scopes_are_upserted_and_deleted(store: Store) -> None:
    store.apply(WriteBatch(scopes={("global", ""): (T0, None), ("group", "s3"): (T0 + 1, T0 + 60),
                                   ("domain", "media"): (T0 + 2, None)}))
    store.apply(WriteBatch(scopes={("group", "s3"): (T0 + 5, None), ("domain", "media"): None}))
    assert store.recover().scopes == [("global", "", T0, None), ("group", "s3", T0 + 5, None)]
    store.apply(WriteBatch(scopes={("global", ""): None, ("group", "s3"): None, ("group", "never"): None}))
    assert store.recover().scopes == []


# --------------------------------------------------------------------------- seq: the history order


def test_seq_follows_the_order_of_finished_rows_not_completion_times(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(i) for i in range(1, 6)]))
    store.apply(WriteBatch(finished=[finished(3, completed=T0 + 30), finished(1, completed=T0 + 10)]))
    store.apply(WriteBatch(finished=[finished(2, completed=T0 + 5)]))  # a wall clock stepped back
    assert seqs(store) == [(1, 3), (2, 1), (3, 2)]
    assert [h.id for h in store.history(10)] == [2, 1, 3]
    assert [h.id for h in store.history(2, 1)] == [1, 3]


def test_a_rolled_back_batch_leaves_no_hole_in_seq(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(i) for i in range(1, 5)]))
    store.apply(WriteBatch(finished=[finished(1)]))
    with pytest.raises(StoreError):
        store.apply(WriteBatch(finished=[finished(2), FinishedRow(3, "completed", "{bad json", None, 0, T0, T0, 1.0)]))
    store.apply(WriteBatch(finished=[finished(4), finished(2)]))
    assert seqs(store) == [(1, 1), (2, 4), (3, 2)]


def test_a_finished_row_without_a_task_leaves_no_hole_in_seq(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1), task_row(2)]))
    store.apply(WriteBatch(finished=[finished(1), finished(99), finished(2)]))
    assert seqs(store) == [(1, 1), (2, 2)]
    store.apply(WriteBatch(inserts=[task_row(3)], finished=[finished(3)]))
    assert seqs(store)[-1] == (3, 3)


def test_seq_continues_after_reopening(store_path: str) -> None:
    s = Store(store_path)
    add_history(s, [(task_row(1), finished(1)), (task_row(2), finished(2))])
    s.prune_history_by_count(1)
    s.close()
    s = Store(store_path)
    try:
        add_history(s, [(task_row(3), finished(3))])
        assert seqs(s) == [(2, 2), (3, 3)]
    finally:
        s.close()


def test_history_pages_stay_exact_around_holes_in_seq(store: Store) -> None:
    add_history(store, [(task_row(i), finished(i, completed=T0 + i)) for i in range(1, 31)])
    # holes in the middle, as pruning by age after a wall-clock step could leave them
    store.con.execute("DELETE FROM task_history WHERE id IN (7, 8, 20)")
    expected = [r[0] for r in store.con.execute("SELECT id FROM task_history ORDER BY seq DESC").fetchall()]
    for limit in (1, 3, 5, 10, 40):
        for offset in range(0, 32):
            assert [h.id for h in store.history(limit, offset)] == expected[offset:offset + limit], (limit, offset)


def test_history_pages_cover_every_row_once(store: Store) -> None:
    add_history(store, [(task_row(i), finished(i, completed=T0 + i)) for i in range(1, 24)])
    pages = [[h.id for h in store.history(5, off)] for off in range(0, 25, 5)]
    assert [i for p in pages for i in p] == list(range(23, 0, -1))
    assert store.history(0, 3) == [] and store.history(5, 1000) == []


# --------------------------------------------------------------------------- type_stats


def test_type_stats_follow_every_history_insert_and_prune(store: Store) -> None:
    rng = random.Random(7)
    statuses = ["completed"] * 6 + ["failed", "dead_letter", "cancelled", "expired"]
    tid = 1
    for _ in range(8):
        rows = []
        for _ in range(rng.randint(1, 12)):
            rows.append((task_row(tid, task_type=rng.choice([TYPE_A, TYPE_B, "x::y", "x::z", "w::v"])),
                         finished(tid, rng.choice(statuses), completed=T0 + tid, duration_ms=rng.choice([None, 5.5, 100.0]),
                                  io=(rng.randint(0, 1000), rng.randint(0, 1000), 0, 0))))
            tid += 1
        add_history(store, rows)
        assert_type_stats_consistent(store)
    store.prune_history_by_count(20)
    assert_type_stats_consistent(store)
    store.prune_history_by_count(3)
    assert_type_stats_consistent(store)
    store.prune_history_by_count(0)
    assert type_stats(store) == {}


def test_history_stats_reads_the_kept_aggregates(store: Store) -> None:
    add_history(store, [(task_row(1), finished(1, duration_ms=100.0, io=(10, 1, 0, 0))),
                        (task_row(2), finished(2, "failed"))])
    store.con.execute("UPDATE type_stats SET completed = 10 WHERE task_type = ?", [TYPE_A])  # prove the source
    assert store.history_stats(TYPE_A).count == 10


def test_quarantine_moves_a_row_with_seq_type_stats_and_its_edges(store: Store) -> None:
    add_history(store, [(task_row(1), finished(1))])
    store.apply(WriteBatch(inserts=[task_row(2), task_row(3)], deps=[(3, 2)]))
    assert store.quarantine([(2, "quarantined at recovery: bad")], T0 + 100) == []
    assert store.task_by_id(2) is None and edges(store) == []
    h = store.history_row(2)
    assert h is not None and (h.status, h.last_error, h.completed_at) == (
        HistoryStatus.FAILED, "quarantined at recovery: bad", at(T0 + 100))
    assert seqs(store) == [(1, 1), (2, 2)]
    assert_type_stats_consistent(store)
    assert store.quarantine([(12345, "not there")], T0) == []  # nothing to move is not an error
    add_history(store, [(task_row(4), finished(4))])
    assert seqs(store)[-1] == (3, 4)


# --------------------------------------------------------------------------- recovery


def test_recover_loads_tasks_in_dispatch_order_with_every_column_edges_and_scopes(store: Store) -> None:
    store.apply(WriteBatch(inserts=[
        task_row(1, priority=200, run_after=T0 + 7, ttl=9.0, ttl_from="first_attempt", expires_at=T0 + 9,
                 tags={"a": "b"}, group="g", parent_id=4, recurring=(30.0, 5, 2, 1.0, True),
                 pause_reasons=["group"], status="paused", io=(1, 2, 3, 4), memo={"m": 1}, phase="finalize"),
        task_row(2, priority=10, status="blocked", on_dependency_failure="fail", fail_fast=False),
        task_row(3, priority=10),
    ], deps=[(2, 3)], scopes={("group", "g"): (T0, T0 + 60)}, next_id=4))
    store.apply(WriteBatch(running={3: T0 + 1}))
    rec = store.recover()
    assert rec.next_id == 4
    assert [r[0] for r in rec.tasks] == [2, 3, 1]
    rows = {r[0]: dict(zip(RECOVER_COLUMNS, r)) for r in rec.tasks}
    assert all(len(r) == len(RECOVER_COLUMNS) for r in rec.tasks)
    one = rows[1]
    assert (one["status"], one["priority"], one["created_at"], one["run_after"]) == ("paused", 200, T0, T0 + 7)
    assert (one["ttl_seconds"], one["ttl_from"], one["expires_at"]) == (9.0, "first_attempt", T0 + 9)
    assert (one["group_key"], one["parent_id"], json.loads(one["tags"])) == ("g", 4, {"a": "b"})
    assert (one["recurring_interval_secs"], one["recurring_max_executions"], one["recurring_execution_count"],
            one["recurring_initial_delay"], one["recurring_paused"]) == (30.0, 5, 2, 1.0, True)
    assert (one["pause_reasons"], json.loads(one["memo"]), one["phase"]) == (["group"], {"m": 1}, "finalize")
    assert (one["expected_read_bytes"], one["expected_write_bytes"], one["expected_net_rx_bytes"],
            one["expected_net_tx_bytes"]) == (1, 2, 3, 4)
    assert (rows[2]["on_dependency_failure"], rows[2]["fail_fast"], rows[2]["pause_reasons"]) == ("fail", False, [])
    assert (rows[3]["status"], rows[3]["started_at"]) == ("pending", None)  # the interrupted run
    assert rec.edges == [(2, 3)]
    assert rec.scopes == [("group", "g", T0, T0 + 60)]
    assert RECOVER_COLUMNS[:18] == (
        "id", "task_type", "domain", "key", "label", "priority", "status", "created_at", "run_after", "retry_count",
        "max_retries", "retry_policy", "timeout_s", "cpus", "memory", "group_key", "requeue", "requeue_priority")


def test_recover_keeps_the_started_at_of_a_waiting_parent(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1)], running={1: T0 + 2}))
    b = WriteBatch()
    b.update(1, status="waiting", memo=json.dumps([1, 2]))
    store.apply(b)
    [row] = store.recover().tasks
    r = dict(zip(RECOVER_COLUMNS, row))
    assert (r["status"], r["started_at"], r["memo"]) == ("waiting", T0 + 2, "[1, 2]")


# --------------------------------------------------------------------------- outcomes and keys


def _runs_fixture(s: Store) -> None:
    """Key ka: completed then failed (newest); kb: completed; kc: failed then completed; id 7 ran twice."""
    add_history(s, [
        (task_row(1, key="ka"), finished(1, "completed")),
        (task_row(2, key="kb"), finished(2, "completed")),
        (task_row(3, key="kc"), finished(3, "failed")),
        (task_row(4, key="ka"), finished(4, "failed")),
        (task_row(5, key="kc"), finished(5, "completed")),
    ])
    s.apply(WriteBatch(inserts=[task_row(7, key="kr")]))
    s.apply(WriteBatch(finished=[finished(7, "completed", result="first", keep_active=True)]))
    s.apply(WriteBatch(finished=[finished(7, "cancelled")]))


def test_history_outcomes_give_the_newest_status_per_id(store: Store) -> None:
    _runs_fixture(store)
    assert store.history_outcomes([1, 4, 7, 99]) == {1: "completed", 4: "failed", 7: "cancelled"}
    assert store.history_outcomes([]) == {}


@pytest.mark.parametrize("index_max", [1000, 0], ids=["index", "join"])
def test_completed_keys_are_keys_whose_newest_row_completed(store: Store, monkeypatch: pytest.MonkeyPatch,
                                                             index_max: int) -> None:
    _runs_fixture(store)
    monkeypatch.setattr(queries_module, "COMPLETED_KEYS_INDEX_MAX", index_max)
    assert store.completed_keys(["ka", "kb", "kc", "kr", "nope", "kb"]) == {"kb": 2, "kc": 5}
    assert store.completed_keys([]) == {}


def test_history_row_and_rows_give_the_newest_run(store: Store) -> None:
    _runs_fixture(store)
    h = store.history_row(7)
    assert h is not None and h.status == HistoryStatus.CANCELLED
    assert store.history_row(99) is None
    rows = store.history_rows([7, 1, 99])
    assert sorted(rows) == [1, 7] and rows[7].status == HistoryStatus.CANCELLED
    assert store.task_lookup_by_dedup_key("ka").history is not None
    assert store.task_lookup_by_dedup_key("ka").history.id == 4  # type: ignore[union-attr]


def test_dead_letter_row_is_the_newest_dead_letter_run(store: Store) -> None:
    store.apply(WriteBatch(inserts=[task_row(1, priority=9, tags={"t": "1"})]))
    store.apply(WriteBatch(finished=[finished(1, "dead_letter", keep_active=True)]))
    store.apply(WriteBatch(finished=[finished(1, "completed")]))
    row = store.dead_letter_row(1)
    assert row is not None and row[0] == TYPE_A and row[4] == 9 and json.loads(row[6]) == {"t": "1"}
    assert store.dead_letter_row(2) is None


# --------------------------------------------------------------------------- active-task queries of schema 2


def test_blocked_and_waiting_tasks_and_counts(store: Store) -> None:
    store.apply(WriteBatch(inserts=[
        task_row(1, status="blocked", priority=50), task_row(2, status="waiting", priority=9),
        task_row(3, status="blocked", priority=5), task_row(4, status="waiting", priority=9), task_row(5),
    ]))
    assert [t.id for t in store.blocked_tasks()] == [3, 1]
    assert [t.id for t in store.waiting_tasks()] == [2, 4]
    assert (store.blocked_count(), store.waiting_count(), store.pending_count()) == (2, 2, 1)


def test_next_run_after_is_the_earliest_pending_delay_even_if_past(store: Store) -> None:
    assert store.next_run_after() is None
    store.apply(WriteBatch(inserts=[task_row(1, run_after=T0 + 50), task_row(2, run_after=T0 - 1000),
                                    task_row(3, run_after=T0 - 5000, status="paused"), task_row(4)]))
    assert store.next_run_after() == at(T0 - 1000)


def test_recurring_schedules_list_every_task_with_an_interval(store: Store) -> None:
    store.apply(WriteBatch(inserts=[
        task_row(2, label="poll", recurring=(60.0, None, 3, None, False), run_after=T0 + 60),
        task_row(1, recurring=(5.5, 10, 0, 2.0, True)),
        task_row(3),
    ]))
    assert store.recurring_schedules() == [
        RecurringScheduleInfo(task_id=1, task_type=TYPE_A, label=TYPE_A, interval_secs=5.5, next_run=None,
                              execution_count=0, max_executions=10, paused=True),
        RecurringScheduleInfo(task_id=2, task_type=TYPE_A, label="poll", interval_secs=60.0, next_run=at(T0 + 60),
                              execution_count=3, max_executions=None, paused=False),
    ]


# --------------------------------------------------------------------------- tags


def _tags_fixture(s: Store) -> None:
    s.apply(WriteBatch(inserts=[
        task_row(1, tags={"team": "video", "billing.plan": "pro", "/odd": "x"}, priority=50),
        task_row(2, tags={"team": "video", "billing.region": "eu"}, priority=10),
        task_row(3, tags={"team": "audio", "$.path": "y"}, status="paused"),
        task_row(4, task_type="other::job", tags={"team": "video", "billing%": "z", "billingXplan": "w"}),
        task_row(5),  # no tags
    ]))
    s.apply(WriteBatch(running={1: T0}))
    s.apply(WriteBatch(inserts=[task_row(6, tags={"team": "gone"})], finished=[finished(6)]))  # history only


def test_task_ids_by_tags_match_every_pair(store: Store) -> None:
    _tags_fixture(store)
    assert store.task_ids_by_tags(None, {"team": "video"}) == [2, 1, 4]
    assert store.task_ids_by_tags("media", {"team": "video"}) == [2, 1]
    assert store.task_ids_by_tags(None, {"team": "video", "billing.plan": "pro"}) == [1]
    assert store.task_ids_by_tags(None, {"team": "video"}, status="running") == [1]
    assert store.task_ids_by_tags(None, {"team": "video"}, status=TaskStatus.PENDING) == [2, 4]
    assert store.task_ids_by_tags(None, {"/odd": "x"}) == [1]  # keys are literal, never JSON paths
    assert store.task_ids_by_tags(None, {"$.path": "y"}) == [3]
    assert store.task_ids_by_tags(None, {"team": "gone"}) == []  # finished tasks are not active
    assert store.task_ids_by_tags(None, {}) == []


def test_count_by_tag_and_tag_values(store: Store) -> None:
    _tags_fixture(store)
    assert store.count_by_tag(None, "team") == [("video", 3), ("audio", 1)]
    assert store.count_by_tag("media", "team") == [("video", 2), ("audio", 1)]
    assert store.count_by_tag(None, "team", status="paused") == [("audio", 1)]
    assert store.tag_values(None, "team") == [("video", 3), ("audio", 1)]
    assert store.tag_values("other", "team") == [("video", 1)]
    assert store.tag_values(None, "missing") == []


def test_tag_key_prefix_queries_take_the_prefix_literally(store: Store) -> None:
    _tags_fixture(store)
    assert store.tag_keys_by_prefix(None, "billing.") == ["billing.plan", "billing.region"]
    assert store.tag_keys_by_prefix(None, "billing%") == ["billing%"]
    assert store.tag_keys_by_prefix("media", "billing") == ["billing.plan", "billing.region"]
    assert store.tag_keys_by_prefix(None, "") == sorted(
        ["$.path", "/odd", "billing%", "billing.plan", "billing.region", "billingXplan", "team"])
    assert store.task_ids_by_tag_key_prefix(None, "billing.") == [2, 1]
    assert store.task_ids_by_tag_key_prefix(None, "billing_") == []  # `_` is not a wildcard
    assert store.task_ids_by_tag_key_prefix(None, "billing") == [2, 1, 4]
    assert store.task_ids_by_tag_key_prefix("other", "billing", status="pending") == [4]
    assert store.count_by_tag_key_prefix(None, "billing") == 3  # distinct tasks, not keys
    assert store.count_by_tag_key_prefix(None, "billing.", status="running") == 1
    assert store.count_by_tag_key_prefix("media", "zzz") == 0


@pytest.mark.parametrize("bad", ["done", "completed", "", 3])
def test_tag_queries_reject_a_status_that_is_not_active(store: Store, bad: Any) -> None:
    with pytest.raises(ValueError, match="status"):
        store.task_ids_by_tags(None, {"a": "b"}, status=bad)
    with pytest.raises(ValueError, match="status"):
        store.count_by_tag(None, "a", status=bad)
    with pytest.raises(ValueError, match="status"):
        store.count_by_tag_key_prefix(None, "a", status=bad)


def test_tag_queries_reject_non_text_keys(store: Store) -> None:
    with pytest.raises(TypeError):
        store.task_ids_by_tags(None, {"a": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        store.tag_values(None, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.task_ids_by_tags(None, [("a", "b")])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- queries on a reader cursor


def test_queries_run_on_a_separate_cursor(store: Store) -> None:
    _runs_fixture(store)
    cur = store.cursor()
    try:
        q = Queries(cur)
        assert [h.id for h in q.history(2)] == [7, 7]
        assert q.completed_keys(["kb"]) == {"kb": 2}
        assert q.history_stats(TYPE_A).count == 4
    finally:
        cur.close()
