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
import math
import random
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from taskmill.batch import FinishedRow, utc
from taskmill.config import PREEMPTION, RETENTION_EVERY
from taskmill.coordinator.core.cold import ColdTails
from taskmill.coordinator.core.dispatch import Dispatch
from taskmill.coordinator.core.entry import Ended, Entry, Schedule
from taskmill.coordinator.core.fairness import Aging, FairShare
from taskmill.coordinator.core.gate import Gate
from taskmill.coordinator.core.pauses import GROUP, Pauses, reason_names
from taskmill.coordinator.core.preemption import Preemption
from taskmill.coordinator.core.relations import Relations
from taskmill.coordinator.core.rows import entry_from_row
from taskmill.coordinator.core.schedules import SWEEP_INTERVAL, Schedules
from taskmill.coordinator.core.settings import Settings
from taskmill.errors import InvalidSubmission
from taskmill.records import HistoryStatus, RetryPolicy, TaskStatus
from taskmill.validation import MAX_DELAY_SECONDS

if TYPE_CHECKING:
    from taskmill import protocol

__all__ = ["CANCELLING", "Lifecycle", "clean_text", "unstorable_result"]

#: Payload bytes kept in memory for queued tasks; beyond it payloads are read back at dispatch.
PAYLOAD_CACHE_BYTES = 256 * 1024 * 1024
#: Longest text stored as a task's error (characters).
MAX_ERROR_CHARS = 20_000
#: Largest task result stored, as JSON text (bytes); larger results fail the task.
MAX_RESULT_BYTES = 16 * 1024 * 1024

_PENDING = TaskStatus.PENDING.value
_RUNNING = TaskStatus.RUNNING.value
_PAUSED = TaskStatus.PAUSED.value
_BLOCKED = TaskStatus.BLOCKED.value
_WAITING = TaskStatus.WAITING.value
#: A running task already in history (cancelled, superseded, failed by its children) whose worker
#: has not given it back yet: out of the table, its slot still held.
CANCELLING = "cancelling"

_COUNTER_OF = {
    HistoryStatus.COMPLETED: "completed",
    HistoryStatus.FAILED: "failed",
    HistoryStatus.DEAD_LETTER: "dead_lettered",
    HistoryStatus.CANCELLED: "cancelled",
    HistoryStatus.SUPERSEDED: "superseded",
    HistoryStatus.EXPIRED: "expired",
    HistoryStatus.DEPENDENCY_FAILED: "failed",
}


