"""Seed section "Cancellation": the single-task row, the bulk table and its five cascade bullets.

One scheduler for the module (``max_concurrency=4``). Every test works in its own
domain(s) with its own flag file, so a bulk cancel in one test cannot touch the
tasks of another; ``bystander`` tasks prove that a domain's bulk cancel stays in
its domain. Held tasks obey ``ctx.cancelled`` and leave a mark file when they see it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import poll_until

import taskmill as tm

from .helpers import (
    DEADLINE,
    append,
    history_statuses,
    lines,
    module_world,
    wait_flag,
    wait_history,
    wait_running,
    wait_status,
)


def _hold(ctx: tm.TaskContext, flag: str, mark: str | None = None, n: int = 0) -> str:
    out = wait_flag(ctx, flag)
    if out == "cancelled" and mark:
        Path(mark).write_text(str(ctx.task_id))
    return out


def _work(ctx: tm.TaskContext, x: int, log: str | None = None) -> int:
    if log:
        append(log, str(x))
    return x


def _domain(name: str, **kw: Any) -> tuple[tm.Domain, tm.TaskType, tm.TaskType]:
    d = tm.Domain(name, **kw)
    return d, d.task(name="hold")(_hold), d.task(name="work")(_work)


single, single_hold, single_work = _domain("single", max_concurrency=1)
bulk, bulk_hold, bulk_work = _domain("bulk", max_concurrency=2)
sieve, sieve_hold, sieve_work = _domain("sieve", max_concurrency=1)
prefix, prefix_hold, prefix_work = _domain("prefix", max_concurrency=1)
b_pend, b_pend_hold, b_pend_work = _domain("b_pend", max_concurrency=1)
b_run, b_run_hold, _b_run_work = _domain("b_run")
b_paused, _b_paused_hold, b_paused_work = _domain("b_paused")
fam, fam_hold, fam_work = _domain("fam")
fam2, fam2_hold, _fam2_work = _domain("fam2")
kids, kid_hold, kid_work = _domain("kids")
bystander, by_hold, by_work = _domain("bystander")


@bulk.task
def bulk_parent(ctx: tm.TaskContext, flag: str) -> str:
    ctx.spawn_child(bulk_hold, flag=flag, n=99)
    return "memo"


@sieve.task
def sieve_parent(ctx: tm.TaskContext, x: int) -> str:
    ctx.spawn_child(sieve_work.options(group="sieve-held"), x=0)  # paused (its group is)
    return "memo"


@fam.task
def fam_parent(ctx: tm.TaskContext, flag: str, mark: str) -> str:
    ctx.spawn_child(fam_hold, flag=flag, mark=mark)  # runs
    ctx.spawn_child(fam_work.options(group="fam-held"), x=1)  # paused (its group is)
    return "memo"


ALL = [single, bulk, sieve, prefix, b_pend, b_run, b_paused, fam, fam2, kids, bystander]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("cancel")
    flags = [str(tmp / f"flag-{i}") for i in range(12)]
    with module_world(str(tmp / "store.duckdb"), ALL, flags=flags, max_concurrency=4) as s:
        yield {"s": s, "tmp": tmp, "flags": iter(flags)}


def _children(s: tm.Scheduler, parent_id: int) -> list[int]:
    return [r["id"] for r in s.sql("SELECT id FROM tasks WHERE parent_id = ? ORDER BY id", [parent_id])]


# --------------------------------------------------------------------------- single task


def test_cancel_returns_true_if_found_and_cancelled(world: dict[str, Any]) -> None:
    s, tmp, flag = world["s"], world["tmp"], next(world["flags"])
    h = s.domain(single)
    mark, log = str(tmp / "single-mark"), str(tmp / "single-log")
    try:
        running = h.submit(single_hold, flag=flag, mark=mark).id
        wait_running(s, running)
        pending = h.submit(single_work, x=1, log=log).id
        s.pause_group("single-held")
        foreign = s.domain(bystander).submit(by_work.options(group="single-held"), x=1).id
        assert h.cancel(pending) is True
        assert history_statuses(s, pending) == ["cancelled"] and s.store.task_by_id(pending) is None
        assert h.cancel(pending) is False  # already cancelled
        assert h.cancel(10**9) is False  # never existed
        assert h.cancel(foreign) is False  # another domain's task: not found in this domain
        assert s.store.task_by_id(foreign) is not None
        assert h.cancel(running) is True  # a running task too
        poll_until(lambda: os.path.exists(mark), DEADLINE, what="the running task saw ctx.cancelled")
        assert wait_history(s, running) == ["cancelled"]
        done = h.submit(single_work, x=2, log=log).id
        assert s.wait(done, timeout=DEADLINE).status == "completed"
        assert h.cancel(done) is False  # finished
        assert lines(log) == ["2"]  # the cancelled task never ran
    finally:
        Path(flag).touch()
        s.resume_group("single-held")


# --------------------------------------------------------------------------- bulk table


def test_cancel_all_cancels_every_task_of_the_domain(world: dict[str, Any]) -> None:
    s, flag, by_flag = world["s"], next(world["flags"]), next(world["flags"])
    h, by = s.domain(bulk), s.domain(bystander)
    try:
        parent = h.submit(bulk_parent, flag=flag).id
        wait_status(s, parent, "waiting")
        (child,) = _children(s, parent)
        running = h.submit(bulk_hold, flag=flag, n=1).id
        wait_running(s, child, running)
        pending = h.submit(bulk_work, x=1).id  # bulk is capped at 2
        s.pause_group("bulk-held")
        paused = h.submit(bulk_work.options(group="bulk-held"), x=2).id
        by_run = by.submit(by_hold, flag=by_flag, n=1).id
        wait_running(s, by_run)
        blocked = h.submit(bulk_work.options(depends_on=[by_run]), x=3).id
        by_pend = by.submit(by_work.options(group="bulk-held"), x=3).id
        statuses = {i: s.task(i).status for i in (parent, child, running, pending, paused, blocked)}
        assert statuses == {parent: "waiting", child: "running", running: "running", pending: "pending",
                            paused: "paused", blocked: "blocked"}

        ids = h.cancel_all()

        assert all(type(i) is int for i in ids)
        mine = [parent, child, running, pending, paused, blocked]
        for i in mine:
            assert wait_history(s, i) == ["cancelled"], i
        assert s.domain(bulk).snapshot().running == [] and s.store.task_by_id(by_run).status == "running"
        assert s.store.task_by_id(by_pend).status == "paused"  # the bystander domain is untouched
        assert sorted(ids) == sorted(mine)  # the ids of every task of this domain it cancelled
    finally:
        Path(flag).touch()
        Path(by_flag).touch()
        s.resume_group("bulk-held")


def test_cancel_where_cancels_matching_domain_tasks(world: dict[str, Any]) -> None:
    s, tmp, flag = world["s"], world["tmp"], next(world["flags"])
    h = s.domain(sieve)
    log = str(tmp / "sieve-log")
    s.pause_group("sieve-held")
    try:
        parent = h.submit(sieve_parent, x=6).id  # x even, and so is its (paused) child's
        wait_status(s, parent, "waiting")
        (child,) = _children(s, parent)
        holder = h.submit(sieve_hold, flag=flag).id
        wait_running(s, holder)
        xs = {x: h.submit(sieve_work, x=x, log=log).id for x in (1, 2, 3, 4)}  # pending: sieve's cap is 1
        by_even = s.domain(bystander).submit(by_work.options(group="sieve-held"), x=2).id
        seen: list[tm.TaskRecord] = []

        def even(r: tm.TaskRecord) -> bool:
            seen.append(r)
            return (r.payload or {}).get("x", 1) % 2 == 0

        ids = h.cancel_where(even)

        assert all(isinstance(r, tm.TaskRecord) and r.domain == "sieve" for r in seen)  # only its domain
        assert sorted(r.id for r in seen) == sorted([parent, child, holder, *xs.values()])
        for i in (xs[2], xs[4], parent, child):
            assert history_statuses(s, i) == ["cancelled"], i
        assert s.store.task_by_id(xs[1]).status == "pending" and s.store.task_by_id(xs[3]).status == "pending"
        assert s.store.task_by_id(holder).status == "running"
        assert s.store.task_by_id(by_even) is not None  # another domain's matching task stays
        assert h.cancel_where(lambda r: False) == []
        Path(flag).touch()
        for x in (1, 3):
            assert s.wait(xs[x], timeout=DEADLINE).status == "completed"
        assert sorted(lines(log)) == ["1", "3"]
        # the ids of every matching task it cancelled, also the child its parent's cascade reached first
        assert sorted(ids) == sorted([xs[2], xs[4], parent, child])
    finally:
        Path(flag).touch()
        s.resume_group("sieve-held")


def test_cancel_by_tag_key_prefix_cancels_tasks_with_matching_tag_key(world: dict[str, Any]) -> None:
    s, tmp, flag = world["s"], world["tmp"], next(world["flags"])
    h = s.domain(prefix)
    log = str(tmp / "prefix-log")
    try:
        holder = h.submit(prefix_hold.options(tags={"billing.owner": "me"}), flag=flag).id
        wait_running(s, holder)
        t1 = h.submit(prefix_work.options(tags={"billing.id": "1"}), x=1, log=log).id
        t2 = h.submit(prefix_work.options(tags={"billing.plan": "pro", "env": "prod"}), x=2, log=log).id
        t3 = h.submit(prefix_work.options(tags={"bill": "y"}), x=3, log=log).id
        t4 = h.submit(prefix_work.options(tags={"env": "billing.x"}), x=4, log=log).id
        t5 = h.submit(prefix_work, x=5, log=log).id
        s.pause_group("prefix-held")
        other = s.domain(bystander).submit(by_work.options(group="prefix-held", tags={"billing.id": "9"}), x=9).id

        ids = h.cancel_by_tag_key_prefix("billing.")

        assert sorted(ids) == sorted([holder, t1, t2])  # the running one too; keys only, not values
        for i in (t1, t2):
            assert history_statuses(s, i) == ["cancelled"]
        assert wait_history(s, holder) == ["cancelled"]
        assert s.store.task_by_id(other) is not None  # another domain's billing.* task stays
        assert h.cancel_by_tag_key_prefix("nope.") == []
        for i in (t3, t4, t5):
            assert s.wait(i, timeout=DEADLINE).status == "completed"
        assert sorted(lines(log)) == ["3", "4", "5"]
    finally:
        Path(flag).touch()
        s.resume_group("prefix-held")


# --------------------------------------------------------------------------- the five cascade bullets


def test_cancel_all_moves_pending_tasks_to_history_as_cancelled(world: dict[str, Any]) -> None:
    s, tmp, flag = world["s"], world["tmp"], next(world["flags"])
    h = s.domain(b_pend)
    log = str(tmp / "b-pend-log")
    try:
        holder = h.submit(b_pend_hold, flag=flag).id
        wait_running(s, holder)
        pend = [h.submit(b_pend_work, x=x, log=log).id for x in (1, 2)]
        assert [s.task(i).status for i in pend] == ["pending", "pending"]
        ids = h.cancel_all()
        assert sorted(ids) == sorted([holder, *pend])
        for i in pend:  # at once: the call returns after the history rows are written
            assert s.store.task_by_id(i) is None and history_statuses(s, i) == ["cancelled"]
            assert s.wait(i, timeout=5).status == tm.HistoryStatus.CANCELLED
        wait_history(s, holder)
        assert s.store.pending_by_type("b_pend::work") == [] and lines(log) == []
    finally:
        Path(flag).touch()


def test_cancel_all_triggers_running_tasks_cancellation_token(world: dict[str, Any]) -> None:
    s, tmp, flag = world["s"], world["tmp"], next(world["flags"])
    h = s.domain(b_run)
    mark = str(tmp / "b-run-mark")
    try:
        run = h.submit(b_run_hold, flag=flag, mark=mark).id
        wait_running(s, run)
        assert h.cancel_all() == [run]
        poll_until(lambda: os.path.exists(mark), DEADLINE, what="ctx.cancelled seen by the running task")
        assert Path(mark).read_text() == str(run)
        rec = s.wait(run, timeout=DEADLINE)
        assert rec.status == tm.HistoryStatus.CANCELLED
        assert history_statuses(s, run) == ["cancelled"]  # one row: not completed after the token fired
        assert run not in [r.id for r in s.store.running_tasks()]
    finally:
        Path(flag).touch()


def test_cancel_where_cancels_paused_tasks_immediately(world: dict[str, Any]) -> None:
    s, tmp = world["s"], world["tmp"]
    h = s.domain(b_paused)
    log = str(tmp / "b-paused-log")
    h.pause()
    try:
        q = h.submit(b_paused_work, x=1, log=log).id
        assert s.task(q).status == "paused"
        assert h.cancel_where(lambda r: r.id == q) == [q]
        # immediately: nothing has to stop, the row is in history when the call returns
        assert s.store.task_by_id(q) is None and history_statuses(s, q) == ["cancelled"]
        assert q not in [r.id for r in s.store.paused_tasks()]
    finally:
        h.resume()
    assert lines(log) == []


def test_cancel_all_cascades_to_children_of_waiting_parents(world: dict[str, Any]) -> None:
    s, tmp, flag = world["s"], world["tmp"], next(world["flags"])
    h = s.domain(fam)
    mark = str(tmp / "fam-mark")
    s.pause_group("fam-held")
    try:
        parent = h.submit(fam_parent, flag=flag, mark=mark).id
        wait_status(s, parent, "waiting")
        kids_ = _children(s, parent)
        assert len(kids_) == 2
        running_child, paused_child = kids_
        wait_running(s, running_child)
        assert s.task(paused_child).status == "paused"
        ids = h.cancel_all()
        assert parent in ids
        for i in (parent, running_child, paused_child):
            assert wait_history(s, i) == ["cancelled"], i
        poll_until(lambda: os.path.exists(mark), DEADLINE, what="the running child saw ctx.cancelled")
        assert s.domain(fam).snapshot().waiting_count == 0
    finally:
        Path(flag).touch()
        s.resume_group("fam-held")


def test_cancel_where_cancels_children_in_other_domains(world: dict[str, Any]) -> None:
    s, tmp, flag = world["s"], world["tmp"], next(world["flags"])
    h, k = s.domain(fam2), s.domain(kids)
    mark, kid_mark = str(tmp / "fam2-mark"), str(tmp / "kid-mark")
    s.pause_group("kids-held")
    try:
        parent = h.submit(fam2_hold, flag=flag, mark=mark).id
        wait_running(s, parent)
        # children in another domain, linked with the `parent` option
        kid_run = k.submit(kid_hold.options(parent=parent), flag=flag, mark=kid_mark).id
        kid_paused = k.submit(kid_work.options(parent=parent, group="kids-held"), x=1).id
        unrelated = k.submit(kid_work.options(group="kids-held"), x=2).id
        wait_running(s, kid_run)
        assert s.task(kid_run).parent_id == parent and s.task(kid_paused).parent_id == parent

        assert h.cancel_where(lambda r: r.id == parent) == [parent]

        for i in (parent, kid_run, kid_paused):
            assert wait_history(s, i) == ["cancelled"], i
        poll_until(lambda: os.path.exists(mark) and os.path.exists(kid_mark), DEADLINE,
                   what="parent and child saw ctx.cancelled")
        assert s.task(unrelated).status == "paused"  # kids' own task is not a child: it stays
    finally:
        Path(flag).touch()
        s.resume_group("kids-held")
