"""The coordinator with the stub backend: the whole loop, no worker process.

Given a coordinator stepped in the test process whose runs execute in-process
(``backends/stub.py``) and a monotonic clock the test moves, when tasks are
submitted, complete, fail, overrun their timeout or are cancelled while
running, then the loop carries out exactly what the local backend's tests
show with real workers: history rows, retries, kills after the deadline or the
kill grace. And the stub is registered like any backend.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from taskmill.config import CoordinatorConfig
from taskmill.coordinator.backends import BACKENDS, make_backend
from taskmill.coordinator.backends.stub import StubBackend
from taskmill.coordinator.runs import CANCEL_GRACE
from taskmill.records import HistoryStatus, RetryPolicy
from taskmill.shm import SharedState

from .harness import item, stub_coordinator

pytestmark = pytest.mark.timeout(60)


def ok(ctx: Any, n: int) -> dict:
    return {"n": n * 2}


def boom(ctx: Any, n: int) -> None:
    raise ValueError(f"bad {n}")


TASKS = {"t::ok": ok, "t::boom": boom}


def test_runs_execute_in_process_and_their_rows_are_written(tmp_path: Any) -> None:
    with stub_coordinator(tmp_path, TASKS) as h:
        ids = h.submit(*(item("t::ok", {"n": i}) for i in range(5)))
        rows = [h.finished(t) for t in ids]
        assert [r.status for r in rows] == [HistoryStatus.COMPLETED] * 5
        assert [r.result for r in rows] == [{"n": i * 2} for i in range(5)]
        assert h.backend.started == ids  # dispatch order: priority, then id


def test_a_failing_run_is_retried_then_dead_lettered(tmp_path: Any) -> None:
    with stub_coordinator(tmp_path, TASKS) as h:
        (tid,) = h.submit(item("t::boom", {"n": 7}, max_retries=2, retry=RetryPolicy.constant(2, 0.0)))
        row = h.finished(tid)
        assert row.status == HistoryStatus.DEAD_LETTER and row.retry_count == 2
        assert "ValueError: bad 7" in (row.last_error or "")
        assert h.backend.started == [tid, tid, tid]


def test_a_run_past_its_timeout_is_killed_and_fails_as_retryable(tmp_path: Any) -> None:
    with stub_coordinator(tmp_path, TASKS) as h:
        h.backend.hold = True
        (tid,) = h.submit(item("t::ok", {"n": 1}, timeout=5.0, max_retries=0))
        h.step_until(lambda: tid in h.backend.running(), what="the run to start")
        h.advance(4.9)
        h.coord.step()
        assert tid not in h.backend.killed
        h.advance(0.2)
        h.step_until(lambda: tid in h.backend.killed, what="the kill")
        assert h.backend.killed[tid] == "timed out after 5s"
        row = h.finished(tid)
        assert row.status == HistoryStatus.DEAD_LETTER and "timed out after 5s" in (row.last_error or "")


def test_a_cancelled_run_is_told_then_killed_after_the_grace_period(tmp_path: Any) -> None:
    with stub_coordinator(tmp_path, TASKS) as h:
        h.backend.hold = True
        (tid,) = h.submit(item("t::ok", {"n": 1}))
        h.step_until(lambda: tid in h.backend.running(), what="the run to start")
        assert h.call("cancel", tid) is True
        h.step_until(lambda: tid in h.backend.cancelled, what="the cancel signal")
        assert h.history(tid).status == HistoryStatus.CANCELLED  # in history at once
        h.advance(CANCEL_GRACE - 0.1)
        h.coord.step()
        assert tid not in h.backend.killed
        h.advance(0.2)
        h.step_until(lambda: tid in h.backend.killed, what="the kill after the grace")
        assert "cancel grace" in h.backend.killed[tid]
        h.step_until(lambda: not h.backend.running(), what="the executor to be free")
        assert h.history(tid).status == HistoryStatus.CANCELLED  # the kill does not change the outcome


@pytest.mark.parametrize("stop", ["cancel", "pause"])
def test_a_stopped_run_whose_timeout_comes_before_the_grace_is_killed_at_its_timeout(
        tmp_path: Any, stop: str) -> None:
    with stub_coordinator(tmp_path, TASKS) as h:
        h.backend.hold = True
        (tid,) = h.submit(item("t::ok", {"n": 1}, timeout=1.0))
        h.step_until(lambda: tid in h.backend.running(), what="the run to start")
        h.advance(0.5)
        if stop == "cancel":
            assert h.call("cancel", tid) is True
        else:
            h.call("pause", "global", "")
        h.step_until(lambda: tid in h.backend.cancelled, what="the stop signal")
        h.advance(0.4)  # 0.9 s into its run: neither the timeout nor the grace yet
        h.coord.step()
        assert tid not in h.backend.killed
        h.advance(0.2)
        h.step_until(lambda: tid in h.backend.killed, what="the kill at the timeout")
        assert h.backend.killed[tid] == "timed out after 1s"  # not at 0.5 + CANCEL_GRACE
        h.step_until(lambda: not h.backend.running(), what="the executor to be free")


def test_a_run_that_finishes_after_a_pause_keeps_its_result(tmp_path: Any) -> None:
    with stub_coordinator(tmp_path, TASKS) as h:
        h.backend.hold = True
        (tid,) = h.submit(item("t::ok", {"n": 3}))
        h.step_until(lambda: tid in h.backend.running(), what="the run to start")
        h.call("pause", "global", "")
        h.step_until(lambda: tid in h.backend.cancelled, what="the pause to reach the run")
        h.backend.finish(tid, json.dumps({"n": 6}))
        row = h.finished(tid)
        assert row.status == HistoryStatus.COMPLETED and row.result == {"n": 6}


def test_a_lost_executor_fails_its_run_with_the_cause(tmp_path: Any) -> None:
    with stub_coordinator(tmp_path, TASKS) as h:
        h.backend.hold = True
        (tid,) = h.submit(item("t::ok", {"n": 1}, max_retries=1, retry=RetryPolicy.constant(1, 0.0)))
        h.step_until(lambda: tid in h.backend.running(), what="the run to start")
        h.backend.crash(tid, "executor vanished")
        h.step_until(lambda: h.backend.started.count(tid) == 2, what="the retry")
        h.backend.finish(tid, "1")
        row = h.finished(tid)
        assert row.status == HistoryStatus.COMPLETED and row.retry_count == 1


def test_the_stub_is_a_registered_backend_built_from_a_registry_file(tmp_path: Any) -> None:
    assert BACKENDS["stub"].endswith(":StubBackend") and "local" in BACKENDS
    path = tmp_path / "registry.pkl"
    path.write_bytes(pickle.dumps({"tasks": {}}))
    shm = SharedState(1)
    try:
        backend = make_backend("stub", CoordinatorConfig(store_path=":memory:", max_concurrency=3), shm, str(path))
        assert isinstance(backend, StubBackend) and backend.workers() == 3
        with pytest.raises(ValueError, match="unknown backend 'nope'"):
            make_backend("nope", CoordinatorConfig(store_path=":memory:", max_concurrency=1), shm, str(path))
    finally:
        shm.close()
