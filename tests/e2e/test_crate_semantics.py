"""End-to-end: behaviour as the crate documents it, and the traps a new user falls into.

Real scheduler, real store file, forked workers. Covers:

- a child submitted with the ``parent=ID`` option inherits the parent's
  remaining TTL (a lapsed one is not passed on, an own shorter one wins), its
  tags under its own and the more urgent of its own and the parent's
  *effective* (aged) priority, visible on its record at once (F14);
- ``run_at``/``run_after`` are on the record from the moment ``submit``
  returns, a time already passed included (which is due at once) (F15);
- pausing a recurring schedule stops new occurrences, not the one already
  enqueued; the resume goes on where it left off; both across a restart (F15);
- a task held by a token bucket says when its token comes (``run_after``) in
  ``pending_tasks()``, SQL and the snapshot, other types run meanwhile, and the
  rate stays exact (F20);
- a cancel or pause of a running task stops it at the earlier of its timeout
  and the cancel grace;
- ``max_concurrency`` above the CPU capacity is said once, at start;
- which runtime admission changes survive a restart (pauses do, settings don't).

Waits poll with generous deadlines; the few sleeps show that nothing happens.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from polling import DEADLINE, poll_until, slots_as_cores
from taskfiles import wait_flag

import taskmill as tm

SLACK = 0.05  # wall-clock times are mapped onto the coordinator's monotonic clock

sem = tm.Domain("sem")
limited_dom = tm.Domain("sem_rate")
ALL = [sem, limited_dom]


def _log(path: str, **fields: Any) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(fields) + "\n")


def lines(path: str) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines()] if os.path.exists(path) else []


def ts(dt: datetime | None) -> float:
    assert dt is not None and dt.tzinfo is not None
    return dt.timestamp()


def quiet_for(seconds: float) -> None:
    """Let ``seconds`` pass (only to show that something does NOT happen meanwhile)."""
    end = time.monotonic() + seconds
    poll_until(lambda: time.monotonic() >= end, seconds + DEADLINE, interval=0.05, what="time to pass")


@sem.task
def hold(ctx: tm.TaskContext, log: str, flag: str, tag: str = "hold") -> str:
    """Logs its start, then waits for ``flag`` (or its cancel)."""
    _log(log, tag=tag, id=ctx.task_id, t=time.time())
    return wait_flag(ctx, flag)


@sem.task
def stamp(ctx: tm.TaskContext, log: str, tag: str) -> str:
    _log(log, tag=tag, id=ctx.task_id, t=time.time())
    return tag


@sem.task(retry=tm.RetryPolicy.constant(max_retries=5, delay=0.2))
def stubborn(ctx: tm.TaskContext, log: str, tag: str) -> None:
    """Ignores ``ctx.cancelled``: only a kill stops it."""
    _log(log, tag=tag, id=ctx.task_id, t=time.time(), retry=ctx.record.retry_count)
    end = time.monotonic() + 30.0
    while time.monotonic() < end:
        time.sleep(0.01)


@limited_dom.task
def limited(ctx: tm.TaskContext, log: str, tag: str) -> str:
    _log(log, tag=tag, id=ctx.task_id, t=time.time())
    return tag


@limited_dom.task
def free(ctx: tm.TaskContext, log: str, tag: str) -> str:
    _log(log, tag=tag, id=ctx.task_id, t=time.time())
    return tag


def _started(log: str, tag: str) -> float:
    return poll_until(lambda: next((ln["t"] for ln in lines(log) if ln["tag"] == tag), None), DEADLINE,
                      what=f"{tag} to start")


# --------------------------------------------------------------------------- F14: parent=ID


def test_parent_option_child_inherits_remaining_ttl_tags_and_effective_priority(
        store_path: str, tmp_path: Path) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "flag")
    aging = tm.AgingConfig(grace_period=0, aging_interval=0.1, max_effective_priority=100)
    with tm.Scheduler(store_path, ALL, max_concurrency=1, capacity=slots_as_cores(1),
                      priority_aging=aging) as s:  # the parent holds the one slot: its children wait
        h = s.domain(sem)
        parent = h.submit(hold.options(ttl=600, tags={"team": "a", "shared": "parent"}), log=log, flag=flag)
        _started(log, "hold")
        prec = s.task(parent.id)
        assert prec is not None and prec.status == tm.TaskStatus.RUNNING and prec.priority == tm.Priority.NORMAL
        created, expires = ts(prec.created_at), ts(prec.expires_at)
        poll_until(lambda: time.time() > created + 1.0, DEADLINE, what="the parent to age ten levels")

        def aged(at: float) -> int:  # the parent's effective priority at wall time ``at``
            return max(int(tm.Priority.NORMAL) - int((at - created) // 0.1), 100)

        before = time.time()
        plain = h.submit(stamp.options(parent=parent.id, tags={"shared": "child"}), log=log, tag="plain")
        urgent = h.submit(stamp.options(parent=parent.id, priority=tm.Priority.HIGH), log=log, tag="urgent")
        longer = h.submit(stamp.options(parent=parent.id, ttl=3600), log=log, tag="longer")
        shorter = h.submit(stamp.options(parent=parent.id, ttl=30), log=log, tag="shorter")
        after = time.time()
        recs = {n: s.task(o.id) for n, o in
                (("plain", plain), ("urgent", urgent), ("longer", longer), ("shorter", shorter))}
        # at once, on the records
        assert all(r is not None and r.parent_id == parent.id and r.status == tm.TaskStatus.PENDING
                   for r in recs.values()), recs
        # priority: the more urgent of its own and the parent's effective (aged) one
        assert aged(after) <= recs["plain"].priority <= aged(before) < int(tm.Priority.NORMAL)
        assert recs["urgent"].priority == tm.Priority.HIGH  # its own is more urgent still
        # tags: the parent's under the child's own
        assert recs["plain"].tags == {"team": "a", "shared": "child"}
        assert recs["urgent"].tags == {"team": "a", "shared": "parent"}
        # TTL: what is left of the parent's, never extended by a longer own one; a shorter own one wins
        assert ts(recs["plain"].expires_at) == expires and ts(recs["longer"].expires_at) == expires
        assert before + 30 - SLACK <= ts(recs["shorter"].expires_at) <= after + 30 + SLACK
        # the same in the store (SQL), written with the insert
        rows = {r["id"]: r for r in s.sql("SELECT id, priority, tags FROM tasks WHERE parent_id = ?", [parent.id])}
        assert rows[plain.id]["priority"] == recs["plain"].priority
        assert rows[plain.id]["tags"] == {"team": "a", "shared": "child"}
        Path(flag).touch()
        assert s.wait(parent.id, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED
        hist = {o.id: s.wait(o.id, timeout=DEADLINE) for o in (plain, urgent, longer, shorter)}
        assert all(r.status == tm.HistoryStatus.COMPLETED for r in hist.values())
        assert hist[plain.id].priority == recs["plain"].priority and hist[plain.id].tags == recs["plain"].tags


def test_a_lapsed_parent_ttl_is_not_passed_on(store_path: str, tmp_path: Path) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "flag")
    with tm.Scheduler(store_path, ALL, max_concurrency=2, capacity=slots_as_cores(2)) as s:
        h = s.domain(sem)
        parent = h.submit(hold.options(ttl=0.5), log=log, flag=flag)  # running: its TTL no longer applies
        _started(log, "hold")
        expires = ts(s.task(parent.id).expires_at)
        poll_until(lambda: time.time() > expires + 0.2, DEADLINE, what="the parent's TTL to run out")
        child = h.submit(stamp.options(parent=parent.id), log=log, tag="child")
        rec = s.task(child.id)
        assert rec is None or rec.expires_at is None  # nothing left to inherit: no TTL, not expired at once
        assert s.wait(child.id, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED
        Path(flag).touch()
        assert s.wait(parent.id, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED


# --------------------------------------------------------------------------- F15: run_at / run_after on the record


def test_run_at_and_run_after_are_on_the_record_from_submit(store_path: str, tmp_path: Path) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "flag")
    with tm.Scheduler(store_path, ALL, max_concurrency=1, capacity=slots_as_cores(1)) as s:
        h = s.domain(sem)
        blocker = h.submit(hold.options(priority=tm.Priority.HIGH), log=log, flag=flag)
        _started(log, "hold")  # the one slot is taken: what follows stays pending
        t0 = time.time()
        past_at = datetime.fromtimestamp(t0 - 60, timezone.utc)
        past = h.submit(stamp.options(run_at=past_at), log=log, tag="past")
        past_dt = h.submit(stamp.options(run_after=past_at), log=log, tag="past-dt")
        soon = h.submit(stamp.options(run_after=timedelta(seconds=1)), log=log, tag="soon")
        far = h.submit(stamp.options(run_at=datetime.fromtimestamp(t0 + 3600, timezone.utc)), log=log, tag="far")
        t1 = time.time()
        batch = h.submit_batch([stamp.options(run_at=past_at).call(log=log, tag="batch")]).inserted
        for o in (past, past_dt):
            rec = s.task(o.id)
            assert rec.status == tm.TaskStatus.PENDING and rec.run_after == past_at, rec
        assert s.task(batch[0]).run_after == past_at
        assert t0 + 1.0 - SLACK <= ts(s.task(soon.id).run_after) <= t1 + 1.0 + SLACK
        assert abs(ts(s.task(far.id).run_after) - (t0 + 3600)) < 1e-3
        stored = {r["id"]: r["run_after"] for r in s.sql("SELECT id, run_after FROM tasks WHERE id <> ?",
                                                          [blocker.id])}
        assert all(v is not None for v in stored.values()), stored
        assert {r.id: r.run_after for r in s.store.pending_tasks(10)}[past.id] == past_at
        assert s.store.next_run_after() == past_at  # the earliest, a time already passed included
        # a time already passed is due at once: both run before the one a second away
        Path(flag).touch()
        for o in (past, past_dt, soon):
            assert s.wait(o.id, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED
        started = {ln["tag"]: ln["t"] for ln in lines(log)}
        assert max(started["past"], started["past-dt"]) < started["soon"]
        assert started["soon"] >= t0 + 1.0 - SLACK
        # history keeps the time it was asked for
        assert s.wait(past.id, timeout=DEADLINE).run_after == past_at
        assert s.cancel(far.id) is True


# --------------------------------------------------------------------------- F15: pausing a recurring schedule


def _info(s: tm.Scheduler, rid: int) -> tm.RecurringScheduleInfo:
    return next(i for i in s.store.recurring_schedules() if i.task_id == rid)


def _held(s: tm.Scheduler, rid: int, count: int) -> tm.TaskRecord:
    def at_rest() -> tm.TaskRecord | None:
        r = s.task(rid)
        return r if r is not None and r.status == tm.TaskStatus.PAUSED and r.recurring_execution_count == count \
            else None
    return poll_until(at_rest, DEADLINE, what=f"the schedule held after {count} run(s)")


def test_pausing_a_schedule_stops_new_occurrences_not_the_current_one(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(store_path, ALL, max_concurrency=2, capacity=slots_as_cores(2)) as s:
        h = s.domain(sem)
        t0 = time.time()
        rid = h.submit(stamp.options(recurring=tm.Recurring(0.5, max_executions=3, initial_delay=1.0)),
                       log=log, tag="beat").id
        assert s.pause_recurring(rid) is True
        rec = s.task(rid)
        assert rec.status == tm.TaskStatus.PENDING and rec.recurring_paused is True and rec.pause_reasons == []
        assert _info(s, rid).paused is True
        # the occurrence already enqueued runs at its time ...
        poll_until(lambda: lines(log), DEADLINE, what="the pending occurrence to run")
        assert lines(log)[0]["t"] >= t0 + 1.0 - SLACK
        # ... and the next one is not enqueued: it waits, held by the pause
        rec = _held(s, rid, 1)
        assert rec.pause_reasons == ["recurring"] and rec.recurring_paused is True
        assert _info(s, rid).paused is True and _info(s, rid).execution_count == 1
        quiet_for(1.5)  # three intervals
        assert len(lines(log)) == 1
        # the resume goes on where it left off: three runs in all, not three more
        assert s.resume_recurring(rid) is True
        assert _info(s, rid).paused is False
        poll_until(lambda: s.task(rid) is None, DEADLINE, what="the schedule to run out")
        assert len(lines(log)) == 3 and {ln["id"] for ln in lines(log)} == {rid}
        assert [r["status"] for r in s.sql("SELECT status FROM task_history WHERE id = ? ORDER BY seq", [rid])] \
            == ["completed"] * 3


def test_a_paused_schedule_keeps_its_state_across_restarts(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(store_path, ALL, max_concurrency=2, capacity=slots_as_cores(2)) as s:
        t0 = time.time()
        rid = s.domain(sem).submit(stamp.options(recurring=tm.Recurring(0.5, initial_delay=1.5)),
                                   log=log, tag="beat").id
        assert s.pause_recurring(rid) is True
    assert lines(log) == []
    with tm.Scheduler(store_path, ALL, max_concurrency=2, capacity=slots_as_cores(2)) as s:
        rec = s.task(rid)  # the occurrence enqueued before the pause still runs, after the restart too
        assert rec.status == tm.TaskStatus.PENDING and rec.recurring_paused is True
        poll_until(lambda: lines(log), DEADLINE, what="the pending occurrence to run")
        assert lines(log)[0]["t"] >= t0 + 1.5 - SLACK
        _held(s, rid, 1)
    with tm.Scheduler(store_path, ALL, max_concurrency=2, capacity=slots_as_cores(2)) as s:
        rec = s.task(rid)  # the held one stays held
        assert rec.status == tm.TaskStatus.PAUSED and rec.pause_reasons == ["recurring"]
        assert _info(s, rid).paused is True and _info(s, rid).execution_count == 1
        quiet_for(1.0)
        assert len(lines(log)) == 1
        assert s.resume_recurring(rid) is True
        poll_until(lambda: len(lines(log)) >= 2, DEADLINE, what="a run after the resume")
        assert s.cancel_recurring(rid) is True
        poll_until(lambda: s.task(rid) is None, DEADLINE, what="the schedule to end")


# --------------------------------------------------------------------------- F20: a rate-limited task's run_after


def test_a_rate_limited_task_says_when_its_token_comes(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    limit = tm.RateLimit.per_minute(20).with_burst(1)  # one token every 3 s
    with tm.Scheduler(store_path, ALL, max_concurrency=2, capacity=slots_as_cores(2),
                      rate_limits={"sem_rate::limited": limit}) as s:
        h = s.domain(limited_dom)
        first = h.submit(limited, log=log, tag="first")
        second = h.submit(limited, log=log, tag="second")
        t_first = _started(log, "first")

        def delayed() -> tm.TaskRecord | None:
            r = s.task(second.id)
            return r if r is not None and r.run_after is not None else None
        rec = poll_until(delayed, DEADLINE, what="the second to be given its token's time")
        assert rec.status == tm.TaskStatus.PENDING
        due = ts(rec.run_after)
        assert t_first - 0.5 < due - 3.0 < time.time()  # a token 3 s after the one the first took
        # pending_tasks(), SQL and the snapshot say so too
        assert {r.id: r.run_after for r in s.store.pending_tasks(10)}[second.id] == rec.run_after
        assert s.sql("SELECT run_after FROM tasks WHERE id = ?", [second.id])[0]["run_after"] is not None
        snap = s.snapshot()
        assert snap.pending_count == 1
        (bucket,) = [r for r in snap.rate_limits if r.scope == "type:sem_rate::limited"]
        assert bucket.available_tokens < 1.0
        # another type runs meanwhile
        other = h.submit(free, log=log, tag="free")
        assert s.wait(other.id, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED
        assert s.task(second.id) is not None and _started(log, "free") < due
        assert s.wait(second.id, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED
        assert _started(log, "second") >= due - SLACK
        assert s.wait(first.id, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED


def test_a_token_bucket_rate_stays_exact(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    rate, burst, n = 5, 2, 10
    with tm.Scheduler(store_path, ALL, max_concurrency=2, capacity=slots_as_cores(2),
                      group_rate_limits={"paced": tm.RateLimit.per_second(rate).with_burst(burst)}) as s:
        h = s.domain(limited_dom)
        ids = h.submit_batch([limited.options(group="paced").call(log=log, tag=f"t{i}") for i in range(n)]).inserted
        for tid in ids:
            assert s.wait(tid, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED
        starts = sorted(ln["t"] for ln in lines(log))
        assert len(starts) == n
        # in no window did more start than the burst plus what the rate refilled (a little jitter
        # in when a worker writes its line allowed)
        for i in range(n):
            for j in range(i + 1, n):
                assert j - i + 1 <= burst + rate * (starts[j] - starts[i] + 0.05), (i, j, starts)
        assert starts[-1] - starts[0] >= (n - burst) / rate - 0.05


# --------------------------------------------------------------------------- the earlier of timeout and cancel grace


def test_a_cancel_stops_a_run_at_its_timeout_when_that_comes_first(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(store_path, ALL, max_concurrency=1, capacity=slots_as_cores(1)) as s:
        h = s.domain(sem)
        task = h.submit(stubborn.options(timeout=1.0), log=log, tag="stubborn")
        started = _started(log, "stubborn")
        poll_until(lambda: time.time() >= started + 0.5, DEADLINE, what="half a second of its run")
        t_cancel = time.time()
        assert s.cancel(task.id) is True
        nxt = h.submit(stamp, log=log, tag="next")  # waits for the one slot
        assert s.wait(nxt.id, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED
        # its timeout (0.5 s after the cancel) stopped it, not the 5 s cancel grace
        assert _started(log, "next") - t_cancel < 4.0
        assert s.wait(task.id, timeout=DEADLINE).status == tm.HistoryStatus.CANCELLED


def test_a_pause_stops_a_run_at_its_timeout_when_that_comes_first(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(store_path, ALL, max_concurrency=1, capacity=slots_as_cores(1)) as s:
        h = s.domain(sem)
        task = h.submit(stubborn.options(timeout=1.0, group="g"), log=log, tag="stubborn")
        started = _started(log, "stubborn")
        poll_until(lambda: time.time() >= started + 0.5, DEADLINE, what="half a second of its run")
        t_pause = time.time()
        s.pause_group("g")
        rec = poll_until(lambda: (r := s.task(task.id)) is not None and r.status == tm.TaskStatus.PAUSED and r,
                         DEADLINE, what="the run to be stopped")
        # its timeout (0.5 s after the pause) stopped it, not the 5 s cancel grace; as for any run
        # stopped for a pause, it waits paused with no retry counted
        assert time.time() - t_pause < 4.0
        assert rec.pause_reasons == ["group"] and rec.retry_count == 0
        assert len(lines(log)) == 1  # it did not run again
        assert s.cancel(task.id) is True


# --------------------------------------------------------------------------- max_concurrency above the CPU capacity


def test_max_concurrency_above_the_cpu_capacity_is_said_at_start(
        store_path: str, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="taskmill")
    with tm.Scheduler(store_path, ALL, max_concurrency=8, capacity=tm.Capacity(cpus=2)):
        pass
    said = [r.getMessage() for r in caplog.records if r.name == "taskmill"]
    assert len(said) == 1, said
    assert "max_concurrency=8" in said[0] and "2 cores" in said[0] and "at most 2 task(s)" in said[0]
    assert "cpus=0.25" in said[0] and "capacity=Capacity(cpus=8)" in said[0]
    caplog.clear()
    light = tm.Domain("sem_light")

    @light.task(cpus=0.25)
    def io_bound(ctx: tm.TaskContext) -> None:
        return None

    # an IO-bound type that claims a quarter core can fill eight slots: nothing to say; nor for the default
    with tm.Scheduler(store_path, [light], max_concurrency=8, capacity=tm.Capacity(cpus=2)):
        pass
    with tm.Scheduler(store_path, ALL, capacity=tm.Capacity(cpus=2)):
        pass
    assert [r for r in caplog.records if r.name == "taskmill"] == []


# --------------------------------------------------------------------------- runtime admission changes and restarts


def test_pauses_survive_a_restart_and_runtime_settings_do_not(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(store_path, ALL, max_concurrency=2, capacity=slots_as_cores(2)) as s:
        h = s.domain(sem)
        s.set_max_concurrency(1)
        s.set_group_limit("capped", 1)
        s.set_rate_limit(stamp, tm.RateLimit.per_minute(1))
        s.set_group_weight("heavy", 5.0)
        s.pause_group("held")
        until = time.time() + 2.5
        s.pause_group_until("later", until)
        held = h.submit(stamp.options(group="held"), log=log, tag="held")
        later = h.submit(stamp.options(group="later"), log=log, tag="later")
        assert s.snapshot().max_concurrency == 1
    with tm.Scheduler(store_path, ALL, max_concurrency=2, capacity=slots_as_cores(2)) as s:
        snap = s.snapshot()
        # the settings came from this scheduler's arguments again
        assert snap.max_concurrency == 2 and snap.rate_limits == []
        # the pauses held on, the timed one with its time
        assert s.is_group_paused("held") and s.is_group_paused("later")
        infos = {g.group: g for g in s.paused_groups()}
        assert infos["held"].resume_at is None and abs(ts(infos["later"].resume_at) - until) < 1e-3
        assert s.task(held.id).status == tm.TaskStatus.PAUSED
        assert s.wait(later.id, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED
        assert _started(log, "later") >= until - SLACK
        assert not s.is_group_paused("later")
        assert s.task(held.id).status == tm.TaskStatus.PAUSED and s.is_group_paused("held")
        s.resume_group("held")
        assert s.wait(held.id, timeout=DEADLINE).status == tm.HistoryStatus.COMPLETED
