"""Seed tables "History queries", "Aggregate queries", "TypeStats fields", the
qualified-type-name rule, and the seed's usage example.

One scheduler for the module (``max_concurrency=1``, so tasks finish in the
order they were queued; TTL sweep every 0.2 s). The world, in history order:

1. 60 ``media::tick`` completions (ids ascending);
2. ``media::thumbnail`` n=1..3 complete (read 1000·n, write 100·n bytes, >= 50 ms
   each), n=4 fails permanently -> 3 completed + 1 failed;
3. ``misc::doomed`` ends as ``dead_letter``;
4. while ``misc::hold`` runs: ``misc::work`` x=1 is cancelled, x=2 superseded by
   a new x=2, x=3 (ttl 0.3 s) expires; then the holder and the new x=2 complete;
5. ``misc::work`` x=7 runs twice (same dedup key);
6. left active: ``media::thumbnail`` n=99 delayed by an hour (pending) and a
   running ``media::hold`` with an expected disk budget of (5000, 700).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import poll_until

import taskmill as tm

from .helpers import DEADLINE, NO_RETRY, module_world, wait_flag, wait_running

media = tm.Domain("media")
misc = tm.Domain("misc")

N_TICKS = 60


@media.task
def tick(ctx: tm.TaskContext, n: int) -> int:
    return n


@media.task(retry=NO_RETRY)
def thumbnail(ctx: tm.TaskContext, n: int, read: int, write: int, fail: bool = False) -> int:
    ctx.record_read_bytes(read)
    ctx.record_write_bytes(write)
    time.sleep(0.05)
    if fail:
        raise tm.Permanent(f"thumbnail {n} failed")
    return n


@media.task
def hold(ctx: tm.TaskContext, flag: str) -> str:
    return wait_flag(ctx, flag)


@misc.task(retry=NO_RETRY)
def doomed(ctx: tm.TaskContext) -> None:
    raise tm.Retryable("doomed to the dead letter queue")


@misc.task
def m_hold(ctx: tm.TaskContext, flag: str) -> str:
    return wait_flag(ctx, flag)


@misc.task
def work(ctx: tm.TaskContext, x: int) -> int:
    return x


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("history")
    flag, end_flag = str(tmp / "flag"), str(tmp / "end-flag")
    with module_world(str(tmp / "store.duckdb"), [media, misc], flags=[flag, end_flag], max_concurrency=1,
                      expiry_sweep_interval=0.2) as s:
        h, m = s.domain(media), s.domain(misc)
        w: dict[str, Any] = {"s": s}
        w["ticks"] = h.submit_batch([tick.call(n=n) for n in range(N_TICKS)]).inserted
        assert len(w["ticks"]) == N_TICKS
        thumbs = [h.submit(thumbnail, n=n, read=1000 * n, write=100 * n).id for n in (1, 2, 3)]
        w["thumbs"] = thumbs
        w["thumb_failed"] = h.submit(thumbnail, n=4, read=4000, write=400, fail=True).id
        w["dead"] = m.submit(doomed).id
        s.wait_idle(timeout=DEADLINE)
        holder = m.submit(m_hold, flag=flag).id
        wait_running(s, holder)
        w["cancelled"] = m.submit(work, x=1).id
        assert m.cancel(w["cancelled"])
        w["superseded"] = m.submit(work, x=2).id
        w["superseder"] = m.submit(work.options(duplicate="supersede"), x=2).id
        w["expired"] = m.submit(work.options(ttl=0.3), x=3).id
        poll_until(lambda: s.store.task_by_id(w["expired"]) is None, DEADLINE, what="x=3 expired by the sweep")
        Path(flag).touch()
        s.wait_idle(timeout=DEADLINE)
        w["again"] = [m.submit(work, x=7).id]
        s.wait(w["again"][0], timeout=DEADLINE)
        w["again"].append(m.submit(work, x=7).id)
        s.wait(w["again"][1], timeout=DEADLINE)
        w["holder"] = holder
        # left active for the usage example and the qualified-name rule
        w["delayed"] = h.submit(thumbnail.options(run_after=3600), n=99, read=1, write=1).id
        w["running"] = h.submit(hold.options(expected_io=tm.IoBudget.disk(5000, 700)), flag=end_flag).id
        wait_running(s, w["running"])
        w["total"] = s.sql("SELECT count(*) AS n FROM task_history")[0]["n"]
        yield w


# --------------------------------------------------------------------------- history queries


def test_history_paginated_newest_first(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    rows = s.store.history(1000)
    assert all(isinstance(r, tm.TaskHistoryRecord) for r in rows)
    assert len(rows) == w["total"] == N_TICKS + 4 + 1 + 3 + 2 + 2  # ticks, thumbs, dead, x1..x3, holder+x2, x7 twice
    assert [r.completed_at for r in rows] == sorted((r.completed_at for r in rows), reverse=True)
    assert rows[0].id == w["again"][1] and rows[1].id == w["again"][0]  # the newest
    ticks = [r.id for r in rows if r.task_type == "media::tick"]
    assert ticks == sorted(w["ticks"], reverse=True) and rows[-1].id == w["ticks"][0]  # the oldest last
    assert s.store.history(10) == rows[:10]
    assert s.store.history(10, 5) == rows[5:15]
    assert s.store.history(10, len(rows) - 3) == rows[-3:]
    assert s.store.history(5, len(rows)) == [] and s.store.history(0) == []


def test_history_by_type_filters_by_qualified_type(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    ticks = s.store.history_by_type("media::tick", 1000)
    assert all(isinstance(r, tm.TaskHistoryRecord) and r.task_type == "media::tick" for r in ticks)
    assert [r.id for r in ticks] == sorted(w["ticks"], reverse=True)  # newest first
    assert [r.id for r in s.store.history_by_type("media::tick", 5)] == sorted(w["ticks"], reverse=True)[:5]
    thumbs = s.store.history_by_type("media::thumbnail")
    assert [r.id for r in thumbs] == [w["thumb_failed"], *reversed(w["thumbs"])]
    assert s.store.history_by_type("tick") == []  # the short name finds nothing


def test_history_by_key_returns_all_past_runs_of_a_key(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    first, second = (s.wait(i, timeout=5) for i in w["again"])
    assert first.key == second.key and first.id != second.id
    runs = s.store.history_by_key(first.key)
    assert all(isinstance(r, tm.TaskHistoryRecord) for r in runs)
    assert sorted(r.id for r in runs) == sorted(w["again"])
    assert all(r.status == "completed" and r.payload == {"x": 7} for r in runs)
    sup = s.store.history_by_key(s.wait(w["superseded"], timeout=5).key)  # one key, two executions
    assert sorted((r.id, r.status) for r in sup) == sorted([(w["superseded"], "superseded"),
                                                            (w["superseder"], "completed")])
    assert s.store.history_by_key("0" * 64) == []


def test_failed_tasks_lists_recent_failures_with_errors(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    failed = s.store.failed_tasks()
    assert all(isinstance(r, tm.TaskHistoryRecord) for r in failed)
    by_id = {r.id: r for r in failed}
    assert w["thumb_failed"] in by_id
    assert by_id[w["thumb_failed"]].status == tm.HistoryStatus.FAILED
    assert "thumbnail 4 failed" in by_id[w["thumb_failed"]].last_error
    assert all(r.status in ("failed", "dead_letter") and r.last_error for r in failed)  # failures only
    assert not ({w["cancelled"], w["superseded"], w["expired"]} & set(by_id))
    assert [r.completed_at for r in failed] == sorted((r.completed_at for r in failed), reverse=True)
    assert s.store.failed_tasks(1) == failed[:1]


def test_history_status_covers_each_outcome_and_filters_expired(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    rows = s.store.history(1000)
    status_of = {r.id: r.status for r in rows}
    assert status_of[w["ticks"][0]] == tm.HistoryStatus.COMPLETED
    assert status_of[w["thumb_failed"]] == tm.HistoryStatus.FAILED
    assert status_of[w["cancelled"]] == tm.HistoryStatus.CANCELLED
    assert status_of[w["superseded"]] == tm.HistoryStatus.SUPERSEDED
    assert status_of[w["expired"]] == tm.HistoryStatus.EXPIRED
    assert status_of[w["dead"]] == tm.HistoryStatus.DEAD_LETTER
    assert {r.status for r in rows} == {"completed", "failed", "cancelled", "superseded", "expired", "dead_letter"}
    expired = [r for r in rows if r.status == "expired"]  # filter by status (TTL analytics)
    assert [r.id for r in expired] == [w["expired"]] and expired[0].ttl_seconds == pytest.approx(0.3)
    assert s.sql("SELECT id FROM task_history WHERE status = 'expired'") == [{"id": w["expired"]}]


# --------------------------------------------------------------------------- aggregates


def _thumb_rows(s: tm.Scheduler) -> list[tm.TaskHistoryRecord]:
    return [r for r in s.store.history_by_type("media::thumbnail") if r.status == "completed"]


def test_history_stats_returns_type_stats_for_a_type(world: dict[str, Any]) -> None:
    s = world["s"]
    stats = s.store.history_stats("media::thumbnail")
    assert isinstance(stats, tm.TypeStats)
    assert (stats.count, stats.avg_read_bytes, stats.avg_write_bytes, stats.failure_rate) == (3, 2000.0, 200.0, 0.25)
    ticks = s.store.history_stats("media::tick")
    assert ticks.count == N_TICKS and ticks.failure_rate == 0.0
    none = s.store.history_stats("media::never_ran")
    assert none.count == 0 and none.failure_rate == 0.0


def test_avg_throughput_averages_recent_completions(world: dict[str, Any]) -> None:
    s = world["s"]
    rows = _thumb_rows(s)  # newest first: n=3, 2, 1
    assert [r.result for r in rows] == [3, 2, 1]
    r_bps, w_bps = s.store.avg_throughput("media::thumbnail")
    assert isinstance(r_bps, float) and isinstance(w_bps, float)
    assert r_bps == pytest.approx(sum(r.actual_io.disk_read * 1000.0 / r.duration_ms for r in rows) / 3)
    assert w_bps == pytest.approx(sum(r.actual_io.disk_write * 1000.0 / r.duration_ms for r in rows) / 3)
    assert r_bps > w_bps > 0
    newest = rows[0]  # limit: the most recent completions only
    assert s.store.avg_throughput("media::thumbnail", 1) == pytest.approx(
        (newest.actual_io.disk_read * 1000.0 / newest.duration_ms, newest.actual_io.disk_write * 1000.0 /
         newest.duration_ms))
    assert s.store.avg_throughput("media::never_ran") == (0.0, 0.0)


def test_type_stats_count_is_total_completed_tasks(world: dict[str, Any]) -> None:
    s = world["s"]
    stats = s.store.history_stats("media::thumbnail")
    assert type(stats.count) is int and stats.count == 3  # the failed one is not counted
    assert s.store.history_stats("misc::work").count == 3  # the new x=2, x=7 twice; not cancelled/superseded/expired
    assert s.store.history_stats("misc::work").count == len(
        [r for r in s.store.history_by_type("misc::work") if r.status == "completed"])


def test_type_stats_avg_duration_ms_is_average_wall_clock_duration(world: dict[str, Any]) -> None:
    s = world["s"]
    stats = s.store.history_stats("media::thumbnail")
    rows = _thumb_rows(s)
    assert isinstance(stats.avg_duration_ms, float)
    assert stats.avg_duration_ms == pytest.approx(sum(r.duration_ms for r in rows) / 3)
    assert stats.avg_duration_ms >= 50.0  # each slept 50 ms


def test_type_stats_avg_read_bytes_is_average_actual_read(world: dict[str, Any]) -> None:
    s = world["s"]
    stats = s.store.history_stats("media::thumbnail")
    assert isinstance(stats.avg_read_bytes, float) and stats.avg_read_bytes == 2000.0  # (1000+2000+3000)/3
    assert sorted(r.actual_io.disk_read for r in _thumb_rows(s)) == [1000, 2000, 3000]


def test_type_stats_avg_write_bytes_is_average_actual_write(world: dict[str, Any]) -> None:
    s = world["s"]
    stats = s.store.history_stats("media::thumbnail")
    assert isinstance(stats.avg_write_bytes, float) and stats.avg_write_bytes == 200.0  # (100+200+300)/3
    assert sorted(r.actual_io.disk_write for r in _thumb_rows(s)) == [100, 200, 300]


def test_type_stats_failure_rate_is_fraction_failed(world: dict[str, Any]) -> None:
    s = world["s"]
    assert s.store.history_stats("media::thumbnail").failure_rate == 0.25  # 1 failed of 4
    assert s.store.history_stats("media::tick").failure_rate == 0.0
    dead = s.store.history_stats("misc::doomed")
    assert isinstance(dead.failure_rate, float) and dead.failure_rate == 1.0 and dead.count == 0
    assert all(0.0 <= s.store.history_stats(t).failure_rate <= 1.0 for t in ("misc::work", "misc::m_hold"))


def test_store_queries_take_qualified_task_type_names(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    st = s.store
    assert [r.id for r in st.pending_by_type("media::thumbnail")] == [w["delayed"]]
    assert st.pending_by_type("thumbnail") == []
    assert len(st.history_by_type("media::thumbnail")) == 4 and st.history_by_type("thumbnail") == []
    assert st.history_stats("media::thumbnail").count == 3 and st.history_stats("thumbnail").count == 0
    assert st.avg_throughput("media::thumbnail")[0] > 0 and st.avg_throughput("thumbnail") == (0.0, 0.0)
    assert all(r.task_type.startswith("media::") for r in st.history_by_type("media::tick"))


# --------------------------------------------------------------------------- the usage example


def test_usage_example(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    # Domain-scoped snapshot -- running tasks, pending count, progress.
    snap = s.domain(media).snapshot()
    assert [r.id for r in snap.running] == [w["running"]] and snap.pending_count == 1
    # Global dashboard data via the store.
    store = s.store
    assert store.running_count() == 1
    assert store.pending_count() == 1
    read_io, write_io = store.running_io_totals()
    assert (read_io, write_io) == (5000, 700)
    # Per-type analytics -- note the qualified type name.
    stats = store.history_stats("media::thumbnail")
    line = (f"media::thumbnail: {stats.count} completed, avg {stats.avg_duration_ms:.0f}ms, "
            f"{stats.failure_rate * 100.0:.1f}% failure rate")
    assert line.startswith("media::thumbnail: 3 completed, avg ") and line.endswith(", 25.0% failure rate")
    # Paginated history for a UI table
    page = store.history(50, 0)  # first 50
    page2 = store.history(50, 50)  # next 50
    assert len(page) == 50 and len(page2) == w["total"] - 50
    assert page + page2 == store.history(100, 0)
    assert not ({r.id for r in page} & {r.id for r in page2})
    assert page2[0].completed_at <= page[-1].completed_at
