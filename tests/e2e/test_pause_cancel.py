"""End-to-end pause/resume (F22) and cancellation (F23) through a real scheduler.

Covers, with real forked workers and a real store:
- global, domain and group pause: pending tasks become ``paused`` with their
  ``pause_reasons``; submissions into a paused scope land ``paused``; running
  tasks of the scope see ``ctx.cancelled`` and come back ``paused`` (no history
  row, no retry counted; one that ignores it is stopped after the grace
  period and comes back the same way), then run to completion after resume; a task held by
  two reasons resumes only when both are lifted; a task unblocked by its
  prerequisite inside a paused scope lands ``paused``; ``resume()`` of a domain
  returns how many tasks it moved (0 while the scheduler stays paused);
  ``pause_group_until`` resumes by itself; ``paused_groups()``, snapshots and
  ``is_paused`` agree with the tasks;
- cancellation of one task (pending, running cooperative, paused) and its
  return values; every bulk form (handle ``cancel_all``/``cancel_where``/
  ``cancel_by_tag_key_prefix``, scheduler ``cancel_group``/``cancel_type``/
  ``cancel_by_tag``/``cancel_by_tag_key_prefix``/``cancel_where``) returns
  exactly the ids it cancelled and leaves the rest alone;
- ``@task.on_cancel`` hooks: run with the payload when a running task is
  cancelled (not for a task that never started: the hook is for cleaning up
  partial work), a hook that hangs is killed after ``cancel_hook_timeout``
  without hurting the scheduler, and ``close()`` stays prompt while one hangs;
- cascade: cancelling a waiting parent cancels its children, in its own and in
  another domain.

Tasks that must stay put block on a flag file; a task asked to stop raises
``Retryable`` as SPEC §7 shows (``if ctx.cancelled: raise tm.Retryable(...)``).
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from polling import poll_until, slots_as_cores
from taskfiles import append as _append
from taskfiles import lines as _lines

import taskmill as tm

DEADLINE = 60.0  # seconds any single wait may take on a loaded 2-core machine
FAR = 3600.0  # run_after that keeps a task pending for the whole test

# --------------------------------------------------------------------------- task functions (module level)

pa = tm.Domain("pa", max_concurrency=1)  # one at a time: a second task stays pending behind the first
pb = tm.Domain("pb")
hk = tm.Domain("hk")


def _hold(ctx: tm.TaskContext, flag: str, log: str) -> str:
    """Log the start (with the retry count), run until ``flag`` exists; asked to stop, raise."""
    _append(log, f"start {ctx.task_id} {ctx.record.retry_count}")
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(flag):
        if ctx.cancelled:
            _append(log, f"stopped {ctx.task_id}")
            raise tm.Retryable("asked to stop")
        if time.monotonic() > deadline:
            raise tm.Permanent(f"flag {flag} never appeared")
        time.sleep(0.01)
    _append(log, f"done {ctx.task_id}")
    return "done"


@pa.task(retry=tm.RetryPolicy.constant(max_retries=3, delay=0.0))
def pa_hold(ctx: tm.TaskContext, flag: str, log: str) -> str:
    return _hold(ctx, flag, log)


@pa.task
def pa_work(ctx: tm.TaskContext, x: int, log: str | None = None) -> int:
    if log:
        _append(log, f"work {x}")
    return x


@pa.task
def spawner(ctx: tm.TaskContext, flag: str, log: str, ids: str, local: bool) -> str:
    """A parent: children here (if ``local``) and in domain pb, one of them delayed; then returns."""
    kids = []
    if local:
        kids.append(ctx.spawn_child(pa_hold, flag=flag, log=log).id)
    kids.append(ctx.spawn_child(pb_hold, flag=flag, log=log).id)
    kids.append(ctx.spawn_child(pb_work.options(run_after=FAR), x=1).id)
    Path(ids).write_text(json.dumps(kids))
    return "memo"


@pb.task(retry=tm.RetryPolicy.constant(max_retries=3, delay=0.0))
def pb_hold(ctx: tm.TaskContext, flag: str, log: str) -> str:
    return _hold(ctx, flag, log)


@pb.task
def pb_work(ctx: tm.TaskContext, x: int, log: str | None = None) -> int:
    if log:
        _append(log, f"work {x}")
    return x


@pb.task
def stubborn(ctx: tm.TaskContext, flag: str, pids: str) -> str:
    """Never looks at ctx.cancelled."""
    _append(pids, str(os.getpid()))
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(flag):
        if time.monotonic() > deadline:
            raise tm.Permanent("flag never appeared")
        time.sleep(0.01)
    return "done"


@hk.task
def hooked(ctx: tm.TaskContext, flag: str, log: str, out: str) -> str:
    return _hold(ctx, flag, log)


@hooked.on_cancel
def _hooked_cancelled(ctx: tm.TaskContext, flag: str, log: str, out: str) -> None:
    Path(out, f"hook-{ctx.task_id}").write_text(json.dumps({"flag": flag, "log": log, "pid": os.getpid()}))


@hk.task
def hangs(ctx: tm.TaskContext, flag: str, log: str, out: str) -> str:
    return _hold(ctx, flag, log)


@hangs.on_cancel
def _hangs_cancelled(ctx: tm.TaskContext, flag: str, log: str, out: str) -> None:
    Path(out, f"hang-{ctx.task_id}").write_text(str(os.getpid()))
    time.sleep(120)
    Path(out, f"hang-end-{ctx.task_id}").write_text("the hook was not stopped")


ALL = [pa, pb, hk]


def sched(store: str, **kw: Any) -> tm.Scheduler:
    kw.setdefault("max_concurrency", 2)
    kw.setdefault("capacity", slots_as_cores(kw["max_concurrency"]))
    return tm.Scheduler(store_path=store, domains=ALL, **kw)


def started(log: str, task_id: int, times: int = 1) -> bool:
    return sum(ln.startswith(f"start {task_id} ") for ln in _lines(log)) >= times


def wait_started(s: tm.Scheduler, log: str, task_id: int, times: int = 1) -> None:
    poll_until(lambda: started(log, task_id, times) and any(r.id == task_id for r in s.active_tasks()),
               DEADLINE, what=f"task {task_id} running (start #{times})")


def wait_status(s: tm.Scheduler, task_id: int, status: tm.TaskStatus) -> tm.TaskRecord:
    def check() -> tm.TaskRecord | None:
        rec = s.task(task_id)
        return rec if rec is not None and rec.status == status else None
    return poll_until(check, DEADLINE, what=f"task {task_id} {status.value}")


def reasons(s: tm.Scheduler, task_id: int) -> tuple[str, list[str]]:
    rec = s.task(task_id)
    assert rec is not None, f"task {task_id} is not active"
    return rec.status.value, sorted(rec.pause_reasons)


def history(s: tm.Scheduler, task_id: int) -> list[tuple[str, int]]:
    rows = s.sql("SELECT status, retry_count FROM task_history WHERE id = ? ORDER BY completed_at", [task_id])
    return [(r["status"], r["retry_count"]) for r in rows]


def active_ids(s: tm.Scheduler) -> set[int]:
    return {r["id"] for r in s.sql("SELECT id FROM tasks")}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------- pause and resume (F22)


def test_global_pause_holds_everything_and_resumes(store_path: str, tmp_path: Path) -> None:
    flag, log = str(tmp_path / "flag"), str(tmp_path / "log")
    with sched(store_path, max_concurrency=1) as s:
        run = s.domain(pa).submit(pa_hold, flag=flag, log=log)
        wait_started(s, log, run.id)
        pend = s.domain(pb).submit(pb_work, x=1, log=log)  # waits for the only slot
        assert reasons(s, pend.id) == ("pending", [])
        assert s.is_paused() is False

        assert s.pause_all() == 2  # one pending moved, one running asked to stop
        assert s.is_paused() is True
        rec = wait_status(s, run.id, tm.TaskStatus.PAUSED)
        assert f"stopped {run.id}" in _lines(log)  # it saw ctx.cancelled
        assert rec.pause_reasons == ["global"] and rec.retry_count == 0 and rec.started_at is None
        assert reasons(s, pend.id) == ("paused", ["global"])
        new = s.domain(pb).submit(pb_work, x=2, log=log)
        assert isinstance(new, tm.Inserted) and new.group_paused is False
        assert reasons(s, new.id) == ("paused", ["global"])

        snap = s.snapshot()
        assert snap.is_paused is True and snap.paused_count == 3
        assert snap.pending_count == 0 and snap.running_count == 0
        assert s.store.paused_count() == 3
        assert sorted(r.id for r in s.store.paused_tasks()) == sorted([run.id, pend.id, new.id])
        assert s.sql("SELECT count(*) AS n FROM task_history") == [{"n": 0}]  # the stop wrote no history row
        assert s.domain(pa).is_paused() is False  # the domain itself is not paused

        assert s.resume_all() == 3
        assert s.is_paused() is False and s.resume_all() == 0
        Path(flag).touch()
        for tid in (run.id, pend.id, new.id):
            assert s.wait(tid, timeout=DEADLINE).status == "completed"
        s.wait_idle(timeout=DEADLINE)
        assert history(s, run.id) == [("completed", 0)]  # one row: the pause cost no retry
        assert [ln for ln in _lines(log) if ln.startswith(f"start {run.id}")] == [f"start {run.id} 0"] * 2
        assert [ln for ln in _lines(log) if ln.startswith("work")] == ["work 1", "work 2"]
        end = s.snapshot()
        assert end.is_paused is False and end.paused_count == 0 and s.store.paused_count() == 0

        # resumed before the stopped run is back: it comes back runnable, still no retry counted
        flag2 = flag + "-2"
        run2 = s.domain(pa).submit(pa_hold, flag=flag2, log=log)
        wait_started(s, log, run2.id)
        s.pause_all()
        s.resume_all()
        poll_until(lambda: f"stopped {run2.id}" in _lines(log), DEADLINE, what="the pause seen")
        wait_started(s, log, run2.id, 2)
        Path(flag2).touch()
        assert s.wait(run2.id, timeout=DEADLINE).status == "completed"
        assert history(s, run2.id) == [("completed", 0)]
        assert s.snapshot().paused_count == 0 and s.is_paused() is False


def test_pause_of_a_task_that_ignores_it(store_path: str, tmp_path: Path) -> None:
    """A running task that never looks at ctx.cancelled is stopped after the grace period and
    still comes back paused: no history row, no retry counted, and it runs again on resume."""
    flag, pids = str(tmp_path / "flag"), str(tmp_path / "pids")
    with sched(store_path, max_concurrency=1) as s:
        run = s.domain(pb).submit(stubborn, flag=flag, pids=pids)
        poll_until(lambda: len(_lines(pids)) == 1, DEADLINE, what="task started")
        first = int(_lines(pids)[0])
        assert s.domain(pb).pause() == 1
        rec = wait_status(s, run.id, tm.TaskStatus.PAUSED)
        assert rec.pause_reasons == ["domain"] and rec.retry_count == 0
        assert history(s, run.id) == []
        poll_until(lambda: not alive(first), DEADLINE, what="the stubborn worker stopped")
        assert s.domain(pb).resume() == 1
        poll_until(lambda: len(_lines(pids)) == 2, DEADLINE, what="task started again")
        Path(flag).touch()
        done = s.wait(run.id, timeout=DEADLINE)
        assert done.status == "completed" and done.result == "done" and done.retry_count == 0
        assert history(s, run.id) == [("completed", 0)]


def test_domain_pause_and_global_pause_together(store_path: str, tmp_path: Path) -> None:
    flag, log = str(tmp_path / "flag"), str(tmp_path / "log")
    with sched(store_path, max_concurrency=2) as s:
        h = s.domain(pa)
        run = h.submit(pa_hold, flag=flag, log=log)
        wait_started(s, log, run.id)
        pend = h.submit(pa_work, x=1, log=log)  # behind pa's cap of 1
        assert reasons(s, pend.id) == ("pending", [])

        assert h.pause() == 2
        assert h.is_paused() is True and s.is_paused() is False
        rec = wait_status(s, run.id, tm.TaskStatus.PAUSED)
        assert rec.pause_reasons == ["domain"] and rec.retry_count == 0
        assert f"stopped {run.id}" in _lines(log)
        assert reasons(s, pend.id) == ("paused", ["domain"])
        new = h.submit(pa_work, x=2, log=log)
        assert isinstance(new, tm.Inserted) and reasons(s, new.id) == ("paused", ["domain"])
        # another domain is not held
        assert s.wait(s.domain(pb).submit(pb_work, x=7).id, timeout=DEADLINE).status == "completed"

        ms = h.snapshot()
        assert ms.is_paused is True and ms.paused_count == 3 and ms.pending_count == 0 and ms.running == []
        assert s.domain(pb).snapshot().is_paused is False and s.domain(pb).snapshot().paused_count == 0
        g = s.snapshot()
        assert g.paused_count == 3 and g.is_paused is False and s.store.paused_count() == 3

        assert s.pause_all() == 0  # nothing was pending any more: all of it was already paused
        assert all(reasons(s, t)[1] == ["domain", "global"] for t in (run.id, pend.id, new.id))
        assert h.resume() == 0  # the whole scheduler is still paused
        assert h.is_paused() is False and s.is_paused() is True
        assert all(reasons(s, t) == ("paused", ["global"]) for t in (run.id, pend.id, new.id))
        assert h.resume() == 0  # not paused any more: nothing to do
        assert s.resume_all() == 3

        Path(flag).touch()
        for tid in (run.id, pend.id, new.id):
            assert s.wait(tid, timeout=DEADLINE).status == "completed"
        assert history(s, run.id) == [("completed", 0)]
        assert [ln for ln in _lines(log) if ln.startswith("work")] == ["work 1", "work 2"]  # FIFO kept
        # pause() then resume() of a domain with pending work: the counts are the tasks moved
        later = [h.submit(pa_work.options(run_after=FAR), x=10 + i).id for i in range(3)]
        assert h.pause() == 3 and all(reasons(s, t) == ("paused", ["domain"]) for t in later)
        assert h.resume() == 3 and all(reasons(s, t) == ("pending", []) for t in later)
        assert sorted(h.cancel_all()) == later


def test_group_pause_two_reasons_and_timed_resume(store_path: str, tmp_path: Path) -> None:
    flag, log = str(tmp_path / "flag"), str(tmp_path / "log")
    with sched(store_path, max_concurrency=2) as s:
        h = s.domain(pb)
        run = h.submit(pb_hold.options(group="g"), flag=flag, log=log)
        wait_started(s, log, run.id)
        assert s.is_group_paused("g") is False and s.paused_groups() == []

        t0 = datetime.now(timezone.utc)
        assert s.pause_group("g") == 1
        assert s.is_group_paused("g") is True and h.is_group_paused("g") is True
        rec = wait_status(s, run.id, tm.TaskStatus.PAUSED)
        assert rec.pause_reasons == ["group"] and rec.retry_count == 0
        assert f"stopped {run.id}" in _lines(log)
        sub = h.submit(pb_work.options(group="g"), x=1, log=log)
        assert isinstance(sub, tm.Inserted) and sub.group_paused is True
        assert reasons(s, sub.id) == ("paused", ["group"])
        # ungrouped work and other groups still run
        assert s.wait(h.submit(pb_work, x=2).id, timeout=DEADLINE).status == "completed"
        assert s.wait(h.submit(pb_work.options(group="other"), x=3).id, timeout=DEADLINE).status == "completed"

        [info] = s.paused_groups()
        assert isinstance(info, tm.PausedGroupInfo)
        assert info.group == "g" and info.paused_task_count == 2 and info.resume_at is None
        assert t0.timestamp() - 1 <= info.paused_at.timestamp() <= time.time() + 1
        assert h.paused_groups() == [info]
        assert [p.group for p in s.snapshot().paused_groups] == ["g"]
        # a task unblocked by its prerequisite while its group is paused lands paused too
        pre = h.submit(pb_work.options(run_after=0.5), x=8)
        dep = h.submit(pb_work.options(group="g", depends_on=[pre.id]), x=9, log=log)
        assert reasons(s, dep.id) == ("blocked", [])
        assert s.wait(pre.id, timeout=DEADLINE).status == "completed"
        poll_until(lambda: reasons(s, dep.id) == ("paused", ["group"]), DEADLINE, what="unblocked into paused")

        # a second reason: both must be lifted
        assert s.pause_all() == 0
        assert reasons(s, run.id) == ("paused", ["global", "group"])
        assert reasons(s, sub.id) == ("paused", ["global", "group"])
        assert s.resume_all() == 0  # still held by the group
        assert reasons(s, run.id) == ("paused", ["group"]) and reasons(s, sub.id) == ("paused", ["group"])
        snap = s.snapshot()
        assert snap.paused_count == 3 and snap.is_paused is False and s.store.paused_count() == 3
        assert [(p.group, p.paused_task_count) for p in s.paused_groups()] == [("g", 3)]
        assert not started(log, run.id, 2)
        assert s.resume_group("g") == 3
        assert s.is_group_paused("g") is False and s.paused_groups() == [] and s.resume_group("g") == 0
        wait_started(s, log, run.id, 2)
        Path(flag).touch()
        assert s.wait(sub.id, timeout=DEADLINE).status == "completed"
        assert s.wait(dep.id, timeout=DEADLINE).status == "completed"
        assert s.wait(run.id, timeout=DEADLINE).status == "completed"
        assert history(s, run.id) == [("completed", 0)]

        # the handle's group calls reach the same (scheduler-wide) groups
        assert h.pause_group("hg") == 0 and s.is_group_paused("hg") is True
        held = s.domain(pa).submit(pa_work.options(group="hg"), x=5)
        assert isinstance(held, tm.Inserted) and held.group_paused is True
        assert [(p.group, p.paused_task_count) for p in h.paused_groups()] == [("hg", 1)]
        assert h.resume_group("hg") == 1 and h.is_group_paused("hg") is False
        assert s.wait(held.id, timeout=DEADLINE).status == "completed"

        # paused until a time, then it resumes by itself
        when = datetime.fromtimestamp(time.time() + 2.0, timezone.utc)
        assert s.pause_group_until("later", when) == 0
        timed = h.submit(pb_work.options(group="later"), x=4)
        assert isinstance(timed, tm.Inserted) and timed.group_paused is True
        [info] = s.paused_groups()
        assert info.group == "later" and info.paused_task_count == 1
        assert info.resume_at is not None and abs(info.resume_at.timestamp() - when.timestamp()) < 1e-3
        assert reasons(s, timed.id) == ("paused", ["group"])
        done = s.wait(timed.id, timeout=DEADLINE)
        assert done.status == "completed" and done.result == 4
        assert done.started_at.timestamp() >= when.timestamp() - 0.05  # not before the pause ended
        assert s.is_group_paused("later") is False and s.paused_groups() == []


# --------------------------------------------------------------------------- cancellation (F23)


def test_cancel_one_task_in_each_state(store_path: str, tmp_path: Path) -> None:
    flag, log = str(tmp_path / "flag"), str(tmp_path / "log")
    with sched(store_path, max_concurrency=2) as s:
        h = s.domain(pa)
        run = h.submit(pa_hold, flag=flag, log=log)
        wait_started(s, log, run.id)
        pend = h.submit(pa_work, x=1, log=log)
        assert reasons(s, pend.id) == ("pending", [])

        # pending: straight to history
        assert h.cancel(pend.id) is True
        assert h.cancel(pend.id) is False and s.cancel(pend.id) is False  # already gone
        assert s.task(pend.id) is None
        assert s.wait(pend.id, timeout=DEADLINE).status == tm.HistoryStatus.CANCELLED

        # running: it sees ctx.cancelled, the row is cancelled
        assert s.domain(pb).cancel(run.id) is False  # not that domain's task
        assert s.cancel(run.id) is True
        assert s.wait(run.id, timeout=DEADLINE).status == tm.HistoryStatus.CANCELLED
        poll_until(lambda: f"stopped {run.id}" in _lines(log), DEADLINE, what="ctx.cancelled seen")
        assert s.cancel(run.id) is False

        # paused: at once
        assert s.pause_group("gp") == 0
        held = s.domain(pb).submit(pb_work.options(group="gp"), x=9, log=log)
        assert reasons(s, held.id) == ("paused", ["group"])
        assert s.domain(pb).cancel(held.id) is True
        assert s.task(held.id) is None
        assert s.wait(held.id, timeout=DEADLINE).status == tm.HistoryStatus.CANCELLED
        assert s.resume_group("gp") == 0 and s.paused_groups() == []

        # unknown and finished ids
        fin = h.submit(pa_work, x=2, log=log)
        assert s.wait(fin.id, timeout=DEADLINE).status == "completed"
        assert s.cancel(fin.id) is False and h.cancel(fin.id) is False
        assert s.cancel(10**9) is False and h.cancel(10**9) is False
        s.wait_idle(timeout=DEADLINE)
        for tid in (pend.id, run.id, held.id):
            assert history(s, tid) == [("cancelled", 0)]
        assert history(s, fin.id) == [("completed", 0)]
        assert [ln for ln in _lines(log) if ln.startswith("work")] == ["work 2"]  # the cancelled never ran
        assert s.snapshot().paused_count == 0 and active_ids(s) == set()


def test_bulk_cancel_forms_return_exactly_what_they_cancelled(store_path: str, tmp_path: Path) -> None:
    flag, log = str(tmp_path / "flag"), str(tmp_path / "log")
    with sched(store_path, max_concurrency=2) as s:
        ha, hb = s.domain(pa), s.domain(pb)

        def a(x: int, **opts: Any) -> int:
            return ha.submit(pa_work.options(run_after=FAR, **opts), x=x).id

        def b(x: int, **opts: Any) -> int:
            return hb.submit(pb_work.options(run_after=FAR, **opts), x=x).id

        a1, b1 = a(1, tags={"team": "x", "env.prod": "1"}, group="g1"), b(1, tags={"team": "x"}, group="g1")
        a2, b2 = a(2, tags={"team": "y"}, group="g2"), b(2, group="g2")
        a3, b3 = a(3, tags={"env.dev": "1"}), b(3)
        a4, b4 = a(4, tags={"k.one": "1"}), b(4, tags={"env.qa": "1"})
        a5, b5 = a(5), b(5, tags={"k.two": "1"})
        a6, b6 = a(60), b(70)
        a7 = a(7)
        bh = hb.submit(pb_hold, flag=flag, log=log).id
        wait_started(s, log, bh)
        b7 = hb.submit(pb_hold.options(run_after=FAR), flag=flag + "-2", log=log).id
        live = {a1, a2, a3, a4, a5, a6, a7, b1, b2, b3, b4, b5, b6, b7, bh}
        assert active_ids(s) == live

        def check(got: list[int], expected: list[int]) -> None:
            assert sorted(got) == sorted(expected) and len(got) == len(expected)
            live.difference_update(expected)
            assert active_ids(s) == live
            for tid in expected:
                assert history(s, tid) == [("cancelled", 0)]

        check(s.cancel_by_tag("team", "x"), [a1, b1])  # across domains; team=y stays
        check(s.cancel_by_tag("team", "nobody"), [])
        check(s.cancel_group("g2"), [a2, b2])
        check(s.cancel_group("g1"), [])  # already gone
        check(ha.cancel_by_tag_key_prefix("k."), [a4])  # b5 (k.two) is another domain's
        check(s.cancel_by_tag_key_prefix("env."), [a3, b4])  # env.dev, env.qa; env.prod went with a1
        seen: list[tm.TaskRecord] = []

        def big(r: tm.TaskRecord) -> bool:
            seen.append(r)
            return r.payload["x"] >= 60 if r.payload and "x" in r.payload else False

        check(ha.cancel_where(big), [a6])  # b6 (x=70) is another domain's
        assert seen and {r.domain for r in seen} == {"pa"} and all(isinstance(r, tm.TaskRecord) for r in seen)
        check(ha.cancel_where(lambda r: False), [])
        check(s.cancel_where(lambda r: (r.payload or {}).get("x") == 5), [a5, b5])  # across domains
        check(s.cancel_type("pb::pb_work"), [b3, b6])  # pb_hold tasks stay
        check(s.cancel_type("pb::nothing"), [])
        check(hb.cancel_all(), [bh, b7])  # running and pending; pa's a7 stays
        poll_until(lambda: f"stopped {bh}" in _lines(log), DEADLINE, what="the running task saw ctx.cancelled")
        assert live == {a7}
        check(ha.cancel_all(), [a7])
        check(ha.cancel_all(), [])
        assert live == set()
        # the scheduler still runs work afterwards
        assert s.wait(hb.submit(pb_work, x=100).id, timeout=DEADLINE).result == 100


# --------------------------------------------------------------------------- on_cancel hooks


def test_on_cancel_hook_runs_for_a_cancelled_running_task(store_path: str, tmp_path: Path) -> None:
    flag, log, out = str(tmp_path / "flag"), str(tmp_path / "log"), str(tmp_path)
    with sched(store_path, max_concurrency=1) as s:
        h = s.domain(hk)
        run = h.submit(hooked, flag=flag, log=log, out=out)
        wait_started(s, log, run.id)
        pend = h.submit(hooked, flag=flag + "-p", log=log, out=out)  # behind the only worker
        assert reasons(s, pend.id) == ("pending", [])
        assert h.cancel(pend.id) is True  # never started: nothing to clean up
        assert h.cancel(run.id) is True
        hook = Path(out, f"hook-{run.id}")
        poll_until(hook.exists, DEADLINE, what="the on_cancel hook ran")
        got = poll_until(lambda: hook.read_text() and json.loads(hook.read_text()), DEADLINE, what="hook output")
        assert got["flag"] == flag and got["log"] == log  # the task's payload
        assert f"stopped {run.id}" in _lines(log)
        assert s.wait(run.id, timeout=DEADLINE).status == "cancelled"
        # one worker, hooks in cancel order: a hook for the pending task would have run first
        nxt = h.submit(hooked, flag=flag, log=log, out=out)
        Path(flag).touch()
        assert s.wait(nxt.id, timeout=DEADLINE).status == "completed"
        assert not Path(out, f"hook-{pend.id}").exists()
        assert not Path(out, f"hook-{nxt.id}").exists()  # completed tasks run no hook
        assert history(s, run.id) == [("cancelled", 0)] and history(s, pend.id) == [("cancelled", 0)]


def test_hanging_on_cancel_hook_is_stopped(store_path: str, tmp_path: Path) -> None:
    flag, log, out = str(tmp_path / "flag"), str(tmp_path / "log"), str(tmp_path)
    with sched(store_path, max_concurrency=1, cancel_hook_timeout=1.0) as s:
        h = s.domain(hk)
        run = h.submit(hangs, flag=flag, log=log, out=out)
        wait_started(s, log, run.id)
        assert s.cancel(run.id) is True
        marker = Path(out, f"hang-{run.id}")
        hook_pid = int(poll_until(lambda: marker.exists() and marker.read_text(), DEADLINE, what="hook started"))
        assert s.wait(run.id, timeout=DEADLINE).status == "cancelled"
        # the only worker is stuck in the hook; after the timeout the scheduler carries on
        nxt = s.domain(pb).submit(pb_work, x=3)
        assert s.wait(nxt.id, timeout=DEADLINE).result == 3
        poll_until(lambda: not alive(hook_pid), DEADLINE, what="the hanging hook killed")
        again = s.domain(pb).submit(pb_work, x=4)
        assert s.wait(again.id, timeout=DEADLINE).result == 4
        assert not Path(out, f"hang-end-{run.id}").exists()
        assert history(s, run.id) == [("cancelled", 0)]

    # closing while a hook hangs (with a long limit) is prompt and leaves no process behind
    with sched(str(tmp_path / "second.duckdb"), max_concurrency=1, cancel_hook_timeout=300.0) as s:
        run = s.domain(hk).submit(hangs, flag=flag + "-2", log=log, out=out)
        wait_started(s, log, run.id)
        assert s.cancel(run.id) is True
        marker = Path(out, f"hang-{run.id}")
        hook_pid = int(poll_until(lambda: marker.exists() and marker.read_text(), DEADLINE, what="hook started"))
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 30
    poll_until(lambda: not alive(hook_pid), 10, what="the hook's worker gone after close()")
    assert not Path(out, f"hang-end-{run.id}").exists()


# --------------------------------------------------------------------------- cascade to children


def test_cancelling_a_waiting_parent_cancels_its_children(store_path: str, tmp_path: Path) -> None:
    flag, log = str(tmp_path / "flag"), str(tmp_path / "log")
    with sched(store_path, max_concurrency=3) as s:
        ha = s.domain(pa)
        ids = str(tmp_path / "ids1")
        parent = ha.submit(spawner, flag=flag, log=log, ids=ids, local=True)
        rec = wait_status(s, parent.id, tm.TaskStatus.WAITING)
        assert rec.memo == "memo"
        local_kid, far_kid, delayed_kid = json.loads(Path(ids).read_text())
        for kid in (local_kid, far_kid):
            wait_started(s, log, kid)
        child = s.task(far_kid)
        assert child is not None and child.parent_id == parent.id and child.domain == "pb"
        assert reasons(s, delayed_kid) == ("pending", [])
        assert s.snapshot().waiting_count == 1

        assert s.cancel(parent.id) is True
        for tid in (parent.id, local_kid, far_kid, delayed_kid):
            assert s.wait(tid, timeout=DEADLINE).status == "cancelled"
            assert history(s, tid) == [("cancelled", 0)]
        poll_until(lambda: {f"stopped {local_kid}", f"stopped {far_kid}"} <= set(_lines(log)), DEADLINE,
                   what="both running children saw ctx.cancelled")
        assert active_ids(s) == set() and s.snapshot().waiting_count == 0

        # the same through a domain's bulk cancel: only the parent is pa's; its pb children go with it
        ids = str(tmp_path / "ids2")
        parent = ha.submit(spawner, flag=flag, log=log, ids=ids, local=False)
        wait_status(s, parent.id, tm.TaskStatus.WAITING)
        far_kid, delayed_kid = json.loads(Path(ids).read_text())
        wait_started(s, log, far_kid)
        assert ha.cancel_all() == [parent.id]
        for tid in (parent.id, far_kid, delayed_kid):
            assert s.wait(tid, timeout=DEADLINE).status == "cancelled"
        poll_until(lambda: f"stopped {far_kid}" in _lines(log), DEADLINE, what="child saw ctx.cancelled")
        assert active_ids(s) == set()

        # a bulk cancel names every task of its domain it cancelled, a child the parent's cascade took too
        ids = str(tmp_path / "ids3")
        parent = ha.submit(spawner, flag=flag, log=log, ids=ids, local=True)
        wait_status(s, parent.id, tm.TaskStatus.WAITING)
        local_kid, far_kid, delayed_kid = json.loads(Path(ids).read_text())
        for kid in (local_kid, far_kid):
            wait_started(s, log, kid)
        assert sorted(ha.cancel_all()) == sorted([parent.id, local_kid])
        for tid in (parent.id, local_kid, far_kid, delayed_kid):
            assert s.wait(tid, timeout=DEADLINE).status == "cancelled"
        assert active_ids(s) == set()
        assert s.wait(s.domain(pb).submit(pb_work, x=1).id, timeout=DEADLINE).status == "completed"
