"""Events: what happened in a scheduler, for those who subscribe (F27).

``Scheduler.subscribe()`` streams every event, ``DomainHandle.events()`` one
domain's task events (plus the global ``Paused``/``Resumed``),
``DomainHandle.task_events(task)`` one task type's. An event is released only
after the commit that makes it true: a subscriber never sees ``Completed`` for
a task whose history row a crash could still lose.

Every task event carries a ``header: TaskEventHeader`` (id, type, domain, key,
label, tags, base and effective priority at that moment). Each way a task can
end has exactly one event that ends it:

    history status      the task's last event
    completed           Completed (record)           (a recurring run: Completed, then RecurringCompleted)
    failed              Failed(will_retry=False, record)
    dead_letter         DeadLettered(error, retry_count)   (instead of Failed for the last attempt)
    cancelled           Cancelled
    superseded          Superseded(new_task_id)
    expired             TaskExpired(age)
    dependency_failed   DependencyFailed(task_id, failed_dependency)

A retried attempt is ``Failed(will_retry=True, retry_after=…)``; a run
stopped by a pause or preemption comes back without an event of its own
(``Preempted`` says why it stopped). ``Completed.record`` and
``Failed.record`` are the final ``TaskHistoryRecord`` (None while the task
goes on); it is decoded when first read.

Leaf module: records only. Events travel from the coordinator as plain tuples
(``(kind, domain, task_type, fields…)``; a task event's first field is its
header as a tuple) and become these classes on the subscriber's side
(``decode``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from taskmill import records
from taskmill.batch import utc
from taskmill.records import _RECORD, TaskEventHeader, TaskHistoryRecord, _ToDict

__all__ = [
    "BatchSubmitted",
    "Cancelled",
    "Completed",
    "DeadLettered",
    "DependencyFailed",
    "Dispatched",
    "Event",
    "Failed",
    "GroupPaused",
    "GroupResumed",
    "GroupWeightChanged",
    "Paused",
    "Preempted",
    "Progress",
    "RecurringCompleted",
    "RecurringSkipped",
    "Resumed",
    "Superseded",
    "TaskEvent",
    "TaskEventHeader",
    "TaskExpired",
    "TaskUnblocked",
    "Waiting",
    "decode",
]


class Event(_ToDict):
    """Any event (``isinstance(ev, TaskEvent)`` for those about one task)."""

    __slots__ = ()


class TaskEvent(Event):
    """An event about one task: it has a ``header``."""

    __slots__ = ()
    header: TaskEventHeader


@dataclass(**_RECORD)
class Dispatched(TaskEvent):
    """The task started running (each attempt)."""

    header: TaskEventHeader


class _WithRecord(TaskEvent):
    """A task event that may carry the final history record, decoded when first read."""

    __slots__ = ()
    _row: tuple | None

    @property
    def record(self) -> TaskHistoryRecord | None:
        """The task's ``TaskHistoryRecord`` when this event ends it, else None."""
        return None if self._row is None else history_record(self._row)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("_row", None)
        rec = self.record
        out["record"] = None if rec is None else rec.to_dict()
        return out


@dataclass(**_RECORD)
class Completed(_WithRecord):
    """A run returned normally (a parent with children: once they are done and it finalized)."""

    header: TaskEventHeader
    _row: tuple | None = field(default=None, repr=False, compare=False)


@dataclass(**_RECORD)
class Failed(_WithRecord):
    """An attempt failed. ``will_retry``: it runs again after ``retry_after`` seconds (the policy's
    backoff, or the task's own ``Retryable(retry_after=…)``); else the task failed for good."""

    header: TaskEventHeader
    error: str
    will_retry: bool
    retry_after: float | None = None
    _row: tuple | None = field(default=None, repr=False, compare=False)


@dataclass(**_RECORD)
class Preempted(TaskEvent):
    """The running task was stopped for more urgent work (it resumes once that is done)."""

    header: TaskEventHeader


