"""End-to-end preemption (issue 7, F12) in both modes, with real workers and signals.

- ``"cancel"``: a REALTIME submission makes a running BACKGROUND task see
  ``ctx.cancelled``; it goes back to ``paused`` with the reason ``preempted``
  (no retry counted), the REALTIME task runs, and only when no preemptor is
  left does the victim run again and finish;
- ``"suspend"``: the victim's worker is stopped (its process state is ``T``),
  its cores are given back while it is stopped, the REALTIME task runs on
  another worker, and the victim then continues the same attempt and finishes
  its CPU-bound work intact (one start, the right answer, no retry);
- cancelling a suspended task ends it at once and kills its stopped worker;
- ``preempt_priority=None`` turns preemption off.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
import pytest
from polling import poll_until
from taskfiles import append, lines, wait_flag

import taskmill as tm

pe = tm.Domain("pe")


@pe.task(priority=tm.Priority.BACKGROUND, retry=tm.RetryPolicy.constant(max_retries=3, delay=0.0))
def background(ctx: tm.TaskContext, log: str, flag: str) -> str:
    append(log, f"start {ctx.task_id} {ctx.record.retry_count} {os.getpid()}")
    if wait_flag(ctx, flag) == "cancelled":
        append(log, f"stopped {ctx.task_id}")
        raise tm.Retryable("preempted")
    append(log, f"done {ctx.task_id}")
    return "done"


@pe.task(priority=tm.Priority.BACKGROUND)
def crunch(ctx: tm.TaskContext, log: str, flag: str, n: int) -> int:
    """CPU-bound: sums squares, waiting for ``flag`` half way (so the test can preempt it there)."""
    append(log, f"start {ctx.task_id} {os.getpid()}")
    total = sum(i * i for i in range(n))
    append(log, f"half {ctx.task_id}")
    wait_flag(ctx, flag)
    total += sum(i * i for i in range(n, 2 * n))
    append(log, f"done {ctx.task_id}")
    return total


@pe.task(priority=tm.Priority.REALTIME)
def urgent(ctx: tm.TaskContext, log: str) -> str:
    append(log, f"urgent {ctx.task_id}")
    return "urgent"


def _state(pid: int) -> str:
    return psutil.Process(pid).status()


def test_cancel_mode_pauses_the_victim_until_no_preemptor_is_left(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pe], max_concurrency=1) as s:
        h = s.domain(pe)
        victim = h.submit(background, log=log, flag=flag)
        poll_until(lambda: any(ln.startswith("start") for ln in lines(log)), what="the victim running")
        first = h.submit(background.options(priority=tm.Priority.REALTIME), log=log, flag=flag + ".2")
        rec = poll_until(lambda: (r := s.task(victim.id)) is not None and r.status == tm.TaskStatus.PAUSED and r,
                         what="the victim paused")
        assert rec.pause_reasons == ["preempted"] and rec.retry_count == 0
        second = h.submit(urgent, log=log)  # another preemptor (queued behind the first): the victim waits for both
        open(flag + ".2", "w").close()
        assert s.wait(first.id, timeout=60).status == tm.HistoryStatus.COMPLETED
        assert s.wait(second.id, timeout=60).status == tm.HistoryStatus.COMPLETED
        open(flag, "w").close()
        hist = s.wait(victim.id, timeout=60)
        assert hist.status == tm.HistoryStatus.COMPLETED and hist.retry_count == 0
        assert s.metrics_snapshot().preempted == 1
    victim_starts = [ln for ln in lines(log) if ln.startswith(f"start {victim.id} ")]
    assert [ln.split()[2] for ln in victim_starts] == ["0", "0"]  # from the start again, no retry counted
    order = [ln.split()[0] + ln.split()[1] for ln in lines(log)]
    # the victim started again only after the last preemptor ran
    assert order.index(f"urgent{second.id}") < len(order) - 1 - order[::-1].index(f"start{victim.id}")


def test_suspend_mode_stops_the_worker_and_the_victim_continues_intact(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    n = 200_000
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pe], max_concurrency=1, preemption="suspend",
                      capacity=tm.Capacity(cpus=1)) as s:
        h = s.domain(pe)
        victim = h.submit(crunch, log=log, flag=flag, n=n)
        poll_until(lambda: any(ln.startswith("half") for ln in lines(log)), what="the victim half way")
        pid = int(next(ln for ln in lines(log) if ln.startswith("start")).split()[2])
        first = h.submit(background.options(priority=tm.Priority.REALTIME), log=log, flag=flag + ".2")
        poll_until(lambda: _state(pid) == psutil.STATUS_STOPPED, what="the victim's worker stopped")
        rec = s.task(victim.id)
        assert rec is not None and rec.status == tm.TaskStatus.PAUSED and rec.pause_reasons == ["preempted"]
        poll_until(lambda: any(ln.startswith(f"start {first.id} ") for ln in lines(log)),
                   what="the preemptor running on another worker")
        open(flag + ".2", "w").close()
        assert s.wait(first.id, timeout=60).status == tm.HistoryStatus.COMPLETED
        open(flag, "w").close()
        hist = s.wait(victim.id, timeout=60)
        assert hist.status == tm.HistoryStatus.COMPLETED and hist.retry_count == 0
        assert hist.result == sum(i * i for i in range(2 * n))
        assert s.snapshot().capacity.cpus_in_use == 0.0
        # the pool shrinks back to one worker per slot plus the spare
        poll_until(lambda: s.snapshot().workers == 2, what="the pool trimmed back to 2 workers")
    assert sum(ln.startswith(f"start {victim.id} ") for ln in lines(log)) == 1  # the same run, never restarted


def test_a_suspended_victim_gives_back_its_cores_while_stopped(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pe], max_concurrency=1, preemption="suspend",
                      capacity=tm.Capacity(cpus=1)) as s:
        h = s.domain(pe)
        victim = h.submit(crunch, log=log, flag=flag, n=10)
        poll_until(lambda: any(ln.startswith("half") for ln in lines(log)), what="the victim half way")
        blocker = h.submit(background.options(priority=tm.Priority.REALTIME), log=log, flag=flag + ".2")
        poll_until(lambda: (r := s.task(victim.id)) is not None and r.status == tm.TaskStatus.PAUSED,
                   what="the victim suspended")
        poll_until(lambda: s.snapshot().running_count == 1, what="the preemptor running")
        snap = s.snapshot()
        assert snap.capacity.cpus_in_use == 1.0 and [r.id for r in snap.running] == [blocker.id]
        open(flag + ".2", "w").close()
        open(flag, "w").close()
        assert s.wait(victim.id, timeout=60).status == tm.HistoryStatus.COMPLETED


def test_cancelling_a_suspended_task_ends_it_and_its_stopped_worker(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pe], max_concurrency=1, preemption="suspend") as s:
        h = s.domain(pe)
        victim = h.submit(crunch, log=log, flag=flag, n=10)
        poll_until(lambda: any(ln.startswith("half") for ln in lines(log)), what="the victim half way")
        pid = int(next(ln for ln in lines(log) if ln.startswith("start")).split()[2])
        hold = h.submit(background.options(priority=tm.Priority.REALTIME), log=log, flag=flag + ".2")
        poll_until(lambda: _state(pid) == psutil.STATUS_STOPPED, what="the victim's worker stopped")
        assert h.cancel(victim.id)
        assert s.wait(victim.id, timeout=60).status == tm.HistoryStatus.CANCELLED
        poll_until(lambda: not psutil.pid_exists(pid) or _state(pid) == psutil.STATUS_ZOMBIE,
                   what="the stopped worker killed")
        open(flag + ".2", "w").close()
        assert s.wait(hold.id, timeout=60).status == tm.HistoryStatus.COMPLETED


def test_preemption_can_be_turned_off(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pe], max_concurrency=1, preempt_priority=None) as s:
        h = s.domain(pe)
        victim = h.submit(background, log=log, flag=flag)
        poll_until(lambda: lines(log), what="the victim running")
        first = h.submit(urgent, log=log)
        time.sleep(0.5)
        assert s.task(victim.id).status == tm.TaskStatus.RUNNING
        open(flag, "w").close()
        assert s.wait(first.id, timeout=60).status == tm.HistoryStatus.COMPLETED
        assert s.metrics_snapshot().preempted == 0
    with pytest.raises(ValueError, match="preemption must be"):
        tm.Scheduler(str(tmp_path / "t.duckdb"), [pe], preemption="kill")


def test_a_delayed_preemptor_preempts_when_it_is_due(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pe], max_concurrency=1) as s:
        h = s.domain(pe)
        victim = h.submit(background, log=log, flag=flag)
        poll_until(lambda: lines(log), what="the victim running")
        later = h.submit(background.options(priority=tm.Priority.REALTIME, run_after=0.8), log=log,
                         flag=flag + ".2")
        time.sleep(0.3)
        assert s.task(victim.id).status == tm.TaskStatus.RUNNING  # not before the preemptor is due
        poll_until(lambda: (r := s.task(victim.id)) is not None and r.status == tm.TaskStatus.PAUSED,
                   what="the victim preempted once the delay ended")
        open(flag + ".2", "w").close()
        open(flag, "w").close()
        assert s.wait(later.id, timeout=60).status == tm.HistoryStatus.COMPLETED
        assert s.wait(victim.id, timeout=60).status == tm.HistoryStatus.COMPLETED
