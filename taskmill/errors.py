"""Every exception taskmill raises, under one root.

Leaf module: imports nothing from taskmill.

    TaskmillError
    ├── SchedulerClosed        you closed the scheduler (or never started it)
    ├── SchedulerBroken        the coordinator or its store died; cause chained
    ├── StartupError           the coordinator could not start (message says why)
    ├── ConnectError           ``connect()`` found no coordinator it may attach to (says why)
    ├── ConfigError            (also ValueError) inconsistent domains / task types
    ├── UnknownDomain          (also LookupError) no domain of that name
    ├── UnknownTaskType        (also LookupError) task not registered in that domain
    ├── InvalidPayload         (also ValueError) not JSON, or over the size limit
    ├── InvalidSubmission      (also ValueError) one item of a batch is bad; names it
    ├── TaskNotFound           (also LookupError) no task with that id
    ├── WaitTimeout            (also TimeoutError) a wait ran out of time
    ├── TaskFailed             a task ended in a state other than completed
    │   └── WorkerCrashed      its worker process died (exit code, signal name)
    ├── StoreError             a DuckDB error, raised ``from`` the duckdb.Error
    │   ├── NotATaskmillStore  the file is not a DuckDB file or holds other tables
    │   ├── SchemaTooNew       written by a newer taskmill
    │   ├── StoreLocked        another coordinator owns the store
    │   ├── QueryRefused       (also ValueError) ``sql()`` got a write, several statements,
    │   │                      or a result over the size cap
    │   └── QueryTimeout       (also TimeoutError) a query ran past its time limit
    └── TaskError              raised *inside* task functions to steer retries
        ├── Retryable          retry under the policy (optionally after a delay)
        └── Permanent          fail now, no retry
"""

from __future__ import annotations

import math
from datetime import timedelta

__all__ = [
    "ConfigError",
    "ConnectError",
    "InvalidPayload",
    "InvalidSubmission",
    "NotATaskmillStore",
    "Permanent",
    "QueryRefused",
    "QueryTimeout",
    "Retryable",
    "SchedulerBroken",
    "SchedulerClosed",
    "SchemaTooNew",
    "StartupError",
    "StoreError",
    "StoreLocked",
    "TaskError",
    "TaskFailed",
    "TaskNotFound",
    "TaskmillError",
    "UnknownDomain",
    "UnknownTaskType",
    "WaitTimeout",
    "WorkerCrashed",
]


class TaskmillError(Exception):
    """Root of every taskmill exception."""


class SchedulerClosed(TaskmillError):
    """The scheduler was closed (or not started) when the call was made."""


class SchedulerBroken(TaskmillError):
    """The coordinator process or its store died; the scheduler is unusable."""


class StartupError(TaskmillError):
    """The coordinator could not start; the message carries its reason."""


class ConnectError(TaskmillError):
    """``taskmill.connect()`` found no coordinator it may attach to: none serves the store, the
    store belongs to another user, or the key was refused. The message says which and what to do."""


class ConfigError(TaskmillError, ValueError):
    """Domains or task types are configured inconsistently."""


class UnknownDomain(TaskmillError, LookupError):
    """No domain of that name is registered with the scheduler."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else "unknown domain"


class UnknownTaskType(TaskmillError, LookupError):
    """The task function is not registered in the domain used to submit it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown task type"


class InvalidPayload(TaskmillError, ValueError):
    """The payload is not JSON-serializable or exceeds the size limit."""


class InvalidSubmission(TaskmillError, ValueError):
    """A submission is invalid; in a batch, ``index`` names the bad item."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class TaskNotFound(TaskmillError, LookupError):
    """No active or finished task has that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not found"


class WaitTimeout(TaskmillError, TimeoutError):
    """A ``wait`` or ``wait_idle`` call ran out of time."""


class TaskFailed(TaskmillError):
    """A task finished in a state other than ``completed``."""

    def __init__(self, message: str, *, task_id: int | None = None, status: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.status = status


class WorkerCrashed(TaskFailed):
    """The worker process running the task died.

    ``exitcode`` is the process exit code (negative for a signal) and
    ``signal_name`` the signal's name when it was killed by one.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: int | None = None,
        exitcode: int | None = None,
        signal_name: str | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id, status="failed")
        self.exitcode = exitcode
        self.signal_name = signal_name


class StoreError(TaskmillError):
    """The store failed; raised ``from`` the underlying ``duckdb.Error``."""


class NotATaskmillStore(StoreError):
    """The file is not a DuckDB database, or one that taskmill did not create."""


class SchemaTooNew(StoreError):
    """The store was written by a newer taskmill schema than this one knows."""


class StoreLocked(StoreError):
    """Another coordinator (or process) holds the store's lock."""


class QueryRefused(StoreError, ValueError):
    """``sql()`` accepts exactly one read-only statement."""


class QueryTimeout(StoreError, TimeoutError):
    """A read-only query ran longer than its time limit and was interrupted."""


class TaskError(TaskmillError):
    """Base of the exceptions a task function raises to steer its outcome."""


#: Longest accepted delay or timeout in seconds (one year): retry backoff, ``retry_after``,
#: task timeouts, shutdown grace. Longer is surely a unit mistake, and a bound keeps every
#: deadline the coordinator computes a finite float. Defined here because ``Retryable`` needs
#: it and this module imports nothing; ``taskmill.validation`` re-exports it.
MAX_DELAY_SECONDS = 365 * 24 * 3600.0


class Retryable(TaskError):
    """Fail this attempt and retry under the retry policy.

    Args:
        message: Stored as the task's error text.
        retry_after: Seconds to wait before the retry instead of the policy's
            delay (a number or a ``timedelta``, 0..``MAX_DELAY_SECONDS``); ``None``
            uses the policy.

    Raises:
        ValueError: ``retry_after`` is not a finite number of seconds in range.
    """

    def __init__(self, message: str = "", *, retry_after: float | timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = _check_retry_after(retry_after)

    def __reduce__(self) -> tuple[object, tuple[str, float | None]]:  # keyword-only args need help to pickle
        return (_rebuild_retryable, (str(self), self.retry_after))


def _check_retry_after(value: object) -> float | None:
    """``retry_after`` as a plain float within 0..MAX_DELAY_SECONDS (it travels to the coordinator)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"retry_after must be None or a number of seconds, got {type(value).__name__} {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not 0.0 <= seconds <= MAX_DELAY_SECONDS:  # also false for nan
        raise ValueError(f"retry_after must be a finite number of seconds in 0..{MAX_DELAY_SECONDS:g} "
                         f"(MAX_DELAY_SECONDS), got {value!r}")
    return seconds


def _rebuild_retryable(message: str, retry_after: float | None) -> Retryable:
    return Retryable(message, retry_after=retry_after)


class Permanent(TaskError):
    """Fail this task now, without retrying; its history status is ``failed``."""
