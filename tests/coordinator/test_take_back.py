"""Taking queued runs back in the middle of a loop step, with a real worker.

A call that may change tasks takes the runs queued on busy workers back first.
If a worker had already claimed one, the loop reads that worker's pipe there
and then (the ``Done`` of the run before it). The same step may then come to
the worker's own poll event, reported before the take-back: its pipe can be
empty by now, and reading it must not block the loop until the worker's
current run ends.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from polling import DEADLINE, poll_until

from taskmill.records import HistoryStatus

from .harness import coordinator, item

pytestmark = pytest.mark.timeout(120)

#: Seconds before the held run may end; the event handler must return long before.
HOLD = 10.0


def quick(ctx: Any, n: int) -> int:
    time.sleep(0.3)  # long enough for the loop to queue the next run behind this one
    return n


def held(ctx: Any, flag: str) -> str:
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(flag):
        if time.monotonic() > deadline:
            raise RuntimeError("the flag never appeared")
        time.sleep(0.01)
    return "released"


def test_a_worker_event_after_a_take_back_in_the_same_step_does_not_block(tmp_path: Any) -> None:
    flag = str(tmp_path / "flag")
    with coordinator(tmp_path, {"t::quick": quick, "t::held": held}, workers=1) as h:
        c = h.coord
        be = c.backend
        first, second = h.submit(item("t::quick", {"n": 1}), item("t::held", {"flag": flag}))
        h.step_until(lambda: any(w is not None and w.queued for w in be.handles), what="a run queued behind")
        slot = next(w for w in be.handles if w is not None and w.queued).index
        # (no local reference to the worker handle: its claim lock must not outlive the harness)
        assert [e.id for e in be.handles[slot].queued] == [second]
        # without stepping the loop: the worker ends `quick`, sends its Done and claims `held`
        poll_until(lambda: c.shm.claimed(slot) >= be.handles[slot].queued_from, what="the worker to claim the queued run")
        poll_until(lambda: be.handles[slot].conn.poll(), what="the Done of the run before it")
        timer = threading.Timer(HOLD, lambda: open(flag, "w").close())
        timer.start()
        try:
            # one step: the poll set reported the worker's pipe, then a client call came first
            c.runs.step_no += 1  # a new step
            c.runs.take_back()
            assert be.handles[slot].task.id == second  # it had started: it runs on
            be._drain(be.handles[slot])  # the worker's event, reported before the take-back read its pipe
            assert not os.path.exists(flag), "the loop waited for the held run to end"
        finally:
            timer.cancel()
            open(flag, "w").close()
        assert h.finished(first).status == HistoryStatus.COMPLETED
        row = h.finished(second)
        assert row.status == HistoryStatus.COMPLETED and row.result == "released"
