"""What one commit writes: plain data the coordinator fills and the store applies.

No I/O and no DuckDB here, so the coordinator's lifecycle code can build a
batch without touching the store. Imports the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

__all__ = ["FinishedRow", "WriteBatch", "utc"]


def utc(ts: float) -> datetime:
    """Epoch seconds to the naive-UTC datetime the store keeps."""
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)



@dataclass(slots=True)
class FinishedRow:
    """A task execution that ended: becomes one ``task_history`` row."""

    id: int
    status: str
    result: str | None
    error: str | None
    retry_count: int
    started_at: float | None  # epoch seconds
    completed_at: float  # epoch seconds
    duration_ms: float | None
    read_bytes: int = 0
    write_bytes: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    keep_active: bool = False  # requeued: the task stays, back to pending


@dataclass(slots=True)
class WriteBatch:
    """Everything one loop iteration changed, applied in one transaction in this order."""

    inserts: list[tuple] = field(default_factory=list)  # full ``tasks`` rows
    priorities: dict[int, int] = field(default_factory=dict)  # upgrades
    requeue_marks: dict[int, int] = field(default_factory=dict)  # id -> requeue priority
    running: dict[int, float] = field(default_factory=dict)  # id -> started_at (epoch s)
    retries: dict[int, tuple[int, float | None, str]] = field(default_factory=dict)  # id -> (count, run_after epoch s, error)
    finished: list[FinishedRow] = field(default_factory=list)
    requeued_runs: dict[int, int] = field(default_factory=dict)  # id -> priority, after its history row
    to_pending: set[int] = field(default_factory=set)  # interrupted runs, no retry counted
    next_id: int | None = None

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
        )

    def forget_running(self, task_id: int) -> None:
        """The task ended before its ``running`` mark was written: skip the mark."""
        self.running.pop(task_id, None)
