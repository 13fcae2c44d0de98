"""Stored ``tasks`` rows into entries, checked field by field. Plain code, no I/O.

Recovery (every column of ``RECOVER_COLUMNS``) and the cold tail (the plain
columns of ``PLAIN_COLUMNS``) read rows written by any earlier version or by
hand; a value out of range raises, and the caller quarantines the row.
"""

from __future__ import annotations

import json
import math
from typing import Any

from taskmill.coordinator.core.entry import PAUSE_REASONS, Entry, Schedule
from taskmill.records import RetryPolicy, TaskStatus
from taskmill.validation import MAX_DELAY_SECONDS

__all__ = ["check_row", "entry_from_row", "io_budget", "plain_entry", "retry_policy"]


def check_row(prio: int, retries: int, max_retries: int, timeout: float | None, cpus: float, memory: int) -> None:
    """Raise ValueError when a stored task's values are out of range (the row is quarantined)."""
    if not 0 <= prio <= 255:
        raise ValueError(f"priority {prio} is outside 0..255")
    if retries < 0 or max_retries < 0:
        raise ValueError("a negative retry count")
    if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= MAX_DELAY_SECONDS):
        raise ValueError(f"timeout {timeout!r} is not a number of seconds in (0, {MAX_DELAY_SECONDS:g}]")
    if not (math.isfinite(cpus) and cpus > 0) or memory < 0:
        raise ValueError(f"cpus {cpus!r} / memory {memory!r} out of range")


def io_budget(read: int, write: int, rx: int, tx: int) -> tuple[int, int, int, int]:
    """A stored expected IO budget, checked (non-negative byte counts)."""
    if min(read, write, rx, tx) < 0:
        raise ValueError(f"a negative expected IO ({read}, {write}, {rx}, {tx})")
    return (read, write, rx, tx)


def retry_policy(text: str | None) -> Any:
    """A stored retry policy (JSON text), or None for the task type's."""
    return RetryPolicy.from_dict(json.loads(text)) if text else None


def plain_entry(row: tuple) -> Entry:
    """An entry from a plain pending row (``PLAIN_COLUMNS`` of the store; the payload when short)."""
    (tid, ttype, domain, key, label, prio, created, retries, max_retries, retry_json, timeout, cpus, memory,
     group, tags, fail_fast, io_read, io_write, io_rx, io_tx, payload) = row
    check_row(prio, retries, max_retries, timeout, cpus, memory)
    e = Entry(tid, ttype, domain, key, label, prio, "pending", created, retries, max_retries, retry_policy(retry_json),
              timeout, cpus, memory, group)
    e.tags = tags
    e.payload = payload
    if io_read or io_write or io_rx or io_tx:
        e.io = io_budget(io_read, io_write, io_rx, io_tx)
    if fail_fast is False:
        e.extra().fail_fast = False
    return e


_STATUS_VALUES = {s.value: s.value for s in TaskStatus}


def entry_from_row(row: tuple, now: float, wall: float) -> Entry:
    """An entry from a stored ``tasks`` row (see ``Store.recover``), checked field by field."""
    (tid, ttype, domain, key, label, prio, status, created, run_after, retries, max_retries, retry_json,
     timeout, cpus, memory, group, requeue, requeue_prio, parent_id, tags, ttl, ttl_from, expires_at, on_dep,
     fail_fast, interval, most, count, delay, rec_paused, reasons, memo, phase, started_at, *io) = row
    status = _STATUS_VALUES[status]  # KeyError: an unknown status (quarantined)
    check_row(prio, retries, max_retries, timeout, cpus, memory)
    if requeue_prio is not None and not 0 <= requeue_prio <= 255:
        raise ValueError(f"priority {requeue_prio} is outside 0..255")
    for name, t in (("run_after", run_after), ("expires_at", expires_at)):
        if t is not None and not math.isfinite(t):
            raise ValueError(f"{name} {t!r} is not a time")
    if interval is not None and not (math.isfinite(interval) and 0 < interval <= MAX_DELAY_SECONDS):
        raise ValueError(f"recurring interval {interval!r} out of range")
    if reasons:
        unknown = set(reasons) - set(PAUSE_REASONS)
        if unknown:
            raise ValueError(f"unknown pause reasons {sorted(unknown)}")
    e = Entry(tid, ttype, domain, key, label, prio, status, created, retries, max_retries, retry_policy(retry_json),
              timeout, cpus, memory, group)
    if any(io):
        e.io = io_budget(*io)
    e.requeue = bool(requeue)
    e.requeue_priority = requeue_prio
    e.parent_id = parent_id
    e.tags = tags
    if reasons:  # a preemption ends with the coordinator that made it
        e.paused = sum(PAUSE_REASONS[r] for r in reasons if r != "preempted")
    if (ttl is not None or expires_at is not None or run_after is not None or (on_dep or "cancel") != "cancel"
            or fail_fast is False or interval is not None or memo is not None or (phase or "execute") != "execute"):
        x = e.extra()
        x.ttl_seconds, x.ttl_from, x.expires_at = ttl, ttl_from or "submission", expires_at
        x.on_dep_failure, x.fail_fast = on_dep or "cancel", fail_fast is not False
        x.memo, x.phase = memo, phase or "execute"
        if interval is not None:
            x.schedule = Schedule(interval, most, count or 0, delay or 0.0, bool(rec_paused))
            x.schedule.held = bool(rec_paused) and "recurring" in (reasons or ())
            x.schedule.due_wall = run_after if run_after is not None else wall
        if run_after is not None:
            x.run_after_wall = run_after
    if run_after is not None and run_after > wall:  # a stored time is wall clock: mapped onto the monotonic one
        e.run_after = now + (run_after - wall)
    return e
