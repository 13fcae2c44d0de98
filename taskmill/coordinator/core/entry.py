"""What the coordinator keeps in memory for one active task.

``Entry`` holds what dispatch and the common transitions read on every task
(as slots, so a deep queue stays small); the rarer state of TTLs, recurring
schedules, parents and dependency policies lives in an optional ``Extra``.
Plain data: no behaviour beyond construction. Imports nothing from taskmill.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["PAUSE_REASONS", "Ended", "Entry", "Extra", "Schedule"]

#: Pause reasons as bits of ``Entry.paused`` and their names in records (``pause_reasons``).
PAUSE_REASONS = {"global": 1, "domain": 2, "group": 4, "preempted": 8, "recurring": 16}


class Ended(NamedTuple):
    """How a run ended, as its worker measured it: wall-clock start and end, monotonic duration, IO."""

    started: float | None
    finished: float
    duration_ms: float | None
    io: tuple[int, int, int, int]


class Schedule:
    """A recurring task's schedule: the same task id runs again every ``interval`` seconds."""

    __slots__ = ("interval", "max_executions", "count", "initial_delay", "paused", "held", "ended", "due_wall")

    def __init__(self, interval: float, max_executions: int | None, count: int, initial_delay: float,
                 paused: bool) -> None:
        self.interval = interval
        self.max_executions = max_executions
        self.count = count  # completed executions
        self.initial_delay = initial_delay
        self.paused = paused  # no new occurrence while paused (the one already enqueued still runs)
        self.held = False  # an occurrence enqueued while paused waits (``paused``, reason "recurring")
        self.ended = False  # cancelled while running: no next occurrence
        self.due_wall: float | None = None  # wall-clock time of the current occurrence (the grid)


class Extra:
    """Rarely used per-task state (TTL, dependencies policy, parents, recurring, finalize)."""

    __slots__ = ("ttl_seconds", "ttl_from", "expires_at", "on_dep_failure", "fail_fast", "schedule", "memo",
                 "phase", "spawned", "child_failures", "first_failure", "run_after_wall", "stop", "ttl_timer",
                 "paused_for", "paused_since")

    def __init__(self) -> None:
        self.ttl_seconds: float | None = None
        self.ttl_from = "submission"
        self.expires_at: float | None = None  # wall clock (stored); Entry.expires is the monotonic one
        self.on_dep_failure = "cancel"
        self.fail_fast = True
        self.schedule: Schedule | None = None
        self.memo: str | None = None  # a waiting parent's return value (JSON text)
        self.phase = "execute"  # "finalize" once its children are done
        self.spawned = 0  # children ever spawned by this task
        self.child_failures = 0
        self.first_failure: str | None = None
        self.run_after_wall: float | None = None  # wall clock of a pending delay (for records and pauses)
        self.stop: str | None = None  # "pause" while a running task is asked to stop for a pause
        self.ttl_timer: Any = None  # its entry in the TTL heap
        self.paused_for = 0.0  # seconds spent paused (aging does not count them), this run of the coordinator
        self.paused_since: float | None = None  # monotonic start of the current pause (with aging only)


class Entry:
    """One active task (no payload unless cached)."""

    __slots__ = (
        "id", "task_type", "domain", "key", "label", "priority", "status", "created_at", "run_after",
        "retry_count", "max_retries", "retry", "timeout", "cpus", "memory", "group", "payload", "requeue",
        "requeue_priority", "started_at", "started_mono", "worker", "qver", "queued", "cancelled", "timer",
        "tags", "parent_id", "paused", "blockers", "expires", "io", "lane", "x",
    )

    def __init__(self, id: int, task_type: str, domain: str, key: str, label: str, priority: int, status: str,
                 created_at: float, retry_count: int, max_retries: int, retry: Any, timeout: float | None,
                 cpus: float, memory: int, group: str | None) -> None:
        self.id = id
        self.task_type = task_type
        self.domain = domain
        self.key = key
        self.label = label
        self.priority = priority
        self.status = status
        self.created_at = created_at  # wall clock
        self.retry_count = retry_count
        self.max_retries = max_retries
        self.retry = retry
        self.timeout = timeout
        self.cpus = cpus
        self.memory = memory
        self.group = group
        self.payload: str | None = None
        self.requeue = False
        self.requeue_priority: int | None = None
        self.started_at: float | None = None  # wall clock, for records
        self.started_mono: float | None = None  # monotonic, for durations
        self.timer: Any = None  # its one live lifecycle Timer (due: a delayed task)
        self.worker: Any = None  # opaque: what the loop passed to ``started``
        self.qver = 0
        self.queued = False
        self.cancelled = False
        self.run_after: float | None = None  # monotonic due time while delayed (kept while paused)
        self.tags: str | None = None  # JSON text of the tags (children inherit them)
        self.parent_id: int | None = None
        self.paused = 0  # pause reason bits (PAUSE_REASONS)
        self.blockers = 0  # prerequisites not yet completed
        self.expires: float | None = None  # monotonic TTL deadline
        self.io: tuple[int, int, int, int] | None = None  # expected IO (disk read/write, net rx/tx), if any
        self.lane: Any = None  # its ready lane while queued (queues.Lane)
        self.x: Extra | None = None

    def extra(self) -> Extra:
        """The entry's ``Extra``, made on first use."""
        x = self.x
        if x is None:
            x = self.x = Extra()
        return x

    def __repr__(self) -> str:
        return f"<Entry {self.id} {self.task_type} p={self.priority} {self.status}>"
