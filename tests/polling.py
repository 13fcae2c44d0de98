"""Polling with a deadline, shared by the tests (never sleep blindly for a condition)."""

from __future__ import annotations

import time
from typing import Any, Callable

import taskmill as tm

#: Seconds any single wait may take on a loaded 2-core machine.
DEADLINE = 60.0


def poll_until(cond: Callable[[], Any], timeout: float = DEADLINE, interval: float = 0.02,
               what: str = "condition", between: Callable[[], Any] | None = None) -> Any:
    """Call ``cond`` until it returns something truthy; return that value.

    Between two calls it sleeps ``interval``, or calls ``between`` instead (for
    example one step of a coordinator loop the test drives itself).

    Raises AssertionError (naming ``what``) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last value: {value!r})")
        if between is not None:
            between()
        else:
            time.sleep(interval)


def slots_as_cores(max_concurrency: int) -> tm.Capacity:
    """A CPU capacity of one core per slot, for tests that count concurrent tasks, not cores
    (by default a task holds one core and the capacity is the machine's cores)."""
    return tm.Capacity(cpus=max_concurrency)
