"""What one commit writes: plain data the coordinator fills and the store applies.

No I/O and no DuckDB here, so the coordinator's lifecycle code can build a
batch without touching the store. Imports the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

__all__ = ["UPDATE_COLUMNS", "FinishedRow", "Recovered", "WriteBatch", "utc"]

#: Columns ``WriteBatch.update`` may set, with the SQL type each value is bound as. TIMESTAMP
#: values travel as wall-clock epoch seconds (float) or None and are converted in SQL.
UPDATE_COLUMNS: dict[str, str] = {
    "status": "VARCHAR",
    "pause_reasons": "VARCHAR[]",
    "priority": "SMALLINT",
    "retry_count": "INTEGER",
    "run_after": "TIMESTAMP",
    "started_at": "TIMESTAMP",
    "last_error": "VARCHAR",
    "requeue": "BOOLEAN",
    "requeue_priority": "SMALLINT",
    "expires_at": "TIMESTAMP",
    "memo": "JSON",
    "phase": "VARCHAR",
    "recurring_execution_count": "BIGINT",
    "recurring_paused": "BOOLEAN",
    "parent_id": "BIGINT",
}


_EPOCH = datetime(1970, 1, 1)


def utc(ts: float) -> datetime:
    """Epoch seconds to the naive-UTC datetime the store keeps, rounded to the microsecond the
    way SQL's ``make_timestamp((ts * 1e6)::BIGINT)`` rounds (the product, half to even), so a
    time written by either path reads back the same."""
    return _EPOCH + timedelta(microseconds=round(ts * 1e6))


@dataclass(slots=True)
class FinishedRow:
    """A task execution that ended: becomes one ``task_history`` row.

    The other history columns are copied from the task's row (``priority`` too,
    unless given here: a requeued run records the priority it ran at).
    """

    id: int
    status: str
    result: str | None
    error: str | None  # becomes task_history.last_error
    retry_count: int
    started_at: float | None  # epoch seconds
    completed_at: float  # epoch seconds
    duration_ms: float | None
    read_bytes: int = 0
    write_bytes: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    keep_active: bool = False  # requeued or recurring: the task stays in ``tasks``
    priority: int | None = None


@dataclass(slots=True)
class WriteBatch:
    """Everything one loop iteration changed, applied in one transaction.

    ``Store.apply`` order: inserts → deps → dep_moves → priorities → requeue_marks →
    retries → finished (history rows, type_stats, DELETE of gone tasks and of their
    edges, then deps_released) → requeued_runs → to_pending → updates → running →
    scopes → next_id → prune. A running mark comes last of the task writes: it is
    always the newest state of its task.
    """

    inserts: list[tuple] = field(default_factory=list)  # full ``tasks`` rows, see queries.TASK_INSERT_COLUMNS
    priorities: dict[int, int] = field(default_factory=dict)  # upgrades
    requeue_marks: dict[int, int] = field(default_factory=dict)  # id -> requeue priority
    running: dict[int, float] = field(default_factory=dict)  # id -> started_at (epoch s)
    retries: dict[int, tuple[int, float | None, str]] = field(default_factory=dict)  # id -> (count, run_after epoch s, error)
    finished: list[FinishedRow] = field(default_factory=list)
    requeued_runs: dict[int, int] = field(default_factory=dict)  # id -> priority, after its history row
    to_pending: set[int] = field(default_factory=set)  # interrupted runs, no retry counted
    next_id: int | None = None
    deps: list[tuple[int, int]] = field(default_factory=list)  # (task_id, depends_on) edges to insert
    dep_moves: list[tuple[int, int]] = field(default_factory=list)  # (old prerequisite, new): re-point its edges
    deps_released: set[int] = field(default_factory=set)  # prerequisites (still active) whose edges go
    updates: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {column: value}, see update()
    scopes: dict[tuple[str, str], tuple[float, float | None] | None] = field(default_factory=dict)
    """(kind, scope) -> (paused_at, resume_at) epoch seconds to upsert, or None to delete (resumed)."""
    prune: tuple[str, float] | None = None  # ("count", keep) or ("age_days", days), after the history rows

    def __len__(self) -> int:
        return (
            len(self.inserts)
            + len(self.priorities)
            + len(self.requeue_marks)
            + len(self.running)
            + len(self.retries)
            + len(self.finished)
            + len(self.requeued_runs)
            + len(self.to_pending)
            + len(self.deps)
            + len(self.dep_moves)
            + len(self.deps_released)
            + len(self.updates)
            + len(self.scopes)
            + (self.prune is not None)
        )

    def forget_running(self, task_id: int) -> None:
        """The task ended before its ``running`` mark was written: skip the mark."""
        self.running.pop(task_id, None)

    def update(self, task_id: int, **cols: Any) -> None:
        """Set columns of one task row; merged with earlier updates of the task (last value wins).

        Raises:
            ValueError: a column that is not in ``UPDATE_COLUMNS``.
        """
        unknown = cols.keys() - UPDATE_COLUMNS.keys()
        if unknown:
            raise ValueError(f"WriteBatch.update: unknown column(s) {sorted(unknown)}; "
                             f"allowed: {sorted(UPDATE_COLUMNS)}")
        mine = self.updates.get(task_id)
        if mine is None:
            self.updates[task_id] = dict(cols)
        else:
            mine.update(cols)


@dataclass(slots=True)
class Recovered:
    """What ``Store.recover`` loads at start-up (plain data).

    ``tasks`` rows are in dispatch order (priority, id), each a tuple of
    ``RECOVER_COLUMNS`` (see ``store.py``): times as epoch seconds,
    JSON columns as text, ``pause_reasons`` as a list.
    """

    next_id: int
    tasks: list[tuple] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)  # (task_id, depends_on)
    scopes: list[tuple[str, str, float, float | None]] = field(default_factory=list)  # kind, scope, paused_at, resume_at
    cold: dict[str, tuple[int, tuple[int, int]]] = field(default_factory=dict)  # domain -> (left, last loaded)
    max_id: int = 0  # the largest task id when recovery ran
