"""The task lifecycle: every active task and every transition, as plain code without I/O.

    submit ─┬─▶ blocked ──prerequisites done──┐
            ├─▶ paused ◀──scope paused / resumed──▶ pending (ready, or due later) ◀─┐
            └──────────────────────────────────────▶ pending ─pick/started─▶ running │
                                                                            │   ├─retry────┘
         history ◀──completed / failed / dead_letter / cancelled / expired ─┤   └─returned with
                                                                            │     children─▶ waiting ─▶ finalize
    Recurring tasks come back to pending (same id); requeued ones run once more.

Every method takes what it needs (``now`` on the monotonic clock, ``wall`` for
stored timestamps) and records its effects in the one outbox, ``fx``
(``effects.py``: rows for the next commit, events, finished ids, runs to
signal, hooks to start, runs to suspend). Executor handles are opaque here. The
graph rules live in ``relations``, pauses in ``pauses``, time in ``schedules``;
this module holds submission and outcomes. Imports the core and leaves only.
"""

from __future__ import annotations

import json
import random
from collections import deque
from typing import TYPE_CHECKING, Any

from taskmill.batch import utc
from taskmill.config import PREEMPTION, RETENTION_EVERY
from taskmill.coordinator.core.cold import ColdTails
from taskmill.coordinator.core.dispatch import Dispatch
from taskmill.coordinator.core.entry import Entry, Schedule
from taskmill.coordinator.core.fairness import Aging, FairShare
from taskmill.coordinator.core.gate import Gate
from taskmill.coordinator.core.outcomes import Outcomes
from taskmill.coordinator.core.pauses import GROUP, RECURRING, Pauses, reason_names
from taskmill.coordinator.core.preemption import Preemption
from taskmill.coordinator.core.rows import entry_from_row
from taskmill.coordinator.core.schedules import SWEEP_INTERVAL
from taskmill.coordinator.core.settings import Settings
from taskmill.errors import InvalidSubmission
from taskmill.records import HistoryStatus, RetryPolicy, TaskStatus

if TYPE_CHECKING:
    from taskmill import protocol

__all__ = ["Lifecycle"]

