"""Value types shared by every process: enums, policies and query records.

Leaf module: imports only ``taskmill.errors`` and the ``taskmill.validation`` leaf
(bounds and normalisers). Records are frozen snapshots (never live objects) with a
JSON-friendly ``to_dict()``; policies normalise their fields to plain builtins.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from taskmill.validation import (
    INT32_MAX,
    INT64_MAX,
    MAX_DELAY_SECONDS,
    MAX_PRUNE_DAYS,
    as_float,
    as_int,
    as_seconds,
)

__all__ = [
    "CapacityInfo",
    "DuplicateStrategy",
    "GroupAllocationInfo",
    "EstimatedProgress",
    "HistoryStatus",
    "IoBudget",
    "MaxAgeDays",
    "MaxCount",
    "ModuleSnapshot",
    "PausedGroupInfo",
    "Priority",
    "Recurring",
    "RateLimitInfo",
    "RecurringScheduleInfo",
    "RetryPolicy",
    "SchedulerSnapshot",
    "Shutdown",
    "TaskEventHeader",
    "TaskHistoryRecord",
    "TaskLookup",
    "TaskProgress",
    "TaskRecord",
    "TaskStatus",
    "TypeStats",
]

_RECORD = dict(frozen=True, slots=True, kw_only=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class _ToDict:
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain JSON-friendly values (datetimes as ISO text)."""
        out: dict[str, Any] = _jsonable(self)
        return out


# --------------------------------------------------------------------------- enums


class TaskStatus(enum.StrEnum):
    """Status of an active task (a row of the ``tasks`` table)."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    WAITING = "waiting"
    BLOCKED = "blocked"


class HistoryStatus(enum.StrEnum):
    """Terminal status of a finished task (a row of ``task_history``)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    EXPIRED = "expired"
    DEAD_LETTER = "dead_letter"
    DEPENDENCY_FAILED = "dependency_failed"


class DuplicateStrategy(enum.StrEnum):
    """What a submission does when its dedup key is already active (F4)."""

    SKIP = "skip"
    SUPERSEDE = "supersede"
    REJECT = "reject"
    #: Like ``skip``, and a key whose newest history row is ``completed`` is a duplicate too.
    SKIP_COMPLETED = "skip_completed"


class Priority(int):
    """A priority level, 0..255; lower is more urgent.

    Named levels: ``REALTIME`` (0), ``HIGH`` (64), ``NORMAL`` (128, the
    default), ``BACKGROUND`` (192), ``IDLE`` (255). ``Priority(n)`` validates.
    """

    REALTIME: Priority
    HIGH: Priority
    NORMAL: Priority
    BACKGROUND: Priority
    IDLE: Priority

    def __new__(cls, value: int) -> Priority:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"priority must be an int in 0..255, got {value!r}")
        if not 0 <= value <= 255:
            raise ValueError(f"priority must be in 0..255, got {value}")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        name = _PRIORITY_NAMES.get(int(self))
        return f"Priority.{name}" if name else f"Priority({int(self)})"


Priority.REALTIME = Priority(0)
Priority.HIGH = Priority(64)
Priority.NORMAL = Priority(128)
Priority.BACKGROUND = Priority(192)
Priority.IDLE = Priority(255)
_PRIORITY_NAMES = {0: "REALTIME", 64: "HIGH", 128: "NORMAL", 192: "BACKGROUND", 255: "IDLE"}


# --------------------------------------------------------------------------- policies


@dataclass(**_RECORD)
class IoBudget(_ToDict):
    """Expected IO of one task run, in bytes (disk read/write, network rx/tx).

    Each field is an int in 0..``INT64_MAX`` (int subclasses are converted).

    Raises:
        TypeError: a field is not an int (or is a bool).
        ValueError: a field is negative or over ``INT64_MAX``.
    """

    disk_read: int = 0
    disk_write: int = 0
    net_rx: int = 0
    net_tx: int = 0

    def __post_init__(self) -> None:
        for f in ("disk_read", "disk_write", "net_rx", "net_tx"):
            object.__setattr__(self, f, as_int(getattr(self, f), f"IoBudget.{f}", hi=INT64_MAX))

    @classmethod
    def disk(cls, read: int, write: int) -> IoBudget:
        """A disk-only budget: ``read`` and ``write`` bytes."""
        return cls(disk_read=read, disk_write=write)

    @classmethod
    def net(cls, rx: int, tx: int) -> IoBudget:
        """A network-only budget: ``rx`` and ``tx`` bytes."""
        return cls(net_rx=rx, net_tx=tx)

    @classmethod
    def none(cls) -> IoBudget:
        """No expected IO."""
        return cls()


