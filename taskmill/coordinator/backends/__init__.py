"""Internal: where admitted runs execute. The execution-backend seam of the coordinator.

The loop decides *what* runs (the lifecycle picks, the gate admits); a backend
decides *where and how*: it owns its executors (processes, pipes, a cluster
client …) and whatever protocol it speaks with them. The two meet in two small
interfaces:

    loop ──▶ Backend                              Backend ──▶ Host (the loop's side, ``runs.Runs``)
    open(host)        start executors                run_done(e, done, then)   a run ended (``then``:
    idle() / claim()  a free executor                                          the queued run it took)
    start(x, e, run)  run ``e`` on executor ``x``    run_lost(e, cause)        its executor died or was killed
    start_hook(…)     an on_cancel hook              run_interrupted(e)        it never began / was stopped
    queue_ahead()     send busy executors their next run_progress(e, f, msg)   reported progress
    take_back(…)      every queued run comes back    run_spawn(e, …, answer)   it submits work
    cancel(e)         ``ctx.cancelled`` for ``e``     queue_next(runner)        what may run next behind it
    kill(e, why)      stop ``e``'s run now            unqueue(e)               a queued run came back
    suspend/resume(e) stop a run where it is, go on  watch/unwatch/call_at/wake the loop's poll set and timers
    grow(n) / live(e) / workers() / stop()

Runs and their entries (``core.entry.Entry``) cross the seam; each backend
keeps its own handle for an executor (``Entry.worker`` holds it while the run
lasts). Timeouts and kill graces are the loop's (``runs.py``): a backend only
carries out ``kill``.

Adding a backend is one module with a class that has these methods, plus one
line in ``BACKENDS``; ``stub.StubBackend`` (in-process, deterministic, for
tests) shows it. ``local.LocalProcessBackend`` is the default: forked workers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from taskmill import protocol
    from taskmill.config import CoordinatorConfig
    from taskmill.coordinator.core.entry import Entry
    from taskmill.coordinator.core.queues import Timer
    from taskmill.shm import SharedState

__all__ = ["BACKENDS", "Backend", "Host", "make_backend"]

#: The backends a coordinator can run with: ``CoordinatorConfig.backend`` -> "module:class".
BACKENDS: dict[str, str] = {
    "local": "taskmill.coordinator.backends.local:LocalProcessBackend",
    "stub": "taskmill.coordinator.backends.stub:StubBackend",
}


class Host(Protocol):
    """What a backend may ask of the loop, and how it reports back (``runs.Runs`` implements it)."""

    step_no: int  # the loop's step counter: a backend can tell whether it acted earlier in this step

    def mono(self) -> float: ...

    def clock(self) -> float: ...

    def watch(self, fd: int, on_ready: Callable[[], None]) -> None: ...

    def unwatch(self, fd: int) -> None: ...

    def wake(self) -> None: ...

    def call_at(self, due: float, fn: Callable[[], None]) -> Timer: ...

    def cancel_timer(self, timer: Timer | None) -> None: ...

    @property
    def max_concurrency(self) -> int: ...

    def average_ms(self, task_type: str) -> float | None: ...

    def queue_next(self, runner: Entry) -> Entry | None: ...

    def unqueue(self, e: Entry) -> None: ...

    def run_done(self, e: Entry, done: protocol.Done, then: Entry | None) -> None: ...

    def run_lost(self, e: Entry, cause: str) -> None: ...

    def run_interrupted(self, e: Entry) -> None: ...

    def run_progress(self, e: Entry, fraction: float | None, message: str | None) -> None: ...

    def run_spawn(self, e: Entry | None, task_id: int, kind: str, items: list[tuple],
                  answer: Callable[[Any], None]) -> None: ...


class Backend(Protocol):
    """Where admitted runs execute (see the module docstring)."""

    #: It can stop a run where it is and let it go on later (preemption by suspension).
    suspends: bool
    #: Most executors it can have at once (``set_max_concurrency`` stops there).
    max_executors: int

    def open(self, host: Host) -> None:
        """Start the executors; raise ``RuntimeError`` when none can start (a registry that cannot load)."""

    def idle(self) -> int:
        """Executors free to start a run now."""

    def claim(self) -> Any:
        """Take a free executor for the next run (None when there is none)."""

    def start(self, executor: Any, e: Entry, run: tuple) -> None:
        """Run ``e`` (its ``protocol.Run`` as a tuple) on ``executor`` from ``claim``."""

    def start_hook(self, executor: Any, task_id: int, task_type: str, payload: str) -> None:
        """Run the ``on_cancel`` hook of cancelled task ``task_id`` on ``executor``."""

    def queue_ahead(self) -> None:
        """Send busy executors their next runs, if it can (``host.queue_next``)."""

    def take_back(self, e: Entry | None = None) -> None:
        """Every queued run back (``host.unqueue``), or only the queue holding ``e``; runs an
        executor took already start (``host.run_done(…, then)``)."""

    def cancel(self, e: Entry) -> None:
        """Tell ``e``'s run that it is cancelled (``ctx.cancelled``)."""

    def kill(self, e: Entry, reason: str) -> None:
        """End ``e``'s run now (it is reported lost with ``reason``), unless it ended meanwhile."""

    def suspend(self, e: Entry) -> None:
        """Stop ``e``'s run where it is (its executor stays with it)."""

    def resume(self, e: Entry) -> None:
        """Let a suspended run go on."""

    def grow(self, n: int) -> None:
        """Have at least ``n`` executors (up to ``max_executors``)."""

    def live(self, e: Entry) -> Any:
        """What ``e``'s run reports live (``task_id``, ``progress``, ``bytes_done``, ``bytes_total``), or None."""

    def workers(self) -> int:
        """Executors alive."""

    def shutting_down(self) -> None:
        """The coordinator stops: no new executors; runs that end now are interrupted, not failed."""

    def stop(self) -> None:
        """Stop every executor; runs still going are reported interrupted."""

    def close(self) -> None:
        """Release what is left (at exit, also after a failure); never raises."""


def make_backend(name: str, config: CoordinatorConfig, shm: SharedState, registry_path: str) -> Backend:
    """The backend registered as ``name``, built for this coordinator (before the store opens)."""
    try:
        spec = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}") from None
    module, _, cls = spec.partition(":")
    backend: Backend = getattr(importlib.import_module(module), cls)(config, shm, registry_path)
    return backend
