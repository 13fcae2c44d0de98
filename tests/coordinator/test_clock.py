"""Wall-clock steps never move a timer: timeouts, retry delays and durations read the monotonic clock.

The coordinator runs in this process with an injected wall clock that the test
steps by an hour in either direction while real workers run the tasks.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from taskmill.errors import Retryable
from taskmill.records import HistoryStatus, RetryPolicy

from .harness import coordinator, item

HOUR = 3600.0

pytestmark = pytest.mark.timeout(120)


def sleeper(ctx: Any, seconds: float, **_: Any) -> str:
    time.sleep(seconds)
    return "slept"


def flaky(ctx: Any, marker: str) -> str:
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        raise Retryable("first attempt fails", retry_after=1.0)
    return "second attempt"


class SteppedClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_a_forward_step_does_not_time_out_a_running_task(tmp_path: Any) -> None:
    clock = SteppedClock()
    with coordinator(tmp_path, {"t::sleep": sleeper}, clock=clock) as h:
        (tid,) = h.submit(item("t::sleep", {"seconds": 2.0}, timeout=60.0))
        h.step_until(lambda: h.coord.lc.tasks[tid].worker is not None, what="dispatch")
        clock.offset = HOUR  # the wall clock jumps an hour ahead while the task runs
        row = h.finished(tid)
        assert row.status == HistoryStatus.COMPLETED, row.last_error
        assert row.result == "slept"
        assert 1500 < (row.duration_ms or 0) < 30_000  # measured, not wall-clock arithmetic


def test_a_backward_step_does_not_stretch_a_retry_delay(tmp_path: Any) -> None:
    clock = SteppedClock()
    marker = str(tmp_path / "attempted")
    with coordinator(tmp_path, {"t::flaky": flaky}, clock=clock) as h:
        (tid,) = h.submit(item("t::flaky", {"marker": marker}, retry=RetryPolicy.constant(3, 1.0)))
        h.step_until(lambda: h.coord.lc.tasks[tid].retry_count == 1, what="the first failure")
        clock.offset = -HOUR  # an hour back: a wall-clock timer would now wait an hour
        started = time.monotonic()
        row = h.finished(tid, timeout=20)
        assert row.status == HistoryStatus.COMPLETED, row.last_error
        assert row.retry_count == 1
        assert time.monotonic() - started < 15


def test_finished_tasks_leave_no_timers_behind(tmp_path: Any) -> None:
    with coordinator(tmp_path, {"t::sleep": sleeper}) as h:
        ids = h.submit(*(item("t::sleep", {"seconds": 0.0, "i": i}, timeout=3600.0) for i in range(600)))
        h.step_until(lambda: not h.coord.lc.tasks, timeout=90, what="600 tasks")
        assert len(h.coord.timers) == 0
        assert h.coord.timers.heap_size < 600  # dead one-hour timeouts were purged, not kept for an hour
        assert h.history(ids[-1]).status == HistoryStatus.COMPLETED  # type: ignore[union-attr]
