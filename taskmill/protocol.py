"""Messages between host, coordinator and workers.

Leaf module: standard library only (plus the ``errors`` leaf). Both sides import it.

Host ↔ coordinator, over an authenticated AF_UNIX ``multiprocessing.connection``
(every peer has passed the HMAC challenge before anything is unpickled)::

    host                                   coordinator
     │── Submit(items) ─────────────────────▶│ apply in memory, buffer rows
     │                                       │ group commit (one transaction)
     │◀──────────────── Reply(outcomes) ─────│ answered only after the commit
     │── Call(name, args) ──────────────────▶│ flush, then run the query/control
     │◀──────────────── Reply(value) ────────│
     │── Wait(id, timeout) ─────────────────▶│ parked until terminal or deadline
     │◀──────────────── Reply(record) ───────│
     │── Stop() ────────────────────────────▶│ shutdown per mode, commit
     │◀──────────────── Reply(None) ─────────│ then the process exits

A connection that sends ``Subscribe`` turns into a one-way stream::

     │── Subscribe(kind, domain, type) ─────▶│ from now on it is sent what it subscribed to
     │◀──────────────── Reply(None) ─────────│
     │◀── [event tuples] / missed count ─────│ events after each commit; TaskProgress lists
     │◀── [TaskProgress …] ──────────────────│ every progress interval
     │◀──────────────── None ────────────────│ the scheduler shut down: the stream ends

Coordinator ↔ worker, one duplex pipe per worker::

    coordinator                             worker
     │◀──────────────── Ready(pid, error) ───│ after loading the registry
     │── Run(task) ─────────────────────────▶│ marks its shm slot, calls fn (or finalize, on_cancel)
     │◀──────────────── Progress(msg) ───────│ (text progress only; numbers go to shm)
     │◀──────────────── Spawn(items) ────────│ ctx.spawn_child / spawn_sibling / ctx.domain(...).submit
     │── Reply(outcomes) ───────────────────▶│ after the commit that stored them
     │◀──────────────── Done(outcome) ───────│ clears its slot
     │── Stop ──────────────────────────────▶│
     │◀──────────────── Goodbye ─────────────│ a silent sentinel therefore means a crash
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from taskmill import errors

__all__ = [
    "Call",
    "Done",
    "ErrorReply",
    "Goodbye",
    "Progress",
    "Ready",
    "Reply",
    "Run",
    "Spawn",
    "Stop",
    "Submit",
    "Subscribe",
    "SubmitItem",
    "Wait",
    "WaitIdle",
    "send",
    "set_io_timeout",
    "is_coordinator",
    "state_file_for",
]

_MSG = dict(frozen=True, slots=True)


def send(conn: Any, msg: Any) -> None:
    """``conn.send(msg)`` with the plain pickler: our messages carry no connections or sockets, and
    ``Connection.send``'s ForkingPickler costs ~20 µs more a message (``recv`` reads either)."""
    conn.send_bytes(pickle.dumps(msg, pickle.HIGHEST_PROTOCOL))


def set_io_timeout(conn: Any, seconds: float) -> None:
    """Bound each blocking read and write on a ``Connection``'s socket (0: unbounded)."""
    sec = int(seconds)
    tv = struct.pack("@ll", sec, int((seconds - sec) * 1e6))
    s = socket.socket(fileno=conn.fileno())
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    finally:
        s.detach()  # the fd stays the Connection's


def state_file_for(path: str) -> str | None:
    """The state file beside a store (None for ``":memory:"``): the running coordinator's pid,
    socket and shared-memory names, for other local processes to find it."""
    if path == ":memory:":
        return None
    return os.path.abspath(path) + ".taskmill.json"


def is_coordinator(pid: Any, *, unreadable: bool) -> bool:
    """Whether ``pid`` (as a state file names it) is a live taskmill coordinator, not merely a live
    pid: pids get reused. ``unreadable`` is the answer for a process this user may not inspect."""
    import psutil  # (here, not at the top: this module is a leaf that workers import too)

    try:
        return "taskmill.coordinator" in psutil.Process(int(pid)).cmdline()
    except psutil.AccessDenied:
        return unreadable
    except (psutil.Error, ValueError, TypeError):
        return False


class SubmitItem(NamedTuple):
    """One fully resolved submission; the host resolves every default.

    Hot-path NamedTuples (``SubmitItem``, ``Run``, ``Done``) travel as plain
    tuples and are rebuilt with ``_make`` on arrival: pickling a NamedTuple
    costs about six times a plain tuple (3.6 µs against 0.6 µs a round trip).
    """

    task_type: str
    domain: str
    key: str
    label: str
    priority: int
    payload: str  # canonical JSON text
    max_retries: int
    retry: str | None  # JSON of a per-submission RetryPolicy, None = the type's
    timeout: float | None
    cpus: float
    memory: int
    io_read: int
    io_write: int
    io_rx: int
    io_tx: int
    group: str | None
    tags: str | None  # JSON object text
    duplicate: str  # DuplicateStrategy value
    ttl: float | None = None  # seconds
    ttl_from: str = "submission"  # "submission" | "first_attempt"
    run_after: float | None = None  # absolute wall-clock time, epoch seconds
    depends_on: tuple[int, ...] | None = None  # prerequisite task ids
    on_dependency_failure: str = "cancel"  # "cancel" | "fail" | "ignore"
    parent: int | None = None  # parent task id
    fail_fast: bool = True
    recurring: tuple[float, int | None, float] | None = None  # (interval, max executions, initial delay)


