"""F27: every event of ``taskmill.events``, emitted at its transition, through real workers.

One scheduler for the module (4 slots, a fast TTL sweep, a progress ticker).
Each test works in its own domain or group and subscribes before it acts, so
the events it looks for are its own: it collects a stream until the events it
expects have come (``until``), then checks their order and fields. Given a
task that does X, when it runs, then the stream shows the event X names, with
the header of that task and the fields the API promises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import poll_until

import taskmill as tm
from taskmill import events as ev

from .helpers import DEADLINE, module_world, wait_flag, wait_history, wait_running

pytestmark = pytest.mark.timeout(180)


def _ok(ctx: tm.TaskContext, n: int = 0, **_: Any) -> dict:
    return {"n": n}


def _hold(ctx: tm.TaskContext, flag: str, **_: Any) -> str:
    return wait_flag(ctx, flag)


basic = tm.Domain("ev_basic")
ok = basic.task(name="ok")(_ok)
hold = basic.task(name="hold")(_hold)


@basic.task(retry=tm.RetryPolicy.constant(2, 0.05))
def flaky(ctx: tm.TaskContext, n: int) -> None:
    raise ValueError(f"flaky {n}")


@basic.task(retry=tm.RetryPolicy.constant(1, 0.05))
def asks_later(ctx: tm.TaskContext) -> None:
    raise tm.Retryable("come back later", retry_after=0.3)


@basic.task
def refuses(ctx: tm.TaskContext) -> None:
    raise tm.Permanent("never")


@basic.task
def reports(ctx: tm.TaskContext, steps: int) -> str:
    for i in range(steps):
        ctx.progress((i + 1) / steps, f"step {i + 1}")
        time.sleep(0.3)
    return "done"


fam = tm.Domain("ev_fam")
child = fam.task(name="child")(_hold)


@fam.task
def parent(ctx: tm.TaskContext, kids: int, flag: str) -> str:
    for i in range(kids):
        ctx.spawn_child(child, flag=flag, n=i)  # they wait for the flag: the parent returns first
    return "memo"


graph = tm.Domain("ev_graph")
g_ok = graph.task(name="ok")(_ok)
g_hold = graph.task(name="hold")(_hold)


@graph.task(retry=tm.RetryPolicy.none())
def g_fail(ctx: tm.TaskContext, flag: str) -> None:
    wait_flag(ctx, flag)
    raise tm.Permanent("prerequisite fails")


timing = tm.Domain("ev_time")
t_ok = timing.task(name="ok")(_ok)


@timing.task
def slow(ctx: tm.TaskContext, seconds: float) -> str:
    time.sleep(seconds)
    return "slow"


other = tm.Domain("ev_other")
o_ok = other.task(name="ok")(_ok)
bytes_dom = tm.Domain("ev_bytes")


@bytes_dom.task
def copies(ctx: tm.TaskContext, flag: str) -> str:
    ctx.set_bytes_total(1000)
    ctx.add_bytes(400)
    return wait_flag(ctx, flag)


DOMAINS = [basic, fam, graph, timing, other, bytes_dom]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tm.Scheduler]:
    base = tmp_path_factory.mktemp("events")
    with module_world(str(base / "store.duckdb"), DOMAINS, max_concurrency=4, expiry_sweep_interval=0.2,
                      progress_interval=0.1, flags=[str(base / "release")]) as s:
        yield s


def until(stream: tm.EventStream, done: Callable[[list[Any]], bool], what: str,
          timeout: float = DEADLINE) -> list[Any]:
    """Events of ``stream`` (in order) until ``done(events so far)``."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}; got {[type(e).__name__ for e in got]}")
        e = stream.get(timeout=min(left, 1.0))
        if e is not None:
            got.append(e)
    return got


def about(events: list[Any], task_id: int) -> list[Any]:
    """The events of one task, in order (task events by header, the others by their task_id)."""
    out = []
    for e in events:
        tid = e.header.task_id if isinstance(e, ev.TaskEvent) else getattr(e, "task_id", None)
        if tid == task_id:
            out.append(e)
    return out


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def ended(task_id: int, kind: type) -> Callable[[list[Any]], bool]:
    return lambda got: any(isinstance(e, kind) and about([e], task_id) for e in got)


# =========================================================================== runs


