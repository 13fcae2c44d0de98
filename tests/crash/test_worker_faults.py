"""Fault matrix for task code (F9): exceptions, exits, signals, segfaults, bad return values.

Each fault runs with no retries so its outcome is immediate; the history row must
have the exact status and an error text that names the cause, and the pool must
keep working afterwards (a replacement worker when the old one died).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

import taskmill as tm

DEADLINE = 60.0

faults = tm.Domain("faults", retry=tm.RetryPolicy.none())


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


@faults.task
def misbehave(ctx: tm.TaskContext, fault: str) -> Any:
    import ctypes
    import signal
    import sys

    if fault == "value_error":
        raise ValueError("boom from the task")
    if fault == "retryable":
        raise tm.Retryable("try later")
    if fault == "permanent":
        raise tm.Permanent("never again")
    if fault == "keyboard_interrupt":
        raise KeyboardInterrupt
    if fault == "sys_exit_3":
        sys.exit(3)
    if fault == "sys_exit_0":
        sys.exit(0)
    if fault == "os_exit_7":
        os._exit(7)
    if fault == "os_exit_0":
        os._exit(0)
    if fault == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    if fault == "segfault":
        ctypes.string_at(0)
    if fault == "abort":
        os.abort()
    if fault == "non_json_return":
        return {"obj": object()}
    if fault == "nan_return":
        return float("nan")
    if fault == "broken_str":
        raise BrokenStr()
    if fault == "recursion":
        def down(n: int) -> int:
            return down(n + 1) + 1
        return down(0)
    raise AssertionError(f"unknown fault {fault}")


@faults.task
def whoami(ctx: tm.TaskContext) -> int:
    return os.getpid()


# fault -> (history status, substrings the error must contain, does the worker survive?)
MATRIX: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "value_error": ("dead_letter", ("ValueError: boom from the task", "Traceback"), True),
    "retryable": ("dead_letter", ("Retryable: try later",), True),
    "permanent": ("failed", ("Permanent: never again",), True),
    "keyboard_interrupt": ("dead_letter", ("KeyboardInterrupt",), True),
    "sys_exit_3": ("dead_letter", ("SystemExit: 3",), True),
    "sys_exit_0": ("dead_letter", ("SystemExit: 0",), True),
    "os_exit_7": ("dead_letter", ("exited with code 7",), False),
    "os_exit_0": ("dead_letter", ("exited with code 0",), False),
    "sigkill": ("dead_letter", ("killed by SIGKILL (exit code -9)",), False),
    "sigterm": ("dead_letter", ("killed by SIGTERM (exit code -15)",), False),
    "segfault": ("dead_letter", ("killed by SIGSEGV (exit code -11)",), False),
    "abort": ("dead_letter", ("killed by SIGABRT (exit code -6)",), False),
    "non_json_return": ("failed", ("not JSON-serializable",), True),
    "nan_return": ("failed", ("not JSON-serializable",), True),
    "recursion": ("dead_letter", ("RecursionError",), True),
    "broken_str": ("dead_letter", ("BrokenStr",), True),
}

XFAIL: dict[str, str] = {}  # fault -> reason, for faults that reveal an open bug


def _params() -> list[Any]:
    out = []
    for name in MATRIX:
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("fault", _params())
def test_worker_fault(store_path: str, fault: str) -> None:
    status, needles, survives = MATRIX[fault]
    with tm.Scheduler(store_path=store_path, domains=[faults], max_concurrency=1) as s:
        h = s.domain(faults)
        before = s.wait(h.submit(whoami).id, timeout=DEADLINE).result  # the one worker's pid

        out = h.submit(misbehave, fault=fault)
        rec = s.wait(out.id, timeout=DEADLINE)
        assert rec.status == status, rec.last_error
        assert rec.retry_count == 0
        for needle in needles:
            assert needle in (rec.last_error or ""), f"{needle!r} not in error text:\n{rec.last_error}"
        if not survives:
            assert f"worker process {before}" in rec.last_error, rec.last_error
        assert [r.id for r in s.store.failed_tasks()] == [out.id]
        if status == "dead_letter":
            assert [r.id for r in h.dead_letter_tasks()] == [out.id]

        # the pool keeps working: same worker if it survived, a replacement otherwise
        after = s.wait(h.submit(whoami).id, timeout=DEADLINE)
        assert after.status == "completed"
        if survives:
            assert after.result == before
        else:
            assert after.result != before
            assert not _alive(before)
        assert s.snapshot().workers == 1
        assert s.sql("SELECT status, count(*) AS n FROM task_history GROUP BY 1 ORDER BY 1") == sorted(
            [{"status": "completed", "n": 2}, {"status": status, "n": 1}], key=lambda r: r["status"])


def test_worker_deaths_are_retried_and_counted(store_path: str, tmp_path: Any) -> None:
    """With retries, every death is one retry; the replacement worker runs the next attempt."""
    with tm.Scheduler(store_path=store_path, domains=[faults], max_concurrency=1) as s:
        h = s.domain(faults)
        out = h.submit(misbehave.options(retry=tm.RetryPolicy.constant(2, 0.0)), fault="os_exit_7")
        rec = s.wait(out.id, timeout=DEADLINE)
        assert rec.status == "dead_letter" and rec.retry_count == 2
        assert "exited with code 7" in rec.last_error
        assert s.wait(h.submit(whoami).id, timeout=DEADLINE).status == "completed"


def test_crash_loop_does_not_wedge_the_pool(store_path: str) -> None:
    """Many consecutive worker deaths slow respawns down (crash-loop protection) but work still gets done."""
    with tm.Scheduler(store_path=store_path, domains=[faults], max_concurrency=2) as s:
        h = s.domain(faults)
        batch = h.submit_batch([misbehave.options(key=f"crash-{i}").call(fault="sigkill") for i in range(6)])
        t0 = time.monotonic()
        for tid in batch.inserted:
            assert s.wait(tid, timeout=DEADLINE).status == "dead_letter"
        assert time.monotonic() - t0 < DEADLINE
        rec = s.wait(h.submit(whoami).id, timeout=DEADLINE)
        assert rec.status == "completed"