@dataclass(**_RECORD)
class Cancelled(TaskEvent):
    """The task was cancelled (by a call, its parent's end, a failing sibling, its schedule's end)."""

    header: TaskEventHeader


@dataclass(**_RECORD)
class Superseded(TaskEvent):
    """A submission with the same key replaced the task (``header`` is the old task's)."""

    header: TaskEventHeader
    new_task_id: int


@dataclass(**_RECORD)
class Progress(TaskEvent):
    """The running task reported progress (``percent`` 0..1, as ``ctx.progress`` gave it)."""

    header: TaskEventHeader
    percent: float
    message: str | None = None


@dataclass(**_RECORD)
class TaskExpired(TaskEvent):
    """The task's TTL ran out before it finished; ``age``: seconds since its TTL clock started."""

    header: TaskEventHeader
    age: float


@dataclass(**_RECORD)
class RecurringSkipped(TaskEvent):
    """Occurrences of a schedule were skipped (the run before was late, or the scheduler was down)."""

    header: TaskEventHeader
    reason: str


@dataclass(**_RECORD)
class RecurringCompleted(TaskEvent):
    """A run of a recurring task completed; ``next_run`` is the next occurrence (None: the schedule ended)."""

    header: TaskEventHeader
    execution_count: int
    next_run: datetime | None = None


@dataclass(**_RECORD)
class DeadLettered(TaskEvent):
    """The task failed its last retry and is in the dead letter (``retry_dead_letter`` resubmits it)."""

    header: TaskEventHeader
    error: str
    retry_count: int


@dataclass(**_RECORD)
class Waiting(Event):
    """A parent returned and waits for its children."""

    task_id: int
    children_count: int


@dataclass(**_RECORD)
class BatchSubmitted(Event):
    """A ``submit_batch`` was stored: ``count`` items, of which ``inserted_ids`` are new tasks."""

    count: int
    inserted_ids: list[int] = field(default_factory=list)


@dataclass(**_RECORD)
class TaskUnblocked(Event):
    """A blocked task's last prerequisite completed (or was let go): it may run now."""

    task_id: int


@dataclass(**_RECORD)
class DependencyFailed(Event):
    """A task ended as ``dependency_failed``: its prerequisite ``failed_dependency`` did not complete."""

    task_id: int
    failed_dependency: int


@dataclass(**_RECORD)
class Paused(Event):
    """The whole scheduler was paused (``pause_all``)."""


@dataclass(**_RECORD)
class Resumed(Event):
    """The global pause was lifted (``resume_all``)."""


@dataclass(**_RECORD)
class GroupPaused(Event):
    """A group was paused: ``pending_count`` tasks held, ``running_count`` asked to stop."""

    group: str
    pending_count: int
    running_count: int


@dataclass(**_RECORD)
class GroupResumed(Event):
    """A group's pause was lifted (by a call or its time); ``resumed_count`` tasks became pending."""

    group: str
    resumed_count: int


@dataclass(**_RECORD)
class GroupWeightChanged(Event):
    """A group's fair-share weight changed at runtime."""

    group: str
    previous_weight: float
    new_weight: float


# --------------------------------------------------------------------------- from the wire


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else utc(ts).replace(tzinfo=timezone.utc)


# A subscriber may decode tens of thousands of events a second, on a machine whose cores the
# workers need: the hot ones are built by setting their slots directly, which gives the same frozen
# records as their constructors at 2-3x the speed (the frozen ``__init__`` pays an
# ``object.__setattr__`` per field).
_new = object.__new__
_S_ID, _S_TYPE, _S_DOMAIN, _S_KEY, _S_LABEL, _S_TAGS, _S_BASE, _S_EFF = (
    getattr(TaskEventHeader, f).__set__ for f in (
        "task_id", "task_type", "domain", "key", "label", "tags", "base_priority", "effective_priority"))