class Lifecycle(Relations, Pauses, Schedules, ColdTails, Preemption, Settings, Dispatch):
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
        self.retention = retention  # ("count", keep) or ("age_days", days), pruned every retention_every rows
        self.retention_every = retention_every
        self._rows_since_prune = 0
        super().__init__(gate=gate, fair=fair, aging=aging, type_retry=type_retry, default_retry=default_retry,
                         finalizers=finalizers, cancel_hooks=cancel_hooks, rng=rng)
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
               outcomes: dict[int, str] | None = None, completed: dict[str, int] | None = None) -> list[tuple]:
        """Apply checked submissions; dedup also applies inside the batch. Compact outcomes in input order.

        ``outcomes``: history status of prerequisites that are not active; ``completed``: keys whose
        newest history row completed (see ``lookups``). A batch with one bad item applies none.
        """
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
                self._end(existing, HistoryStatus.SUPERSEDED, f"superseded by task {new[1]}", now, wall)
                out.append(("s", new[1], existing.id))
            else:
                out.append(self._skip_duplicate(existing, it.priority, now))
        self.counters["submitted"] += len(items)
        self.fx.batch.next_id = self.next_id
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
                self.fx.batch.priorities[e.id] = priority
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
            self.fx.batch.requeue_marks[e.id] = e.requeue_priority
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
            e.priority = priority = min(priority, parent.priority)
            if parent.tags:
                tags = json.dumps({**json.loads(parent.tags), **(json.loads(tags) if tags else {})}, sort_keys=True)
            if parent.x is not None and parent.x.expires_at is not None:
                expires_at = parent.x.expires_at
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
        due_wall = run_after if run_after is not None and run_after > wall else None
        if recurring is not None:
            interval, most, delay = recurring
            schedule = Schedule(interval, most, 0, delay, False)
            e.extra().schedule = schedule
            due_wall = self._first_occurrence(e, schedule, run_after, wall)
        if due_wall is not None:
            e.extra().run_after_wall = due_wall
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
        self.fx.batch.inserts.append((
            tid, task_type, domain, key, label, priority, e.status, payload, tags, group, created,
            None if due_wall is None else utc(due_wall), None, 0, max_retries, retry, None, timeout, cpus, memory,
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

    # ------------------------------------------------------------------ outcomes (F9, F14, F15)

    def completed(self, e: Entry, result: str | None, ended: Ended, now: float, wall: float) -> None:
        """The worker returned normally (a pause asked of it meanwhile does not undo the work)."""
        unstorable = unstorable_result(result)
        if unstorable is not None:
            self.failed(e, unstorable, permanent=True, retry_after=None, ended=ended, now=now, wall=wall)
            return
        e.paused = 0  # a pause asked of this run is moot: the run is over
        x = e.x
        if x is not None:
            x.stop = None
            if x.phase == "execute" and x.spawned:  # a parent returned: its children decide what is next
                x.memo = result
                if self._active_children(e.id):
                    self._move(e, _WAITING)
                    self.fx.batch.update(e.id, status=_WAITING, memo=result)
                    self.fx.touch(now)
                else:
                    self._resolve_parent(e, now, wall)
                return
        if self._recurs(e):
            self._finish(e, HistoryStatus.COMPLETED, now, wall, result=result, ended=ended, keep=True)
            self._prerequisite_done(e, now, wall, stays=True)
            self._next_occurrence(e, now, wall)
        elif e.requeue:  # a duplicate arrived while it ran: once more, same id
            self._finish(e, HistoryStatus.COMPLETED, now, wall, result=result, ended=ended, keep=True)
            self._prerequisite_done(e, now, wall, stays=True)
            prio = e.requeue_priority if e.requeue_priority is not None else e.priority
            e.priority, e.requeue, e.requeue_priority, e.retry_count = prio, False, None, 0
            self.fx.batch.requeued_runs[e.id] = prio
            self._settle(e, now)
        else:
            self._leave(e, HistoryStatus.COMPLETED, now, wall, result=result, ended=ended)

    def failed(self, e: Entry, error: str, *, permanent: bool, retry_after: Any, ended: Ended | None,
               now: float, wall: float) -> None:
        """The run failed: ``failed`` now if permanent, else a retry under the policy or ``dead_letter``.

        ``ended`` is None when the worker itself died or was killed (a timeout). A run that was
        asked to stop for a pause goes back to paused instead, with no retry counted.
        """
        x = e.x
        if x is not None and x.stop == "pause":
            x.stop = None
            self._settle(e, now)
            self.fx.touch(now)
            return
        if not permanent and retry_after is not None and not delay_ok(retry_after):
            error = (f"{error}\n(taskmill: retry_after={retry_after!r} is not a number of seconds in "
                     f"0..{MAX_DELAY_SECONDS:g}, so the task is failed, not retried)")
            permanent = True
        if permanent or e.retry_count >= e.max_retries:
            status = HistoryStatus.FAILED if permanent else HistoryStatus.DEAD_LETTER
            if self._recurs(e):  # one failed occurrence does not end the schedule
                self._finish(e, status, now, wall, error=error, ended=ended, keep=True)
                self._next_occurrence(e, now, wall)
            else:
                self._leave(e, status, now, wall, error=error, ended=ended)
            return
        e.retry_count += 1
        delay = retry_after if retry_after is not None else self._policy(e).delay(e.retry_count, self.rng)
        delay = min(float(delay), MAX_DELAY_SECONDS)
        self.fx.batch.retries[e.id] = (e.retry_count, wall + delay if delay > 0 else None, clean_text(error))
        self.fx.touch(now)
        self.counters["retried"] += 1
        e.run_after = now + delay if delay > 0 else None
        self._settle(e, now)

    def interrupted(self, e: Entry, now: float) -> None:
        """A running task stopped by shutdown: back to pending (or paused), no retry counted (F11)."""
        if e.x is not None:
            e.x.stop = None
        self._settle(e, now)
        self.fx.touch(now)

    def _policy(self, e: Entry) -> RetryPolicy:
        return e.retry or self.type_retry.get(e.task_type) or self.default_retry

    def _finish(self, e: Entry, status: HistoryStatus, now: float, wall: float, *, result: str | None = None,
                error: str | None = None, ended: Ended | None = None, keep: bool = False) -> None:
        """Write the history row of this execution; unless ``keep``, the task leaves the table.

        ``ended`` is what the worker measured; without it (a crash, a cancel) the run ends
        now and its duration comes from the monotonic clock since dispatch.
        """
        if ended is not None:
            started, finished, duration_ms, io = ended
        else:
            started, finished, duration_ms, io = e.started_at, wall, None, (0, 0, 0, 0)
            if e.started_mono is not None and started is not None:
                duration_ms = (now - e.started_mono) * 1000.0
        self.fx.batch.forget_running(e.id)
        self.fx.batch.finished.append(FinishedRow(
            e.id, status.value, result, None if error is None else clean_text(error), e.retry_count, started,
            finished, duration_ms, io[0], io[1], io[2], io[3], keep_active=keep, priority=e.priority))
        self.fx.touch(now)
        self.counters[_COUNTER_OF[status]] += 1
        if self.retention is not None:
            self._rows_since_prune += 1
            if self._rows_since_prune >= self.retention_every:  # F26: pruned in the same commit
                self._rows_since_prune = 0
                self.fx.batch.prune = self.retention
        if not keep:
            self._remove(e)
            self.fx.finished.append(e.id)

    def _leave(self, e: Entry, status: HistoryStatus, now: float, wall: float, *, result: str | None = None,
               error: str | None = None, ended: Ended | None = None, forced: bool = False) -> None:
        """``e`` reaches history with every consequence: its dependents, its children, its parent."""
        self._finish(e, status, now, wall, result=result, error=error, ended=ended)
        if status == HistoryStatus.COMPLETED:
            self._prerequisite_done(e, now, wall)
        else:
            child_status = HistoryStatus.EXPIRED if status == HistoryStatus.EXPIRED else HistoryStatus.CANCELLED
            self._cancel_children(e, child_status, f"parent task {e.id} ended as {status.value}", now, wall)
            self._prerequisite_failed(e, status, now, wall, forced)
        self._unlink(e)
        self._child_left(e, status, error, now, wall)

    def _end(self, e: Entry, status: HistoryStatus, why: str, now: float, wall: float,
             cascade_dependents: bool = False) -> None:
        """``e`` ends without a worker's say (cancel, expiry, a failed dependency or child)."""
        if e.cancelled or self.tasks.get(e.id) is not e:
            return
        e.cancelled = True
        e.requeue = False
        if e.queued:
            self.ready.discard(e)
        if e.worker is not None:  # running: it must stop; its slot is held until the worker gives it back
            self.fx.signals.append(e)
            if e.task_type in self.cancel_hooks and status in (HistoryStatus.CANCELLED, HistoryStatus.SUPERSEDED):
                self.fx.hooks.append((e.id, e.task_type, e.payload or "{}"))
            self._leave(e, status, now, wall, error=why, forced=cascade_dependents)
            self._move(e, CANCELLING)  # out of the table (and the counts), its slot still held
            return
        if e.payload is not None:
            self.payload_bytes -= len(e.payload)
            e.payload = None
        self._leave(e, status, now, wall, error=why, forced=cascade_dependents)

    # ------------------------------------------------------------------ cancellation (F23)

    def cancel(self, task_id: int, domain: str | None, now: float, wall: float) -> bool:
        """Cancel one active task (and its children); True if found (in ``domain``, when given)."""
        e = self.tasks.get(task_id)
        if e is None or e.cancelled or (domain is not None and e.domain != domain):
            return False
        self._end(e, HistoryStatus.CANCELLED, "cancelled", now, wall)
        return True

    def cancel_matching(self, match: Callable[[Entry], bool], now: float, wall: float) -> list[int]:
        """Cancel every active task ``match`` accepts (children go with their parents); the ids
        of those it accepted, also of the ones a parent's cascade took first."""
        matched = sorted(t for t, e in self.tasks.items() if not e.cancelled and match(e))
        for tid in matched:
            self.cancel(tid, None, now, wall)
        return [t for t in matched if (e := self.tasks.get(t)) is None or e.cancelled]

    # ------------------------------------------------------------------ timers

    def next_due(self) -> float | None:
        due, sweep = self.timers.next_due(), self._next_schedule_due()
        return sweep if due is None else due if sweep is None else min(due, sweep)

    def fire(self, now: float, wall: float) -> None:
        """Timers due at ``now``: delayed tasks become ready, groups resume, the TTL sweep runs."""
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
                self.fx.batch.update(e.id, status=_BLOCKED, pause_reasons=[])
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


def delay_ok(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and 0 <= v <= MAX_DELAY_SECONDS


def clean_text(text: str) -> str:
    """Error text as the store can keep it: bounded, valid UTF-8 (lone surrogates escaped)."""
    text = text[:MAX_ERROR_CHARS]
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def unstorable_result(text: str | None) -> str | None:
    """Why a task's JSON result cannot be stored, or None if it can."""
    if text is None:
        return None
    if len(text) > MAX_RESULT_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_RESULT_BYTES:
        return f"the return value is larger than {MAX_RESULT_BYTES // (1024 * 1024)} MiB as JSON, so it cannot be stored"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"the return value is not valid UTF-8 text ({e}), so it cannot be stored"
    if "\\u" in text and ("\\ud" in text or "\\uD" in text):  # JSON escapes of UTF-16 halves: only pairs are valid
        try:
            json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
        except (ValueError, UnicodeEncodeError) as e:
            return f"the return value holds a lone UTF-16 surrogate ({e}), so it cannot be stored"
    return None
