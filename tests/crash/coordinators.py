"""Killing a coordinator the way a crash does, shared by the crash tests."""

from __future__ import annotations

import os
import signal
import time

import psutil
from polling import poll_until

import taskmill as tm


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: it runs no more)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_coordinator(s: tm.Scheduler) -> None:
    """SIGKILL ``s``'s coordinator, wait until it is gone, then close ``s`` (which must not hang)."""
    coord = s.coordinator_pid
    os.kill(coord, signal.SIGKILL)
    poll_until(lambda: gone(coord), 30, what="the coordinator to die")
    t0 = time.monotonic()
    s.close()
    assert time.monotonic() - t0 < 30, "closing the broken scheduler hung"
