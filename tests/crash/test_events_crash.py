"""An event is never released before the commit that makes it true (F10 + F27).

Given a subscriber, when a batch of tasks runs and the coordinator is SIGKILLed
the instant the subscriber has seen some ``Completed`` events, then after a
restart on the same store every task the subscriber saw completed has its
history row (and, at-least-once, the others still finish).
"""

from __future__ import annotations

from typing import Any

import pytest
from coordinators import kill_coordinator
from polling import DEADLINE

import taskmill as tm
from taskmill import events as ev

pytestmark = pytest.mark.timeout(180)

d = tm.Domain("evcrash")


@d.task
def noop(ctx: tm.TaskContext, i: int) -> int:
    return i


@pytest.mark.parametrize("seen_before_kill", [1, 200, 1500])
def test_a_task_a_subscriber_saw_completed_is_in_history_after_a_crash(store_path: str,
                                                                        seen_before_kill: int) -> None:
    s = tm.Scheduler(store_path, [d], max_concurrency=2).start()
    seen: list[int] = []
    try:
        stream = s.subscribe()
        s.domain(d).submit_batch([noop.call(i=i) for i in range(2000)])
        while len(seen) < seen_before_kill:
            e = stream.get(timeout=DEADLINE)
            assert e is not None, "no event came"
            if isinstance(e, ev.Completed):
                seen.append(e.header.task_id)
    finally:
        kill_coordinator(s)  # the instant after: whatever is in flight is lost with it
    stream.close()
    with tm.Scheduler(store_path, [d], max_concurrency=2) as again:
        rows: dict[Any, Any] = {r["id"]: r["status"] for r in again.sql(
            "SELECT id, status FROM task_history WHERE id IN (SELECT unnest(?::BIGINT[]))", [seen])}
        assert set(rows) == set(seen) and set(rows.values()) == {"completed"}
        again.wait_idle(timeout=DEADLINE)
        assert again.sql("SELECT count(DISTINCT id) AS n FROM task_history")[0]["n"] == 2000
