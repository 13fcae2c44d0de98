"""What the coordinator's calls may do: the narrow face ``routes`` sees of the coordinator.

``Control`` answers and carries out every call of ``routes.ROUTES`` on the
lifecycle, the progress tracker and the store it is given, with the clocks and
the few loop services it is handed as functions (the live view of a run,
growing the worker pool, submitting, committing). Arguments arrive checked by
``routes``; what is decided (a pause, a cancel, an admission change) is the
lifecycle's. Imports the core and leaves, never the loop.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from taskmill import protocol
from taskmill.coordinator.core import snapshots
from taskmill.coordinator.core.entry import Entry
from taskmill.coordinator.core.lifecycle import Lifecycle
from taskmill.coordinator.core.progress import ProgressTracker
from taskmill.errors import TaskNotFound
from taskmill.records import (
    DuplicateStrategy,
    EstimatedProgress,
    ModuleSnapshot,
    PausedGroupInfo,
    RecurringScheduleInfo,
    SchedulerSnapshot,
    TaskProgress,
    TaskRecord,
)
from taskmill.store import Store

__all__ = ["Control"]

Match = Callable[[Entry], bool]


class Control:
    """The calls' view of the coordinator (see the module docstring)."""

    def __init__(self, lc: Lifecycle, store: Store, tracker: Callable[[], ProgressTracker], *,
                 mono: Callable[[], float], clock: Callable[[], float], live: Callable[[Entry], Any],
                 workers: Callable[[], int], grow: Callable[[int], None],
                 submit: Callable[[list[protocol.SubmitItem]], list[tuple]], commit: Callable[[], None],
                 shm_name: str) -> None:
        self.lc = lc
        self.store = store
        self._tracker = tracker  # (the loop replaces its tracker at recovery)
        self.mono = mono
        self.clock = clock
        self.live = live  # the live view of a running entry (progress, bytes), or None
        self._workers = workers
        self._grow = grow
        self._submit = submit
        self._commit = commit
        self.shm_name = shm_name

    # ------------------------------------------------------------------ changes (answered after the commit)

    def cancel(self, task_id: int, domain: str | None) -> bool:
        """Cancel one active task (and its children); True if it was found (in ``domain``)."""
        return self.lc.cancel(task_id, domain, self.mono(), self.clock())

    def cancel_matching(self, match: Match) -> list[int]:
        """Cancel every active task ``match`` accepts; the ids it accepted."""
        return self.lc.cancel_matching(match, self.mono(), self.clock())

    def pause(self, kind: str, scope: str, resume_at: float | None) -> int:
        return self.lc.pause_scope(kind, scope, self.mono(), self.clock(), resume_at)

    def resume(self, kind: str, scope: str) -> int:
        return self.lc.resume_scope(kind, scope, self.mono())

    def recurring(self, op: str, task_id: int, domain: str | None) -> bool:
        """Pause, resume or cancel a recurring schedule by task id; False if there is none."""
        e = self.lc.tasks.get(task_id)
        if e is None or (domain is not None and e.domain != domain):
            return False
        if op == "cancel":
            return self.lc.cancel_recurring(task_id, self.mono(), self.clock())
        return self.lc.set_recurring_paused(task_id, op == "pause", self.mono())

    def admission(self, what: str, scope: str, value: Any) -> None:
        """Change an admission setting at runtime (F17, F20, F21); the next dispatch round obeys it."""
        if what == "max_concurrency":
            self._grow(value)
        else:
            self.lc.change_admission(what, scope, value, self.mono())

    def observe(self, rates: tuple[float, float, float, float], cpu: float, pressure: float,
                breakdown: list[tuple[str, float]]) -> None:
        """The host's resource monitor reports (F18, F19)."""
        gate = self.lc.gate
        gate.observe(rates)
        gate.cpu_usage = min(1.0, cpu)
        gate.set_pressure(pressure, breakdown)

    # ------------------------------------------------------------------ from memory

    def count(self, status: str) -> int:
        """Active tasks in ``status`` (a cold tail's tasks are pending too, see ``cold.py``)."""
        n = self.lc.counts[status]
        return n + self.lc.cold_count() if status == "pending" else n

    def running_count(self) -> int:
        return sum(1 for e in self.lc.running.values() if not e.cancelled)

    def snapshot(self, domain: str | None) -> SchedulerSnapshot | ModuleSnapshot:
        return snapshots.snapshot(self.lc, self._tracker(), self.live, self.mono(),
                                  max_concurrency=self.lc.gate.max_concurrency, workers=self._workers(),
                                  domain=domain)

    def active_tasks(self, domain: str | None) -> list[TaskRecord]:
        return snapshots.active_tasks(self.lc, domain)

    def estimated_progress(self, domain: str | None) -> list[EstimatedProgress]:
        return snapshots.estimated_progress(self.lc, self._tracker(), self.live, self.mono(), domain)

    def byte_progress(self, domain: str | None) -> list[TaskProgress]:
        return snapshots.byte_progress(self.lc, self._tracker(), self.live, self.mono(), domain)

    def recurring_schedules(self) -> list[RecurringScheduleInfo]:
        return snapshots.recurring_schedules(self.lc)

    def paused_groups(self) -> list[PausedGroupInfo]:
        return snapshots.paused_groups(self.lc)

    def is_paused(self, kind: str, scope: str) -> bool:
        return self.lc.is_paused(kind, scope)

    def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "shm": self.shm_name}

    # ------------------------------------------------------------------ writes on the loop thread

    def prune_history_by_count(self, keep: int) -> int:
        return self.store.prune_history_by_count(keep)

    def prune_history_by_age(self, days: float) -> int:
        return self.store.prune_history_by_age(days)

    def retry_dead_letter(self, task_id: int, domain: str | None) -> tuple:
        """Submit a dead-letter execution again as a new task with a fresh retry budget; committed."""
        row = self.store.dead_letter_row(task_id)
        if row is None:
            raise TaskNotFound(f"no dead-letter task with id {task_id}")
        if domain is not None and row[1] != domain:
            raise TaskNotFound(f"dead-letter task {task_id} belongs to domain {row[1]!r}, not {domain!r}")
        (task_type, dom, key, label, prio, payload, tags, group, cpus, memory, rb, wb, rx, tx, _parent) = row
        policy = self.lc.type_retry.get(task_type) or self.lc.default_retry
        item = protocol.SubmitItem(task_type, dom, key, label, prio, payload, policy.max_retries, None, None, cpus,
                                   memory, rb, wb, rx, tx, group, tags, DuplicateStrategy.SKIP.value)
        out = self._submit([item])[0]
        self._commit()
        return out