# --------------------------------------------------------------------------- host → coordinator


@dataclass(**_MSG)
class Submit:
    items: list[tuple[Any, ...]]  # SubmitItem fields, as plain tuples
    batch: bool = False  # a submit_batch (told to subscribers as BatchSubmitted)
    #: Single submissions of several threads (``taskmill.singles``): each item is checked and applied
    #: on its own; the reply has one outcome or ``ErrorReply`` per item.
    each: bool = False


@dataclass(**_MSG)
class Call:
    """A query or control call by name; the coordinator keeps a whitelist."""

    name: str
    args: tuple[Any, ...] = ()


@dataclass(**_MSG)
class Wait:
    task_id: int
    timeout: float | None


@dataclass(**_MSG)
class WaitIdle:
    timeout: float | None


@dataclass(**_MSG)
class Stop:
    """Shut down per the shutdown mode; ``hard``: now, whatever the mode (also when a graceful
    shutdown is already under way)."""

    hard: bool = False


@dataclass(**_MSG)
class Subscribe:
    """Turn this connection into a stream of ``kind`` ("events" or "progress"), of one domain (or
    all: None) and, for events, of one qualified task type (or all); ``buffer``: events the
    coordinator keeps for it before dropping the oldest."""

    kind: str
    domain: str | None
    task_type: str | None
    buffer: int


HostRequest = Submit | Call | Wait | WaitIdle | Stop | Subscribe


@dataclass(**_MSG)
class Reply:
    value: Any = None


@dataclass(**_MSG)
class ErrorReply:
    """An exception by class name (looked up in ``taskmill.errors``) and message."""

    kind: str
    message: str
    attrs: dict[str, Any]

    @classmethod
    def of(cls, exc: BaseException) -> ErrorReply:
        """Describe ``exc`` by its nearest class the host knows (taskmill's or a builtin)."""
        attrs = {k: v for k, v in getattr(exc, "__dict__", {}).items()
                 if type(v) in (int, str, float, bool, type(None))}
        kind = "TaskmillError"
        for klass in type(exc).__mro__:
            if getattr(errors, klass.__name__, None) is klass or _BUILTIN_ERRORS.get(klass.__name__) is klass:
                kind = klass.__name__
                break
        try:
            message = str(exc)
        except Exception:  # noqa: BLE001 - an exception whose __str__ fails still gets answered
            message = f"<{type(exc).__name__}>"
        if type(exc).__name__ != kind and not isinstance(exc, errors.TaskmillError):
            message = f"{type(exc).__name__}: {message}"
        return cls(kind=kind, message=message, attrs=attrs)

    def exception(self) -> BaseException:
        cls = getattr(errors, self.kind, None) or _BUILTIN_ERRORS.get(self.kind, errors.TaskmillError)
        exc = cls.__new__(cls)
        BaseException.__init__(exc, self.message)
        exc.__dict__.update(self.attrs)
        return exc


_BUILTIN_ERRORS: dict[str, type[BaseException]] = {
    "ValueError": ValueError,
    "TypeError": TypeError,
    "KeyError": KeyError,
    "LookupError": LookupError,
    "OverflowError": OverflowError,
    "TimeoutError": TimeoutError,
}


# --------------------------------------------------------------------------- coordinator ↔ worker


class Run(NamedTuple):
    """A task for a worker. A NamedTuple, not a dataclass: it is on the hot path."""

    task_id: int
    task_type: str
    payload: str
    attempt: int
    key: str
    label: str
    priority: int
    parent_id: int | None = None
    phase: str = "execute"  # "execute" | "finalize" (memo: the execute run's result) | "on_cancel"
    memo: str | None = None  # JSON text
    group: str | None = None
    tags: str | None = None  # JSON text of the task's tags


@dataclass(**_MSG)
class Spawn:
    """Submissions from inside a running task: ``kind`` "child" (parent = that task), "sibling"
    (parent = its parent) or "plain" (no parent). Answered with ``Reply(outcomes)`` once durable."""

    task_id: int
    kind: str
    items: list[tuple[Any, ...]]


@dataclass(**_MSG)
class Ready:
    pid: int
    error: str | None = None


@dataclass(**_MSG)
class Progress:
    task_id: int
    fraction: float | None
    message: str | None


class Done(NamedTuple):
    """Outcome of one run (hot path, hence a NamedTuple). ``error_kind`` is None on success."""

    task_id: int
    result: str | None  # JSON text of the return value
    error_kind: str | None  # "retryable" | "permanent"
    error: str | None
    retry_after: float | None
    started_at: float  # wall clock (stored for users)
    finished_at: float  # wall clock
    duration: float  # seconds, measured on the monotonic clock
    read_bytes: int
    write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int


@dataclass(**_MSG)
class Goodbye:
    pid: int
