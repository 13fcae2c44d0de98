"""Records and snapshots built from the coordinator's memory: no store, no I/O.

``TaskRecord`` values for running tasks, estimated and byte progress, and the
``SchedulerSnapshot`` / ``ModuleSnapshot`` of the seed, from the lifecycle's
entries and counts plus the live slots a caller reads from shared memory
(``slot_of``). Cost does not grow with the queue: only running tasks (and
paused groups, schedules) are visited. Imports leaves and the lifecycle.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from typing import Any, Callable

from taskmill.admission import AgingConfig
from taskmill.coordinator.core.entry import Entry
from taskmill.coordinator.core.fairness import Aging, effective_priority
from taskmill.coordinator.core.gate import Gate
from taskmill.coordinator.core.lifecycle import Lifecycle
from taskmill.coordinator.core.pauses import reason_names
from taskmill.coordinator.core.progress import ProgressTracker
from taskmill.records import (
    CapacityInfo,
    EstimatedProgress,
    GroupAllocationInfo,
    ModuleSnapshot,
    PausedGroupInfo,
    RateLimitInfo,
    RecurringScheduleInfo,
    SchedulerSnapshot,
    TaskEventHeader,
    TaskLookup,
    TaskProgress,
    TaskRecord,
    TaskStatus,
)

__all__ = ["active_tasks", "byte_progress", "estimated_progress", "header", "snapshot", "task_record"]

SlotOf = Callable[[Entry], Any]


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


def _tags(e: Entry) -> dict[str, str]:
    return json.loads(e.tags) if e.tags else {}


def task_record(e: Entry) -> TaskRecord:
    """A snapshot of one in-memory entry (no payload or last error: those live in the store)."""
    status = TaskStatus(e.status) if e.status in TaskStatus._value2member_map_ else TaskStatus.RUNNING
    x = e.x
    s = x.schedule if x is not None else None
    return TaskRecord(
        id=e.id, task_type=e.task_type, domain=e.domain, key=e.key, label=e.label, priority=e.priority,
        status=status, group=e.group, created_at=_dt(e.created_at), started_at=_dt(e.started_at),
        retry_count=e.retry_count, max_retries=e.max_retries, timeout=e.timeout, cpus=e.cpus, memory=e.memory,
        requeue=e.requeue, requeue_priority=e.requeue_priority, parent_id=e.parent_id, tags=_tags(e),
        pause_reasons=reason_names(e.paused), effective_priority=e.priority,
        fail_fast=x.fail_fast if x is not None else True,
        ttl_seconds=x.ttl_seconds if x is not None else None, ttl_from=x.ttl_from if x is not None else "submission",
        expires_at=_dt(x.expires_at) if x is not None else None,
        run_after=_dt(x.run_after_wall) if x is not None else None,
        on_dependency_failure=x.on_dep_failure if x is not None else "cancel",
        recurring_interval_secs=s.interval if s is not None else None,
        recurring_max_executions=s.max_executions if s is not None else None,
        recurring_execution_count=s.count if s is not None else 0,
        recurring_paused=s.paused if s is not None else False,
        memo=json.loads(x.memo) if x is not None and x.memo is not None else None)


def header(e: Entry) -> TaskEventHeader:
    return TaskEventHeader(task_id=e.id, task_type=e.task_type, domain=e.domain, key=e.key, label=e.label,
                           tags=_tags(e), base_priority=e.priority, effective_priority=e.priority)


def _running(lc: Lifecycle, domain: str | None) -> list[Entry]:
    out = [e for e in lc.running.values() if not e.cancelled and (domain is None or e.domain == domain)]
    out.sort(key=lambda e: (e.priority, e.id))
    return out


def active_tasks(lc: Lifecycle, domain: str | None = None) -> list[TaskRecord]:
    """Running tasks (of one domain), most urgent first."""
    return [task_record(e) for e in _running(lc, domain)]


def _live(lc: Lifecycle, slot_of: SlotOf, domain: str | None) -> list[tuple[Entry, Any]]:
    out = []
    for e in _running(lc, domain):
        s = slot_of(e)
        if s is not None and s.task_id == e.id:
            out.append((e, s))
    return out


def estimated_progress(lc: Lifecycle, tracker: ProgressTracker, slot_of: SlotOf, now: float,
                       domain: str | None = None) -> list[EstimatedProgress]:
    """Progress of each running task: reported, else extrapolated from its type's average duration."""
    out = []
    for e, s in _live(lc, slot_of, domain):
        rep, ext, pct = tracker.estimate(e.task_type, s.progress, now - (e.started_mono or now))
        out.append(EstimatedProgress(header=header(e), reported_percent=rep, extrapolated_percent=ext, percent=pct))
    return out


def byte_progress(lc: Lifecycle, tracker: ProgressTracker, slot_of: SlotOf, now: float,
                  domain: str | None = None) -> list[TaskProgress]:
    """Byte progress of running tasks that report bytes: EWMA throughput and an ETA."""
    out = []
    for e, s in _live(lc, slot_of, domain):
        if not s.bytes_done and not s.bytes_total:
            continue
        total = s.bytes_total or None
        out.append(TaskProgress(task_id=e.id, task_type=e.task_type, key=e.key, label=e.label,
                                bytes_completed=s.bytes_done, bytes_total=total,
                                throughput_bps=tracker.throughput(e.id), elapsed=now - (e.started_mono or now),
                                eta=tracker.eta(e.id, s.bytes_done, total)))
    return out


