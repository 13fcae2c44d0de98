"""End-to-end fair share and aging (issue 7, F21) through real workers.

- three always-backlogged groups weighted 1:2:3 get dispatch shares within 10 %
  of the weights on a two-slot pool (fewer slots than groups);
- a group's minimum slots hold against a much heavier weight;
- weights change at runtime; the snapshot's ``group_allocations`` and
  ``aging_config`` show the configuration;
- aging: a BACKGROUND task that waited long enough runs before a fresh NORMAL
  one; time it spent paused does not count.
"""

from __future__ import annotations

import time
from typing import Any

from polling import poll_until
from taskfiles import append, lines, wait_flag

import taskmill as tm

fs = tm.Domain("fs")


@fs.task(cpus=0.5)
def tick(ctx: tm.TaskContext, n: int, log: str) -> None:
    append(log, f"{ctx.record.group} {n}")


@fs.task(cpus=0.5)
def hold(ctx: tm.TaskContext, n: int, log: str, flag: str) -> None:
    append(log, f"start {ctx.record.group} {n}")
    wait_flag(ctx, flag)


def test_dispatch_shares_follow_the_weights_on_fewer_slots_than_groups(tmp_path: Any) -> None:
    log = str(tmp_path / "log")
    weights = {"a": 1, "b": 2, "c": 3}
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [fs], max_concurrency=2, group_weights=weights) as s:
        h = s.domain(fs)
        h.submit_batch([tick.options(group=g).call(n=k * 1000 + i, log=log)
                        for k, g in enumerate(weights) for i in range(150)])
        s.wait_idle(timeout=120)
    first = [ln.split()[0] for ln in lines(log)][:240]  # while every group still had work
    for g, w in weights.items():
        share = first.count(g) / len(first)
        assert abs(share - w / 6) <= 0.1 * w / 6, {g: first.count(g) for g in weights}


def test_minimum_slots_hold_against_a_much_heavier_weight(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [fs], max_concurrency=2, group_weights={"heavy": 1000},
                      group_minimum_slots={"light": 1}) as s:
        h = s.domain(fs)
        h.submit_batch([hold.options(group="heavy").call(n=i, log=log, flag=flag) for i in range(4)]
                       + [hold.options(group="light").call(n=i, log=log, flag=flag) for i in range(4, 8)])
        poll_until(lambda: len(lines(log)) == 2, what="both slots busy")
        time.sleep(0.2)
        assert sorted(ln.split()[1] for ln in lines(log)) == ["heavy", "light"]
        allocations = {a.group: a for a in s.snapshot().group_allocations}
        assert allocations["light"].min_slots == 1 and allocations["light"].allocated_slots >= 1
        assert allocations["heavy"].weight == 1000 and allocations["heavy"].running == 1
        open(flag, "w").close()
        s.wait_idle(timeout=60)


def test_weights_change_at_runtime(tmp_path: Any) -> None:
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [fs], max_concurrency=2) as s:
        assert s.snapshot().group_allocations == []  # fair share is off until a weight is set
        s.set_group_weight("a", 3)
        s.domain(fs).set_group_minimum_slots("b", 1)
        infos = {a.group: a for a in s.snapshot().group_allocations}
        assert infos["a"].weight == 3.0 and infos["b"].min_slots == 1
        s.remove_group_weight("a")
        assert {a.group: a.weight for a in s.snapshot().group_allocations}.get("a") is None
        s.set_group_weight("c", 2)
        s.reset_group_weights()
        assert all(a.weight == 1.0 for a in s.snapshot().group_allocations)


def test_a_task_that_waited_long_enough_overtakes_a_fresh_more_urgent_one(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    aging = tm.AgingConfig(grace_period=0.1, aging_interval=0.01, max_effective_priority=tm.Priority.HIGH)
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [fs], max_concurrency=1, priority_aging=aging) as s:
        assert s.snapshot().aging_config == aging
        h = s.domain(fs)
        blocker = h.submit(hold, n=0, log=log, flag=flag)
        poll_until(lambda: lines(log), what="the blocker running")
        old = h.submit(tick.options(priority=tm.Priority.BACKGROUND), n=1, log=log)
        time.sleep(1.2)  # 0.1 s grace + 65 levels of 10 ms: more urgent than NORMAL (128) by now
        rec = s.task(old.id)
        assert rec.priority == tm.Priority.BACKGROUND and rec.effective_priority < tm.Priority.NORMAL  # stored: unchanged
        assert s.store.pending_tasks(10)[0].effective_priority <= rec.effective_priority  # still aging
        fresh = h.submit(tick.options(priority=tm.Priority.NORMAL), n=2, log=log)
        open(flag, "w").close()
        s.wait_idle(timeout=60)
    assert [ln.split()[1] for ln in lines(log)[1:]] == ["1", "2"], lines(log)
    assert blocker.id < old.id < fresh.id


def test_time_paused_does_not_count_as_waiting(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    aging = tm.AgingConfig(grace_period=0.1, aging_interval=0.01, max_effective_priority=tm.Priority.HIGH)
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [fs], max_concurrency=1, priority_aging=aging) as s:
        h = s.domain(fs)
        h.submit(hold, n=0, log=log, flag=flag)
        poll_until(lambda: lines(log), what="the blocker running")
        s.pause_group("slow")
        slow = h.submit(tick.options(priority=tm.Priority.BACKGROUND, group="slow"), n=1, log=log)
        time.sleep(1.2)  # all of it paused: no aging
        s.resume_group("slow")
        assert s.task(slow.id).effective_priority >= tm.Priority.BACKGROUND - 5  # at most a few levels since
        h.submit(tick.options(priority=tm.Priority.NORMAL), n=2, log=log)
        open(flag, "w").close()
        s.wait_idle(timeout=60)
    assert [ln.split()[1] for ln in lines(log)[1:]] == ["2", "1"], lines(log)