def test_dispatched_then_completed_with_the_final_history_record(world: tm.Scheduler) -> None:
    h = world.domain(basic)
    with world.subscribe() as stream:
        tid = h.submit(ok.options(tags={"job": "a"}), n=3).id
        got = about(until(stream, ended(tid, ev.Completed), "Completed"), tid)
    assert kinds(got) == ["Dispatched", "Completed"]
    header = got[0].header
    assert (header.task_id, header.task_type, header.domain, header.tags) == (tid, "ev_basic::ok", "ev_basic",
                                                                               {"job": "a"})
    assert header.base_priority == header.effective_priority == tm.Priority.NORMAL
    assert got[1].record == world.wait(tid)  # exactly the row the store keeps
    assert got[1].record.result == {"n": 3} and got[1].to_dict()["record"]["status"] == "completed"


def test_failed_attempts_say_they_retry_with_the_backoff_used_then_the_task_is_dead_lettered(
        world: tm.Scheduler) -> None:
    h = world.domain(basic)
    with world.subscribe() as stream:
        tid = h.submit(flaky, n=1).id
        got = about(until(stream, ended(tid, ev.DeadLettered), "DeadLettered"), tid)
    assert kinds(got) == ["Dispatched", "Failed", "Dispatched", "Failed", "Dispatched", "DeadLettered"]
    for failed in (got[1], got[3]):
        assert failed.will_retry and failed.retry_after == pytest.approx(0.05) and failed.record is None
        assert "ValueError: flaky 1" in failed.error
    assert got[5].retry_count == 2 and "ValueError: flaky 1" in got[5].error


def test_a_failed_attempt_carries_the_tasks_own_retry_after(world: tm.Scheduler) -> None:
    h = world.domain(basic)
    with world.subscribe() as stream:
        tid = h.submit(asks_later).id
        got = about(until(stream, ended(tid, ev.DeadLettered), "DeadLettered"), tid)
    failed = [e for e in got if isinstance(e, ev.Failed)]
    assert len(failed) == 1 and failed[0].will_retry and failed[0].retry_after == pytest.approx(0.3)


def test_a_permanent_failure_is_failed_for_good_with_its_record(world: tm.Scheduler) -> None:
    h = world.domain(basic)
    with world.subscribe() as stream:
        tid = h.submit(refuses).id
        got = about(until(stream, ended(tid, ev.Failed), "Failed"), tid)
    assert kinds(got) == ["Dispatched", "Failed"]
    assert not got[1].will_retry and got[1].retry_after is None
    assert got[1].record == world.wait(tid) and got[1].record.status == tm.HistoryStatus.FAILED


def test_progress_reports_arrive_as_progress_events(world: tm.Scheduler) -> None:
    h = world.domain(basic)
    with world.subscribe() as stream:
        tid = h.submit(reports, steps=3).id
        got = about(until(stream, ended(tid, ev.Completed), "Completed"), tid)
    progress = [e for e in got if isinstance(e, ev.Progress)]
    assert [(p.percent, p.message) for p in progress] == [(1 / 3, "step 1"), (2 / 3, "step 2"), (1.0, "step 3")]
    assert kinds(got)[0] == "Dispatched" and kinds(got)[-1] == "Completed"


def test_a_cancelled_task_ends_with_cancelled(world: tm.Scheduler) -> None:
    h = world.domain(basic)
    with world.subscribe() as stream:
        tid = h.submit(ok.options(run_after=3600), n=1).id
        assert world.cancel(tid)
        got = about(until(stream, ended(tid, ev.Cancelled), "Cancelled"), tid)
    assert kinds(got) == ["Cancelled"]


def test_a_superseded_task_names_the_task_that_replaced_it(world: tm.Scheduler) -> None:
    h = world.domain(basic)
    with world.subscribe() as stream:
        old = h.submit(ok.options(key="sup", run_after=3600), n=1).id
        new = h.submit(ok.options(key="sup", duplicate="supersede"), n=2).id
        got = about(until(stream, ended(old, ev.Superseded), "Superseded"), old)
    assert kinds(got) == ["Superseded"] and got[0].new_task_id == new and got[0].header.task_id == old
    world.wait(new, timeout=DEADLINE)


def test_a_batch_is_told_with_its_new_ids(world: tm.Scheduler) -> None:
    h = world.domain(basic)
    with world.subscribe() as stream:
        out = h.submit_batch([ok.call(n=100 + i) for i in range(3)] + [ok.call(n=100)])  # the last: a duplicate
        got = until(stream, lambda g: any(isinstance(e, ev.BatchSubmitted) for e in g), "BatchSubmitted")
    batch = next(e for e in got if isinstance(e, ev.BatchSubmitted))
    assert batch.count == 4 and batch.inserted_ids == sorted(out.inserted)
    assert len(batch.inserted_ids) == 3
    poll_until(lambda: world.metrics_snapshot().batches_submitted >= 1, DEADLINE, what="the batch counted")