def recurring_schedules(lc: Lifecycle) -> list[RecurringScheduleInfo]:
    out = []
    for tid in sorted(lc.recurring):
        e = lc.tasks[tid]
        s = e.x.schedule if e.x is not None else None
        if s is None:
            continue
        out.append(RecurringScheduleInfo(task_id=e.id, task_type=e.task_type, label=e.label, interval_secs=s.interval,
                                         next_run=_dt(e.x.run_after_wall if e.x is not None else None),
                                         execution_count=s.count, max_executions=s.max_executions, paused=s.paused))
    return out


def paused_groups(lc: Lifecycle) -> list[PausedGroupInfo]:
    return [PausedGroupInfo(group=g, paused_at=datetime.fromtimestamp(at, timezone.utc), paused_task_count=n, resume_at=_dt(until))
            for g, at, n, until in lc.paused_group_infos()]


def capacity(gate: Gate) -> CapacityInfo:
    return CapacityInfo(cpus_total=gate.cpus_total, cpus_in_use=round(gate.cpus_in_use, 6),
                        memory_total=gate.memory_total, memory_in_use=gate.memory_in_use)


def rate_limits(gate: Gate, now: float) -> list[RateLimitInfo]:
    out = []
    for kind, table in (("type", gate.type_limits), ("group", gate.group_limits)):
        for scope, b in sorted(table.items()):
            out.append(RateLimitInfo(scope=f"{kind}:{scope}", scope_kind=kind, permits=b.permits,
                                     interval_ms=round(b.interval * 1000), burst=b.burst,
                                     available_tokens=round(b.available(now), 3)))
    return out


def group_allocations(lc: Lifecycle) -> list[GroupAllocationInfo]:
    """Each group's weight, slot share, running and ready counts (fair share on only)."""
    fair, gate = lc.fair, lc.gate
    if not fair.configured:
        return []
    pending: dict[str | None, int] = {}
    for lane in lc.ready.lanes():
        pending[lane.key[1]] = pending.get(lane.key[1], 0) + lane.live
    running = gate.running_by_group()
    groups = set(pending) | {g for g, n in running.items() if n} | set(fair.weights) | set(fair.min_slots)
    demand = {g: running.get(g, 0) + pending.get(g, 0) for g in groups}
    caps: dict[str | None, int | None] = {g: gate.group_cap(g) for g in groups}
    slots = fair.allocations(gate.max_concurrency, demand, caps)
    return [GroupAllocationInfo(group=g, weight=fair.weight(g), allocated_slots=slots[g], running=running.get(g, 0),
                                pending=pending.get(g, 0), min_slots=fair.minimum(g),
                                cap=caps[g])
            for g in sorted(groups, key=lambda g: (g is None, g or ""))]


def aging_config(lc: Lifecycle) -> AgingConfig | None:
    a = lc.aging
    return None if a is None else AgingConfig(grace_period=a.grace, aging_interval=a.interval,
                                              max_effective_priority=a.cap, urgent_threshold=a.urgent)


def with_effective_priority(value: Any, aging: Aging, wall: float, paused_for: dict[int, float]) -> Any:
    """``value`` (a query's result) with every pending ``TaskRecord`` in it carrying its aged
    priority (records read from the store only know the stored one). ``paused_for``: seconds
    paused of the tasks that ever were (they do not count)."""
    if isinstance(value, TaskRecord):
        if value.status != TaskStatus.PENDING or value.created_at is None:
            return value
        waited = wall - value.created_at.timestamp() - paused_for.get(value.id, 0.0)
        eff = effective_priority(value.priority, max(0.0, waited), aging)
        return value if eff == value.effective_priority else dataclasses.replace(value, effective_priority=eff)
    if isinstance(value, list):
        return [with_effective_priority(v, aging, wall, paused_for) for v in value]
    if isinstance(value, TaskLookup) and value.active is not None:
        return dataclasses.replace(value, active=with_effective_priority(value.active, aging, wall, paused_for))
    return value


def snapshot(lc: Lifecycle, tracker: ProgressTracker, slot_of: SlotOf, now: float, *, max_concurrency: int,
             workers: int, domain: str | None = None) -> SchedulerSnapshot | ModuleSnapshot:
    """The seed's ``scheduler.snapshot()`` (``domain`` None) or ``handle.snapshot()``."""
    running = active_tasks(lc, domain)
    prog = estimated_progress(lc, tracker, slot_of, now, domain)
    byte = byte_progress(lc, tracker, slot_of, now, domain)
    if domain is None:
        c = lc.counts
        return SchedulerSnapshot(
            running=running, running_count=len(running), pending_count=c["pending"] + lc.cold_count(),
            paused_count=c["paused"],
            blocked_count=c["blocked"], waiting_count=c["waiting"], progress=prog, byte_progress=byte,
            max_concurrency=max_concurrency, workers=workers, is_paused=lc.is_paused("global"),
            recurring_schedules=recurring_schedules(lc), paused_groups=paused_groups(lc),
            pressure=lc.gate.pressure, pressure_breakdown=list(lc.gate.pressure_breakdown),
            capacity=capacity(lc.gate), rate_limits=rate_limits(lc.gate, now),
            group_allocations=group_allocations(lc), aging_config=aging_config(lc))
    c = lc.domain_counts.get(domain) or {s.value: 0 for s in TaskStatus}
    return ModuleSnapshot(domain=domain, running=running, pending_count=c["pending"] + lc.cold_count(domain),
                          paused_count=c["paused"],
                          blocked_count=c["blocked"], waiting_count=c["waiting"], progress=prog, byte_progress=byte,
                          is_paused=lc.is_paused("global") or lc.is_paused("domain", domain))
