"""Seed sections "Scheduled and recurring task queries" (incl. the snapshot's extra
fields), "Managing recurring schedules", "Unified lookup" and "Pruning".

One scheduler for the module (``max_concurrency=2``). The shared world:

- ``media::resize`` (dedup key = its path): "/photos/done.jpg" completed,
  "/photos/img.jpg" (HIGH) active, held as paused by its group ``held``;
- ``sched::work`` x=1 delayed by 600 s (``run_after``), x=2 by 1200 s (``run_at``);
- recurring ``sched::tick``: "long" (every 3600 s, at most 5, ran once) and
  "paused" (every 1800 s, first run in 1800 s, schedule paused).

The recurring-management tests run their own fast schedules (0.2 s) and cancel
them; the pruning tests come last because they delete history.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from polling import poll_until

import taskmill as tm

from .helpers import DEADLINE, append, history_statuses, lines, module_world

media = tm.Domain("media")
sched = tm.Domain("sched")

FAST = 0.2  # seconds between occurrences of the schedules the management tests run
QUIET = 5 * FAST  # how long "nothing happens" is watched for


@media.task(key=lambda path, width: path)
def resize(ctx: tm.TaskContext, path: str, width: int) -> str:
    return f"{path}@{width}"


@sched.task
def work(ctx: tm.TaskContext, x: int) -> int:
    return x


@sched.task
def tick(ctx: tm.TaskContext, name: str) -> str:
    return name


@sched.task
def beat(ctx: tm.TaskContext, log: str) -> int:
    append(log, str(ctx.task_id))
    return ctx.task_id


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _info(s: tm.Scheduler, task_id: int) -> tm.RecurringScheduleInfo | None:
    return next((i for i in s.store.recurring_schedules() if i.task_id == task_id), None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sched")
    with module_world(str(tmp / "store.duckdb"), [media, sched], max_concurrency=2) as s:
        m, h = s.domain(media), s.domain(sched)
        w: dict[str, Any] = {"s": s, "tmp": tmp, "nra_before": s.store.next_run_after()}
        w["done"] = m.submit(resize, path="/photos/done.jpg", width=300).id
        s.wait(w["done"], timeout=DEADLINE)
        s.pause_group("held")
        w["active"] = m.submit(resize.options(group="held", priority=tm.Priority.HIGH), path="/photos/img.jpg",
                               width=300).id
        w["t_before"] = _now()
        w["delayed1"] = h.submit(work.options(run_after=600), x=1).id
        w["delayed2"] = h.submit(work.options(run_at=_now() + timedelta(seconds=1200)), x=2).id
        w["t_after"] = _now()
        w["long"] = h.submit(tick.options(recurring=tm.Recurring(3600, max_executions=5)), name="long").id
        poll_until(lambda: (i := _info(s, w["long"])) is not None and i.execution_count == 1, DEADLINE,
                   what="the first run of the hourly schedule")
        w["paused"] = h.submit(tick.options(recurring=tm.Recurring(1800, initial_delay=1800)), name="paused").id
        w["paused_ok"] = h.pause_recurring(w["paused"])
        yield w


# --------------------------------------------------------------------------- scheduled and recurring queries


def test_next_run_after_is_earliest_delayed_run(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    assert w["nra_before"] is None  # no delayed task yet
    nra = s.store.next_run_after()
    assert isinstance(nra, datetime) and nra.tzinfo is not None
    # the 600 s one: not the 1200 s one, nor the schedules an hour (or a paused half hour) away
    assert w["t_before"] + timedelta(seconds=599) <= nra <= w["t_after"] + timedelta(seconds=601)
    assert s.task(w["delayed1"]).run_after == nra


def test_recurring_schedules_lists_active_schedules(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    infos = s.store.recurring_schedules()
    assert all(isinstance(i, tm.RecurringScheduleInfo) for i in infos)
    by_id = {i.task_id: i for i in infos}
    assert sorted(by_id) == sorted([w["long"], w["paused"]])  # not the one-off delayed tasks
    long_, paused = by_id[w["long"]], by_id[w["paused"]]
    assert (long_.task_type, long_.interval_secs, long_.max_executions, long_.execution_count, long_.paused) == (
        "sched::tick", 3600.0, 5, 1, False)
    assert long_.max_executions - long_.execution_count == 4  # remaining occurrences
    assert long_.next_run is not None and long_.next_run >= w["t_after"] + timedelta(seconds=3000)
    assert w["paused_ok"] is True
    assert (paused.interval_secs, paused.max_executions, paused.execution_count, paused.paused) == (
        1800.0, None, 0, True)


def test_snapshot_includes_recurring_schedules_and_dashboard_extras(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    snap = s.snapshot()
    assert snap.recurring_schedules == s.store.recurring_schedules()
    assert sorted(i.task_id for i in snap.recurring_schedules) == sorted([w["long"], w["paused"]])
    assert snap.aging_config is None  # priority aging not enabled
    assert isinstance(snap.group_allocations, list) and isinstance(snap.rate_limits, list)
    assert snap.rate_limits == []  # none configured
    (held,) = [g for g in snap.paused_groups if g.group == "held"]
    assert isinstance(held, tm.PausedGroupInfo) and held.paused_task_count == 1 and held.resume_at is None


def test_snapshot_reports_configured_aging_group_allocations_and_rate_limits(tmp_path: Path) -> None:
    aging = tm.AgingConfig(grace_period=300, aging_interval=60)
    with tm.Scheduler(store_path=str(tmp_path / "s.duckdb"), domains=[sched], max_concurrency=2,
                      priority_aging=aging, group_weights={"a": 2, "b": 1},
                      rate_limits={"sched::work": tm.RateLimit.per_second(5)}) as s:
        snap = s.snapshot()
        assert snap.aging_config == aging
        weights = {g.group: g.weight for g in snap.group_allocations}
        assert weights.get("a") == 2 and weights.get("b") == 1
        assert [(r.scope, r.scope_kind, r.permits) for r in snap.rate_limits] == [("type:sched::work", "type", 5)]


# --------------------------------------------------------------------------- managing recurring schedules


def _beating(s: tm.Scheduler, log: str, runs: int = 2, max_executions: int | None = None) -> int:
    rid = s.domain(sched).submit(beat.options(recurring=tm.Recurring(FAST, max_executions=max_executions)),
                                 log=log).id
    poll_until(lambda: len(lines(log)) >= runs, DEADLINE, what=f"{runs} occurrences")
    return rid


def _settled_paused(s: tm.Scheduler, rid: int) -> tm.TaskRecord:
    """After a pause, wait out a run in flight: the task rests as paused."""
    return poll_until(lambda: (r := s.task(rid)) is not None and r.status == "paused" and r, DEADLINE,
                      what=f"schedule {rid} at rest, paused")


def test_pause_recurring_stops_new_occurrences(world: dict[str, Any]) -> None:
    s, log = world["s"], str(world["tmp"] / "beat-pause")
    h = s.domain(sched)
    rid = _beating(s, log)
    try:
        assert h.pause_recurring(rid) is True
        rec = _settled_paused(s, rid)
        assert rec.recurring_paused is True
        n, count = len(lines(log)), _info(s, rid).execution_count
        time.sleep(QUIET)  # five intervals: nothing may be enqueued meanwhile
        assert len(lines(log)) == n and _info(s, rid).execution_count == count
        assert _info(s, rid).paused is True and s.task(rid).status == "paused"
        assert h.pause_recurring(rid) is True  # already paused: still a schedule
        assert s.domain(media).pause_recurring(rid) is False  # another domain's handle does not see it
        assert h.pause_recurring(world["delayed1"]) is False  # not recurring
        assert h.pause_recurring(10**9) is False
    finally:
        h.cancel_recurring(rid)


def test_resume_recurring_continues_where_it_left_off(world: dict[str, Any]) -> None:
    s, log = world["s"], str(world["tmp"] / "beat-resume")
    h = s.domain(sched)
    rid = _beating(s, log, runs=1, max_executions=6)
    try:
        assert h.pause_recurring(rid) is True
        _settled_paused(s, rid)
        done = len(lines(log))
        info = _info(s, rid)
        assert info.execution_count == done < 6
        assert s.domain(media).resume_recurring(rid) is False  # another domain's handle does not see it
        assert _info(s, rid).paused is True
        assert h.resume_recurring(rid) is True
        assert _info(s, rid).paused is False
        # it goes on from `done` runs to the schedule's end: 6 runs in all, not 6 more
        poll_until(lambda: s.task(rid) is None, DEADLINE, what="the schedule to run out")
        assert len(lines(log)) == 6 and set(lines(log)) == {str(rid)}
        assert history_statuses(s, rid) == ["completed"] * 6
        assert rid not in [i.task_id for i in s.store.recurring_schedules()]
        assert h.resume_recurring(rid) is False  # no schedule left
    finally:
        h.cancel_recurring(rid)


def test_cancel_recurring_removes_the_schedule(world: dict[str, Any]) -> None:
    s, w, log = world["s"], world, str(world["tmp"] / "beat-cancel")
    h = s.domain(sched)
    rid = _beating(s, log, runs=1)
    assert s.domain(media).cancel_recurring(rid) is False  # another domain's handle
    assert h.cancel_recurring(rid) is True
    assert rid not in [i.task_id for i in s.store.recurring_schedules()]
    poll_until(lambda: s.task(rid) is None, DEADLINE, what="the schedule's task gone")
    n = len(lines(log))
    time.sleep(QUIET)  # five intervals: no occurrence may follow
    assert len(lines(log)) == n
    statuses = history_statuses(s, rid)
    assert statuses[-1] in ("cancelled", "completed") and statuses.count("completed") >= 1
    assert h.cancel_recurring(rid) is False and h.resume_recurring(rid) is False  # gone for good
    assert h.cancel_recurring(w["delayed1"]) is False and s.task(w["delayed1"]) is not None  # not recurring


# --------------------------------------------------------------------------- unified lookup


def test_task_lookup_returns_active_record(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    look = s.task_lookup("media::resize", "/photos/img.jpg")
    assert isinstance(look, tm.TaskLookup) and not look.not_found and look.history is None
    rec = look.active
    assert isinstance(rec, tm.TaskRecord) and rec.id == w["active"]
    assert rec.status == tm.TaskStatus.PAUSED and rec.priority == tm.Priority.HIGH
    assert s.store.task_lookup("media::resize", "/photos/img.jpg") == look


def test_task_lookup_returns_history_record(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    look = s.store.task_lookup("media::resize", "/photos/done.jpg")
    assert look.active is None and not look.not_found
    rec = look.history
    assert isinstance(rec, tm.TaskHistoryRecord) and rec.id == w["done"] and rec.status == "completed"
    assert isinstance(rec.completed_at, datetime) and rec.duration_ms is not None and rec.duration_ms >= 0
    assert rec.result == "/photos/done.jpg@300"


def test_task_lookup_not_found(world: dict[str, Any]) -> None:
    s = world["s"]
    look = s.task_lookup("media::resize", "/photos/never.jpg")
    assert isinstance(look, tm.TaskLookup) and look.not_found is True
    assert look.active is None and look.history is None
    # the stored type is qualified: the short name finds nothing
    assert s.task_lookup("resize", "/photos/img.jpg").not_found
    assert s.task_lookup("resize", "/photos/done.jpg").not_found


def test_lookup_typed_applies_the_domain_prefix(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    look = s.lookup_typed(resize.call(path="/photos/img.jpg", width=300))
    assert look.active is not None and look.active.id == w["active"]
    done = s.store.lookup_typed(resize.call(path="/photos/done.jpg", width=300))
    assert done.active is None and done.history is not None and done.history.id == w["done"]
    assert s.lookup_typed(resize.call(path="/photos/never.jpg", width=300)).not_found
    assert s.lookup_typed(work.options(run_after=600).call(x=1)).active.id == w["delayed1"]


# --------------------------------------------------------------------------- pruning (last: deletes history)


def test_prune_history_by_age_deletes_records_older_than_n_days(world: dict[str, Any]) -> None:
    s = world["s"]
    h = s.domain(sched)
    old = s.store.history(10_000)
    assert old
    newest_old = max(r.completed_at for r in old)
    poll_until(lambda: _now() - newest_old >= timedelta(seconds=2), DEADLINE, what="a 2 s gap")
    new_ids = [h.submit(work, x=100 + i).id for i in range(3)]
    new = [s.wait(i, timeout=DEADLINE) for i in new_ids]
    oldest_new = min(r.completed_at for r in new)
    assert oldest_new - newest_old >= timedelta(seconds=2)
    assert s.store.prune_history_by_age(1) == 0  # nothing is a day old
    middle = newest_old + (oldest_new - newest_old) / 2  # a cutoff >= 1 s from every row
    deleted = s.store.prune_history_by_age((_now() - middle).total_seconds() / 86400)
    assert type(deleted) is int and deleted == len(old)
    assert sorted(r.id for r in s.store.history(10_000)) == sorted(new_ids)


def test_prune_history_by_count_keeps_the_n_most_recent(world: dict[str, Any]) -> None:
    s = world["s"]
    h = s.domain(sched)
    for i in range(4):
        s.wait(h.submit(work, x=200 + i).id, timeout=DEADLINE)
    rows = s.store.history(10_000)
    assert len(rows) >= 5
    deleted = s.store.prune_history_by_count(2)
    assert type(deleted) is int and deleted == len(rows) - 2
    assert s.store.history(10_000) == rows[:2]  # the two most recent stay
    assert s.store.prune_history_by_count(2) == 0
    assert s.store.prune_history_by_count(0) == 2 and s.store.history(10_000) == []