class BackoffKind(enum.StrEnum):
    CONSTANT = "constant"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"
    EXPONENTIAL_JITTER = "exponential_jitter"


#: Largest ``RetryPolicy.multiplier``: beyond it the second retry already waits hours.
MAX_MULTIPLIER = 1000.0
#: The shutdown modes (F11).
SHUTDOWN_MODES = ("hard", "graceful")


@dataclass(**_RECORD)
class RetryPolicy(_ToDict):
    """How often and how soon a failed task is retried (F9).

    Build one with the class methods; ``max_retries`` counts retries after the
    first attempt (0..``INT32_MAX``). Delays are in seconds (a ``timedelta`` is
    converted), finite, in 0..``MAX_DELAY_SECONDS``, and never exceed
    ``max_delay``; ``multiplier`` is in 1..``MAX_MULTIPLIER``.

    Raises:
        ValueError: a field breaks its rule (the message names it).
    """

    kind: BackoffKind = BackoffKind.EXPONENTIAL
    max_retries: int = 3
    initial: float = 1.0
    max_delay: float = 60.0
    step: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        # ValueError throughout, wrong types included: what this class always raised.
        kinds = [k.value for k in BackoffKind]
        if not isinstance(self.kind, str) or str.__str__(self.kind) not in kinds:
            raise ValueError(f"RetryPolicy.kind must be one of {kinds}, got {self.kind!r}")
        object.__setattr__(self, "kind", BackoffKind(str.__str__(self.kind)))
        object.__setattr__(self, "max_retries",
                           as_int(self.max_retries, "RetryPolicy.max_retries", hi=INT32_MAX, wrong_type=ValueError))
        for f in ("initial", "max_delay", "step"):  # seconds, or a timedelta
            object.__setattr__(self, f, as_seconds(getattr(self, f), f"RetryPolicy.{f}", wrong_type=ValueError))
        object.__setattr__(self, "multiplier", as_float(self.multiplier, "RetryPolicy.multiplier", lo=1.0,
                                                        hi=MAX_MULTIPLIER, wrong_type=ValueError))

    @classmethod
    def constant(cls, max_retries: int = 3, delay: float = 1.0) -> RetryPolicy:
        """Retry after the same ``delay`` every time."""
        return cls(kind=BackoffKind.CONSTANT, max_retries=max_retries, initial=delay, max_delay=delay)

    @classmethod
    def linear(cls, max_retries: int = 3, initial: float = 1.0, step: float = 1.0, max: float = 60.0) -> RetryPolicy:
        """Retry after ``initial``, ``initial + step``, ``initial + 2*step`` … capped at ``max``."""
        return cls(kind=BackoffKind.LINEAR, max_retries=max_retries, initial=initial, step=step, max_delay=max)

    @classmethod
    def exponential(
        cls, max_retries: int = 3, initial: float = 1.0, max: float = 60.0, multiplier: float = 2.0
    ) -> RetryPolicy:
        """Retry after ``initial * multiplier**(n-1)`` capped at ``max``."""
        return cls(
            kind=BackoffKind.EXPONENTIAL, max_retries=max_retries, initial=initial, max_delay=max, multiplier=multiplier
        )

    @classmethod
    def exponential_jitter(
        cls, max_retries: int = 3, initial: float = 1.0, max: float = 60.0, multiplier: float = 2.0
    ) -> RetryPolicy:
        """Like :meth:`exponential`, with the delay drawn uniformly from its upper half."""
        return cls(
            kind=BackoffKind.EXPONENTIAL_JITTER,
            max_retries=max_retries,
            initial=initial,
            max_delay=max,
            multiplier=multiplier,
        )

    @classmethod
    def none(cls) -> RetryPolicy:
        """Never retry: a retryable failure goes straight to ``dead_letter``."""
        return cls(kind=BackoffKind.CONSTANT, max_retries=0, initial=0.0, max_delay=0.0)

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry_number`` (1-based)."""
        if retry_number < 1:
            raise ValueError("retry_number is 1-based")
        n = retry_number - 1
        cap = min(self.max_delay, MAX_DELAY_SECONDS)  # fields are checked; this holds even for a forged instance
        if self.kind is BackoffKind.CONSTANT:
            return min(self.initial, cap)
        if self.kind is BackoffKind.LINEAR:
            try:
                return min(self.initial + self.step * n, cap)
            except OverflowError:  # n beyond float range: the cap was passed long ago
                return cap
        try:
            growth = float(self.multiplier) ** n
        except OverflowError:
            growth = math.inf
        base = min(self.initial * growth if self.initial else 0.0, cap)
        if self.kind is BackoffKind.EXPONENTIAL:
            return base
        r = (rng or random).random()
        return base / 2 + r * base / 2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetryPolicy:
        return cls(**d)


@dataclass(**_RECORD)
class Shutdown(_ToDict):
    """How the scheduler stops running tasks when it closes (F11).

    ``mode`` is ``"hard"`` or ``"graceful"``; ``timeout`` (graceful only) is
    finite seconds (or a ``timedelta``) in 0..``MAX_DELAY_SECONDS``.

    Raises:
        ValueError: a bad mode or timeout (the message names it).
    """

    mode: str = "hard"
    timeout: float = 0.0

    def __post_init__(self) -> None:
        mode = self.mode
        if not isinstance(mode, str) or str.__str__(mode) not in SHUTDOWN_MODES:
            raise ValueError(f"Shutdown.mode must be one of {list(SHUTDOWN_MODES)}, got {mode!r}")
        object.__setattr__(self, "mode", str.__str__(mode))
        object.__setattr__(self, "timeout", as_seconds(self.timeout, "Shutdown.timeout", wrong_type=ValueError))

    @classmethod
    def hard(cls) -> Shutdown:
        """Cancel running tasks at once; they are re-queued, not failed (default)."""
        return cls(mode="hard", timeout=0.0)

    @classmethod
    def graceful(cls, timeout: float) -> Shutdown:
        """Stop dispatching, wait up to ``timeout`` seconds for running tasks, then cancel the rest.

        Raises:
            ValueError: ``timeout`` is not a finite number in 0..``MAX_DELAY_SECONDS``.
        """
        return cls(mode="graceful", timeout=as_seconds(timeout, "graceful shutdown timeout", wrong_type=ValueError))


@dataclass(frozen=True, slots=True, init=False)
class Recurring(_ToDict):
    """A recurring schedule (F15): run every ``interval`` seconds, at most ``max_executions`` times.

    ``Recurring(interval, max_executions=None, initial_delay=0)``. Durations are
    seconds or ``timedelta``s (stored as float seconds): ``interval`` finite, > 0
    and <= ``MAX_DELAY_SECONDS``; ``initial_delay`` (before the first run) finite in
    0..``MAX_DELAY_SECONDS``; ``max_executions`` None (no limit) or an int >= 1.

    Raises:
        TypeError: a field of the wrong type (the message names it).
        ValueError: a field out of range (the message names it).
    """

    interval: float
    max_executions: int | None
    initial_delay: float

    def __init__(self, interval: float | timedelta, max_executions: int | None = None,
                 initial_delay: float | timedelta = 0.0) -> None:
        object.__setattr__(self, "interval", as_seconds(interval, "Recurring.interval", lo_open=True))
        object.__setattr__(self, "max_executions", None if max_executions is None
                           else as_int(max_executions, "Recurring.max_executions", lo=1))
        object.__setattr__(self, "initial_delay", as_seconds(initial_delay, "Recurring.initial_delay"))


@dataclass(frozen=True, slots=True)
class MaxCount(_ToDict):
    """Retention (F26): keep the ``n`` newest history rows (``n`` an int >= 0).

    Raises:
        TypeError: ``n`` is not an int.
        ValueError: ``n`` is negative.
    """

    n: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", as_int(self.n, "MaxCount.n"))


@dataclass(frozen=True, slots=True)
class MaxAgeDays(_ToDict):
    """Retention (F26): delete history rows completed more than ``days`` days ago
    (a finite number in 0..``MAX_PRUNE_DAYS``).

    Raises:
        TypeError: ``days`` is not a number.
        ValueError: ``days`` is negative, too large, nan or infinite.
    """

    days: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "days", as_float(self.days, "MaxAgeDays.days", hi=MAX_PRUNE_DAYS, unit="days"))


# --------------------------------------------------------------------------- task records

#: Placeholder of ``TaskRecord.effective_priority`` when not given: the stored priority is used.
_SAME_AS_PRIORITY = -1


@dataclass(**_RECORD)
class TaskRecord(_ToDict):
    """A snapshot of an active task (a row of ``tasks``, or the coordinator's memory of it).

    ``dependencies`` are the prerequisites it still waits on; ``pause_reasons`` lists
    ``"global"``, ``"domain"``, ``"group"`` or ``"preempted"``; ``memo`` is a waiting
    parent's return value, kept until its finalize step runs. ``effective_priority``
    defaults to ``priority``.
    """

    id: int
    task_type: str
    domain: str
    key: str
    label: str
    priority: int
    status: TaskStatus
    payload: dict[str, Any] | None = None
    expected_io: IoBudget = field(default_factory=IoBudget)
    retry_count: int = 0
    max_retries: int = 3
    last_error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    requeue: bool = False
    requeue_priority: int | None = None
    parent_id: int | None = None
    fail_fast: bool = True
    group: str | None = None
    ttl_seconds: float | None = None
    ttl_from: str = "submission"
    expires_at: datetime | None = None
    run_after: datetime | None = None
    recurring_interval_secs: float | None = None
    recurring_max_executions: int | None = None
    recurring_execution_count: int = 0
    recurring_paused: bool = False
    dependencies: list[int] = field(default_factory=list)
    on_dependency_failure: str = "cancel"
    tags: dict[str, str] = field(default_factory=dict)
    cpus: float = 1.0
    memory: int = 0
    timeout: float | None = None
    effective_priority: int = _SAME_AS_PRIORITY
    pause_reasons: list[str] = field(default_factory=list)
    memo: Any = None

    def __post_init__(self) -> None:
        if self.effective_priority == _SAME_AS_PRIORITY:
            object.__setattr__(self, "effective_priority", self.priority)


@dataclass(**_RECORD)
class TaskHistoryRecord(_ToDict):
    """A finished task execution (a row of ``task_history``).

    ``expected_io`` is what the task declared, ``actual_io`` what it recorded
    (``ctx.record_read_bytes`` …); ``last_error`` is the final error text.
    """

    id: int
    task_type: str
    domain: str
    key: str
    label: str
    priority: int
    status: HistoryStatus
    payload: dict[str, Any] | None = None
    result: Any = None
    expected_io: IoBudget = field(default_factory=IoBudget)
    actual_io: IoBudget = field(default_factory=IoBudget)
    retry_count: int = 0
    last_error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None
    parent_id: int | None = None
    fail_fast: bool = True
    group: str | None = None
    ttl_seconds: float | None = None
    ttl_from: str | None = None
    expires_at: datetime | None = None
    run_after: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)
    cpus: float = 1.0
    memory: int = 0


def history_record(r: tuple, when: Callable[[Any], datetime | None]) -> TaskHistoryRecord:
    """A ``TaskHistoryRecord`` from a row in ``task_history``'s column order (times as ``when`` turns
    them into aware datetimes; JSON columns as text): the store's rows and the coordinator's events
    (``taskmill.events``) are both read with it, so they give the same record."""
    return TaskHistoryRecord(
        id=r[0], task_type=r[1], domain=r[2], key=r[3], label=r[4], priority=r[5], status=HistoryStatus(r[6]),
        payload=_json(r[7]), result=_json(r[8]), last_error=r[9], tags=_json(r[10]) or {}, group=r[11],
        retry_count=r[12], created_at=when(r[13]), started_at=when(r[14]), completed_at=when(r[15]),
        duration_ms=r[16], actual_io=IoBudget(disk_read=r[17], disk_write=r[18], net_rx=r[19], net_tx=r[20]),
        expected_io=IoBudget(disk_read=r[21], disk_write=r[22], net_rx=r[23], net_tx=r[24]), cpus=r[25],
        memory=r[26], parent_id=r[27], run_after=when(r[29]), ttl_seconds=r[30], ttl_from=r[31],
        expires_at=when(r[32]), fail_fast=True if r[33] is None else bool(r[33]))


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(**_RECORD)
class TypeStats(_ToDict):
    """Aggregates for one task type over its history (seed: ``history_stats``)."""

    count: int
    avg_duration_ms: float
    avg_read_bytes: float
    avg_write_bytes: float
    failure_rate: float


@dataclass(**_RECORD)
class TaskLookup(_ToDict):
    """Result of ``task_lookup``: the active task, else the newest history row, else neither."""

    active: TaskRecord | None = None
    history: TaskHistoryRecord | None = None

    @property
    def not_found(self) -> bool:
        return self.active is None and self.history is None


@dataclass(**_RECORD)
class RecurringScheduleInfo(_ToDict):
    """One recurring schedule (seed: ``recurring_schedules()``); ``next_run`` is the
    pending instance's ``run_after`` (None: due now, or running)."""

    task_id: int
    task_type: str
    label: str
    interval_secs: float
    next_run: datetime | None
    execution_count: int
    max_executions: int | None
    paused: bool