def test_a_preempted_run_is_told(world: tm.Scheduler, tmp_path: Path) -> None:
    h = world.domain(basic)
    flag = str(tmp_path / "flag")
    with world.subscribe() as stream:
        low = h.submit(hold.options(priority=tm.Priority.BACKGROUND), flag=flag).id
        wait_running(world, low)
        urgent = h.submit(ok.options(priority=tm.Priority.REALTIME), n=9).id
        got = until(stream, ended(low, ev.Preempted), "Preempted")
        Path(flag).touch()
    assert kinds(about(got, low)) == ["Dispatched", "Preempted"]
    world.wait(urgent, timeout=DEADLINE)
    world.wait(low, timeout=DEADLINE)


# =========================================================================== families and graphs


def test_a_parent_waits_for_its_children(world: tm.Scheduler, tmp_path: Path) -> None:
    h = world.domain(fam)
    flag = str(tmp_path / "flag")
    with world.subscribe() as stream:
        pid = h.submit(parent, kids=2, flag=flag).id
        first = until(stream, lambda g: any(isinstance(e, ev.Waiting) for e in g), "Waiting")
        Path(flag).touch()
        mine = about(first + until(stream, ended(pid, ev.Completed), "the parent's Completed"), pid)
    assert kinds(mine) == ["Dispatched", "Waiting", "Completed"]
    assert mine[1].children_count == 2
    assert mine[2].record.result == "memo" and mine[2].record == world.wait(pid)


def test_unblocked_and_dependency_failed(world: tm.Scheduler, tmp_path: Path) -> None:
    h = world.domain(graph)
    flag = str(tmp_path / "flag")
    with world.subscribe() as stream:
        first = h.submit(g_hold, flag=flag).id
        after = h.submit(g_ok.options(depends_on=[first]), n=1).id
        doomed_pre = h.submit(g_fail, flag=flag).id
        doomed = h.submit(g_ok.options(depends_on=[doomed_pre]), n=2).id
        Path(flag).touch()
        got = until(stream, lambda g: ended(after, ev.Completed)(g) and ended(doomed, ev.DependencyFailed)(g),
                    "TaskUnblocked and DependencyFailed")
    assert kinds(about(got, after)) == ["TaskUnblocked", "Dispatched", "Completed"]
    failed = about(got, doomed)
    assert kinds(failed) == ["DependencyFailed"] and failed[0].failed_dependency == doomed_pre
    assert wait_history(world, doomed) == ["dependency_failed"]
    poll_until(lambda: world.metrics_snapshot().dependency_failures >= 1, DEADLINE, what="the failure counted")


# =========================================================================== time


def test_an_expired_task_says_how_old_it_was(world: tm.Scheduler) -> None:
    h = world.domain(timing)
    with world.subscribe() as stream:
        tid = h.submit(t_ok.options(ttl=0.3, run_after=3600), n=1).id
        got = about(until(stream, ended(tid, ev.TaskExpired), "TaskExpired"), tid)
    assert kinds(got) == ["TaskExpired"] and got[0].age >= 0.3


def test_a_recurring_run_tells_its_count_and_next_run_until_the_last(world: tm.Scheduler) -> None:
    h = world.domain(timing)
    with world.subscribe() as stream:
        tid = h.submit(t_ok.options(recurring=tm.Recurring(0.3, max_executions=2)), n=5).id
        got = about(until(stream, lambda g: kinds(about(g, tid)).count("Completed") == 2, "two runs"), tid)
    runs = [e for e in got if isinstance(e, ev.RecurringCompleted)]
    assert [r.execution_count for r in runs] == [1, 2]
    assert runs[0].next_run is not None and runs[1].next_run is None
    assert kinds(got) == ["Dispatched", "RecurringCompleted", "Completed", "Dispatched", "RecurringCompleted",
                          "Completed"]


