"""Coordinator SIGKILL at a random moment during a workload with every lifecycle
state (F10, issue 6 §3): dependency chains and a fan-in, parents with children
and a finalize step, recurring schedules, delayed tasks and a group paused until
a time.

After the kill and a restart, every task must end as it would have without the
kill: at-least-once execution, no lost task, one history row per execution
(a recurring task: one per occurrence, exactly ``max_executions``), no
dependent started before its prerequisites completed, no finalize before its
children, no delayed task before its time.
"""

from __future__ import annotations

import os
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from coordinators import kill_coordinator

import taskmill as tm

DEADLINE = 90.0
CHAINS = 6           # a -> b -> c, each
FAN = 8              # 8 sources -> 1 sink
PARENTS = 4          # each spawns CHILDREN children and has a finalize step
CHILDREN = 3
RECURRING = 3        # each runs MAX_RUNS times, INTERVAL apart
MAX_RUNS = 3
INTERVAL = 0.3
DELAYED = 5          # run_after DELAY seconds
DELAY = 1.0
GROUPED = 4          # in a group paused until PAUSE seconds after start
PAUSE = 1.0

life = tm.Domain("life")
other = tm.Domain("other")


def note(log: str, text: str) -> None:
    """One small O_APPEND write, atomic between workers, stamped with the wall clock."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {text}\n".encode())
    finally:
        os.close(fd)


def _run(name: str, log: str) -> str:
    note(log, f"start {name}")
    time.sleep(0.02)
    note(log, f"done {name}")
    return name


@life.task
def step(ctx: tm.TaskContext, name: str, log: str) -> str:
    return _run(name, log)


@other.task
def child(ctx: tm.TaskContext, name: str, log: str) -> str:
    return _run(name, log)


@life.task
def parent(ctx: tm.TaskContext, n: int, log: str) -> dict:
    note(log, f"start p{n}")
    for i in range(CHILDREN):
        ctx.spawn_child(child, name=f"p{n}c{i}", log=log)
    return {"n": n}


@parent.finalize
def parent_done(ctx: tm.TaskContext, memo: Any, n: int, log: str) -> int:
    assert memo == {"n": n}, memo
    note(log, f"fin p{n}")
    return n


def events(log: str) -> list[tuple[float, str, str]]:
    out = []
    for line in Path(log).read_text().splitlines():
        ts, what, name = line.split()
        out.append((float(ts), what, name))
    return out


def first(evs: list[tuple[float, str, str]], what: str, name: str) -> float:
    times = [t for t, w, n in evs if w == what and n == name]
    assert times, f"{what} {name} never happened"
    return min(times)


def submit_workload(s: tm.Scheduler, log: str) -> dict[str, Any]:
    h = s.domain(life)
    ids: dict[str, Any] = {"chains": [], "fan": None, "sources": [], "parents": [], "recurring": [],
                           "delayed": [], "grouped": []}
    start = time.time()
    for c in range(CHAINS):
        a = h.submit(step, name=f"c{c}a", log=log).id
        b = h.submit(step.options(depends_on=[a]), name=f"c{c}b", log=log).id
        z = h.submit(step.options(depends_on=[b]), name=f"c{c}c", log=log).id
        ids["chains"].append((a, b, z))
    sources = h.submit_batch([step.call(name=f"s{i}", log=log) for i in range(FAN)]).inserted
    ids["sources"] = sources
    ids["fan"] = h.submit(step.options(depends_on=sources), name="sink", log=log).id
    ids["parents"] = [h.submit(parent, n=n, log=log).id for n in range(PARENTS)]
    ids["recurring"] = [h.submit(step.options(recurring=tm.Recurring(INTERVAL, max_executions=MAX_RUNS)),
                                 name=f"r{i}", log=log).id for i in range(RECURRING)]
    ids["delay_from"] = time.time()  # before the submissions: each is due no earlier than this + DELAY
    ids["delayed"] = [h.submit(step.options(run_after=DELAY), name=f"d{i}", log=log).id for i in range(DELAYED)]
    s.pause_group_until("held", datetime.fromtimestamp(start + PAUSE, timezone.utc))
    ids["resume_at"] = start + PAUSE
    ids["grouped"] = [h.submit(step.options(group="held"), name=f"g{i}", log=log).id for i in range(GROUPED)]
    return ids


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_sigkill_during_a_lifecycle_workload_ends_every_task_as_without_it(
        store_path: str, tmp_path: Path, seed: int) -> None:
    log = str(tmp_path / "log")
    delay = random.Random(seed).uniform(0.0, 1.5)
    s = tm.Scheduler(store_path, [life, other], max_concurrency=2).start()
    try:
        ids = submit_workload(s, log)
        time.sleep(delay)  # the kill moment is the point of the test, not a wait for something
    finally:
        kill_coordinator(s)

    with tm.Scheduler(store_path, [life, other], max_concurrency=2) as s2:
        s2.wait_idle(timeout=DEADLINE)
        rows = s2.sql("SELECT id, task_type, status, result, parent_id FROM task_history ORDER BY seq")
        assert s2.sql("SELECT count(*) AS n FROM tasks") == [{"n": 0}]
        assert s2.sql("SELECT count(*) AS n FROM task_deps") == [{"n": 0}]
    by_id: dict[int, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    assert all(r["status"] == "completed" for r in rows), [r for r in rows if r["status"] != "completed"]
    evs = events(log)

    # every non-recurring root task: exactly one history row
    singles = [i for chain in ids["chains"] for i in chain] + ids["sources"] + [ids["fan"]] + ids["parents"] \
        + ids["delayed"] + ids["grouped"]
    for tid in singles:
        assert len(by_id.get(tid, [])) == 1, (tid, by_id.get(tid))
    # recurring: exactly max_executions rows, same id
    for tid in ids["recurring"]:
        assert len(by_id.get(tid, [])) == MAX_RUNS, (tid, by_id.get(tid))
    # dependencies: no dependent started before its prerequisite was done
    for c in range(CHAINS):
        assert first(evs, "start", f"c{c}b") >= first(evs, "done", f"c{c}a")
        assert first(evs, "start", f"c{c}c") >= first(evs, "done", f"c{c}b")
    assert first(evs, "start", "sink") >= max(first(evs, "done", f"s{i}") for i in range(FAN))
    # parents: every child payload completed, finalize after all of them, its result is n
    child_rows = [r for r in rows if r["task_type"] == "other::child"]
    for n, pid in enumerate(ids["parents"]):
        mine = {r["result"] for r in child_rows if r["parent_id"] == pid}
        assert mine == {f"p{n}c{i}" for i in range(CHILDREN)}, (pid, mine)
        assert first(evs, "fin", f"p{n}") >= max(first(evs, "done", f"p{n}c{i}") for i in range(CHILDREN))
        assert by_id[pid][0]["result"] == n
    # delayed and paused-until: never before their time (small slack for clock granularity)
    for i in range(DELAYED):
        assert first(evs, "start", f"d{i}") >= ids["delay_from"] + DELAY - 0.05
    for i in range(GROUPED):
        assert first(evs, "start", f"g{i}") >= ids["resume_at"] - 0.05
    # at-least-once: every name ran; re-runs are allowed, lost work is not
    names = {n for _, w, n in evs if w == "done"}
    assert {f"c{c}{x}" for c in range(CHAINS) for x in "abc"} <= names
    assert {f"r{i}" for i in range(RECURRING)} <= names