def header(t: tuple) -> TaskEventHeader:
    """A header from its wire tuple ``(id, type, domain, key, label, tags JSON, priority, effective)``."""
    h = _new(TaskEventHeader)
    _S_ID(h, t[0])
    _S_TYPE(h, t[1])
    _S_DOMAIN(h, t[2])
    _S_KEY(h, t[3])
    _S_LABEL(h, t[4])
    _S_TAGS(h, json.loads(t[5]) if t[5] else {})
    _S_BASE(h, t[6])
    _S_EFF(h, t[7])
    return h


Build = Callable[[tuple, TaskEventHeader], Event]


def _with_header(cls: type[TaskEvent], *more: str) -> Build:
    """A builder of a task event from its wire tuple and its decoded header: ``more`` are the fields
    after the header (``t[4:]``)."""
    set_header = getattr(cls, "header").__set__
    if not more:
        def bare(t: tuple, h: TaskEventHeader) -> Event:
            obj = _new(cls)
            set_header(obj, h)
            return obj
        return bare
    setters = tuple(getattr(cls, name).__set__ for name in more)

    def build(t: tuple, h: TaskEventHeader) -> Event:
        obj = _new(cls)
        set_header(obj, h)
        for i, setter in enumerate(setters, 4):
            setter(obj, t[i])
        return obj

    return build


def history_record(r: tuple) -> TaskHistoryRecord:
    """A ``TaskHistoryRecord`` from the coordinator's wire tuple (``core/outcomes.py`` ``_record``, in
    ``task_history``'s column order): times as epoch seconds, converted the way the store keeps them."""
    return records.history_record(r, _dt)


_FAST: dict[str, Build] = {
    "Dispatched": _with_header(Dispatched),
    "Completed": _with_header(Completed, "_row"),
    "Failed": _with_header(Failed, "error", "will_retry", "retry_after", "_row"),
    "Preempted": _with_header(Preempted),
    "Cancelled": _with_header(Cancelled),
    "Progress": _with_header(Progress, "percent", "message"),
}
_DECODERS: dict[str, Callable[[tuple], Event]] = {
    "Superseded": lambda f: Superseded(header=header(f[0]), new_task_id=f[1]),
    "TaskExpired": lambda f: TaskExpired(header=header(f[0]), age=f[1]),
    "RecurringSkipped": lambda f: RecurringSkipped(header=header(f[0]), reason=f[1]),
    "RecurringCompleted": lambda f: RecurringCompleted(header=header(f[0]), execution_count=f[1],
                                                       next_run=_dt(f[2])),
    "DeadLettered": lambda f: DeadLettered(header=header(f[0]), error=f[1], retry_count=f[2]),
    "Waiting": lambda f: Waiting(task_id=f[0], children_count=f[1]),
    "BatchSubmitted": lambda f: BatchSubmitted(count=f[0], inserted_ids=list(f[1])),
    "TaskUnblocked": lambda f: TaskUnblocked(task_id=f[0]),
    "DependencyFailed": lambda f: DependencyFailed(task_id=f[0], failed_dependency=f[1]),
    "Paused": lambda f: Paused(),
    "Resumed": lambda f: Resumed(),
    "GroupPaused": lambda f: GroupPaused(group=f[0], pending_count=f[1], running_count=f[2]),
    "GroupResumed": lambda f: GroupResumed(group=f[0], resumed_count=f[1]),
    "GroupWeightChanged": lambda f: GroupWeightChanged(group=f[0], previous_weight=f[1], new_weight=f[2]),
}

#: Every event kind, by name (the wire's first field).
KINDS = frozenset(_DECODERS) | frozenset(_FAST)


def decode(t: tuple) -> Event:
    """An event from its wire tuple ``(kind, domain, task_type, fields…)``."""
    fast = _FAST.get(t[0])
    return fast(t, header(t[3])) if fast is not None else _DECODERS[t[0]](t[3:])
