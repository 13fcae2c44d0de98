"""The task lifecycle: every active task and every transition, as plain code without I/O.

    submit ─▶ pending ─pick/started─▶ running ─completed─────────────▶ history
                ▲  ▲                     │  ├─failed (permanent)──────▶ history: failed
                │  └──retry (a timer)────┘  ├─failed (retries spent)─▶ history: dead_letter
                │                           └─cancel─────────────────▶ history: cancelled (signal the worker)
                └────────── interrupted (shutdown): no retry counted

Every method takes what it needs (``now`` on the monotonic clock, ``wall`` for
stored timestamps) and records its effects for the loop to carry out: rows in
``batch`` for the next commit, ``finished`` ids whose waiters may be answered,
``to_signal`` running tasks whose workers must see ``ctx.cancelled``. Worker
handles are opaque here (``Entry.worker`` is whatever the loop passed to
``started``). Imports leaves and the store's plain write-batch types only.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from typing import Any, NamedTuple

from taskmill import protocol
from taskmill.coordinator.queues import Entry, ReadyQueues, Timers
from taskmill.records import DuplicateStrategy, HistoryStatus, RetryPolicy, TaskStatus
from taskmill.store.batch import FinishedRow, WriteBatch, utc
from taskmill.validation import MAX_DELAY_SECONDS

__all__ = ["Ended", "Lifecycle", "clean_text", "unstorable_result"]

#: Payload bytes kept in memory for queued tasks; beyond it payloads are read back at dispatch.
PAYLOAD_CACHE_BYTES = 256 * 1024 * 1024
#: Payloads fetched per query when a recovered (uncached) task is dispatched.
PAYLOAD_FETCH_CHUNK = 2000
#: Longest text stored as a task's error (characters).
MAX_ERROR_CHARS = 20_000
#: Largest task result stored, as JSON text (bytes); larger results fail the task.
MAX_RESULT_BYTES = 16 * 1024 * 1024

_PENDING = TaskStatus.PENDING.value
_RUNNING = TaskStatus.RUNNING.value
#: A running task already in history (cancelled, superseded) whose worker has not given it back yet.
CANCELLING = "cancelling"

_COUNTER_OF = {
    HistoryStatus.COMPLETED: "completed",
    HistoryStatus.FAILED: "failed",
    HistoryStatus.DEAD_LETTER: "dead_lettered",
    HistoryStatus.CANCELLED: "cancelled",
    HistoryStatus.SUPERSEDED: "superseded",
    HistoryStatus.EXPIRED: "cancelled",
    HistoryStatus.DEPENDENCY_FAILED: "failed",
}


class Ended(NamedTuple):
    """How a run ended, as its worker measured it: wall-clock start and end, monotonic duration, IO."""

    started: float | None
    finished: float
    duration_ms: float | None
    io: tuple[int, int, int, int]


class Lifecycle:
    """The task table and its transitions; the loop feeds it inputs and carries out its effects."""

    def __init__(
        self,
        *,
        domain_caps: dict[str, int | None] | None = None,
        type_retry: dict[str, RetryPolicy] | None = None,
        default_retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.domain_caps = domain_caps or {}
        self.type_retry = type_retry or {}
        self.default_retry = default_retry or RetryPolicy()
        self.rng = rng or random.Random()

        self.tasks: dict[int, Entry] = {}
        self.by_key: dict[str, Entry] = {}
        self.ready = ReadyQueues()
        self.timers = Timers()  # task timers: due (delayed) tasks
        self.counts: dict[str, int] = {s.value: 0 for s in TaskStatus}
        self.domain_counts: dict[str, dict[str, int]] = {}
        self.running: dict[int, Entry] = {}  # entries with a worker, cancelling runs included
        self.running_total = 0  # slots in use, cancelling runs included
        self.running_by_domain: dict[str, int] = {}
        self.next_id = 1
        self.payload_bytes = 0
        self.payload_missing: deque[int] = deque()  # recovered ids in dispatch order, payloads not loaded

        # effects, for the loop to carry out
        self.batch = WriteBatch()
        self.batch_ops = 0
        self.dirty_since: float | None = None  # monotonic time of the oldest unwritten change
        self.finished: list[int] = []
        self.to_signal: list[Entry] = []
        self.counters: dict[str, int] = {k: 0 for k in (
            "submitted", "dispatched", "completed", "failed", "retried", "dead_lettered", "cancelled",
            "superseded")}

    # ------------------------------------------------------------------ status bookkeeping

    def _move(self, e: Entry, status: str) -> None:
        """Change ``e``'s status, keeping the global and per-domain counts true."""
        old = e.status
        if old == status:
            return
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
        del self.tasks[e.id]
        if self.by_key.get(e.key) is e:
            del self.by_key[e.key]

    # ------------------------------------------------------------------ effects

    def _touch(self, now: float) -> None:
        self.batch_ops += 1
        if self.dirty_since is None:
            self.dirty_since = now

    def take_batch(self) -> WriteBatch:
        """The buffered writes, handed to the store; the buffer starts empty again."""
        batch, self.batch = self.batch, WriteBatch()
        self.batch_ops = 0
        self.dirty_since = None
        return batch

    @property
    def idle(self) -> bool:
        """No active task and nothing left to write."""
        return not self.tasks and self.dirty_since is None

    # ------------------------------------------------------------------ recovery

    def recover(self, next_id: int, rows: list[tuple], wall: float, now: float) -> list[tuple[int, str]]:
        """Load stored active tasks (see ``Store.recover``); returns ``(id, reason)`` of rows that
        cannot be interpreted, for the loop to quarantine."""
        self.next_id = next_id
        bad: list[tuple[int, str]] = []
        for row in rows:
            try:
                e, run_after = entry_from_row(row)
            except Exception as ex:  # noqa: BLE001 - any uninterpretable row is quarantined, not fatal
                bad.append((row[0], "quarantined at recovery: the stored task cannot be interpreted "
                                    f"({type(ex).__name__}: {ex})"))
                continue
            self._add(e)
            if e.status == _PENDING:
                # A stored run_after is wall-clock time: mapped onto the monotonic clock once.
                self._make_ready(e, None if run_after is None or run_after <= wall else now + (run_after - wall))
        order = sorted(self.tasks.values(), key=lambda e: (e.priority, e.id))
        self.payload_missing = deque(e.id for e in order)
        return bad

    # ------------------------------------------------------------------ submission (F3, F4, F6)

    def submit(self, items: list[protocol.SubmitItem], now: float, wall: float) -> list[tuple]:
        """Apply checked submissions; dedup also applies inside the batch. Compact outcomes in input order."""
        created = utc(wall)
        out: list[tuple] = []
        for it in items:
            existing = self.by_key.get(it.key)
            if existing is not None:
                strategy = it.duplicate
                if strategy == DuplicateStrategy.REJECT:
                    out.append(("r", existing.id))
                    continue
                if strategy == DuplicateStrategy.SUPERSEDE:
                    replaced = existing.id
                    self._cancel(existing, HistoryStatus.SUPERSEDED, "superseded by a newer submission", now, wall)
                    out.append(("s", self._insert(it, wall, created).id, replaced))
                    continue
                out.append(self._skip_duplicate(existing, it.priority))
                continue
            out.append(("i", self._insert(it, wall, created).id, False))
        self.counters["submitted"] += len(items)
        self.batch.next_id = self.next_id
        self._touch(now)
        return out

    def _skip_duplicate(self, e: Entry, priority: int) -> tuple:
        if e.status in (TaskStatus.PENDING, TaskStatus.PAUSED) and not e.cancelled:
            if priority < e.priority:
                e.priority = priority
                self.batch.priorities[e.id] = priority
                if e.queued:
                    self.ready.push(e)  # re-key the heap item
                return ("u", e.id)
            return ("d", e.id)
        if e.status == TaskStatus.RUNNING and not e.cancelled:
            if not e.requeue:
                e.requeue = True
                e.requeue_priority = min(priority, e.priority)
                self.batch.requeue_marks[e.id] = e.requeue_priority
                return ("q", e.id)
        return ("d", e.id)

    def _insert(self, it: protocol.SubmitItem, wall: float, created: Any) -> Entry:
        tid = self.next_id
        self.next_id = tid + 1
        (task_type, domain, key, label, priority, payload, max_retries, retry, timeout, cpus, memory,
         io_read, io_write, io_rx, io_tx, group, tags, _dup) = it
        e = Entry(tid, task_type, domain, key, label, priority, _PENDING, wall, 0, max_retries,
                  RetryPolicy.from_dict(json.loads(retry)) if retry else None, timeout, cpus, memory, group)
        self._add(e)
        if self.payload_bytes < PAYLOAD_CACHE_BYTES:
            e.payload = payload
            self.payload_bytes += len(payload)
        self.batch.inserts.append((
            tid, task_type, domain, key, label, priority, _PENDING, payload, tags, group, created, None, None, 0,
            max_retries, retry, None, timeout, cpus, memory, io_read, io_write, io_rx, io_tx, False, None, None))
        self.ready.push(e)
        return e

    # ------------------------------------------------------------------ dispatch (the hot path)

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

    def _domain_full(self, domain: str) -> bool:
        cap = self.domain_caps.get(domain)
        return cap is not None and self.running_by_domain.get(domain, 0) >= cap

    def pick(self) -> Entry | None:
        """The most urgent ready task whose domain has headroom, taken off its queue (or None)."""
        return self.ready.pop_best(self._domain_full)

    def payload_chunk(self, e: Entry) -> list[int]:
        """Ids whose payloads to read in one query before ``e`` can run: ``e`` first, then the
        next uncached tasks in dispatch order (each id is looked at once: linear overall)."""
        ids = [e.id]
        missing = self.payload_missing
        while missing and len(ids) < PAYLOAD_FETCH_CHUNK:
            other = self.tasks.get(missing.popleft())
            if other is not None and other.payload is None and other is not e and other.worker is None:
                ids.append(other.id)
        return ids

    def fill_payloads(self, payloads: dict[int, str]) -> None:
        for tid, payload in payloads.items():
            entry = self.tasks.get(tid)
            if entry is not None and entry.payload is None:
                entry.payload = payload
                self.payload_bytes += len(payload)

    def started(self, e: Entry, worker: Any, now: float, wall: float) -> str:
        """``e`` (just picked) now runs on ``worker``; returns its payload text."""
        self._move(e, _RUNNING)
        e.started_at = wall
        e.started_mono = now
        e.worker = worker
        self.running[e.id] = e
        self.running_total += 1
        self.running_by_domain[e.domain] = self.running_by_domain.get(e.domain, 0) + 1
        self.batch.running[e.id] = wall
        self._touch(now)
        self.counters["dispatched"] += 1
        payload = e.payload
        if payload is None:
            return "{}"
        self.payload_bytes -= len(payload)
        e.payload = None
        return payload

    def run_ended(self, e: Entry) -> None:
        """The worker gave ``e`` back (done, crashed or killed): its slot is free. The outcome
        comes next (``completed``, ``failed``, ``interrupted``) unless ``e`` was cancelled."""
        e.worker = None
        del self.running[e.id]
        self.running_total -= 1
        self.running_by_domain[e.domain] -= 1

    # ------------------------------------------------------------------ outcomes (F9)

    def completed(self, e: Entry, result: str | None, ended: Ended, now: float, wall: float) -> None:
        """The worker returned normally: completed, or failed if the result cannot be stored."""
        unstorable = unstorable_result(result)
        if unstorable is None:
            self._finish(e, HistoryStatus.COMPLETED, now, wall, result=result, ended=ended)
        else:
            self._finish(e, HistoryStatus.FAILED, now, wall, error=unstorable, ended=ended)

    def failed(self, e: Entry, error: str, *, permanent: bool, retry_after: Any, ended: Ended | None,
               now: float, wall: float) -> None:
        """The run failed: ``failed`` now if permanent, else a retry under the policy or ``dead_letter``.

        ``ended`` is None when the worker itself died or was killed (a timeout).
        """
        if permanent:
            self._finish(e, HistoryStatus.FAILED, now, wall, error=error, ended=ended)
            return
        if retry_after is not None and not delay_ok(retry_after):
            self._finish(e, HistoryStatus.FAILED, now, wall, ended=ended, error=(
                f"{error}\n(taskmill: retry_after={retry_after!r} is not a number of seconds in "
                f"0..{MAX_DELAY_SECONDS:g}, so the task is failed, not retried)"))
            return
        if e.retry_count >= e.max_retries:
            self._finish(e, HistoryStatus.DEAD_LETTER, now, wall, error=error, ended=ended)
            return
        e.retry_count += 1
        delay = retry_after if retry_after is not None else self._policy(e).delay(e.retry_count, self.rng)
        delay = min(float(delay), MAX_DELAY_SECONDS)
        self.batch.forget_running(e.id)
        self.batch.retries[e.id] = (e.retry_count, wall + delay if delay > 0 else None, clean_text(error))
        self._touch(now)
        self.counters["retried"] += 1
        self._make_ready(e, now + delay if delay > 0 else None)

    def interrupted(self, e: Entry, now: float) -> None:
        """A running task stopped by shutdown: back to pending, no retry counted (F11)."""
        self.batch.forget_running(e.id)
        self.batch.to_pending.add(e.id)
        self._touch(now)
        self._make_ready(e, None)

    def _policy(self, e: Entry) -> RetryPolicy:
        return e.retry or self.type_retry.get(e.task_type) or self.default_retry

    def _finish(self, e: Entry, status: HistoryStatus, now: float, wall: float, *, result: str | None = None,
                error: str | None = None, ended: Ended | None = None) -> None:
        """A terminal outcome: a history row now, and the task leaves the table (unless requeued).

        ``ended`` is what the worker measured; without it (a crash, a cancel) the run ends
        now and its duration comes from the monotonic clock since dispatch.
        """
        if ended is not None:
            started, finished, duration_ms, io = ended
        else:
            started, finished, duration_ms, io = e.started_at, wall, None, (0, 0, 0, 0)
            if e.started_mono is not None and started is not None:
                duration_ms = (now - e.started_mono) * 1000.0
        keep = status == HistoryStatus.COMPLETED and e.requeue
        self.batch.forget_running(e.id)
        self.batch.finished.append(FinishedRow(
            e.id, status.value, result, None if error is None else clean_text(error), e.retry_count, started,
            finished, duration_ms, io[0], io[1], io[2], io[3], keep_active=keep))
        self._touch(now)
        self.counters[_COUNTER_OF[status]] += 1
        if keep:
            e.requeue = False
            prio = e.requeue_priority if e.requeue_priority is not None else e.priority
            e.priority = prio
            e.requeue_priority = None
            e.retry_count = 0
            self.batch.requeued_runs[e.id] = prio
            self._make_ready(e, None)
            return
        self._remove(e)
        self.finished.append(e.id)

    # ------------------------------------------------------------------ cancellation (F23)

    def cancel(self, task_id: int, domain: str | None, now: float, wall: float) -> bool:
        """Cancel one active task; True if it was found (in ``domain``, when given) and cancelled."""
        e = self.tasks.get(task_id)
        if e is None or e.cancelled or (domain is not None and e.domain != domain):
            return False
        self._cancel(e, HistoryStatus.CANCELLED, "cancelled", now, wall)
        return True

    def _cancel(self, e: Entry, status: HistoryStatus, why: str, now: float, wall: float) -> None:
        if e.worker is not None:
            e.cancelled = True
            self.to_signal.append(e)  # its worker must see ctx.cancelled
            e.requeue = False
            self._finish(e, status, now, wall, error=why)
            e.status = CANCELLING  # gone from the table; its slot is held until the worker gives it back
            return
        if e.queued:
            self.ready.discard(e)
        e.cancelled = True
        if e.payload is not None:
            self.payload_bytes -= len(e.payload)
            e.payload = None
        e.requeue = False
        self._finish(e, status, now, wall, error=why)

    # ------------------------------------------------------------------ timers

    def next_due(self) -> float | None:
        return self.timers.next_due()

    def fire(self, now: float) -> None:
        """Timers due at ``now``: delayed tasks become ready."""
        for t in self.timers.pop_due(now):
            e = t.payload
            if t.kind == "due" and e.timer is t:
                e.timer = None
                e.run_after = None
                self.ready.push(e)

    # ------------------------------------------------------------------ consistency (tests, debugging)

    def check(self) -> None:
        """Assert the table's invariants (used by the state-machine tests)."""
        recount = {s.value: 0 for s in TaskStatus}
        by_domain: dict[str, dict[str, int]] = {}
        keys: set[str] = set()
        for tid, e in self.tasks.items():
            assert e.id == tid
            assert e.status in recount, (tid, e.status)
            recount[e.status] += 1
            by_domain.setdefault(e.domain, {s.value: 0 for s in TaskStatus})[e.status] += 1
            assert e.key not in keys, f"two active tasks hold key {e.key}"
            keys.add(e.key)
            assert self.by_key[e.key] is e
            places = [e.queued, e.timer is not None, e.worker is not None]
            assert sum(places) <= 1, (tid, places)
            if e.status == _PENDING:
                assert sum(places) == 1, f"pending task {tid} is neither ready nor due"
            if e.status == _RUNNING:
                assert e.worker is not None
        assert set(self.by_key.values()) <= set(self.tasks.values())
        assert recount == self.counts, (recount, self.counts)
        for d, counts in self.domain_counts.items():
            assert counts == by_domain.get(d, {s.value: 0 for s in TaskStatus}), (d, counts)
        assert all(e.worker is not None for e in self.running.values())
        assert self.running_total == len(self.running)
        assert all(e.id in self.running for e in self.tasks.values() if e.status == _RUNNING)
        assert len(self.ready) == sum(1 for e in self.tasks.values() if e.queued)


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


