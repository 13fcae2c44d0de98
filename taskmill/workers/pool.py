"""The coordinator's side of the worker pool: a clean fork server and its workers.

Invariant: every worker is forked by the ``multiprocessing`` fork server, which
is started (with the registry preloaded) before the coordinator opens DuckDB
or starts a thread. One duplex pipe per worker; one lifeline pipe whose only
write end the coordinator holds, so workers exit when it dies. The
coordinator's local backend (``coordinator/backends/local.py``) drives it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from collections import deque
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import Connection
from typing import Any

from taskmill.workers import preload
from taskmill.workers.main import worker_main

__all__ = ["WorkerHandle", "WorkerPool", "describe_exit"]

#: Consecutive crashes of a slot before respawns slow down (crash-loop protection).
RESPAWN_FREE_CRASHES = 3
#: Longest pause between respawns of a crash-looping slot, in seconds.
RESPAWN_MAX_DELAY = 5.0


def describe_exit(exitcode: int | None) -> str:
    """An exit code as a person reads it: signal names for negative codes."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name} (exit code {exitcode})"
    return f"exited with code {exitcode}"


class WorkerHandle:
    """One worker process as the coordinator sees it."""

    __slots__ = ("index", "process", "conn", "pid", "ready", "task", "kill_reason", "stopping", "timer", "hook",
                 "claim_lock", "sent", "queued", "queued_from", "ticket", "queued_behind", "read_step")

    def __init__(self, index: int, process: Any, conn: Connection, claim_lock: Any) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.pid: int = process.pid
        self.ready = False
        self.task: Any = None  # the Entry it runs, or None when idle
        self.ticket = 0  # the ticket of that run (shm.py: the n-th Run sent is ticket n)
        self.claim_lock = claim_lock  # guards the slot's claimed and revoked tickets
        self.sent = 0  # Runs sent so far: the last ticket
        self.queued: deque[Any] = deque()  # Entries queued behind its task (sent, not started), in order
        self.queued_from = 0  # the ticket of the first of them (the rest follow one by one)
        self.queued_behind = 0  # the ticket of the run a run was last queued behind (once per run)
        self.kill_reason: str | None = None
        self.stopping = False
        self.timer: Any = None  # the time limit of the on_cancel hook it runs
        self.hook: tuple[int, str] | None = None  # (task id, task type) of an on_cancel hook it runs
        self.read_step = -1  # the loop step in which its pipe was last read out of turn (a take-back)

    @property
    def sentinel(self) -> int:
        return self.process.sentinel

    def kill(self, reason: str) -> None:
        """SIGKILL the worker and its process group (processes its task started)."""
        if self.kill_reason is None:
            self.kill_reason = reason
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the worker leads its own group (worker_main)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(self.pid, signal.SIGKILL)  # in case it had not made its group yet
        except ProcessLookupError:
            pass

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGSTOP, SIGCONT) to the worker and what its task started."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """SIGKILL what is left of the worker's process group (once the worker itself is gone)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def exitcode(self) -> int | None:
        self.process.join(timeout=1.0)
        return self.process.exitcode


class WorkerPool:
    """Starts the fork server and spawns, tracks and stops workers."""

    def __init__(self, registry_path: str, shm_name: str) -> None:
        os.environ[preload.ENV_VAR] = registry_path
        os.environ[preload.SYS_PATH_VAR] = json.dumps(sys.path)
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["taskmill.workers.preload", "taskmill.workers.main"])
        forkserver.ensure_running()
        self._lifeline_r, self._lifeline_w = self._ctx.Pipe(duplex=False)
        self.shm_name = shm_name
        self.crashes: dict[int, int] = {}

    def spawn(self, index: int) -> WorkerHandle:
        parent, child = self._ctx.Pipe(duplex=True)
        lock = self._ctx.Lock()
        # Not daemonic, so tasks may start processes of their own; the lifeline ends workers.
        proc = self._ctx.Process(target=worker_main, args=(child, self._lifeline_r, index, self.shm_name, lock),
                                 name=f"taskmill-worker-{index}", daemon=False)
        proc.start()
        child.close()
        return WorkerHandle(index, proc, parent, lock)

    def respawn_delay(self, index: int) -> float:
        n = self.crashes.get(index, 0)
        if n <= RESPAWN_FREE_CRASHES:
            return 0.0
        return min(0.1 * 2 ** (n - RESPAWN_FREE_CRASHES), RESPAWN_MAX_DELAY)

    def close(self) -> None:
        """Drop the lifeline and stop the fork server and resource tracker."""
        for c in (self._lifeline_w, self._lifeline_r):
            try:
                c.close()
            except OSError:
                pass
        try:
            forkserver._forkserver._stop()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - best effort at exit
            pass

    @staticmethod
    def start_resource_tracker() -> None:
        """Start multiprocessing's resource tracker now, its warnings off: if this process is
        killed, the tracker removes the segment and semaphores left behind without a warning
        about each (the next start's recovery is the report that matters)."""
        saved = os.environ.get("PYTHONWARNINGS")
        os.environ["PYTHONWARNINGS"] = "ignore"
        try:
            resource_tracker.ensure_running()
        finally:
            if saved is None:
                del os.environ["PYTHONWARNINGS"]
            else:
                os.environ["PYTHONWARNINGS"] = saved

    @staticmethod
    def stop_resource_tracker() -> None:
        try:
            resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001
            pass
