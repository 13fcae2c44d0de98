"""A backend without processes, for tests: runs execute in this process, deterministically.

Each run executes the registered function through the worker's own message
handler (``workers.main.handle_run``) when the loop next fires its timers,
one run per executor, in the order they started; or, with ``hold``, not until
the test ends it (``finish``, ``crash``). It keeps what the loop asked of it
(``cancelled``, ``killed``, ``suspended``) for the test to look at. It never
queues runs ahead. It is the proof of the seam: a backend is this module plus
one line in ``backends.BACKENDS``.
"""

from __future__ import annotations

import pickle
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from taskmill import protocol
from taskmill.workers.main import handle_run

if TYPE_CHECKING:
    from taskmill.config import CoordinatorConfig
    from taskmill.coordinator.backends import Host
    from taskmill.coordinator.core.entry import Entry
    from taskmill.shm import SharedState

__all__ = ["StubBackend", "StubView"]


class StubView(NamedTuple):
    """What a stub run reports live (the fields the snapshots read of a worker's slot)."""

    task_id: int
    progress: float = -1.0
    bytes_done: int = 0
    bytes_total: int = 0


class _Executor:
    __slots__ = ("index", "run", "entry", "hook")

    def __init__(self, index: int) -> None:
        self.index = index
        self.run: tuple | None = None
        self.entry: Entry | None = None
        self.hook: tuple | None = None


class StubBackend:
    """In-process executors (see the module docstring)."""

    suspends = True

    def __init__(self, config: CoordinatorConfig, shm: SharedState | None, registry_path: str | None,
                 registry: dict[str, Any] | None = None) -> None:
        if registry is None:
            with open(registry_path or "", "rb") as f:
                registry = pickle.load(f)
        self.registry: dict[str, Any] = {"domain_state": {}, "global_state": {}, **registry}
        self.max_executors = max(config.max_concurrency * 2 + 16, 1)
        self.executors = [_Executor(i) for i in range(config.max_concurrency)]
        self.free = list(reversed(self.executors))
        self.hold = False  # runs wait for finish()/crash() instead of executing
        self.started: list[int] = []  # task ids, in the order their runs started
        self.cancelled: list[int] = []
        self.killed: dict[int, str] = {}
        self.suspended: set[int] = set()
        self.hooks_run: list[int] = []
        self.stopping = False
        self.host: Host

    @classmethod
    def with_functions(cls, config: CoordinatorConfig, tasks: dict[str, Any]) -> StubBackend:
        """A stub running ``tasks`` (qualified type -> function), for tests that build it directly."""
        return cls(config, None, None, registry={"tasks": tasks})

    # ------------------------------------------------------------------ the seam

    def open(self, host: Host) -> None:
        self.host = host

    def idle(self) -> int:
        return len(self.free)

    def claim(self) -> _Executor | None:
        return self.free.pop() if self.free else None

    def start(self, x: _Executor, e: Entry, run: tuple) -> None:
        x.run, x.entry = run, e
        self.started.append(e.id)
        if not self.hold:
            self.host.call_at(self.host.mono(), lambda: self._execute(x, e))

    def start_hook(self, x: _Executor, task_id: int, task_type: str, payload: str) -> None:
        x.hook = (task_id, task_type, payload, 0, "", task_type, 0, None, "on_cancel", None, None, None)
        self.host.call_at(self.host.mono(), lambda: self._run_hook(x))

    def queue_ahead(self) -> None:
        pass  # every run goes to a free executor

    def take_back(self, e: Entry | None = None) -> None:
        pass

    def cancel(self, e: Entry) -> None:
        self.cancelled.append(e.id)

    def kill(self, e: Entry, reason: str) -> None:
        x = e.worker
        if x is None or x.entry is not e:
            return
        self.killed[e.id] = reason
        self.host.call_at(self.host.mono(), lambda: self._lost(x, e, reason))

    def suspend(self, e: Entry) -> None:
        self.suspended.add(e.id)

    def resume(self, e: Entry) -> None:
        self.suspended.discard(e.id)
        x = e.worker
        if x is not None and x.entry is e and not self.hold:
            self.host.call_at(self.host.mono(), lambda: self._execute(x, e))

    def grow(self, n: int) -> None:
        while len(self.executors) < min(n, self.max_executors):
            x = _Executor(len(self.executors))
            self.executors.append(x)
            self.free.append(x)

    def live(self, e: Entry) -> StubView | None:
        return StubView(e.id) if e.worker is not None else None

    def workers(self) -> int:
        return len(self.executors)

    def shutting_down(self) -> None:
        self.stopping = True

    def stop(self) -> None:
        for x in self.executors:
            e, x.entry, x.run, x.hook = x.entry, None, None, None
            if e is not None:
                self.host.run_interrupted(e)
        self.free = list(reversed(self.executors))

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ what tests do

    def running(self) -> list[int]:
        """Task ids of the runs under way, by executor."""
        return [x.entry.id for x in self.executors if x.entry is not None]

    def finish(self, task_id: int, result: Any = None, *, error: str | None = None, kind: str = "retryable",
               retry_after: float | None = None) -> None:
        """End a held run: completed with ``result`` (JSON text), or failed with ``error``."""
        x = self._holding(task_id)
        now = time.time()
        done = protocol.Done(task_id, None if error is not None else result, None if error is None else kind, error,
                             retry_after, now, now, 0.001, 0, 0, 0, 0)
        self._report(x, done)

    def crash(self, task_id: int, cause: str = "stub executor died") -> None:
        """A held run's executor dies."""
        x = self._holding(task_id)
        assert x.entry is not None
        self._lost(x, x.entry, cause)

    # ------------------------------------------------------------------ inside

    def _holding(self, task_id: int) -> _Executor:
        for x in self.executors:
            if x.entry is not None and x.entry.id == task_id:
                return x
        raise LookupError(f"no run of task {task_id} is under way")

    def _execute(self, x: _Executor, e: Entry) -> None:
        if x.entry is not e or x.run is None or e.id in self.suspended:
            return  # killed, stopped or suspended meanwhile
        done = handle_run(protocol.Run._make(x.run), self.registry, None, None)
        self._report(x, done)

    def _report(self, x: _Executor, done: protocol.Done) -> None:
        e = x.entry
        assert e is not None
        x.entry = x.run = None
        self.free.append(x)
        self.host.run_done(e, done, None)

    def _lost(self, x: _Executor, e: Entry, cause: str) -> None:
        if x.entry is not e:
            return
        x.entry = x.run = None
        self.suspended.discard(e.id)
        self.free.append(x)
        if self.stopping:
            self.host.run_interrupted(e)
        else:
            self.host.run_lost(e, cause)

    def _run_hook(self, x: _Executor) -> None:
        if x.hook is None:
            return
        handle_run(protocol.Run._make(x.hook), self.registry, None, None)
        self.hooks_run.append(x.hook[0])
        x.hook = None
        self.free.append(x)
