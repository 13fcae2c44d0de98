"""Random calls for a few seconds against short tasks sent ahead several per message.

Submissions of every size and priority, cancels of single tasks and of all,
pauses, slot changes, worker crashes and timeout kills, in a seeded random
order while two workers run short tasks. Whatever the timing, at the end:
every task has a history; no task ran twice; a task cancelled before it
started never ran; every completed task ran. (This found a loop that blocked
reading a worker pipe a take-back had emptied in the same step; see
``tests/coordinator/test_take_back.py``.)
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from typing import Any

import pytest
from polling import DEADLINE
from taskfiles import append, lines

import taskmill as tm

soak = tm.Domain("soak")
SECONDS = 6.0


@soak.task
def tick(ctx: tm.TaskContext, n: int, log: str, hold: float) -> int:
    append(log, str(ctx.task_id))
    if hold:
        time.sleep(hold)
    return n


@soak.task(retry=tm.RetryPolicy.none())
def crash(ctx: tm.TaskContext) -> None:
    os._exit(3)


@soak.task(retry=tm.RetryPolicy.none(), timeout=0.05)
def slow(ctx: tm.TaskContext) -> None:
    time.sleep(1.0)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2])
def test_random_calls_against_runs_sent_ahead_lose_and_repeat_nothing(tmp_path: Any, seed: int) -> None:
    rng = random.Random(seed)
    log = str(tmp_path / "log")
    ids: list[int] = []
    n = 0
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [soak], max_concurrency=2, capacity=tm.Capacity(cpus=4)) as s:
        h = s.domain(soak)
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            op = rng.random()
            if op < 0.35:
                size = rng.choice([1, 10, 200, 2000])
                hold = rng.choice([0.0, 0.0, 0.0005, 0.003])
                priority = rng.choice([tm.Priority.NORMAL, tm.Priority.NORMAL, tm.Priority.HIGH, tm.Priority.BACKGROUND])
                ids += h.submit_batch([tick.options(priority=priority).call(n=n + i, log=log, hold=hold)
                                       for i in range(size)]).inserted
                n += size
            elif op < 0.55 and ids:
                recent = ids[-3000:]
                for tid in rng.sample(recent, min(50, len(recent))):
                    h.cancel(tid)
            elif op < 0.6:
                h.cancel_all()
            elif op < 0.7:
                s.pause_all()
                time.sleep(rng.random() * 0.02)
                s.resume_all()
            elif op < 0.75:
                s.set_max_concurrency(rng.choice([1, 2, 3]))
            elif op < 0.8:
                h.submit(crash.options(key=f"crash{n}"))
                n += 1
            elif op < 0.83:
                h.submit(slow.options(key=f"slow{n}"))
                n += 1
            time.sleep(rng.random() * 0.01)
        s.set_max_concurrency(2)
        s.wait_idle(timeout=DEADLINE)
        rows = s.sql("SELECT id, task_type, status, started_at FROM task_history ORDER BY seq")
    runs = Counter(int(line) for line in lines(log))
    history: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        history.setdefault(r["id"], []).append(r)
    assert [t for t in ids if t not in history] == []
    assert [t for t, k in runs.items() if k > 1] == []
    never_started = {t for t, rs in history.items() if all(r["status"] == "cancelled" and r["started_at"] is None for r in rs)}
    assert sorted(never_started & set(runs)) == []
    completed = {t for t, rs in history.items() if rs[-1]["status"] == "completed" and rs[-1]["task_type"] == "soak::tick"}
    assert sorted(t for t in completed if t not in runs) == []
    assert len(runs) > 1000 and never_started  # the run did what it is for: much ran, some was cancelled
