"""A deep queue after a restart (issue 6 §2): recovery loads the first tasks of each domain
and leaves the rest in the store as a cold tail, loaded in order as dispatch reaches it.

``TASKMILL_RECOVER_HOT`` (inherited by the coordinator) makes the tail start after 5 tasks,
so a few dozen tasks exercise what a million would: exact dispatch order across the
hot/cold boundary, dedup against a cold key (an upgrade moves it ahead), cancel, wait and
dependencies naming a cold id, a pause and a bulk cancel that must see every task, counts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from polling import poll_until

import taskmill as tm

DEADLINE = 60.0
N = 40

deep = tm.Domain("deep")


@deep.task
def step(ctx: tm.TaskContext, n: int, log: str, pause: float = 0.05) -> int:
    with open(log, "a") as f:
        f.write(f"{n}\n")
    time.sleep(pause)
    return n


@deep.task
def gate(ctx: tm.TaskContext, flag: str) -> str:
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(flag):
        if ctx.cancelled or time.monotonic() > deadline:
            raise tm.Retryable("not yet")
        time.sleep(0.01)
    return "open"


def ran(log: str) -> list[int]:
    return [int(x) for x in Path(log).read_text().split()] if os.path.exists(log) else []


def queue_up(store_path: str, tmp_path: Path, pause: float) -> tuple[str, str, list[int], dict[int, int]]:
    """A store with a closed gate task and N plain pending tasks behind it (priorities mixed)."""
    flag, log = str(tmp_path / "flag"), str(tmp_path / "log")
    prio = {n: (tm.Priority.NORMAL if n % 3 else tm.Priority.HIGH) for n in range(N)}
    with tm.Scheduler(store_path, [deep], max_concurrency=1) as s:
        h = s.domain(deep)
        g = h.submit(gate.options(priority=tm.Priority.REALTIME), flag=flag).id
        poll_until(lambda: s.snapshot().running_count == 1, DEADLINE, what="the gate running")
        ids = h.submit_batch([step.options(priority=prio[n]).call(n=n, log=log, pause=pause)
                              for n in range(N)]).inserted
    # hard shutdown: the gate goes back to pending; nothing else ran
    assert ran(log) == []
    return flag, log, [g, *ids], prio


@pytest.fixture(autouse=True)
def _small_hot_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMILL_RECOVER_HOT", "5")


def expected_order(prio: dict[int, int], ids: list[int]) -> list[int]:
    return [n for n, _ in sorted(((n, ids[n + 1]) for n in range(N)), key=lambda t: (prio[t[0]], t[1]))]


def test_the_cold_tail_keeps_order_dedup_cancel_wait_and_dependencies(store_path: str, tmp_path: Path) -> None:
    flag, log, ids, prio = queue_up(store_path, tmp_path, pause=0.1)
    order = expected_order(prio, ids)
    late = order[-12:]  # far beyond the 5 loaded at start: still in the store for a while
    upgraded, cancelled, waited, prereq = late[-1], late[-2], late[-3], late[-4]
    Path(flag).touch()
    with tm.Scheduler(store_path, [deep], max_concurrency=1) as s:
        h = s.domain(deep)
        assert s.store.pending_count() + s.snapshot().running_count >= N - 2  # counts include the tail
        # dedup against a cold key: the more urgent duplicate upgrades the stored task
        out = h.submit(step.options(priority=tm.Priority.REALTIME), n=upgraded, log=log, pause=0.1)
        assert out == tm.Upgraded(task_id=ids[upgraded + 1])
        assert h.submit(step, n=waited, log=log, pause=0.1) == tm.Duplicate(existing_id=ids[waited + 1])
        # cancel and a dependency naming cold ids
        assert s.cancel(ids[cancelled + 1]) is True
        after = h.submit(step.options(depends_on=[ids[prereq + 1]]), n=1000, log=log, pause=0.0)
        assert isinstance(after, tm.Inserted)
        assert s.task(after.id).status == "blocked"
        rec = s.wait(ids[waited + 1], timeout=DEADLINE)
        assert rec.status == "completed" and rec.result == waited
        s.wait_idle(timeout=DEADLINE)
        hist = {r["id"]: r["status"] for r in s.sql("SELECT id, status FROM task_history")}
        assert s.sql("SELECT count(*) AS n FROM tasks") == [{"n": 0}]
    got = ran(log)
    assert hist[ids[cancelled + 1]] == "cancelled" and cancelled not in got
    assert sorted(got) == sorted([n for n in range(N) if n != cancelled] + [1000]), "each task ran exactly once"
    want = [n for n in order if n not in (cancelled, upgraded)]
    assert got.index(upgraded) < got.index(want[-8]), "the upgraded task ran ahead of its old place"
    assert [n for n in got if n not in (upgraded, 1000)] == want, "the order across hot and cold is exact"
    assert got.index(1000) > got.index(prereq)


def test_a_pause_and_a_bulk_cancel_see_the_whole_tail(store_path: str, tmp_path: Path) -> None:
    flag, log, ids, prio = queue_up(store_path, tmp_path, pause=0.3)
    Path(flag).touch()
    with tm.Scheduler(store_path, [deep], max_concurrency=1) as s:
        h = s.domain(deep)
        moved = s.pause_all()
        assert moved >= N - 1  # every task, the stored tail too (one or two may have started or ended)
        snap = s.snapshot()
        store_paused = s.sql("SELECT count(*) AS n FROM tasks WHERE status = 'paused'")[0]["n"]
        assert snap.paused_count == store_paused == s.store.paused_count() and snap.pending_count == 0
        s.resume_all()
        gone = h.cancel_all()
        s.wait_idle(timeout=DEADLINE)
        hist: dict[int, Any] = {r["id"]: r["status"] for r in s.sql("SELECT id, status FROM task_history")}
    done = {i for i, st in hist.items() if st == "completed"}
    assert set(gone) | done == set(ids) and not set(gone) & done
    assert all(hist[i] == "cancelled" for i in gone)
    assert len(gone) >= N - 3


def test_a_stored_task_that_cannot_be_read_is_quarantined_when_its_chunk_loads(store_path: str,
                                                                              tmp_path: Path) -> None:
    import duckdb

    flag, log, ids, prio = queue_up(store_path, tmp_path, pause=0.0)
    bad = ids[expected_order(prio, ids)[-3] + 1]  # deep in the tail
    with duckdb.connect(store_path) as con:
        con.execute("UPDATE tasks SET retry_policy = '{\"kind\": \"bogus\"}' WHERE id = ?", [bad])
    Path(flag).touch()
    with tm.Scheduler(store_path, [deep], max_concurrency=1) as s:
        s.wait_idle(timeout=DEADLINE)
        rows = {r["id"]: r for r in s.sql("SELECT id, status, last_error FROM task_history")}
        assert s.sql("SELECT count(*) AS n FROM tasks") == [{"n": 0}]
    assert rows[bad]["status"] == "failed" and "cannot be interpreted" in rows[bad]["last_error"]
    assert sorted(ran(log)) == sorted(n for n in range(N) if ids[n + 1] != bad)
