"""End-to-end time-based behaviour of a real scheduler (real coordinator, store and workers).

F15 delayed tasks (``run_after`` seconds/datetime, ``run_at``, ``next_run_after()``,
a passed time runs at once, restarts) and recurring tasks (interval,
``max_executions``, ``initial_delay``, pile-up prevention, ``recurring_schedules()``,
pause/resume/cancel by id, restarts); F16 TTL (sweep, dispatch check,
``ttl_from="first_attempt"``, per-task > per-type > domain > default, an expired
parent takes its children); F26 retention (``MaxCount``, ``MaxAgeDays``);
incremental batch jobs (``duplicate="skip_completed"``, ``start_paused``).
Tasks that must stay put block on a flag file; timings are lower bounds only.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
from polling import poll_until
from taskfiles import wait_flag as _wait_flag

import taskmill as tm

DEADLINE = 60.0  # seconds any single wait may take on a loaded 2-core machine
SLACK = 0.05  # the coordinator maps wall-clock times onto its monotonic clock

COMPLETED = tm.HistoryStatus.COMPLETED
EXPIRED = tm.HistoryStatus.EXPIRED


# --------------------------------------------------------------------------- task functions (module level)

sch = tm.Domain("sch")
sch_solo = tm.Domain("sch_solo", max_concurrency=1)
sch_ttl = tm.Domain("sch_ttl", max_concurrency=1, ttl=0.9)
sch_other = tm.Domain("sch_other")
inc = tm.Domain("inc")
ALL = [sch, sch_solo, sch_ttl, sch_other, inc]


def _log(path: str, **fields: Any) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(fields) + "\n")


def lines(path: str) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines()] if os.path.exists(path) else []


@sch.task
def stamp(ctx: tm.TaskContext, log: str, tag: str) -> str:
    _log(log, tag=tag, id=ctx.task_id, t=time.time())
    return tag


@sch.task
def tick(ctx: tm.TaskContext, log: str) -> int:
    _log(log, id=ctx.task_id, t=time.time())
    return ctx.task_id


@sch.task
def slow_tick(ctx: tm.TaskContext, log: str, flag: str) -> str:
    """A recurring task whose first run lasts until ``flag`` exists (much longer than its interval)."""
    _log(log, id=ctx.task_id, t=time.time())
    return _wait_flag(ctx, flag)


@sch.task
def parent_then_retry(ctx: tm.TaskContext, log: str) -> None:
    """Spawns a child (held behind the solo domain's cap), then asks to be retried later."""
    if ctx.record.retry_count == 0:
        out = ctx.spawn_child(solo_work, x=99, log=log)
        _log(log, child=out.id)
    raise tm.Retryable("the parent retries later", retry_after=1.2)


@sch_solo.task
def solo_hold(ctx: tm.TaskContext, flag: str) -> str:
    return _wait_flag(ctx, flag)


@sch_solo.task
def solo_work(ctx: tm.TaskContext, x: int, log: str) -> int:
    _log(log, x=x, id=ctx.task_id, t=time.time())
    return x


@sch_solo.task
def solo_tick(ctx: tm.TaskContext, log: str) -> None:
    _log(log, id=ctx.task_id, t=time.time())


@sch_solo.task(retry=tm.RetryPolicy.constant(max_retries=3, delay=0.0))
def retry_later(ctx: tm.TaskContext, log: str) -> str:
    _log(log, attempt=ctx.record.retry_count, id=ctx.task_id, t=time.time())
    if ctx.record.retry_count == 0:
        raise tm.Retryable("try again later", retry_after=1.0)
    return "second attempt"


@sch_ttl.task
def ttl_hold(ctx: tm.TaskContext, flag: str) -> str:
    return _wait_flag(ctx, flag)


@sch_ttl.task
def ttl_work(ctx: tm.TaskContext, x: int, log: str) -> int:
    _log(log, x=x)
    return x


@sch_ttl.task(ttl=60)
def ttl_typed(ctx: tm.TaskContext, x: int, log: str) -> int:
    _log(log, x=x)
    return x


@inc.task(duplicate="skip_completed", retry=tm.RetryPolicy.none())
def ingest(ctx: tm.TaskContext, n: int, marks: str) -> int:
    """One item of an incremental batch job; fails while ``marks/fail-<n>`` exists."""
    _log(os.path.join(marks, "log"), n=n, id=ctx.task_id)
    if os.path.exists(os.path.join(marks, f"fail-{n}")):
        raise tm.Permanent(f"item {n} is bad")
    return n * n


@inc.task(retry=tm.RetryPolicy.none())
def plain_ingest(ctx: tm.TaskContext, n: int, marks: str) -> int:
    _log(os.path.join(marks, "plain"), n=n, id=ctx.task_id)
    return n


# --------------------------------------------------------------------------- helpers


def sched(store: str, **kw: Any) -> tm.Scheduler:
    kw.setdefault("max_concurrency", 2)
    return tm.Scheduler(store_path=store, domains=ALL, **kw)


def wait_running(s: tm.Scheduler, task_id: int) -> None:
    poll_until(lambda: any(r.id == task_id for r in s.active_tasks()), DEADLINE, what=f"task {task_id} running")


def statuses(s: tm.Scheduler, task_id: int) -> list[str]:
    """History statuses of one task id, oldest first (a recurring task has one row per run)."""
    return [r["status"] for r in s.sql("SELECT status FROM task_history WHERE id = ? ORDER BY seq", [task_id])]


def history_ids(s: tm.Scheduler) -> list[int]:
    return [r["id"] for r in s.sql("SELECT id FROM task_history ORDER BY seq")]


def schedule_of(s: tm.Scheduler, task_id: int) -> tm.RecurringScheduleInfo | None:
    return next((i for i in s.store.recurring_schedules() if i.task_id == task_id), None)


def quiet_for(seconds: float) -> None:
    """Let ``seconds`` pass (used only to show that something does NOT happen meanwhile)."""
    end = time.monotonic() + seconds
    poll_until(lambda: time.monotonic() >= end, seconds + DEADLINE, interval=0.05, what="time to pass")


def ts(dt: datetime | None) -> float:
    assert dt is not None and dt.tzinfo is not None
    return dt.timestamp()


# --------------------------------------------------------------------------- F15 delayed tasks


def test_delayed_tasks_wait_for_their_time(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with sched(store_path) as s:
        h = s.domain(sch)
        assert s.store.next_run_after() is None
        t0 = time.time()
        far = h.submit(stamp.options(run_after=3600), log=log, tag="far")
        after = h.submit(stamp.options(run_after=1.0), log=log, tag="after")
        at = h.submit(stamp.options(run_at=datetime.fromtimestamp(t0 + 1.3, timezone.utc)), log=log, tag="at")
        rec = s.task(after.id)
        assert rec is not None and rec.status == tm.TaskStatus.PENDING
        assert ts(rec.run_after) >= t0 + 1.0 - SLACK
        assert s.store.next_run_after() == rec.run_after  # the earliest pending delay
        assert abs(ts(s.task(at.id).run_after) - (t0 + 1.3)) < 1e-3
        # a time already passed (datetime given to run_at and to run_after) runs at once
        past = h.submit(stamp.options(run_at=datetime.fromtimestamp(t0 - 60, timezone.utc)), log=log, tag="past")
        past2 = h.submit(stamp.options(run_after=datetime.fromtimestamp(t0 - 60, timezone.utc)), log=log,
                         tag="past-dt")
        assert s.wait(past.id, timeout=DEADLINE).status == COMPLETED
        assert s.wait(past2.id, timeout=DEADLINE).status == COMPLETED
        r_after = s.wait(after.id, timeout=DEADLINE)
        r_at = s.wait(at.id, timeout=DEADLINE)
        assert r_after.status == COMPLETED and r_at.status == COMPLETED
        started = {ln["tag"]: ln["t"] for ln in lines(log)}
        assert set(started) == {"past", "past-dt", "after", "at"}
        assert started["after"] >= t0 + 1.0 - SLACK
        assert started["at"] >= t0 + 1.3 - SLACK
        assert max(started["past"], started["past-dt"]) < min(started["after"], started["at"])
        assert ts(r_after.started_at) >= ts(r_after.run_after) - SLACK
        # only the far one is left, still waiting for its time
        far_rec = s.task(far.id)
        assert far_rec.status == tm.TaskStatus.PENDING and ts(far_rec.run_after) >= t0 + 3600 - SLACK
        assert s.store.next_run_after() == far_rec.run_after
        assert s.cancel(far.id) is True
        assert s.wait(far.id, timeout=DEADLINE).status == tm.HistoryStatus.CANCELLED
        assert s.store.next_run_after() is None
        assert "far" not in [ln["tag"] for ln in lines(log)]


def test_a_delay_survives_a_restart(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with sched(store_path) as s:
        h = s.domain(sch)
        t0 = time.time()
        soon = h.submit(stamp.options(run_after=0.6), log=log, tag="soon")
        later = h.submit(stamp.options(run_after=2.0), log=log, tag="later")
        far = h.submit(stamp.options(run_after=3600), log=log, tag="far")
        far_at = s.task(far.id).run_after
    assert lines(log) == []  # nothing ran before the close
    poll_until(lambda: time.time() > t0 + 0.8, DEADLINE, what="soon's time to pass while the scheduler is down")
    with sched(store_path) as s:
        rec = s.task(far.id)
        assert rec is not None and rec.status == tm.TaskStatus.PENDING and rec.run_after == far_at
        assert s.store.next_run_after() is not None
        # soon's time passed during the downtime: it runs at once, later waits for its time
        assert s.wait(soon.id, timeout=DEADLINE).status == COMPLETED
        assert s.wait(later.id, timeout=DEADLINE).status == COMPLETED
        started = {ln["tag"]: ln["t"] for ln in lines(log)}
        assert started["soon"] >= t0 + 0.6 - SLACK
        assert started["later"] >= t0 + 2.0 - SLACK
        assert started["soon"] < started["later"]
        assert statuses(s, soon.id) == ["completed"] and statuses(s, later.id) == ["completed"]
        assert s.store.next_run_after() == far_at
        assert s.cancel(far.id) is True
        assert "far" not in started


# --------------------------------------------------------------------------- F15 recurring tasks


def test_recurring_runs_max_executions_with_initial_delay(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with sched(store_path) as s:
        h = s.domain(sch)
        t0 = time.time()
        out = h.submit(tick.options(recurring=tm.Recurring(0.3, max_executions=3, initial_delay=0.6)), log=log)
        assert isinstance(out, tm.Inserted)
        info = schedule_of(s, out.id)
        assert info is not None and isinstance(info, tm.RecurringScheduleInfo)
        assert (info.task_type, info.label, info.interval_secs) == ("sch::tick", "sch::tick", 0.3)
        assert (info.execution_count, info.max_executions, info.paused) == (0, 3, False)
        assert ts(info.next_run) >= t0 + 0.6 - SLACK
        assert [i.task_id for i in s.snapshot().recurring_schedules] == [out.id]
        rec = s.task(out.id)
        assert rec.recurring_interval_secs == 0.3 and rec.recurring_max_executions == 3
        # wait() on a recurring task answers when its schedule ends
        last = s.wait(out.id, timeout=DEADLINE)
        assert last.status == COMPLETED and last.id == out.id and last.result == out.id
        assert statuses(s, out.id) == ["completed"] * 3  # one history row per execution, same id
        runs = lines(log)
        assert [r["id"] for r in runs] == [out.id] * 3
        starts = [r["t"] for r in runs]
        assert starts[0] >= t0 + 0.6 - SLACK  # the initial delay
        assert starts == sorted(starts) and starts[2] - starts[0] >= 0.3  # occurrences on a 0.3 s grid
        assert len(s.store.history_by_key(last.key)) == 3
        assert s.task(out.id) is None and schedule_of(s, out.id) is None
        assert s.store.recurring_schedules() == []
        quiet_for(0.7)  # more intervals: no fourth run
        assert len(lines(log)) == 3 and statuses(s, out.id) == ["completed"] * 3


def test_recurring_does_not_pile_up(store_path: str, tmp_path: Path) -> None:
    slow_log, solo_log = str(tmp_path / "slow"), str(tmp_path / "solo")
    flag = str(tmp_path / "flag")
    with sched(store_path, max_concurrency=2) as s:
        h, hs = s.domain(sch), s.domain(sch_solo)
        # (a) a run far longer than the interval
        slow = h.submit(slow_tick.options(recurring=tm.Recurring(0.3)), log=slow_log, flag=flag)
        # (b) an occurrence that cannot start (its domain's only slot is held)
        blocker = hs.submit(solo_hold, flag=flag)
        wait_running(s, blocker.id)
        ticker = hs.submit(solo_tick.options(recurring=tm.Recurring(0.3)), log=solo_log)
        first = poll_until(lambda: lines(slow_log), DEADLINE, what="the slow first run")[0]
        poll_until(lambda: time.time() >= first["t"] + 1.3, DEADLINE, what="four intervals to pass")
        # meanwhile no occurrence queued up behind either of them
        assert s.task(slow.id).status == tm.TaskStatus.RUNNING
        assert s.store.pending_by_type("sch::slow_tick") == []
        assert [r.id for r in s.store.pending_by_type("sch_solo::solo_tick")] == [ticker.id]
        assert schedule_of(s, slow.id).execution_count == 0 and schedule_of(s, ticker.id).execution_count == 0
        assert len(lines(slow_log)) == 1 and lines(solo_log) == []
        Path(flag).touch()
        poll_until(lambda: len(lines(slow_log)) >= 4 and len(lines(solo_log)) >= 3, DEADLINE,
                   what="occurrences after the release")
        assert s.cancel_recurring(slow.id) is True
        assert s.cancel_recurring(ticker.id) is True
        poll_until(lambda: s.task(slow.id) is None and s.task(ticker.id) is None, DEADLINE, what="schedules ended")
        # the missed occurrences were skipped, not run back to back once the way was free
        slow_starts = [r["t"] for r in lines(slow_log)]
        solo_starts = [r["t"] for r in lines(solo_log)]
        assert slow_starts[3] - slow_starts[1] >= 0.3, slow_starts
        assert solo_starts[2] - solo_starts[0] >= 0.3, solo_starts
        for tid, n in ((slow.id, len(slow_starts)), (ticker.id, len(solo_starts))):
            st = statuses(s, tid)
            done = [x for x in st if x == "completed"]
            assert len(done) == n and st[:n] == done and st[n:] in ([], ["cancelled"]), st
        assert s.store.recurring_schedules() == []


def test_recurring_pause_resume_cancel_by_id(store_path: str, tmp_path: Path) -> None:
    la, lb = str(tmp_path / "a"), str(tmp_path / "b")
    with sched(store_path) as s:
        h, other = s.domain(sch), s.domain(sch_other)
        a = h.submit(tick.options(recurring=tm.Recurring(0.3)), log=la)
        b = h.submit(tick.options(recurring=tm.Recurring(0.3)), log=lb)
        poll_until(lambda: len(lines(la)) >= 2 and len(lines(lb)) >= 2, DEADLINE, what="two runs of each")

        # pause: a on the scheduler, b on its domain handle (not another domain's)
        assert s.pause_recurring(a.id) is True
        assert other.pause_recurring(b.id) is False
        assert h.pause_recurring(b.id) is True
        assert s.pause_recurring(424242) is False
        # the occurrence already enqueued (or running) still runs; the next one rests, paused
        poll_until(lambda: all(s.task(t).status == tm.TaskStatus.PAUSED for t in (a.id, b.id)), DEADLINE,
                   what="the occurrences enqueued before the pause to run")
        counts = {a.id: len(lines(la)), b.id: len(lines(lb))}
        for tid in (a.id, b.id):
            info = schedule_of(s, tid)
            assert info is not None and info.paused is True and s.task(tid).recurring_paused is True
            assert info.execution_count == counts[tid] == statuses(s, tid).count("completed")
        quiet_for(1.0)  # three intervals: nothing runs while paused
        assert {a.id: len(lines(la)), b.id: len(lines(lb))} == counts

        # resume: a on its handle, b on the scheduler; they run again, same ids
        assert h.resume_recurring(a.id) is True
        assert s.resume_recurring(b.id) is True
        assert schedule_of(s, a.id).paused is False and schedule_of(s, b.id).paused is False
        poll_until(lambda: len(lines(la)) >= counts[a.id] + 2 and len(lines(lb)) >= counts[b.id] + 2, DEADLINE,
                   what="runs after the resume")
        assert {r["id"] for r in lines(la)} == {a.id} and {r["id"] for r in lines(lb)} == {b.id}

        # cancel: a on the scheduler, b on its handle; the schedules are gone, nothing runs again
        assert s.cancel_recurring(a.id) is True
        assert other.cancel_recurring(b.id) is False
        assert h.cancel_recurring(b.id) is True
        poll_until(lambda: s.task(a.id) is None and s.task(b.id) is None, DEADLINE, what="schedules ended")
        assert s.store.recurring_schedules() == [] and s.snapshot().recurring_schedules == []
        for fn in (s.cancel_recurring, s.pause_recurring, s.resume_recurring, h.cancel_recurring):
            assert fn(a.id) is False
        ended = {a.id: len(lines(la)), b.id: len(lines(lb))}
        quiet_for(0.7)
        assert {a.id: len(lines(la)), b.id: len(lines(lb))} == ended
        for tid in (a.id, b.id):
            st = statuses(s, tid)
            n = ended[tid]
            assert st[:n] == ["completed"] * n and st[n:] in ([], ["cancelled"]), st
            assert s.wait(tid, timeout=DEADLINE).status in (COMPLETED, tm.HistoryStatus.CANCELLED)


def test_recurring_schedule_survives_a_restart(store_path: str, tmp_path: Path) -> None:
    log, plog = str(tmp_path / "log"), str(tmp_path / "paused")
    with sched(store_path) as s:
        h = s.domain(sch)
        out = h.submit(tick.options(recurring=tm.Recurring(0.3, max_executions=5)), log=log)
        held = h.submit(tick.options(recurring=tm.Recurring(0.3)), log=plog)
        poll_until(lambda: lines(plog), DEADLINE, what="a first run of the schedule to pause")
        assert h.pause_recurring(held.id) is True  # the occurrence already enqueued still runs; then it rests
        poll_until(lambda: s.task(held.id).status == tm.TaskStatus.PAUSED, DEADLINE, what="the paused one at rest")
        poll_until(lambda: schedule_of(s, out.id).execution_count >= 2, DEADLINE, what="two executions")
        before = schedule_of(s, out.id).execution_count
    with sched(store_path) as s:
        info = schedule_of(s, out.id)
        assert info is not None, "the recurring schedule was lost in the restart"
        assert (info.interval_secs, info.max_executions, info.paused) == (0.3, 5, False)
        assert before <= info.execution_count <= 5
        paused = schedule_of(s, held.id)
        assert paused is not None and paused.paused is True  # a paused schedule stays paused
        held_runs = len(lines(plog))
        last = s.wait(out.id, timeout=DEADLINE)
        assert last.status == COMPLETED and last.id == out.id
        # five executions in all, across both lives of the scheduler, one row each
        assert statuses(s, out.id) == ["completed"] * 5
        assert s.task(out.id) is None and schedule_of(s, out.id) is None
        assert len(lines(plog)) == held_runs  # nothing ran while it was paused
        assert s.resume_recurring(held.id) is True
        poll_until(lambda: len(lines(plog)) > held_runs, DEADLINE, what="a run after the resume")
        assert s.cancel_recurring(held.id) is True
        poll_until(lambda: s.task(held.id) is None, DEADLINE, what="the schedule ended")
        assert s.store.recurring_schedules() == []


# --------------------------------------------------------------------------- F16 TTL


def test_ttl_sweep_per_task_type_domain_and_default(store_path: str, tmp_path: Path) -> None:
    flag, log = str(tmp_path / "flag"), str(tmp_path / "log")
    with sched(store_path, default_ttl=0.6, expiry_sweep_interval=0.2) as s:
        hs, ht = s.domain(sch_solo), s.domain(sch_ttl)
        b1 = hs.submit(solo_hold.options(ttl=3600), flag=flag)
        b2 = ht.submit(ttl_hold.options(ttl=3600), flag=flag)
        wait_running(s, b1.id)
        wait_running(s, b2.id)
        t0 = time.time()
        late = hs.submit(solo_work.options(ttl=0.8), x=1, log=log)  # per submission
        by_default = hs.submit(solo_work, x=2, log=log)  # Scheduler(default_ttl=0.6)
        by_domain = ht.submit(ttl_work, x=3, log=log)  # Domain(ttl=0.9) beats the default
        by_type = ht.submit(ttl_typed, x=4, log=log)  # @task(ttl=60) beats the domain
        by_task = ht.submit(ttl_typed.options(ttl=45), x=5, log=log)  # per submission beats the type
        recs = [s.task(o.id) for o in (late, by_default, by_domain, by_type, by_task)]
        assert [r.ttl_seconds for r in recs] == [0.8, 0.6, 0.9, 60, 45]
        assert all(r.status == tm.TaskStatus.PENDING and r.ttl_from == "submission" for r in recs)
        assert t0 + 0.8 - SLACK <= ts(recs[0].expires_at) <= time.time() + 0.8 + SLACK
        # the sweep expires them while the blockers still hold the only slots
        for o in (late, by_default, by_domain):
            hist = s.wait(o.id, timeout=DEADLINE)
            assert hist.status == EXPIRED and hist.id == o.id and hist.started_at is None
            assert statuses(s, o.id) == ["expired"]
        assert ts(s.wait(late.id, timeout=5).completed_at) >= t0 + 0.8 - SLACK
        assert s.task(b1.id).status == tm.TaskStatus.RUNNING and s.task(b2.id).status == tm.TaskStatus.RUNNING
        assert s.task(by_type.id).status == tm.TaskStatus.PENDING
        assert s.task(by_task.id).status == tm.TaskStatus.PENDING
        # an expired task freed its dedup key
        again = hs.submit(solo_work.options(ttl=3600), x=1, log=log)
        assert isinstance(again, tm.Inserted) and again.id != late.id
        Path(flag).touch()
        for o in (again, by_type, by_task):
            assert s.wait(o.id, timeout=DEADLINE).status == COMPLETED
        s.wait_idle(timeout=DEADLINE)
        assert sorted(ln["x"] for ln in lines(log)) == [1, 4, 5]  # the expired ones never ran
        assert [ln["id"] for ln in lines(log) if ln["x"] == 1] == [again.id]


def test_ttl_checked_at_dispatch_and_ttl_from_first_attempt(store_path: str, tmp_path: Path) -> None:
    flag, log = str(tmp_path / "flag"), str(tmp_path / "log")
    with sched(store_path) as s:  # sweep every 30 s (the default): only dispatch sees the TTLs here
        h = s.domain(sch_solo)
        blocker = h.submit(solo_hold.options(ttl=3600), flag=flag)
        wait_running(s, blocker.id)
        late = h.submit(solo_work.options(ttl=0.5), x=1, log=log)
        first = h.submit(retry_later.options(ttl=0.5, ttl_from="first_attempt"), log=log)
        rec = s.task(first.id)
        assert rec.ttl_from == "first_attempt" and rec.ttl_seconds == 0.5 and rec.expires_at is None
        late_expiry = ts(s.task(late.id).expires_at)
        poll_until(lambda: time.time() > late_expiry + 0.3, DEADLINE, what="both TTLs to pass in the queue")
        assert s.task(late.id).status == tm.TaskStatus.PENDING  # no sweep yet
        assert s.task(first.id).expires_at is None  # its clock has not started
        Path(flag).touch()
        # `late` is picked after its TTL: it expires instead of running
        assert s.wait(late.id, timeout=DEADLINE).status == EXPIRED
        # `first` runs although it waited longer than its TTL; its clock starts now, and its
        # retry (1 s later) comes after the TTL: it expires at that dispatch
        attempt = poll_until(lambda: lines(log), DEADLINE, what="first attempt")[0]
        hist = s.wait(first.id, timeout=DEADLINE)
        assert hist.status == EXPIRED and hist.retry_count == 1
        assert ts(hist.expires_at) >= attempt["t"] - 0.5 - SLACK  # started at the first dispatch, + 0.5 s
        assert ts(hist.expires_at) >= ts(rec.created_at) + 0.5
        assert [(ln.get("attempt"), ln["id"]) for ln in lines(log)] == [(0, first.id)]
        assert statuses(s, first.id) == ["expired"] and statuses(s, late.id) == ["expired"]


def test_an_expired_parent_takes_its_children(store_path: str, tmp_path: Path) -> None:
    flag, log = str(tmp_path / "flag"), str(tmp_path / "log")
    with sched(store_path) as s:  # default sweep (30 s): the parent expires when it is picked again
        blocker = s.domain(sch_solo).submit(solo_hold.options(ttl=3600), flag=flag)
        wait_running(s, blocker.id)
        parent = s.domain(sch).submit(parent_then_retry.options(ttl=0.6, ttl_from="first_attempt"), log=log)
        child_id = poll_until(lambda: [ln["child"] for ln in lines(log) if "child" in ln], DEADLINE,
                              what="the child spawned")[0]
        prec = poll_until(lambda: (r := s.task(parent.id)) is not None and r.status == tm.TaskStatus.PENDING and r,
                          DEADLINE, what="the parent waiting for its retry")
        crec = s.task(child_id)
        assert crec is not None and crec.parent_id == parent.id and crec.status == tm.TaskStatus.PENDING
        assert prec.expires_at is not None
        assert crec.expires_at == prec.expires_at  # the child inherits what is left of the parent's TTL
        hp = s.wait(parent.id, timeout=DEADLINE)
        assert hp.status == EXPIRED and hp.retry_count == 1
        hc = s.wait(child_id, timeout=DEADLINE)
        assert hc.status == EXPIRED and hc.parent_id == parent.id
        assert s.task(blocker.id).status == tm.TaskStatus.RUNNING  # the child could never have started
        Path(flag).touch()
        s.wait_idle(timeout=DEADLINE)
        assert [ln for ln in lines(log) if "x" in ln] == []  # the child never ran
        assert statuses(s, parent.id) == ["expired"] and statuses(s, child_id) == ["expired"]


# --------------------------------------------------------------------------- F26 retention


def test_retention_max_count(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with sched(store_path, max_concurrency=1, retention=tm.MaxCount(5), retention_every=3) as s:
        h = s.domain(sch)
        ids = h.submit_batch([stamp.call(log=log, tag=f"t{i}") for i in range(12)]).inserted
        assert len(ids) == 12
        s.wait_idle(timeout=DEADLINE)
        assert history_ids(s) == ids[-5:]  # pruned after the 12th completion: the 5 newest stay
        more = [h.submit(stamp, log=log, tag=f"m{i}").id for i in range(3)]
        s.wait(more[1], timeout=DEADLINE)
        assert 5 <= len(history_ids(s)) <= 5 + 3 - 1  # never more than keep + retention_every - 1
        s.wait_idle(timeout=DEADLINE)
        assert history_ids(s) == (ids + more)[-5:]
        assert s.store.history_stats("sch::stamp").count == 5
        assert len(lines(log)) == 15


def test_retention_max_age_days(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with sched(store_path, max_concurrency=1) as s:
        h = s.domain(sch)
        ids = h.submit_batch([stamp.call(log=log, tag=f"t{i}") for i in range(4)]).inserted
        s.wait_idle(timeout=DEADLINE)
    # make two rows three days old, in the store file while no coordinator holds it
    con = duckdb.connect(store_path)
    try:
        con.execute("UPDATE task_history SET completed_at = completed_at - INTERVAL 3 DAY WHERE id IN (?, ?)",
                    ids[:2])
    finally:
        con.close()
    with sched(store_path, max_concurrency=1, retention=tm.MaxAgeDays(1), retention_every=2) as s:
        h = s.domain(sch)
        assert history_ids(s) == ids  # nothing pruned before retention_every completions
        more = h.submit_batch([stamp.call(log=log, tag=f"m{i}") for i in range(2)]).inserted
        s.wait_idle(timeout=DEADLINE)
        assert history_ids(s) == ids[2:] + more  # the old rows went, the fresh ones stay
        assert s.store.history_stats("sch::stamp").count == 4


# --------------------------------------------------------------------------- incremental batch jobs


def test_skip_completed_runs_only_what_did_not_complete(store_path: str, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    m = str(marks)
    runs = lambda: Counter(ln["n"] for ln in lines(str(marks / "log")))  # noqa: E731
    items = lambda ns: [ingest.call(n=n, marks=m) for n in ns]  # noqa: E731
    (marks / "fail-2").touch()
    with sched(store_path) as s:
        h = s.domain(inc)
        first = h.submit_batch(items(range(5)))
        assert all(isinstance(o, tm.Inserted) for o in first)
        ids1 = first.ids
        s.wait_idle(timeout=DEADLINE)
        assert [s.wait(i, timeout=5).status.value for i in ids1] == ["completed"] * 2 + ["failed"] + ["completed"] * 2

        # second run of the job, item 2 fixed and item 5 new: only those two are inserted
        (marks / "fail-2").unlink()
        second = h.submit_batch(items(range(6)))
        for n in (0, 1, 3, 4):
            assert second[n] == tm.Duplicate(existing_id=ids1[n]), (n, second[n])
        assert isinstance(second[2], tm.Inserted) and second[2].id not in ids1  # its newest row failed
        assert isinstance(second[5], tm.Inserted)
        assert second.inserted == [second[2].id, second[5].id]
        s.wait_idle(timeout=DEADLINE)
        assert runs() == Counter({0: 1, 1: 1, 2: 2, 3: 1, 4: 1, 5: 1})
        assert h.submit(ingest, n=0, marks=m) == tm.Duplicate(existing_id=ids1[0])  # single submissions too

        # per submission: "skip" on a skip_completed type runs a completed key again ...
        again0 = h.submit(ingest.options(duplicate="skip"), n=0, marks=m)
        assert isinstance(again0, tm.Inserted)
        # ... and a key whose newest row failed (after an older completed one) is run again later
        (marks / "fail-3").touch()
        bad3 = h.submit(ingest.options(duplicate="skip"), n=3, marks=m)
        assert s.wait(bad3.id, timeout=DEADLINE).status == tm.HistoryStatus.FAILED
        (marks / "fail-3").unlink()
        # per submission "skip_completed" on a type whose default is "skip"
        p = h.submit(plain_ingest, n=0, marks=m)
        assert s.wait(p.id, timeout=DEADLINE).status == COMPLETED
        assert h.submit(plain_ingest.options(duplicate="skip_completed"), n=0, marks=m) == \
            tm.Duplicate(existing_id=p.id)
        p2 = h.submit(plain_ingest, n=0, marks=m)  # plain skip: a finished key is free
        assert isinstance(p2, tm.Inserted) and p2.id != p.id
        s.wait_idle(timeout=DEADLINE)

    # after a restart the store still knows what completed
    with sched(store_path) as s:
        h = s.domain(inc)
        third = h.submit_batch(items(range(7)))
        assert third[0] == tm.Duplicate(existing_id=again0.id)  # the newest completed row
        assert third[1] == tm.Duplicate(existing_id=ids1[1])
        assert third[2] == tm.Duplicate(existing_id=second[2].id)
        assert isinstance(third[3], tm.Inserted)  # newest row failed
        assert third[4] == tm.Duplicate(existing_id=ids1[4])
        assert third[5] == tm.Duplicate(existing_id=second[5].id)
        assert isinstance(third[6], tm.Inserted)
        assert third.inserted == [third[3].id, third[6].id]
        s.wait_idle(timeout=DEADLINE)
        assert runs() == Counter({0: 2, 1: 1, 2: 2, 3: 3, 4: 1, 5: 1, 6: 1})
        assert s.wait(third[3].id, timeout=5).status == COMPLETED


def test_start_paused(store_path: str, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    m = str(marks)
    with sched(store_path, start_paused=True) as s:
        assert s.is_paused() is True
        h = s.domain(inc)
        batch = h.submit_batch([ingest.call(n=n, marks=m) for n in range(3)])
        assert all(isinstance(o, tm.Inserted) and o.group_paused is False for o in batch)
        for tid in batch.ids:
            rec = s.task(tid)
            assert rec.status == tm.TaskStatus.PAUSED and rec.pause_reasons == ["global"]
        snap = s.snapshot()
        assert snap.is_paused and snap.paused_count == 3 and snap.pending_count == 0 and snap.running_count == 0
        # skip_completed on an active key behaves like skip
        assert h.submit(ingest, n=0, marks=m) == tm.Duplicate(existing_id=batch[0].id)
        assert h.submit(ingest.options(priority=tm.Priority.HIGH), n=1, marks=m) == tm.Upgraded(task_id=batch[1].id)
        quiet_for(1.0)
        assert lines(str(marks / "log")) == [] and history_ids(s) == []
        assert s.resume_all() == 3
        assert s.is_paused() is False
        s.wait_idle(timeout=DEADLINE)
        assert [s.wait(i, timeout=5).status for i in batch.ids] == [COMPLETED] * 3
        assert sorted(ln["n"] for ln in lines(str(marks / "log"))) == [0, 1, 2]