#: Payload bytes kept in memory for queued tasks; beyond it payloads are read back at dispatch.
PAYLOAD_CACHE_BYTES = 256 * 1024 * 1024
_PENDING = TaskStatus.PENDING.value
_RUNNING = TaskStatus.RUNNING.value
_PAUSED = TaskStatus.PAUSED.value
_BLOCKED = TaskStatus.BLOCKED.value
_WAITING = TaskStatus.WAITING.value
class Lifecycle(Outcomes, Pauses, ColdTails, Preemption, Settings, Dispatch):
    """The task table and its transitions; the loop feeds it inputs and carries out its effects."""

    def __init__(
        self,
        *,
        gate: Gate | None = None,
        fair: FairShare | None = None,
        aging: Aging | None = None,
        preempt_priority: int | None = None,
        preemption: str = PREEMPTION,
        type_retry: dict[str, RetryPolicy] | None = None,
        default_retry: RetryPolicy | None = None,
        finalizers: frozenset[str] = frozenset(),
        cancel_hooks: frozenset[str] = frozenset(),
        sweep_interval: float = SWEEP_INTERVAL,
        retention: tuple[str, float] | None = None,
        retention_every: int = RETENTION_EVERY,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(gate=gate, fair=fair, aging=aging, type_retry=type_retry, default_retry=default_retry,
                         finalizers=finalizers, cancel_hooks=cancel_hooks, rng=rng)
        self._init_outcomes(retention, retention_every)
        self._init_relations()
        self._init_pauses()
        self._init_schedules(sweep_interval)
        self._init_cold()
        self._init_preemption(preempt_priority, preemption)

    def lookups(self, items: list[protocol.SubmitItem]) -> tuple[set[int], set[str]]:
        """What ``submit`` needs the store to answer first: prerequisite ids that are not active
        (for their outcomes) and keys of ``skip_completed`` items that are not active."""
        ids: set[int] = set()
        keys: set[str] = set()
        for it in items:
            if it.depends_on:
                ids.update(d for d in it.depends_on if d not in self.tasks)
            if it.duplicate == "skip_completed" and it.key not in self.by_key:
                keys.add(it.key)
        return ids, keys

    def submit(self, items: list[protocol.SubmitItem], now: float, wall: float, *,
               outcomes: dict[int, str] | None = None, completed: dict[str, int] | None = None,
               batch: bool = False) -> list[tuple]:
        """Apply checked submissions; dedup also applies inside the batch. Compact outcomes in input order.

        ``outcomes``: history status of prerequisites that are not active; ``completed``: keys whose
        newest history row completed (see ``lookups``). A batch with one bad item applies none.
        ``batch``: a ``submit_batch`` (counted, and told to subscribers as ``BatchSubmitted``).
        """
        self.wall_now = wall
        outcomes = outcomes or {}
        for i, it in enumerate(items):
            why = self._refused(it, outcomes)
            if why is not None:
                raise InvalidSubmission(f"item {i}: {why}", index=i)
        created = utc(wall)
        out: list[tuple] = []
        for it in items:
            existing = self.by_key.get(it.key)
            if existing is None:
                done = completed.get(it.key) if completed and it.duplicate == "skip_completed" else None
                out.append(("d", done) if done is not None else self._insert(it, now, wall, created))
                continue
            strategy = it.duplicate
            if strategy == "reject":
                out.append(("r", existing.id))
            elif strategy == "supersede":
                new = self._insert(it, now, wall, created)
                self._prerequisite_replaced(existing, self.tasks[new[1]])
                self._end(existing, HistoryStatus.SUPERSEDED, f"superseded by task {new[1]}", now, wall,
                          cause=new[1])
                out.append(("s", new[1], existing.id))
            else:
                out.append(self._skip_duplicate(existing, it.priority, now))
        self.counters["submitted"] += len(items)
        if batch:
            self.counters["batches_submitted"] += 1
            if self.fx.listening:
                inserted = [o[1] for o in out if o[0] == "i"] + [o[1] for o in out if o[0] == "s"]
                domain = items[0].domain if items and all(it.domain == items[0].domain for it in items) else None
                self.fx.events.append(("BatchSubmitted", domain, None, len(items), sorted(inserted)))
        self.fx.set_next_id(self.next_id)
        self.fx.touch(now)
        return out

    def _refused(self, it: protocol.SubmitItem, outcomes: dict[int, str]) -> str | None:
        """Why an item cannot be inserted as it stands (checked for every item before any is applied)."""
        for d in it.depends_on or ():
            if d in self.tasks:
                continue
            status = outcomes.get(d)
            if status is None:
                return (f"depends_on: task {d} does not exist (a task can only depend on tasks submitted "
                        "before it, so dependency cycles cannot form)")
            if status != HistoryStatus.COMPLETED:  # SPEC §8: whatever the policy
                return f"depends_on: task {d} already ended as {status}"
        if it.parent is not None and it.parent not in self.tasks:
            return f"parent: task {it.parent} is not active (it does not exist or has finished)"
        return None

    def _skip_duplicate(self, e: Entry, priority: int, now: float) -> tuple:
        if e.status in (_PENDING, _PAUSED) and not e.cancelled:
            if priority < e.priority:
                e.priority = priority
                self.fx.upgrade(e.id, priority)
                if e.queued:
                    self.ready.push(e)  # re-key the heap item
                self._maybe_preempt(e, now)  # upgraded to a preemptor?
                return ("u", e.id)
            return ("d", e.id)
        recurring = e.x is not None and e.x.schedule is not None
        if e.status == _RUNNING and not e.cancelled and not e.requeue and not recurring:
            # a recurring task is not requeued: its schedule brings it back (no pile-up)
            e.requeue = True
            e.requeue_priority = min(priority, e.priority)
            self.fx.mark_requeue(e.id, e.requeue_priority)
            return ("q", e.id)
        return ("d", e.id)

    def _insert(self, it: protocol.SubmitItem, now: float, wall: float, created: Any) -> tuple:
        tid = self.next_id
        self.next_id = tid + 1
        (task_type, domain, key, label, priority, payload, max_retries, retry, timeout, cpus, memory,
         io_read, io_write, io_rx, io_tx, group, tags, _dup, ttl, ttl_from, run_after, depends_on, on_dep, parent_id,
         fail_fast, recurring) = it
        e = Entry(tid, task_type, domain, key, label, priority, _PENDING, wall, 0, max_retries,
                  RetryPolicy.from_dict(json.loads(retry)) if retry else None, timeout, cpus, memory, group)
        parent = self.tasks.get(parent_id) if parent_id is not None else None
        expires_at: float | None = None
        if parent is not None:  # inherits the more urgent priority, the parent's tags under its own, its TTL
            e.priority = priority = min(priority, self._effective(parent, wall))
            if parent.tags:
                tags = json.dumps({**json.loads(parent.tags), **(json.loads(tags) if tags else {})}, sort_keys=True)
            if parent.x is not None and parent.x.expires_at is not None and parent.x.expires_at > wall:
                expires_at = parent.x.expires_at  # what is left of it (a lapsed one is not passed on)
        e.tags = tags
        e.parent_id = parent_id
        if io_read or io_write or io_rx or io_tx:
            e.io = (io_read, io_write, io_rx, io_tx)
        if ttl is not None or expires_at is not None or run_after is not None or depends_on or on_dep != "cancel" \
                or not fail_fast or recurring is not None:
            x = e.extra()
            x.ttl_seconds, x.ttl_from, x.on_dep_failure, x.fail_fast = ttl, ttl_from, on_dep, fail_fast
            if ttl is not None and ttl_from == "submission":
                expires_at = wall + ttl if expires_at is None else min(expires_at, wall + ttl)
        shown = run_after  # stored and on the record even when already passed (then due at once)
        if recurring is not None:
            interval, most, delay = recurring
            schedule = Schedule(interval, most, 0, delay, False)
            e.extra().schedule = schedule
            shown = self._first_occurrence(e, schedule, run_after, wall)
        due_wall = shown if shown is not None and shown > wall else None
        if shown is not None:
            e.extra().run_after_wall = shown
        if due_wall is not None:
            e.run_after = now + (due_wall - wall)
        if expires_at is not None:
            self._expire_at(e, expires_at, now, wall)
        prereqs = [d for d in depends_on or () if d in self.tasks]
        e.status = _BLOCKED if prereqs else _PENDING
        bits = 0 if prereqs else self._scope_bits(e)
        if bits:
            e.status, e.paused = _PAUSED, bits
            if self.aging is not None:  # aging does not count the pause
                e.extra().paused_since = now
        if self.payload_bytes < PAYLOAD_CACHE_BYTES:
            e.payload = payload
            self.payload_bytes += len(payload)
        self.fx.insert((
            tid, task_type, domain, key, label, priority, e.status, payload, tags, group, created,
            None if shown is None else utc(shown), None, 0, max_retries, retry, None, timeout, cpus, memory,
            io_read, io_write, io_rx, io_tx, False, None, parent_id,
            ttl, ttl_from, None if expires_at is None else utc(expires_at), on_dep, fail_fast,
            *((recurring[0], recurring[1], 0, recurring[2]) if recurring else (None, None, 0, None)), False,
            reason_names(bits) if bits else None, None, "execute"))
        self._add(e)
        if recurring is not None:
            self.recurring.add(tid)
        self._link(e, prereqs)
        self._adopt(e)
        if e.status == _PENDING:
            self._make_ready(e, e.run_after)
        self._maybe_preempt(e, now)
        return ("i", tid, bool(bits & GROUP))

    # ------------------------------------------------------------------ timers

    def next_due(self) -> float | None:
        due, sweep = self.timers.next_due(), self._next_schedule_due()
        return sweep if due is None else due if sweep is None else min(due, sweep)

    def fire(self, now: float, wall: float) -> None:
        """Timers due at ``now``: delayed tasks become ready, groups resume, the TTL sweep runs."""
        self.wall_now = wall
        for t in self.timers.pop_due(now):
            if t.kind == "due":
                e = t.payload
                if e.timer is t:
                    e.timer = None
                    e.run_after = None
                    self.ready.push(e)
                    if e.id in self.preemptors:  # a delayed preemptor is due
                        self._preempt_for(e, now)
            elif t.kind == "resume_group" and self.group_timers.get(t.payload) is t:
                del self.group_timers[t.payload]
                self.resume_scope("group", t.payload, now)
        self._fire_schedules(now, wall)
        if self.victims and not self.preemptors:
            self._release_preempted(now)

    # ------------------------------------------------------------------ recovery

    def recover(self, next_id: int, rows: list[tuple], edges: list[tuple[int, int]],
                scopes: list[tuple[str, str, float, float | None]], wall: float, now: float,
                child_failures: dict[int, tuple[int, str | None]] | None = None,
                cold: dict[str, tuple[int, tuple[int, int]]] | None = None, max_id: int = 0) -> list[tuple[int, str]]:
        """Load stored active tasks, edges and pause scopes (see ``Store.recover``; ``cold``: the
        tails left in the store, see ``cold.py``); returns ``(id, reason)`` of rows that cannot
        be interpreted, for the loop to quarantine."""
        self.next_id = next_id
        self._cold_from_recovery(cold or {}, max_id)
        for kind, scope, at, until in scopes:
            if kind == "global":
                self.paused_global = at
            elif kind == "domain":
                self.paused_domains[scope] = at
            elif kind == "group":
                self.paused_groups[scope] = (at, until)
                if until is not None:
                    self.group_timers[scope] = self.timers.add(now + max(until - wall, 0.0), "resume_group", scope)
        bad: list[tuple[int, str]] = []
        loaded: list[Entry] = []
        for row in rows:
            try:
                e = entry_from_row(row, now, wall)
            except Exception as ex:  # noqa: BLE001 - any uninterpretable row is quarantined, not fatal
                bad.append((row[0], "quarantined at recovery: the stored task cannot be interpreted "
                                    f"({type(ex).__name__}: {ex})"))
                continue
            self._add(e)
            loaded.append(e)
            if e.x is not None and e.x.schedule is not None:
                self.recurring.add(e.id)
            if e.x is not None and e.x.expires_at is not None:
                self._expire_at(e, e.x.expires_at, now, wall)
        prereqs: dict[int, list[int]] = {}
        for tid, dep in edges:
            if tid in self.tasks and dep in self.tasks:  # an edge to a task that is gone is dropped
                prereqs.setdefault(tid, []).append(dep)
        for e in loaded:
            if e.parent_id is not None and e.parent_id in self.tasks:
                self.children.setdefault(e.parent_id, set()).add(e.id)
                self.tasks[e.parent_id].extra().spawned += 1
            self._link(e, prereqs.get(e.id, []))
        for tid, (n, first) in (child_failures or {}).items():
            p = self.tasks.get(tid)
            if p is not None:
                p.extra().child_failures, p.extra().first_failure = n, first
        plain = not (self.paused_global is not None or self.paused_domains or self.paused_groups)
        ready: list[Entry] = []
        for e in loaded:  # every task back in exactly one place
            status = e.status
            if status == _PENDING and plain and e.run_after is None and not e.blockers and not e.paused:
                ready.append(e)  # the common case, loaded in bulk below
            elif status == _BLOCKED and not e.blockers:
                self._settle(e, now)
            elif status == _WAITING:
                e.extra().spawned = max(e.extra().spawned, 1)
                if not self._active_children(e.id):
                    self._resolve_parent(e, now, wall)
            elif status in (_PENDING, _PAUSED) and e.blockers:  # stored edges say it must wait
                self._move(e, _BLOCKED)
                self.fx.update(e.id, status=_BLOCKED, pause_reasons=[])
            elif status in (_PENDING, _PAUSED):
                self._settle(e, now)
        self.ready.load(ready)
        self.payload_missing = deque(e.id for e in loaded if self.tasks.get(e.id) is e)
        return bad


    # ------------------------------------------------------------------ consistency (tests, debugging)

    def check(self) -> None:
        """Assert the table's invariants (the state-machine tests call it after every step)."""
        recount = {s.value: 0 for s in TaskStatus}
        by_domain: dict[str, dict[str, int]] = {}
        keys: set[str] = set()
        for tid, e in self.tasks.items():
            assert e.id == tid and not e.cancelled
            assert e.status in recount, (tid, e.status)
            recount[e.status] += 1
            by_domain.setdefault(e.domain, {s.value: 0 for s in TaskStatus})[e.status] += 1
            assert e.key not in keys, f"two active tasks hold key {e.key}"
            keys.add(e.key)
            assert self.by_key[e.key] is e
            places = [e.queued, e.timer is not None, e.worker is not None and tid not in self.suspended,
                      tid in self.reserved]
            assert sum(places) <= 1, (tid, places)
            if e.status == _PENDING:
                assert sum(places) == 1 and not e.paused, f"pending task {tid} is neither ready nor due"
            elif e.status == _RUNNING:
                assert e.worker is not None and self.running.get(tid) is e
            elif tid in self.suspended:
                assert e.status == _PAUSED and e.worker is not None and tid not in self.running
            else:
                assert sum(places) == 0, (tid, e.status, places)
            assert (e.status == _PAUSED) == (e.paused != 0 and e.status != _RUNNING) or e.status == _RUNNING
            assert (e.status == _BLOCKED) == (e.blockers > 0), (tid, e.status, e.blockers)
            assert e.blockers == len(self.prereqs.get(tid, ())), (tid, e.blockers)
            for p in self.prereqs.get(tid, ()):
                assert p in self.tasks and tid in self.dependents[p], (tid, p)
            if e.status == _WAITING:
                assert self._active_children(tid), f"waiting task {tid} has no active child"
            sched = e.x.schedule if e.x is not None else None
            if sched is not None:  # only an occurrence enqueued while paused is held by the pause
                assert not sched.held or sched.paused, tid
                assert not (e.paused & RECURRING) or sched.held or e.status == _RUNNING, tid
            if e.parent_id is not None and e.parent_id in self.tasks:
                assert tid in self.children.get(e.parent_id, ()), (tid, e.parent_id)
        for p, deps in self.dependents.items():
            assert deps and all(p in self.prereqs.get(d, ()) for d in deps), (p, deps)
        for p, kids in self.children.items():
            assert kids and all(self.tasks[c].parent_id == p for c in kids), (p, kids)
        assert set(self.by_key.values()) <= set(self.tasks.values())
        assert recount == self.counts, (recount, self.counts)
        for d, counts in self.domain_counts.items():
            assert counts == by_domain.get(d, {s.value: 0 for s in TaskStatus}), (d, counts)
        assert all(e.worker is not None for e in self.running.values())
        self.gate.check(self.running.values())
        assert len(self.ready) == sum(1 for e in self.tasks.values() if e.queued)
        for tid, e in self.reserved.items():
            assert self.tasks.get(tid) is e and e.status == _PENDING and e.worker is None, tid
        floor = max(((e.priority, e.id) for e in self.reserved.values()), default=None)
        assert self.ready.floor == floor, (self.ready.floor, floor)
