"""Seed table "Cross-domain operations (Scheduler)": one test per row.

One scheduler for the module (``max_concurrency=4``) with three domains:
``alpha`` (cap 1: one running, one pending), ``beta`` (two running, one
blocked on alpha's running task, one paused by its group), ``gamma`` (one
recurring schedule whose first run is an hour away, so it waits as pending).
A fourth domain, ``ghost``, is never registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from polling import poll_until

import taskmill as tm

from .helpers import DEADLINE, module_world, wait_flag, wait_running

alpha = tm.Domain("alpha", max_concurrency=1)
beta = tm.Domain("beta")
gamma = tm.Domain("gamma")
ghost = tm.Domain("ghost")


@alpha.task
def a_hold(ctx: tm.TaskContext, flag: str, n: int) -> str:
    ctx.progress(0.5)
    return wait_flag(ctx, flag)


@beta.task
def b_hold(ctx: tm.TaskContext, flag: str, n: int) -> str:
    return wait_flag(ctx, flag)


@beta.task
def b_work(ctx: tm.TaskContext, x: int) -> int:
    return x


@gamma.task
def tick(ctx: tm.TaskContext) -> str:
    return "tick"


@ghost.task
def boo(ctx: tm.TaskContext) -> None:
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("cross")
    flag = str(tmp / "flag")
    with module_world(str(tmp / "store.duckdb"), [alpha, beta, gamma], flags=[flag], max_concurrency=4) as s:
        a, b, g = s.domain(alpha), s.domain(beta), s.domain(gamma)
        finished = b.submit(b_work, x=0).id
        s.wait(finished, timeout=DEADLINE)
        a_run = a.submit(a_hold.options(priority=tm.Priority.HIGH), flag=flag, n=1).id
        b_run1 = b.submit(b_hold, flag=flag, n=1).id
        b_run2 = b.submit(b_hold.options(priority=tm.Priority.BACKGROUND), flag=flag, n=2).id
        wait_running(s, a_run, b_run1, b_run2)
        a_pend = a.submit(a_hold, flag=flag, n=2).id
        b_blocked = b.submit(b_work.options(depends_on=[a_run]), x=1).id
        s.pause_group("parked")
        b_paused = b.submit(b_work.options(group="parked"), x=2).id
        rec = g.submit(tick.options(recurring=tm.Recurring(3600, max_executions=3, initial_delay=3600))).id
        yield {"s": s, "finished": finished, "a_run": a_run, "b_run1": b_run1, "b_run2": b_run2,
               "a_pend": a_pend, "b_blocked": b_blocked, "b_paused": b_paused, "rec": rec}


def test_scheduler_domain_returns_handle_or_raises_for_unregistered(world: dict[str, Any]) -> None:
    s = world["s"]
    h = s.domain(alpha)
    assert isinstance(h, tm.DomainHandle) and h.name == "alpha"
    assert s.domain("alpha").name == "alpha"
    assert [r.id for r in h.active_tasks()] == [world["a_run"]]  # the handle is scoped to alpha
    with pytest.raises(tm.UnknownDomain):
        s.domain(ghost)
    with pytest.raises(tm.UnknownDomain):
        s.domain("ghost")
    # the fallible variant
    assert s.try_domain(ghost) is None and s.try_domain("ghost") is None
    t = s.try_domain(beta)
    assert isinstance(t, tm.DomainHandle) and t.name == "beta"


def test_scheduler_active_tasks_combines_all_domains(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    active = s.active_tasks()
    assert all(isinstance(r, tm.TaskRecord) and r.status == tm.TaskStatus.RUNNING for r in active)
    assert sorted(r.id for r in active) == sorted([w["a_run"], w["b_run1"], w["b_run2"]])
    per_domain = [r.id for d in (alpha, beta, gamma) for r in s.domain(d).active_tasks()]
    assert sorted(r.id for r in active) == sorted(per_domain)  # = aggregating each domain's active_tasks()
    assert {r.domain for r in active} == {"alpha", "beta"}


def test_scheduler_task_finds_any_active_task_by_id(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    for key, domain, status in [("a_run", "alpha", "running"), ("a_pend", "alpha", "pending"),
                                ("b_run2", "beta", "running"), ("b_blocked", "beta", "blocked"),
                                ("b_paused", "beta", "paused"), ("rec", "gamma", "pending")]:
        rec = s.task(w[key])
        assert isinstance(rec, tm.TaskRecord), key
        assert (rec.id, rec.domain, rec.status) == (w[key], domain, status)
    assert s.task(w["finished"]) is None  # in history, not active
    assert s.task(10**9) is None


def test_scheduler_snapshot_has_global_aggregates(world: dict[str, Any]) -> None:
    s, w = world["s"], world

    def with_progress() -> tm.SchedulerSnapshot | None:
        sn = s.snapshot()
        return sn if any(p.header.task_id == w["a_run"] and p.reported_percent == 0.5 for p in sn.progress) else None

    snap = poll_until(with_progress, DEADLINE, what="alpha's progress in the global snapshot")
    assert isinstance(snap, tm.SchedulerSnapshot)
    assert sorted(r.id for r in snap.running) == sorted([w["a_run"], w["b_run1"], w["b_run2"]])
    assert snap.running_count == 3
    assert snap.pending_count == 2  # alpha's queued task and gamma's delayed recurring task
    assert (snap.paused_count, snap.blocked_count, snap.waiting_count) == (1, 1, 0)
    assert sorted(p.header.task_id for p in snap.progress) == sorted([w["a_run"], w["b_run1"], w["b_run2"]])
    assert isinstance(snap.pressure, float) and 0.0 <= snap.pressure <= 1.0
    assert snap.max_concurrency == 4 and snap.is_paused is False
    assert [i.task_id for i in snap.recurring_schedules] == [w["rec"]]
    info = snap.recurring_schedules[0]
    assert isinstance(info, tm.RecurringScheduleInfo)
    assert (info.task_type, info.interval_secs, info.max_executions, info.execution_count, info.paused) == (
        "gamma::tick", 3600.0, 3, 0, False)
    assert [g.group for g in snap.paused_groups] == ["parked"]
    # the global numbers agree with the store's and the domains'
    assert snap.pending_count == s.store.pending_count() and snap.running_count == s.store.running_count()
    assert snap.pending_count == sum(s.domain(d).snapshot().pending_count for d in (alpha, beta, gamma))