def entry_from_row(row: tuple) -> tuple[Entry, float | None]:
    """An entry from a stored ``tasks`` row (see ``Store.recover``), checked field by field;
    also returns the stored wall-clock ``run_after``."""
    (tid, ttype, domain, key, label, prio, status, created, run_after, retries, max_retries, retry_json,
     timeout, cpus, memory, group, requeue, requeue_prio) = row
    status = TaskStatus(status).value
    if not 0 <= prio <= 255 or (requeue_prio is not None and not 0 <= requeue_prio <= 255):
        raise ValueError(f"priority {prio} is outside 0..255")
    if retries < 0 or max_retries < 0:
        raise ValueError("a negative retry count")
    if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= MAX_DELAY_SECONDS):
        raise ValueError(f"timeout {timeout!r} is not a number of seconds in (0, {MAX_DELAY_SECONDS:g}]")
    if not (math.isfinite(cpus) and cpus > 0) or memory < 0:
        raise ValueError(f"cpus {cpus!r} / memory {memory!r} out of range")
    if run_after is not None and not math.isfinite(run_after):
        raise ValueError(f"run_after {run_after!r} is not a time")
    policy = RetryPolicy.from_dict(json.loads(retry_json)) if retry_json else None
    e = Entry(tid, ttype, domain, key, label, prio, status, created, retries, max_retries, policy, timeout, cpus,
              memory, group)
    e.requeue = bool(requeue)
    e.requeue_priority = requeue_prio
    return e, run_after

