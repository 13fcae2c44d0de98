"""Runs queued on busy workers (dispatch ahead), end to end with real workers.

A busy worker is sent its next run while it still runs one, so it starts the
next without waiting for the loop. Such a run stays pending until the worker
claims it, and is taken back whenever something could change it:

- a cancel never lets a queued run start (the cancelled tasks never ran);
- a pause: no task starts after ``pause_all()`` returns;
- a worker killed for its run's timeout, or dying, does not take the run queued
  behind it along: that one runs once, on its first attempt;
- a task that submits children while a run is queued behind it gets its answers
  (the queued run waits in the worker's inbox);
- a run queued behind a long one moves to a worker that falls idle.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from polling import DEADLINE, poll_until, slots_as_cores
from taskfiles import append, lines, wait_flag

import taskmill as tm

qr = tm.Domain("qr")
NO_RETRY = tm.RetryPolicy.none()


@qr.task
def tick(ctx: tm.TaskContext, n: int, log: str, hold: float) -> int:
    append(log, f"{ctx.task_id} {time.time()}")
    time.sleep(hold)
    return n


@qr.task(retry=NO_RETRY)
def stuck(ctx: tm.TaskContext, log: str) -> None:
    append(log, f"stuck {ctx.task_id}")
    time.sleep(60)


@qr.task(retry=NO_RETRY)
def crash(ctx: tm.TaskContext, log: str) -> None:
    append(log, f"crash {ctx.task_id}")
    time.sleep(0.3)
    os._exit(3)


@qr.task
def held(ctx: tm.TaskContext, flag: str) -> str:
    return wait_flag(ctx, flag)


@qr.task
def spawner(ctx: tm.TaskContext, n: int, log: str) -> int:
    child = ctx.spawn_child(tick, n=1000 + n, log=log, hold=0.0)
    return child.id


def _ran(log: str) -> list[int]:
    return [int(line.split()[0]) for line in lines(log) if line[0].isdigit()]


def _history(s: tm.Scheduler) -> dict[int, list[tuple[str, int]]]:
    out: dict[int, list[tuple[str, int]]] = {}
    for r in s.sql("SELECT id, status, retry_count FROM task_history ORDER BY seq"):
        out.setdefault(r["id"], []).append((r["status"], r["retry_count"]))
    return out


#: How long each tick holds its worker, and how many ticks keep the workers busy a while: 2 ms gets
#: two runs queued behind a run, 0 the most.
HOLDS = [(0.002, 600), (0.0, 5000)]


@pytest.mark.parametrize("hold,n", HOLDS)
def test_a_cancelled_task_never_starts_even_if_it_was_queued_on_a_worker(tmp_path: Any, hold: float, n: int) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [qr], max_concurrency=2, capacity=slots_as_cores(2)) as s:
        h = s.domain(qr)
        ids = h.submit_batch([tick.call(n=i, log=log, hold=hold) for i in range(n)]).inserted
        poll_until(lambda: len(_ran(log)) >= 50, what="50 tasks ran")
        cancelled = set(h.cancel_all())
        s.wait_idle(timeout=DEADLINE)
        history = _history(s)
        never_started = {r["id"] for r in s.sql("SELECT id FROM task_history WHERE status = 'cancelled' "
                                                "AND started_at IS NULL")}
    ran = _ran(log)
    assert cancelled and len(cancelled) < len(ids)
    assert len(cancelled - never_started) <= 2  # what was running when the cancel came (2 workers)
    assert not never_started & set(ran), sorted(never_started & set(ran))  # cancelled as pending: never ran
    assert len(ran) == len(set(ran))  # nothing ran twice
    for tid in ids:
        assert history[tid] == ([("cancelled", 0)] if tid in cancelled else [("completed", 0)]), (tid, history[tid])


@pytest.mark.parametrize("hold,n", HOLDS)
def test_nothing_starts_after_pause_all_returns(tmp_path: Any, hold: float, n: int) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [qr], max_concurrency=2, capacity=slots_as_cores(2)) as s:
        h = s.domain(qr)
        h.submit_batch([tick.call(n=i, log=log, hold=hold) for i in range(n)])
        poll_until(lambda: len(_ran(log)) >= 50, what="50 tasks ran")
        s.pause_all()
        paused_at = time.time()
        poll_until(lambda: s.snapshot().running_count == 0, what="the running tasks to end")
        count = len(_ran(log))
        time.sleep(0.3)  # room for a queued run that escaped the pause to show up
        late = [float(line.split()[1]) for line in lines(log) if float(line.split()[1]) > paused_at]
        assert late == [] and len(_ran(log)) == count
        assert s.snapshot().pending_count + s.snapshot().paused_count == n - count
        s.resume_all()
        s.wait_idle(timeout=DEADLINE)
    assert sorted(_ran(log)) == sorted(set(_ran(log))) and len(_ran(log)) == n


@pytest.mark.parametrize("how", ["timed out", "died"])
def test_a_timeout_kill_or_a_crash_spares_the_run_queued_behind(tmp_path: Any, how: str) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [qr], max_concurrency=1, capacity=slots_as_cores(1)) as s:
        h = s.domain(qr)
        task = stuck.options(timeout=0.5) if how == "timed out" else crash
        first = h.submit(task.options(priority=tm.Priority.HIGH), log=log).id
        behind = h.submit_batch([tick.call(n=i, log=log, hold=0.0) for i in range(3)]).inserted
        s.wait_idle(timeout=DEADLINE)
        history = _history(s)
        error = s.sql("SELECT last_error FROM task_history WHERE id = ?", [first])[0]["last_error"]
    assert [status for status, _ in history[first]] == ["dead_letter"]  # no retries
    assert how in error, error
    for tid in behind:
        assert history[tid] == [("completed", 0)], history[tid]
    assert sorted(_ran(log)) == sorted(behind)


def test_a_task_that_submits_gets_its_answer_while_a_run_is_queued_behind_it(tmp_path: Any) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [qr], max_concurrency=1, capacity=slots_as_cores(1)) as s:
        h = s.domain(qr)
        calls = []
        for i in range(6):
            calls += [spawner.call(n=i, log=log), tick.call(n=i, log=log, hold=0.0), tick.call(n=10 + i, log=log, hold=0.0)]
        ids = h.submit_batch(calls).inserted
        s.wait_idle(timeout=DEADLINE)
        rows = s.sql("SELECT id, task_type, status, result, parent_id FROM task_history ORDER BY seq")
    assert all(r["status"] == "completed" for r in rows), rows
    parents = [r for r in rows if r["task_type"] == "qr::spawner"]
    children = {r["id"]: r for r in rows if r["parent_id"] is not None}
    assert len(parents) == 6 and len(children) == 6
    for p in parents:
        assert children[int(p["result"])]["parent_id"] == p["id"]  # each got the id of its own child
    assert sorted(_ran(log)) == sorted(set(_ran(log))) and len(_ran(log)) == 12 + 6
    assert set(ids) <= {r["id"] for r in rows}


def test_a_run_queued_behind_a_long_one_moves_to_a_worker_that_falls_idle(tmp_path: Any) -> None:
    # Two workers: one holds `held` until the flag appears, the other runs ticks. One tick is
    # queued behind `held` when the batch arrives; once the other worker has nothing left, it
    # must take that tick instead of idling while the tick waits for `held`.
    log, flag = str(tmp_path / "log"), str(tmp_path / "flag")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [qr], max_concurrency=2, capacity=slots_as_cores(2)) as s:
        h = s.domain(qr)
        ids = h.submit_batch([held.call(flag=flag)] + [tick.call(n=i, log=log, hold=0.05) for i in range(3)]).inserted
        try:
            poll_until(lambda: len(_ran(log)) == 3, timeout=DEADLINE / 2, what="every tick ran while `held` waits")
            assert s.task(ids[0]).status == tm.TaskStatus.RUNNING
        finally:
            open(flag, "w").close()
        s.wait_idle(timeout=DEADLINE)
        history = _history(s)
    assert all(history[tid] == [("completed", 0)] for tid in ids), history