# --------------------------------------------------------------------------- progress and snapshots


@dataclass(**_RECORD)
class TaskEventHeader(_ToDict):
    """Who a task event (or a progress estimate) is about: carried by every task event."""

    task_id: int
    task_type: str
    domain: str
    key: str
    label: str
    tags: dict[str, str] = field(default_factory=dict)
    base_priority: int = 128
    effective_priority: int = 128


@dataclass(**_RECORD)
class EstimatedProgress(_ToDict):
    """Progress of a running task: what it reported, what its type's average duration
    extrapolates, and the best of the two (``percent``); fractions 0.0..1.0."""

    header: TaskEventHeader
    reported_percent: float | None = None
    extrapolated_percent: float | None = None
    percent: float = 0.0


@dataclass(**_RECORD)
class TaskProgress(_ToDict):
    """Byte-level progress of a running task: EWMA throughput (bytes/s) and ETA.

    ``elapsed`` and ``eta`` are seconds; ``bytes_total`` and ``eta`` are None until known.
    """

    task_id: int
    task_type: str
    key: str
    label: str
    bytes_completed: int = 0
    bytes_total: int | None = None
    throughput_bps: float = 0.0
    elapsed: float = 0.0
    eta: float | None = None


@dataclass(**_RECORD)
class PausedGroupInfo(_ToDict):
    """A paused group: since when, how many of its tasks are paused, and when it resumes (None: by hand)."""

    group: str
    paused_at: datetime
    paused_task_count: int = 0
    resume_at: datetime | None = None


