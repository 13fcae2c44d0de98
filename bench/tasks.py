"""Task bodies shared by every system under test.

The plain functions (``noop``, ``busy``, ``sleeper``) are what
ProcessPoolExecutor and Huey run; the taskmill task types wrap the very same
functions, so every system executes identical work. Everything here is module-level and importable (as
``bench.tasks``) so worker processes of all systems can load it by reference.
"""

from __future__ import annotations

import os
import statistics
import time

import taskmill as tm

__all__ = ["DOMAIN", "busy", "calibrate_spin", "noop", "sleeper", "spin", "tm_busy", "tm_gate", "tm_noop",
           "tm_sleeper"]

#: Seconds a ``sleeper`` task holds its worker; far longer than any submission phase.
SLEEPER_SECONDS = 600.0
#: Seconds between checks of a D gate task for its release file.
GATE_POLL = 0.0005


# --------------------------------------------------------------------------- plain bodies


def spin(loops: int) -> int:
    """Pure-Python CPU work: ``loops`` integer additions in the interpreter loop, no I/O."""
    x = 0
    for k in range(loops):
        x += k
    return x


def noop(i: int, run: str) -> None:
    """Do nothing; ``i`` and ``run`` only make every payload distinct."""
    return None


def sleeper(i: int, run: str) -> None:
    """Hold a worker for ``SLEEPER_SECONDS`` (W3: the workers stay busy, so only submission is measured)."""
    time.sleep(SLEEPER_SECONDS)


def busy(i: int, run: str, loops: int) -> float:
    """A calibrated CPU burst (see :func:`calibrate_spin`); returns its own duration in seconds.

    Every system stores that return value, so W2 can tell time spent in task
    code from time lost around it, measured the same way for all of them.
    """
    t0 = time.perf_counter()
    spin(loops)
    return time.perf_counter() - t0


def calibrate_spin(target_s: float, samples: int = 31) -> tuple[int, float]:
    """Find the ``spin`` loop count that takes ``target_s`` in this process.

    Returns ``(loops, seconds)``: the count and the median time of one call at
    that count, measured over ``samples`` calls after calibration.
    """
    loops = 10_000
    for _ in range(6):  # converge: rescale by the measured ratio until within 2 %
        t = _median_call(loops, 5)
        loops = max(1, round(loops * target_s / t))
        if abs(t / target_s - 1.0) < 0.02:
            break
    return loops, _median_call(loops, samples)


def _median_call(loops: int, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        spin(loops)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------- taskmill task types

DOMAIN = tm.Domain("bench")


@DOMAIN.task(name="noop")
def tm_noop(ctx: tm.TaskContext, i: int, run: str) -> None:
    return noop(i, run)


@DOMAIN.task(name="busy")
def tm_busy(ctx: tm.TaskContext, i: int, run: str, loops: int) -> float:
    return busy(i, run, loops)


@DOMAIN.task(name="sleeper")
def tm_sleeper(ctx: tm.TaskContext, i: int, run: str) -> None:
    return sleeper(i, run)  # ends with the scheduler: Shutdown.hard() kills running tasks' workers


@DOMAIN.task(name="gate")
def tm_gate(ctx: tm.TaskContext, path: str, slot: int) -> None:
    """Holds a worker until ``path`` exists: D queues its backlog behind two of these."""
    while not os.path.exists(path):
        time.sleep(GATE_POLL)
