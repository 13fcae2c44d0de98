"""TaskContext: the first argument of every task function (F8).

Lives in worker processes. Numbers (progress, bytes, IO counters) go to the
worker's shared-memory slot without a message; text progress goes over the
worker's pipe. Imports only leaves.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, overload

import structlog

from taskmill.domain import keywords_only
from taskmill.records import TaskRecord

if TYPE_CHECKING:
    from taskmill.domain import P, Submission, TaskOptions, TaskType
    from taskmill.outcomes import SubmitOutcome
    from taskmill.shm import WorkerSlot

__all__ = ["TaskContext"]

#: Minimum seconds between two progress reports sent to the coordinator (each becomes a Progress
#: event for subscribers; the fraction itself is in the shared-memory slot at once).
PROGRESS_MESSAGE_INTERVAL = 0.25

_MISSING = object()


class TaskContext:
    """What a running task can see and report.

    Attributes:
        record: The task's record (id, type, key, label, priority, retry count).
        log: A structlog logger bound with the task id and type.
    """

    __slots__ = ("record", "_log", "_slot", "_send", "_submit", "_state", "_global", "_io", "_bytes_done", "_bytes_total",
                 "_fraction", "_last_msg", "_pid")

    def __init__(
        self,
        record: TaskRecord,
        *,
        slot: WorkerSlot | None = None,
        send: Callable[[int, float | None, str | None], None] | None = None,
        submit: Callable[..., Any] | None = None,
        domain_state: dict[str, Any] | None = None,
        global_state: dict[str, Any] | None = None,
    ) -> None:
        self.record = record
        self._log: Any = None
        self._slot = slot
        self._send = send
        self._submit = submit  # (kind, task, payload, domain) -> SubmitOutcome, from the worker
        self._state = domain_state or {}
        self._global = global_state or {}
        self._io = [0, 0, 0, 0]
        self._bytes_done = 0
        self._bytes_total = 0
        self._fraction = -1.0
        self._last_msg = 0.0

    @property
    def task_id(self) -> int:
        return self.record.id

    @property
    def log(self) -> Any:
        """A structlog logger bound to this task's id and type (made on first use)."""
        if self._log is None:
            self._log = structlog.get_logger("taskmill.task").bind(task_id=self.record.id,
                                                                   task_type=self.record.task_type)
        return self._log

    @property
    def cancelled(self) -> bool:
        """True once the task should stop: cancel, preemption, pause or shutdown."""
        return self._slot.cancelled_for(self.record.id) if self._slot is not None else False

    # ------------------------------------------------------------------ progress

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress as a fraction in 0..1, optionally with a short message."""
        if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction must be in 0..1, got {fraction!r}")
        self._fraction = float(fraction)
        self._write_progress()
        if self._send is not None:  # subscribers get Progress events: at most one per interval
            now = time.monotonic()
            if now - self._last_msg >= PROGRESS_MESSAGE_INTERVAL:
                self._last_msg = now
                self._send(self.record.id, self._fraction, None if message is None else str(message)[:500])

    def progress_fraction(self, done: int, total: int) -> None:
        """Report progress as ``done`` out of ``total`` units."""
        if total <= 0:
            raise ValueError(f"total must be > 0, got {total!r}")
        self.progress(min(max(done / total, 0.0), 1.0))

    def set_bytes_total(self, total: int) -> None:
        """Declare the total bytes this task will process (byte progress)."""
        self._bytes_total = _nonneg(total, "total")
        self._write_progress()

    def add_bytes(self, n: int) -> None:
        """Add ``n`` processed bytes to the byte progress."""
        self._bytes_done += _nonneg(n, "n")
        if self._bytes_total:
            self._fraction = min(self._bytes_done / self._bytes_total, 1.0)
        self._write_progress()

    def _write_progress(self) -> None:
        if self._slot is not None:
            self._slot.progress(self._fraction, self._bytes_done, self._bytes_total)

    # ------------------------------------------------------------------ IO accounting

    def record_read_bytes(self, n: int) -> None:
        """Account ``n`` bytes read from disk."""
        self._add_io(0, n)

    def record_write_bytes(self, n: int) -> None:
        """Account ``n`` bytes written to disk."""
        self._add_io(1, n)

    def record_net_rx_bytes(self, n: int) -> None:
        """Account ``n`` bytes received from the network."""
        self._add_io(2, n)

    def record_net_tx_bytes(self, n: int) -> None:
        """Account ``n`` bytes sent to the network."""
        self._add_io(3, n)

    def _add_io(self, i: int, n: int) -> None:
        self._io[i] += _nonneg(n, "n")
        if self._slot is not None:
            self._slot.io(*self._io)

    @property
    def io_totals(self) -> tuple[int, int, int, int]:
        """(read, write, net rx, net tx) bytes recorded so far."""
        return self._io[0], self._io[1], self._io[2], self._io[3]

    # ------------------------------------------------------------------ state

    def state(self, name: str, default: Any = _MISSING) -> Any:
        """A state object by name: the domain's first, then the scheduler's.

        Raises:
            KeyError: no state of that name and no default given.
        """
        value = self._state.get(name, _MISSING)
        if value is _MISSING:
            value = self._global.get(name, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(f"no state named {name!r} in domain {self.record.domain!r} or the scheduler")
            return default
        return value


    # ------------------------------------------------------------------ work from inside a task (F14)

    def _spawn(self, kind: str, task: Any, payload: dict[str, Any], domain: str | None = None) -> Any:
        if self._submit is None:
            raise RuntimeError("this context cannot submit tasks (it is not running in a worker)")
        return self._submit(kind, task, payload, domain)

    @overload
    def spawn_child(self, task: TaskType[P, Any] | TaskOptions[P, Any], /, *args: P.args,
                    **payload: P.kwargs) -> SubmitOutcome: ...

    @overload
    def spawn_child(self, task: Submission, /) -> SubmitOutcome: ...

    def spawn_child(self, task: Any, /, *args: Any, **payload: Any) -> Any:
        """Submit a child of this task (any domain; returns its ``SubmitOutcome`` once durable).

        The child inherits this task's tags (its own win), the more urgent of the two
        priorities and what is left of this task's TTL. When this task returns while
        children are active it waits for them; its ``finalize`` step (if any) then runs.
        """
        keywords_only(args, "spawn_child()")
        return self._spawn("child", task, payload)

    @overload
    def spawn_sibling(self, task: TaskType[P, Any] | TaskOptions[P, Any], /, *args: P.args,
                      **payload: P.kwargs) -> SubmitOutcome: ...

    @overload
    def spawn_sibling(self, task: Submission, /) -> SubmitOutcome: ...

    def spawn_sibling(self, task: Any, /, *args: Any, **payload: Any) -> Any:
        """Submit another child of this task's parent.

        Raises:
            ValueError: this task has no parent (a root task has no siblings).
        """
        if self.record.parent_id is None:
            raise ValueError(f"task {self.record.id} has no parent, so it cannot spawn a sibling")
        keywords_only(args, "spawn_sibling()")
        return self._spawn("sibling", task, payload)

    def domain(self, domain: Any) -> _DomainSubmitter:
        """A handle to submit ordinary (non-child) work to ``domain`` (a Domain or its name),
        with that domain's defaults: ``ctx.domain("mail").submit(send, to=...)``."""
        name = getattr(domain, "name", domain)
        if not isinstance(name, str):
            raise TypeError(f"domain() takes a Domain or its name, got {type(domain).__name__}")
        return _DomainSubmitter(self, name)

    def try_domain(self, domain: Any) -> _DomainSubmitter | None:
        """Like :meth:`domain`; None if no such domain is registered."""
        try:
            handle = self.domain(domain)
            self._spawn("check", None, {}, handle.name)
        except LookupError:
            return None
        return handle


class _DomainSubmitter:
    """``submit``/``submit_batch`` of ordinary work into one domain, from inside a task."""

    __slots__ = ("_ctx", "name")

    def __init__(self, ctx: TaskContext, name: str) -> None:
        self._ctx = ctx
        self.name = name

    @overload
    def submit(self, task: TaskType[P, Any] | TaskOptions[P, Any], /, *args: P.args,
               **payload: P.kwargs) -> SubmitOutcome: ...

    @overload
    def submit(self, task: Submission, /) -> SubmitOutcome: ...

    def submit(self, task: Any, /, *args: Any, **payload: Any) -> Any:
        """Submit one task of this domain; returns its ``SubmitOutcome`` once durable."""
        keywords_only(args, "submit()")
        return self._ctx._spawn("plain", task, payload, self.name)

    def submit_batch(self, submissions: Any) -> Any:
        """Submit many tasks of this domain in one transaction; returns a ``BatchOutcome``."""
        return self._ctx._spawn("plain_batch", submissions, {}, self.name)


def _nonneg(n: Any, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{what} must be an int >= 0, got {n!r}")
    return n
