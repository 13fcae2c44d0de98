"""The task table: the state every part of the lifecycle shares, and its bookkeeping.

``TaskTable`` holds the active entries, the ready queues and timers, the
counts, the slots in use and the outbox of effects for the shell (``fx``,
``effects.py``). Status changes go through ``_move`` only, so the global and
per-domain counts are always true and every change is reported to the outbox.
The lifecycle's parts (``relations``, ``pauses``, ``schedules``, ``lifecycle``)
are mixins over this table; the methods one part calls in another are declared
here. Plain code, no I/O. Imports leaves and the store's plain batch types.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from taskmill.coordinator.core.effects import Effects
from taskmill.coordinator.core.entry import Ended, Entry
from taskmill.coordinator.core.fairness import Aging, FairShare, effective_priority
from taskmill.coordinator.core.gate import Gate
from taskmill.coordinator.core.queues import ReadyQueues, Timers
from taskmill.records import HistoryStatus, RetryPolicy, TaskStatus

__all__ = ["TaskTable"]

_PENDING = TaskStatus.PENDING.value
_RUNNING = TaskStatus.RUNNING.value
#: A concurrency cap that never binds (a table built without a gate: tests of the lifecycle alone).
UNLIMITED = 2**31 - 1


class TaskTable:
    """Shared state of the lifecycle and its bookkeeping."""

    def __init__(
        self,
        *,
        gate: Gate | None = None,
        fair: FairShare | None = None,
        aging: Aging | None = None,
        type_retry: dict[str, RetryPolicy] | None = None,
        default_retry: RetryPolicy | None = None,
        finalizers: frozenset[str] = frozenset(),
        cancel_hooks: frozenset[str] = frozenset(),
        rng: random.Random | None = None,
    ) -> None:
        self.gate = gate or Gate(UNLIMITED)  # admission, and what running tasks hold
        self.fair = fair or FairShare()  # group weights (dispatch order among groups)
        self.aging = aging  # priority aging (None: off)
        self.type_retry = type_retry or {}
        self.default_retry = default_retry or RetryPolicy()
        self.finalizers = finalizers  # task types with a finalize step
        self.cancel_hooks = cancel_hooks  # task types with an on_cancel hook
        self.rng = rng or random.Random()

        self.tasks: dict[int, Entry] = {}
        self.by_key: dict[str, Entry] = {}
        self.ready = ReadyQueues()
        self.timers = Timers()  # due (delayed) tasks and group auto-resumes
        self.ttl_timers = Timers()  # TTL deadlines, looked at by the sweep
        self.counts: dict[str, int] = {s.value: 0 for s in TaskStatus}
        self.domain_counts: dict[str, dict[str, int]] = {}
        self.running: dict[int, Entry] = {}  # entries with a worker, cancelling runs included
        self.reserved: dict[int, Entry] = {}  # pending entries queued on a busy worker (dispatch.py)
        self.recurring: set[int] = set()  # ids of tasks with a recurring schedule
        self.preemptors: set[int] = set()  # active tasks at or above preempt_priority (preemption.py)
        self.victims: set[int] = set()  # tasks held by them (pause reason "preempted")
        self.suspended: dict[int, Entry] = {}  # victims whose worker is stopped: paused, worker kept
        self.were_paused: set[int] = set()  # with aging: tasks with paused time to leave out
        self.next_id = 1
        self.payload_bytes = 0
        self.payload_missing: deque[int] = deque()  # recovered ids in dispatch order, payloads not loaded

        self.fx = Effects()  # the outbox: what the shell must carry out
        self.wall_now = 0.0  # the wall clock as last given (event headers age by it)
        self.counters: dict[str, int] = {k: 0 for k in (
            "submitted", "dispatched", "completed", "failed", "retried", "dead_lettered", "cancelled",
            "superseded", "expired", "rate_limit_throttles", "group_pauses", "group_resumes", "preempted",
            "batches_submitted", "dependency_failures", "recurring_skipped")}

    @property
    def running_total(self) -> int:
        """Tasks holding a slot (running, or cancelling)."""
        return self.gate.running

    # ------------------------------------------------------------------ status bookkeeping

    def _move(self, e: Entry, status: str) -> None:
        """Change ``e``'s status, keeping the global and per-domain counts true. A run that stops
        without finishing drops its unwritten running mark (the store never needs it)."""
        old = e.status
        if old == status:
            return
        fx = self.fx
        if fx.trace is not None:
            fx.moved(e.id, old, status)
        if old == _RUNNING:
            fx.forget_running(e.id)
        dc = self.domain_counts.get(e.domain)
        if dc is None:
            dc = self.domain_counts[e.domain] = {s.value: 0 for s in TaskStatus}
        if old in dc:
            self.counts[old] -= 1
            dc[old] -= 1
        if status in dc:
            self.counts[status] += 1
            dc[status] += 1
        e.status = status

    def _add(self, e: Entry) -> None:
        """A new or recovered entry joins the table (its status counted)."""
        status, e.status = e.status, ""
        self.tasks[e.id] = e
        self.by_key[e.key] = e
        self._move(e, status)

    def _remove(self, e: Entry) -> None:
        """``e`` leaves the table (its history row is written)."""
        self._move(e, "")
        self.timers.cancel(e.timer)
        e.timer = None
        if e.x is not None:
            self.ttl_timers.cancel(e.x.ttl_timer)
            e.x.ttl_timer = None
        del self.tasks[e.id]
        if e.payload is not None:
            self.payload_bytes -= len(e.payload)
            e.payload = None
        self.recurring.discard(e.id)
        self.preemptors.discard(e.id)
        self.victims.discard(e.id)
        self.were_paused.discard(e.id)
        if self.by_key.get(e.key) is e:
            del self.by_key[e.key]

    @property
    def idle(self) -> bool:
        """No active task and nothing left to write."""
        return not self.tasks and self.fx.dirty_since is None

    # ------------------------------------------------------------------ events (recorded only while fx.listening)

    def _header(self, e: Entry) -> tuple:
        """``e`` as an event header: ``(id, type, domain, key, label, tags JSON, priority, effective)``."""
        eff = e.priority
        if self.aging is not None and e.status in (_PENDING, "paused", "blocked"):
            paused = e.x.paused_for if e.x is not None else 0.0
            eff = effective_priority(e.priority, max(0.0, self.wall_now - e.created_at - paused), self.aging)
        return (e.id, e.task_type, e.domain, e.key, e.label, e.tags, e.priority, eff)

    def _emit(self, kind: str, e: Entry, *fields: Any) -> None:
        """Record a task event about ``e`` (the caller checked ``fx.listening``)."""
        self.fx.events.append((kind, e.domain, e.task_type, self._header(e), *fields))

    def _emit_about(self, kind: str, e: Entry | None, *fields: Any) -> None:
        """Record an event that is not a task event; ``e``, if given, routes it to ``e``'s domain and type."""
        if e is None:
            self.fx.events.append((kind, None, None, *fields))
        else:
            self.fx.events.append((kind, e.domain, e.task_type, *fields))

    # ------------------------------------------------------------------ ready or due

    def _make_ready(self, e: Entry, due: float | None) -> None:
        """Pending now (``due`` None) or at ``due`` on the monotonic clock."""
        self._move(e, _PENDING)
        e.run_after = due
        self.timers.cancel(e.timer)
        if due is None:
            e.timer = None
            self.ready.push(e)
        else:
            e.timer = self.timers.add(due, "due", e)

    # ------------------------------------------------------------------ defined by the parts

    def _preempt_for(self, e: Entry, now: float) -> None:  # preemption
        raise NotImplementedError

    def _settle(self, e: Entry, now: float) -> None:  # pauses
        raise NotImplementedError

    def _end(self, e: Entry, status: HistoryStatus, why: str, now: float, wall: float,
             cascade_dependents: bool = False, cause: int | None = None) -> None:  # outcomes
        raise NotImplementedError

    def _leave(self, e: Entry, status: HistoryStatus, now: float, wall: float, *, result: str | None = None,
               error: str | None = None, ended: Ended | None = None, forced: bool = False,
               cause: int | None = None) -> None:  # outcomes
        raise NotImplementedError

    def _finish(self, e: Entry, status: HistoryStatus, now: float, wall: float, *, result: str | None = None,
                error: str | None = None, ended: Ended | None = None, keep: bool = False,
                cause: int | None = None) -> None:  # outcomes
        raise NotImplementedError
