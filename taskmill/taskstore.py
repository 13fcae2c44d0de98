"""The unscoped store queries of the seed (``sched.store``): ``TaskStore``.

A thin proxy: every argument is made a plain builtin in range on the host
(``taskmill.validation``), then the call goes to the coordinator by name,
where it runs on a reader thread (or from memory, for counts). It holds the
scheduler's ``Session``. Imports leaves, ``domain`` and the session only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from taskmill.domain import Submission, resolve
from taskmill.records import RecurringScheduleInfo, TaskHistoryRecord, TaskLookup, TaskRecord, TypeStats
from taskmill.session import Session
from taskmill.validation import MAX_PRUNE_DAYS, as_float, as_int, as_str, describe

__all__ = ["TaskStore"]


class TaskStore:
    """Unscoped queries over all tasks (the seed's ``TaskStore``); ``sched.store``.

    Store-level calls take qualified task types (``"media::thumbnail"``).

    Every method checks its arguments on the host first: ids, limits and offsets
    are ints in 0..``INT64_MAX`` (int subclasses such as ``IntEnum`` converted),
    task types and keys are str (subclasses converted); anything else is a
    ``TypeError``/``ValueError`` naming the argument, and nothing is sent.
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def _call(self, name: str, *args: Any) -> Any:
        return self._session.call(name, *args)

    def running_tasks(self) -> list[TaskRecord]:
        """All running tasks, ordered by priority."""
        return self._call("running_tasks")

    def running_count(self) -> int:
        """Count of running tasks."""
        return self._call("running_count")

    def pending_tasks(self, limit: int) -> list[TaskRecord]:
        """Pending tasks, ordered by priority then age, at most ``limit``."""
        self._session.check_open()
        return self._call("pending_tasks", as_int(limit, "limit"))

    def pending_count(self) -> int:
        """Count of pending tasks."""
        return self._call("pending_count")

    def pending_by_type(self, task_type: str) -> list[TaskRecord]:
        """Pending tasks of one qualified task type."""
        self._session.check_open()
        return self._call("pending_by_type", as_str(task_type, "task_type"))

    def paused_tasks(self) -> list[TaskRecord]:
        """All paused (preempted) tasks."""
        return self._call("paused_tasks")

    def paused_count(self) -> int:
        """Count of paused tasks."""
        return self._call("paused_count")

    def task_by_id(self, task_id: int) -> TaskRecord | None:
        """An active task by id, or None."""
        self._session.check_open()
        return self._call("task_by_id", as_int(task_id, "task_id"))

    def task_by_key(self, key: str) -> TaskRecord | None:
        """An active task by dedup key (the SHA-256 hex), or None."""
        self._session.check_open()
        return self._call("task_by_key", as_str(key, "key"))

    def running_io_totals(self) -> tuple[int, int]:
        """Sum of expected disk (read, write) bytes across running tasks."""
        r, w = self._call("running_io_totals")
        return int(r), int(w)

    def blocked_tasks(self) -> list[TaskRecord]:
        """All tasks waiting for their dependencies (``blocked``), by priority."""
        return self._call("blocked_tasks")

    def blocked_count(self) -> int:
        """Count of blocked tasks (also in ``SchedulerSnapshot.blocked_count``)."""
        return self._call("blocked_count")

    def task_dependencies(self, task_id: int) -> list[int]:
        """Ids of the tasks ``task_id`` still waits on (its prerequisites)."""
        self._session.check_open()
        return self._call("task_dependencies", as_int(task_id, "task_id"))

    def task_dependents(self, task_id: int) -> list[int]:
        """Ids of the tasks waiting on ``task_id`` (unblocked when it completes)."""
        self._session.check_open()
        return self._call("task_dependents", as_int(task_id, "task_id"))

    def next_run_after(self) -> datetime | None:
        """The earliest ``run_after`` among pending delayed tasks (a time already passed included)."""
        return self._call("next_run_after")

    def recurring_schedules(self) -> list[RecurringScheduleInfo]:
        """Every active recurring schedule: interval, next run, executions, paused state."""
        return self._call("recurring_schedules")

    def dead_letter_tasks(self, limit: int = 100, offset: int = 0) -> list[TaskHistoryRecord]:
        """Dead-letter executions of every domain, newest first."""
        self._session.check_open()
        return self._call("dead_letter_tasks", None, as_int(limit, "limit"), as_int(offset, "offset"))

    def history(self, limit: int, offset: int = 0) -> list[TaskHistoryRecord]:
        """Finished executions, newest first, paginated."""
        self._session.check_open()
        return self._call("history", as_int(limit, "limit"), as_int(offset, "offset"))

    def history_by_type(self, task_type: str, limit: int = 100) -> list[TaskHistoryRecord]:
        """History of one qualified task type, newest first."""
        self._session.check_open()
        return self._call("history_by_type", as_str(task_type, "task_type"), as_int(limit, "limit"))

    def history_by_key(self, key: str) -> list[TaskHistoryRecord]:
        """All past executions with this dedup key."""
        self._session.check_open()
        return self._call("history_by_key", as_str(key, "key"))

    def failed_tasks(self, limit: int = 100) -> list[TaskHistoryRecord]:
        """Recent failures (``failed`` and ``dead_letter``) with their errors."""
        self._session.check_open()
        return self._call("failed_tasks", as_int(limit, "limit"))

    def history_stats(self, task_type: str) -> TypeStats:
        """Aggregates for one qualified task type."""
        self._session.check_open()
        return self._call("history_stats", as_str(task_type, "task_type"))

    def avg_throughput(self, task_type: str, limit: int = 100) -> tuple[float, float]:
        """Average (read, write) bytes per second over the ``limit`` most recent completions."""
        self._session.check_open()
        r, w = self._call("avg_throughput", as_str(task_type, "task_type"), as_int(limit, "limit"))
        return float(r), float(w)

    def task_lookup(self, task_type: str, key: str) -> TaskLookup:
        """Find a task by qualified type and explicit key (or canonical payload JSON):
        the active task, else its newest history row, else ``not_found``."""
        self._session.check_open()
        return self._call("task_lookup", as_str(task_type, "task_type"), as_str(key, "key"))

    def lookup_typed(self, submission: Submission) -> TaskLookup:
        """Like :meth:`task_lookup`, with the key computed from a ``task.call(...)`` submission.

        Raises:
            TypeError: ``submission`` is not a ``task.call(...)`` (or ``task.options(...).call(...)``).
        """
        self._session.check_open()
        if not isinstance(submission, Submission):
            raise TypeError(f"lookup_typed() takes task.call(...) (a Submission), got {describe(submission)}")
        item = resolve(submission, self._session.defaults)
        return self._call("lookup_key", item.key)

    def prune_history_by_count(self, keep: int) -> int:
        """Delete all but the ``keep`` most recent history rows; returns how many went."""
        self._session.check_open()
        return self._call("prune_history_by_count", as_int(keep, "keep"))

    def prune_history_by_age(self, days: float) -> int:
        """Delete history rows older than ``days`` (0..``MAX_PRUNE_DAYS``); returns how many went."""
        self._session.check_open()
        return self._call("prune_history_by_age", as_float(days, "days", hi=MAX_PRUNE_DAYS))