def test_occurrences_a_late_run_overlapped_are_skipped_and_told(world: tm.Scheduler) -> None:
    h = world.domain(timing)
    with world.subscribe() as stream:
        tid = h.submit(slow.options(recurring=tm.Recurring(0.1, max_executions=2)), seconds=0.5).id
        got = about(until(stream, lambda g: any(isinstance(e, ev.RecurringSkipped) for e in about(g, tid)),
                          "RecurringSkipped"), tid)
    skipped = next(e for e in got if isinstance(e, ev.RecurringSkipped))
    assert "skipped" in skipped.reason
    poll_until(lambda: world.metrics_snapshot().recurring_skipped >= 1, DEADLINE, what="the skip counted")
    world.cancel_recurring(tid)


# =========================================================================== scopes and settings


def test_a_global_pause_and_resume_are_told(world: tm.Scheduler) -> None:
    with world.subscribe() as stream:
        world.pause_all()
        world.resume_all()
        got = until(stream, lambda g: any(isinstance(e, ev.Resumed) for e in g), "Resumed")
    assert kinds([e for e in got if isinstance(e, (ev.Paused, ev.Resumed))]) == ["Paused", "Resumed"]


def test_a_group_pause_counts_what_it_holds_and_resumes_by_itself(world: tm.Scheduler, tmp_path: Path) -> None:
    h = world.domain(other)
    flag = str(tmp_path / "flag")
    with world.subscribe() as stream:
        running = world.domain(basic).submit(hold.options(group="ev-g"), flag=flag).id
        wait_running(world, running)
        waiting = h.submit(o_ok.options(group="ev-g", run_after=3600), n=1).id
        world.pause_group_until("ev-g", time.time() + 0.5)
        got = until(stream, lambda g: any(isinstance(e, ev.GroupResumed) for e in g), "GroupResumed")
        Path(flag).touch()
    paused = next(e for e in got if isinstance(e, ev.GroupPaused))
    assert (paused.group, paused.pending_count, paused.running_count) == ("ev-g", 1, 1)
    resumed = next(e for e in got if isinstance(e, ev.GroupResumed))
    assert resumed.group == "ev-g" and resumed.resumed_count >= 1
    world.cancel(waiting)


def test_a_group_weight_change_is_told(world: tm.Scheduler) -> None:
    with world.subscribe() as stream:
        world.set_group_weight("ev-w", 3.0)
        world.remove_group_weight("ev-w")
        got = until(stream, lambda g: sum(isinstance(e, ev.GroupWeightChanged) for e in g) == 2, "two changes")
    changes = [(e.group, e.previous_weight, e.new_weight) for e in got if isinstance(e, ev.GroupWeightChanged)]
    assert changes == [("ev-w", 1.0, 3.0), ("ev-w", 3.0, 1.0)]


# =========================================================================== scoped streams


def test_a_domain_stream_gets_its_domain_and_the_global_pause_only(world: tm.Scheduler) -> None:
    with world.domain(other).events() as mine, world.domain(timing).task_events(t_ok) as typed:
        a = world.domain(other).submit(o_ok, n=1).id
        b = world.domain(timing).submit(t_ok, n=2).id
        world.domain(timing).submit(slow, seconds=0.0)
        world.pause_all()
        world.resume_all()
        got = until(mine, lambda g: any(isinstance(e, ev.Resumed) for e in g) and ended(a, ev.Completed)(g),
                    "its domain's events and Resumed")
        typed_got = until(typed, ended(b, ev.Completed), "the type's events")
        world.wait(b, timeout=DEADLINE)
    for e in got:
        assert isinstance(e, (ev.Paused, ev.Resumed)) or e.header.domain == "ev_other", e
    assert {e.header.task_type for e in typed_got if isinstance(e, ev.TaskEvent)} == {"ev_time::ok"}


def test_progress_subscriptions_tick_with_byte_progress(world: tm.Scheduler, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    h = world.domain(bytes_dom)
    with h.subscribe_progress() as ticks:
        tid = h.submit(copies, flag=flag).id
        record = poll_until(lambda: next((p for p in iter(lambda: ticks.get(0.2), None) if p.task_id == tid), None),
                            DEADLINE, what="a TaskProgress of the task")
        Path(flag).touch()
    assert isinstance(record, tm.TaskProgress)
    assert (record.bytes_completed, record.bytes_total) == (400, 1000)
    world.wait(tid, timeout=DEADLINE)


def test_progress_subscriptions_need_a_progress_interval(store_path: str) -> None:
    d = tm.Domain("plain")
    with tm.Scheduler(store_path, [d], max_concurrency=1) as s, pytest.raises(tm.ConfigError,
                                                                                  match="progress_interval"):
        s.subscribe_progress()