@dataclass(**_RECORD)
class CapacityInfo(_ToDict):
    """Cores and bytes of memory running tasks hold, against the scheduler's capacity."""

    cpus_total: float
    cpus_in_use: float
    memory_total: int
    memory_in_use: int


@dataclass(**_RECORD)
class RateLimitInfo(_ToDict):
    """One token bucket: ``scope`` is ``"type:media::upload"`` or ``"group:s3"``."""

    scope: str
    scope_kind: str  # "type" | "group"
    permits: int
    interval_ms: int
    burst: int
    available_tokens: float


@dataclass(**_RECORD)
class GroupAllocationInfo(_ToDict):
    """A group's share of the slots (fair share, F21) and its cap."""

    group: str | None
    weight: float
    allocated_slots: int
    running: int
    pending: int
    min_slots: int = 0
    cap: int | None = None


@dataclass(**_RECORD)
class ModuleSnapshot(_ToDict):
    """One domain at a glance (seed: ``handle.snapshot()``)."""

    domain: str
    running: list[TaskRecord]
    pending_count: int
    paused_count: int
    blocked_count: int
    waiting_count: int
    progress: list[EstimatedProgress] = field(default_factory=list)
    byte_progress: list[TaskProgress] = field(default_factory=list)
    is_paused: bool = False


@dataclass(**_RECORD)
class SchedulerSnapshot(_ToDict):
    """Global aggregates (seed: ``scheduler.snapshot()``).

    ``pressure_breakdown`` is ``[(source name, value)]``; ``rate_limits``,
    ``aging_config``, ``group_allocations`` and ``capacity`` are filled by the
    features that own them (empty/None until then); ``workers`` is the pool size.
    """

    running: list[TaskRecord]
    running_count: int
    pending_count: int
    paused_count: int
    waiting_count: int
    blocked_count: int
    progress: list[EstimatedProgress] = field(default_factory=list)
    byte_progress: list[TaskProgress] = field(default_factory=list)
    pressure: float = 0.0
    pressure_breakdown: list[tuple[str, float]] = field(default_factory=list)
    max_concurrency: int = 0
    is_paused: bool = False
    recurring_schedules: list[RecurringScheduleInfo] = field(default_factory=list)
    paused_groups: list[PausedGroupInfo] = field(default_factory=list)
    rate_limits: list[Any] = field(default_factory=list)
    aging_config: Any = None
    group_allocations: list[Any] = field(default_factory=list)
    capacity: Any = None
    workers: int = 0
