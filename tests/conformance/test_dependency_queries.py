"""Seed table "Dependency queries" and the paragraph on cross-domain dependencies.

One scheduler for the module (``max_concurrency=4``). The shared world:
``a`` and ``b`` (domain ``ingest``) run, held on a flag; in domain ``process``
``d1`` depends on ``[a, b]``, ``d2`` (HIGH) on ``[a]``; ``d3`` (``ingest``)
depends on ``d1`` -- a chain across domains. ``free`` ran with no prerequisite.
The two cross-domain tests build their own small chains beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import poll_until

import taskmill as tm

from .helpers import DEADLINE, NO_RETRY, append, lines, module_world, wait_flag, wait_running

ingest = tm.Domain("ingest")
process = tm.Domain("process")


@ingest.task
def fetch(ctx: tm.TaskContext, flag: str, n: int) -> str:
    return wait_flag(ctx, flag)


@ingest.task(retry=NO_RETRY)
def broken(ctx: tm.TaskContext, flag: str) -> None:
    wait_flag(ctx, flag)
    raise tm.Permanent("ingest failed for good")


@ingest.task
def i_work(ctx: tm.TaskContext, x: int) -> int:
    return x


@process.task
def transform(ctx: tm.TaskContext, x: int, log: str | None = None) -> int:
    if log:
        append(log, str(x))
    return x


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("deps")
    flag = str(tmp / "flag")
    flags = [flag] + [str(tmp / f"flag-{i}") for i in range(2)]
    with module_world(str(tmp / "store.duckdb"), [ingest, process], flags=flags, max_concurrency=4) as s:
        i, p = s.domain(ingest), s.domain(process)
        free = p.submit(transform, x=0).id
        s.wait(free, timeout=DEADLINE)
        a = i.submit(fetch, flag=flag, n=1).id
        b = i.submit(fetch, flag=flag, n=2).id
        wait_running(s, a, b)
        d1 = p.submit(transform.options(depends_on=[a, b]), x=1).id
        d2 = p.submit(transform.options(depends_on=[a], priority=tm.Priority.HIGH), x=2).id
        d3 = i.submit(i_work.options(depends_on=[d1]), x=3).id
        yield {"s": s, "tmp": tmp, "flags": iter(flags[1:]), "free": free, "a": a, "b": b,
               "d1": d1, "d2": d2, "d3": d3}


def test_task_dependencies_lists_prerequisites(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    deps = s.store.task_dependencies(w["d1"])
    assert all(type(i) is int for i in deps)
    assert sorted(deps) == sorted([w["a"], w["b"]])
    assert s.store.task_dependencies(w["d2"]) == [w["a"]]
    assert s.store.task_dependencies(w["d3"]) == [w["d1"]]  # process -> ingest across domains
    assert s.store.task_dependencies(w["a"]) == []  # depends on nothing
    assert s.store.task_dependencies(10**9) == []
    assert sorted(s.task(w["d1"]).dependencies) == sorted([w["a"], w["b"]])  # the record agrees


def test_task_dependents_lists_tasks_waiting_on_it(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    dependents = s.store.task_dependents(w["a"])
    assert all(type(i) is int for i in dependents)
    assert sorted(dependents) == sorted([w["d1"], w["d2"]])
    assert s.store.task_dependents(w["b"]) == [w["d1"]]
    assert s.store.task_dependents(w["d1"]) == [w["d3"]]
    assert s.store.task_dependents(w["d3"]) == []
    assert s.store.task_dependents(w["free"]) == []


def test_blocked_tasks_lists_every_blocked_task(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    blocked = s.store.blocked_tasks()
    assert all(isinstance(r, tm.TaskRecord) and r.status == tm.TaskStatus.BLOCKED for r in blocked)
    assert sorted(r.id for r in blocked) == sorted([w["d1"], w["d2"], w["d3"]])  # of every domain
    by_id = {r.id: r for r in blocked}
    assert by_id[w["d3"]].domain == "ingest" and by_id[w["d1"]].domain == "process"
    assert sorted(by_id[w["d1"]].dependencies) == sorted([w["a"], w["b"]])
    assert s.store.pending_count() == 0  # blocked tasks are not pending


def test_blocked_count_counts_blocked_tasks_also_in_snapshot(world: dict[str, Any]) -> None:
    s = world["s"]
    n = s.store.blocked_count()
    assert type(n) is int and n == 3
    assert s.snapshot().blocked_count == 3
    assert s.domain(process).snapshot().blocked_count == 2 and s.domain(ingest).snapshot().blocked_count == 1


def test_dependency_across_domains_unblocks_when_prerequisite_completes(world: dict[str, Any]) -> None:
    s, tmp, flag = world["s"], world["tmp"], next(world["flags"])
    log = str(tmp / "unblock-log")
    try:
        pre = s.domain(ingest).submit(fetch, flag=flag, n=10).id
        wait_running(s, pre)
        dep = s.domain(process).submit(transform.options(depends_on=[pre]), x=10, log=log).id
        assert s.task(dep).status == "blocked"
        assert s.store.task_dependents(pre) == [dep] and s.store.task_dependencies(dep) == [pre]
        assert lines(log) == []
        Path(flag).touch()
        assert s.wait(pre, timeout=DEADLINE).status == "completed"
        rec = s.wait(dep, timeout=DEADLINE)
        assert rec.status == "completed" and lines(log) == ["10"]
        assert rec.started_at >= s.wait(pre, timeout=5).completed_at  # not before its prerequisite
        assert s.store.task_dependents(pre) == []
    finally:
        Path(flag).touch()


def test_dependency_failure_propagates_across_domains(world: dict[str, Any]) -> None:
    s, tmp, flag = world["s"], world["tmp"], next(world["flags"])
    log = str(tmp / "fail-log")
    try:
        pre = s.domain(ingest).submit(broken, flag=flag).id
        wait_running(s, pre)
        dep = s.domain(process).submit(transform.options(depends_on=[pre]), x=20, log=log).id
        chained = s.domain(ingest).submit(i_work.options(depends_on=[dep]), x=21).id
        assert [s.task(i).status for i in (dep, chained)] == ["blocked", "blocked"]
        Path(flag).touch()
        assert s.wait(pre, timeout=DEADLINE).status == "failed"
        rec = s.wait(dep, timeout=DEADLINE)
        assert rec.status == tm.HistoryStatus.DEPENDENCY_FAILED and rec.domain == "process"
        assert str(pre) in (rec.last_error or "")
        assert s.wait(chained, timeout=DEADLINE).status == tm.HistoryStatus.DEPENDENCY_FAILED  # cascades
        poll_until(lambda: s.store.task_by_id(chained) is None, DEADLINE, what="chain gone")
        assert lines(log) == []  # never ran
    finally:
        Path(flag).touch()
