"""Records and snapshots built from the coordinator's memory: no store, no I/O.

``TaskRecord`` values for running tasks and the ``SchedulerSnapshot`` /
``ModuleSnapshot`` of the seed, from the lifecycle's entries and counts plus
the live progress a caller reads from shared memory (``slot_of``). Cost does
not grow with the queue: only running tasks are visited. Imports leaves and
the lifecycle's types.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from taskmill.coordinator.lifecycle import Lifecycle
from taskmill.coordinator.queues import Entry
from taskmill.records import IoBudget, ModuleSnapshot, SchedulerSnapshot, TaskProgress, TaskRecord, TaskStatus

__all__ = ["active_tasks", "progress", "snapshot", "task_record"]


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


def task_record(e: Entry) -> TaskRecord:
    """A snapshot of one in-memory entry (no payload, tags or last error: those live in the store)."""
    status = TaskStatus(e.status) if e.status in TaskStatus._value2member_map_ else TaskStatus.RUNNING
    return TaskRecord(id=e.id, task_type=e.task_type, domain=e.domain, key=e.key, label=e.label,
                      priority=e.priority, status=status, group=e.group, created_at=_dt(e.created_at),
                      started_at=_dt(e.started_at), retry_count=e.retry_count, max_retries=e.max_retries,
                      timeout=e.timeout, cpus=e.cpus, memory=e.memory, requeue=e.requeue, expected_io=IoBudget())


def _running(lc: Lifecycle, domain: str | None) -> list[Entry]:
    out = [e for e in lc.running.values() if not e.cancelled and (domain is None or e.domain == domain)]
    out.sort(key=lambda e: (e.priority, e.id))
    return out


def active_tasks(lc: Lifecycle, domain: str | None = None) -> list[TaskRecord]:
    """Running tasks (of one domain), most urgent first."""
    return [task_record(e) for e in _running(lc, domain)]


def progress(lc: Lifecycle, slot_of: Callable[[Entry], Any], now: float,
             domain: str | None = None) -> list[TaskProgress]:
    """Live progress of running tasks; ``slot_of(entry)`` reads its worker's shared-memory slot."""
    out = []
    for e in _running(lc, domain):
        s = slot_of(e)
        if s is None or s.task_id != e.id:
            continue
        out.append(TaskProgress(task_id=e.id, task_type=e.task_type, fraction=max(s.progress, 0.0),
                                bytes_done=s.bytes_done, bytes_total=s.bytes_total, read_bytes=s.read_bytes,
                                write_bytes=s.write_bytes, elapsed_s=now - (e.started_mono or now)))
    return out


def snapshot(lc: Lifecycle, slot_of: Callable[[Entry], Any], now: float, *, max_concurrency: int, workers: int,
             domain: str | None = None) -> SchedulerSnapshot | ModuleSnapshot:
    """The seed's ``scheduler.snapshot()`` (``domain`` None) or ``handle.snapshot()``."""
    running = active_tasks(lc, domain)
    prog = progress(lc, slot_of, now, domain)
    if domain is None:
        c = lc.counts
        return SchedulerSnapshot(
            running=running, running_count=len(running), pending_count=c["pending"], paused_count=c["paused"],
            blocked_count=c["blocked"], waiting_count=c["waiting"], pressure=0.0, progress=prog,
            max_concurrency=max_concurrency, workers=workers)
    c = lc.domain_counts.get(domain) or {s.value: 0 for s in TaskStatus}
    return ModuleSnapshot(domain=domain, running=running, pending_count=c["pending"], paused_count=c["paused"],
                          blocked_count=c["blocked"], waiting_count=c["waiting"], progress=prog)
