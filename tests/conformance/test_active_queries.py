"""Seed table "Active task queries" (``sched.store``): one test per row.

One scheduler for the module (``max_concurrency=3``) holds a known state:

- completed: ``done`` (``act::work`` x=99), already in history;
- running (held on a flag), submitted BACKGROUND, HIGH, NORMAL so that priority
  order differs from id order, each with an expected disk budget;
- pending behind the full slots: five tasks of two types and three priorities;
- paused: two ``cold`` tasks (domain paused; one submitted before the pause,
  one after).

Plus one test with its own scheduler for the "(preempted)" reading of
``paused_tasks``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import poll_until

import taskmill as tm

from .helpers import DEADLINE, module_world, wait_flag, wait_running

act = tm.Domain("act")
cold = tm.Domain("cold")

BG, NORMAL, HIGH = tm.Priority.BACKGROUND, tm.Priority.NORMAL, tm.Priority.HIGH


@act.task
def hold(ctx: tm.TaskContext, flag: str, n: int = 0) -> str:
    return wait_flag(ctx, flag)


@act.task
def work(ctx: tm.TaskContext, x: int) -> int:
    return x


@act.task
def ping(ctx: tm.TaskContext, n: int) -> int:
    return n


@cold.task
def cold_work(ctx: tm.TaskContext, x: int) -> int:
    return x


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("active")
    flag = str(tmp / "flag")
    with module_world(str(tmp / "store.duckdb"), [act, cold], flags=[flag], max_concurrency=3) as s:
        h, c = s.domain(act), s.domain(cold)
        done = h.submit(work, x=99)
        done_rec = s.wait(done.id, timeout=DEADLINE)
        # running: submitted BACKGROUND, HIGH, NORMAL (ids ascending), each waited for
        r_bg = h.submit(hold.options(priority=BG, expected_io=tm.IoBudget.disk(1000, 100)), flag=flag, n=1)
        wait_running(s, r_bg.id)
        r_high = h.submit(hold.options(priority=HIGH, expected_io=tm.IoBudget.disk(20, 3)), flag=flag, n=2)
        wait_running(s, r_high.id)
        r_norm = h.submit(hold.options(expected_io=tm.IoBudget.disk(300, 40)), flag=flag, n=3)
        wait_running(s, r_norm.id)
        # pending behind the three full slots
        p1 = h.submit(work.options(priority=BG), x=1)
        p2 = h.submit(work, x=2)
        p3 = h.submit(ping.options(priority=HIGH), n=3)
        p4 = h.submit(work, x=4)
        p5 = h.submit(work.options(priority=HIGH, expected_io=tm.IoBudget.disk(9999, 9999)), x=5)
        # paused: one pending then paused with its domain, one arriving in the paused domain
        c1 = c.submit(cold_work, x=1)
        moved = c.pause()
        c2 = c.submit(cold_work.options(priority=HIGH), x=2)
        yield {
            "s": s, "done": done.id, "done_key": done_rec.key, "moved": moved,
            "running": {"bg": r_bg.id, "high": r_high.id, "norm": r_norm.id},
            "pending": {"p1": p1.id, "p2": p2.id, "p3": p3.id, "p4": p4.id, "p5": p5.id},
            "paused": {"c1": c1.id, "c2": c2.id},
        }


def test_running_tasks_ordered_by_priority(world: dict[str, Any]) -> None:
    s, r = world["s"], world["running"]
    running = s.store.running_tasks()
    assert all(isinstance(t, tm.TaskRecord) for t in running)
    assert [t.id for t in running] == [r["high"], r["norm"], r["bg"]]  # by priority, not by id
    assert [t.priority for t in running] == [HIGH, NORMAL, BG]
    assert all(t.status == tm.TaskStatus.RUNNING and t.task_type == "act::hold" for t in running)


def test_running_count_counts_running_tasks(world: dict[str, Any]) -> None:
    s = world["s"]
    n = s.store.running_count()
    assert type(n) is int and n == 3


def test_pending_tasks_ordered_by_priority_then_age(world: dict[str, Any]) -> None:
    s, p = world["s"], world["pending"]
    pending = s.store.pending_tasks(10)
    assert all(isinstance(t, tm.TaskRecord) and t.status == tm.TaskStatus.PENDING for t in pending)
    # HIGH (oldest first), then NORMAL (oldest first), then BACKGROUND; paused/running not listed
    assert [t.id for t in pending] == [p["p3"], p["p5"], p["p2"], p["p4"], p["p1"]]
    assert [t.id for t in s.store.pending_tasks(2)] == [p["p3"], p["p5"]]  # the limit keeps the most urgent
    assert s.store.pending_tasks(0) == []
    assert pending[2].payload == {"x": 2} and pending[2].task_type == "act::work"


def test_pending_count_counts_pending_tasks(world: dict[str, Any]) -> None:
    s = world["s"]
    n = s.store.pending_count()
    assert type(n) is int and n == 5  # not the 3 running, not the 2 paused


def test_pending_by_type_filters_by_qualified_type(world: dict[str, Any]) -> None:
    s, p = world["s"], world["pending"]
    work_ = s.store.pending_by_type("act::work")
    assert [t.id for t in work_] == [p["p5"], p["p2"], p["p4"], p["p1"]]
    assert all(isinstance(t, tm.TaskRecord) and t.task_type == "act::work" for t in work_)
    assert [t.id for t in s.store.pending_by_type("act::ping")] == [p["p3"]]
    assert s.store.pending_by_type("act::hold") == []  # all running
    assert s.store.pending_by_type("cold::cold_work") == []  # all paused
    assert s.store.pending_by_type("work") == []  # the short name is not the stored type


def test_paused_tasks_lists_all_paused_tasks(world: dict[str, Any]) -> None:
    s, q = world["s"], world["paused"]
    assert world["moved"] == 1
    paused = s.store.paused_tasks()
    assert all(isinstance(t, tm.TaskRecord) for t in paused)
    assert sorted(t.id for t in paused) == sorted([q["c1"], q["c2"]])
    assert all(t.status == tm.TaskStatus.PAUSED and t.domain == "cold" for t in paused)
    assert all(t.pause_reasons == ["domain"] for t in paused)


def test_paused_count_counts_paused_tasks(world: dict[str, Any]) -> None:
    s = world["s"]
    n = s.store.paused_count()
    assert type(n) is int and n == 2


def test_task_by_id_finds_active_task_by_row_id(world: dict[str, Any]) -> None:
    s, r, p, q = world["s"], world["running"], world["pending"], world["paused"]
    run = s.store.task_by_id(r["high"])
    assert isinstance(run, tm.TaskRecord)
    assert (run.id, run.status, run.task_type, run.domain, run.priority) == (
        r["high"], tm.TaskStatus.RUNNING, "act::hold", "act", HIGH)
    pend = s.store.task_by_id(p["p1"])
    assert pend is not None and pend.status == tm.TaskStatus.PENDING and pend.payload == {"x": 1}
    assert pend.priority == BG
    paused = s.store.task_by_id(q["c2"])
    assert paused is not None and paused.status == tm.TaskStatus.PAUSED and paused.domain == "cold"
    assert s.store.task_by_id(world["done"]) is None  # finished: not an active task
    assert s.store.task_by_id(10**9) is None


def test_task_by_key_finds_active_task_by_dedup_key(world: dict[str, Any]) -> None:
    s, p = world["s"], world["pending"]
    rec = s.store.task_by_id(p["p4"])
    assert rec is not None
    found = s.store.task_by_key(rec.key)
    assert isinstance(found, tm.TaskRecord) and found.id == p["p4"] and found.key == rec.key
    assert s.store.task_by_key(world["done_key"]) is None  # finished: key no longer active
    assert s.store.task_by_key("0" * 64) is None


def test_running_io_totals_sums_expected_disk_bytes_of_running_tasks(world: dict[str, Any]) -> None:
    s = world["s"]
    totals = s.store.running_io_totals()
    assert isinstance(totals, tuple) and len(totals) == 2
    # the three running tasks only: the pending one with 9999/9999 does not count
    assert totals == (1000 + 20 + 300, 100 + 3 + 40)


# --------------------------------------------------------------------------- "(preempted)": own scheduler

pre = tm.Domain("pre")


@pre.task
def pre_hold(ctx: tm.TaskContext, flag: str, started: str) -> str:
    Path(started).touch()
    if wait_flag(ctx, flag) == "cancelled":
        raise tm.Retryable("preempted")  # the SPEC's idiom: stop, come back later
    return "released"


def test_paused_tasks_include_preempted_tasks(tmp_path: Path) -> None:
    """F12: a REALTIME submission preempts lower-priority running work, which shows up as paused."""
    flag = str(tmp_path / "flag")
    with tm.Scheduler(store_path=str(tmp_path / "s.duckdb"), domains=[pre], max_concurrency=1) as s:
        try:
            h = s.domain(pre)
            low = h.submit(pre_hold, flag=flag, started=str(tmp_path / "low"))
            wait_running(s, low.id)
            urgent = h.submit(pre_hold.options(priority=tm.Priority.REALTIME), flag=flag,
                              started=str(tmp_path / "urgent"))

            def preempted() -> list[tm.TaskRecord]:
                return [t for t in s.store.paused_tasks() if t.id == low.id]

            paused = poll_until(preempted, 10.0, what="the running NORMAL task preempted (paused)")
            assert paused[0].status == tm.TaskStatus.PAUSED and paused[0].pause_reasons == ["preempted"]
            assert s.store.paused_count() == 1
            wait_running(s, urgent.id)
            assert os.path.exists(tmp_path / "urgent")
        finally:
            Path(flag).touch()
