"""Outcomes of runs and the ways a task ends (F9, F14, F15, F23): the lifecycle's exits.

A ``Lifecycle`` mixin, plain code. A run returns (``completed``: history, or
waiting for children, or the next occurrence of a schedule, or once more for
a requeued duplicate), fails (``failed``: a retry under the policy, or
``failed``/``dead_letter`` for good), or stops without an outcome
(``interrupted``: shutdown, no retry counted). A task also ends without a
run's say (``_end``: cancel, expiry, a failed dependency or child). Every end
goes through ``_finish``, which writes the history row and records the event
that ends the task (``taskmill.events``: one per way of ending).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from taskmill.batch import FinishedRow
from taskmill.coordinator.core.entry import Ended, Entry
from taskmill.coordinator.core.relations import Relations
from taskmill.coordinator.core.schedules import Schedules
from taskmill.records import HistoryStatus, RetryPolicy, TaskStatus
from taskmill.validation import MAX_DELAY_SECONDS

__all__ = ["CANCELLING", "Outcomes", "clean_text", "delay_ok", "unstorable_result"]

#: Longest text stored as a task's error (characters).
MAX_ERROR_CHARS = 20_000
#: Largest task result stored, as JSON text (bytes); larger results fail the task.
MAX_RESULT_BYTES = 16 * 1024 * 1024

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


class Outcomes(Relations, Schedules):
    """How runs end and tasks leave (mixed into ``Lifecycle``)."""

    def _init_outcomes(self, retention: tuple[str, float] | None, retention_every: int) -> None:
        self.retention = retention  # ("count", keep) or ("age_days", days), pruned every retention_every rows
        self.retention_every = retention_every
        self._rows_since_prune = 0

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
                    self.fx.update(e.id, status=_WAITING, memo=result)
                    self.fx.touch(now)
                    if self.fx.listening:
                        self._emit_about("Waiting", e, e.id, len(self.children.get(e.id, ())))
                else:
                    self._resolve_parent(e, now, wall)
                return
        schedule = x.schedule if x is not None else None
        if self._recurs(e):
            assert schedule is not None
            if self.fx.listening:
                self.wall_now = wall
                self._emit("RecurringCompleted", e, schedule.count + 1, self._next_due(schedule, wall)[0])
            self._finish(e, HistoryStatus.COMPLETED, now, wall, result=result, ended=ended, keep=True)
            self._prerequisite_done(e, now, wall, stays=True)
            self._next_occurrence(e, now, wall)
        elif e.requeue:  # a duplicate arrived while it ran: once more, same id
            self._finish(e, HistoryStatus.COMPLETED, now, wall, result=result, ended=ended, keep=True)
            self._prerequisite_done(e, now, wall, stays=True)
            prio = e.requeue_priority if e.requeue_priority is not None else e.priority
            e.priority, e.requeue, e.requeue_priority, e.retry_count = prio, False, None, 0
            self.fx.requeue_run(e.id, prio)
            self._settle(e, now)
        else:
            if self.fx.listening and schedule is not None:  # its schedule's last run
                self._emit("RecurringCompleted", e, schedule.count + 1, None)
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
        due_wall = wall + delay if delay > 0 else None
        text = clean_text(error)
        self.fx.retry(e.id, (e.retry_count, due_wall, text))
        if due_wall is not None or x is not None:  # the stored run_after, for records
            e.extra().run_after_wall = due_wall
        self.fx.touch(now)
        self.counters["retried"] += 1
        if self.fx.listening:
            self.wall_now = wall
            self._emit("Failed", e, text, True, float(delay), None)
        e.run_after = now + delay if delay > 0 else None
        self._settle(e, now)

    def report_progress(self, e: Entry, fraction: float | None, message: str | None) -> None:
        """A running task reported progress: no state changes, subscribers are told (``Progress``)."""
        if self.fx.listening and not e.cancelled and self.tasks.get(e.id) is e:
            self._emit("Progress", e, 0.0 if fraction is None else float(fraction), message)

    def interrupted(self, e: Entry, now: float) -> None:
        """A running task stopped by shutdown: back to pending (or paused), no retry counted (F11)."""
        if e.x is not None:
            e.x.stop = None
        self._settle(e, now)
        self.fx.touch(now)

    def _policy(self, e: Entry) -> RetryPolicy:
        return e.retry or self.type_retry.get(e.task_type) or self.default_retry

    def _finish(self, e: Entry, status: HistoryStatus, now: float, wall: float, *, result: str | None = None,
                error: str | None = None, ended: Ended | None = None, keep: bool = False,
                cause: int | None = None) -> None:
        """Write the history row of this execution and record its event; unless ``keep``, the task
        leaves the table.

        ``ended`` is what the worker measured; without it (a crash, a cancel) the run ends
        now and its duration comes from the monotonic clock since dispatch. ``cause``: the task
        that replaced it (superseded) or the prerequisite that did not complete (dependency_failed).
        """
        if ended is not None:
            started, finished, duration_ms, io = ended
        else:
            started, finished, duration_ms, io = e.started_at, wall, None, (0, 0, 0, 0)
            if e.started_mono is not None and started is not None:
                duration_ms = (now - e.started_mono) * 1000.0
        self.fx.forget_running(e.id)
        row = FinishedRow(e.id, status.value, result, None if error is None else clean_text(error), e.retry_count,
                          started, finished, duration_ms, io[0], io[1], io[2], io[3], keep_active=keep,
                          priority=e.priority)
        self.fx.finish(row)
        self.fx.touch(now)
        if self.fx.listening:
            self.wall_now = wall
            self._emit_end(e, status, row, wall, cause)
        self.counters[_COUNTER_OF[status]] += 1
        if status == HistoryStatus.DEPENDENCY_FAILED:
            self.counters["dependency_failures"] += 1
        if self.retention is not None:
            self._rows_since_prune += 1
            if self._rows_since_prune >= self.retention_every:  # F26: pruned in the same commit
                self._rows_since_prune = 0
                self.fx.set_prune(self.retention)
        if not keep:
            self._remove(e)
            self.fx.finished.append(e.id)

    def _emit_end(self, e: Entry, status: HistoryStatus, row: FinishedRow, wall: float, cause: int | None) -> None:
        """The event of an execution's history row (``taskmill.events``: the one that ends the task)."""
        if status == HistoryStatus.COMPLETED:
            self._emit("Completed", e, self._record(e, row))
        elif status == HistoryStatus.FAILED:
            self._emit("Failed", e, row.error or "", False, None, self._record(e, row))
        elif status == HistoryStatus.DEAD_LETTER:
            self._emit("DeadLettered", e, row.error or "", row.retry_count)
        elif status == HistoryStatus.CANCELLED:
            self._emit("Cancelled", e)
        elif status == HistoryStatus.SUPERSEDED:
            self._emit("Superseded", e, cause)
        elif status == HistoryStatus.EXPIRED:
            x = e.x
            since = e.created_at
            if x is not None and x.ttl_from == "first_attempt" and x.expires_at is not None and x.ttl_seconds:
                since = x.expires_at - x.ttl_seconds
            self._emit("TaskExpired", e, max(0.0, wall - since))
        elif status == HistoryStatus.DEPENDENCY_FAILED:
            self._emit_about("DependencyFailed", e, e.id, cause)

    @staticmethod
    def _record(e: Entry, row: FinishedRow) -> tuple:
        """The history row as ``taskmill.events.history_record`` reads it: what the store copies from
        the task's row, with this execution's outcome."""
        x = e.x
        io = e.io or (0, 0, 0, 0)
        return (e.id, e.task_type, e.domain, e.key, e.label, row.priority, row.status, e.payload, row.result,
                row.error, e.tags, e.group, row.retry_count, e.created_at, row.started_at, row.completed_at,
                row.duration_ms, row.read_bytes, row.write_bytes, row.net_rx_bytes, row.net_tx_bytes, io[0], io[1],
                io[2], io[3], e.cpus, e.memory, e.parent_id, None,  # (the store's seq)
                x.run_after_wall if x is not None else None, x.ttl_seconds if x is not None else None,
                x.ttl_from if x is not None else "submission", x.expires_at if x is not None else None,
                x.fail_fast if x is not None else True)

    def _leave(self, e: Entry, status: HistoryStatus, now: float, wall: float, *, result: str | None = None,
               error: str | None = None, ended: Ended | None = None, forced: bool = False,
               cause: int | None = None) -> None:
        """``e`` reaches history with every consequence: its dependents, its children, its parent."""
        self._finish(e, status, now, wall, result=result, error=error, ended=ended, cause=cause)
        if status == HistoryStatus.COMPLETED:
            self._prerequisite_done(e, now, wall)
        else:
            child_status = HistoryStatus.EXPIRED if status == HistoryStatus.EXPIRED else HistoryStatus.CANCELLED
            self._cancel_children(e, child_status, f"parent task {e.id} ended as {status.value}", now, wall)
            self._prerequisite_failed(e, status, now, wall, forced)
        self._unlink(e)
        self._child_left(e, status, error, now, wall)

    def _end(self, e: Entry, status: HistoryStatus, why: str, now: float, wall: float,
             cascade_dependents: bool = False, cause: int | None = None) -> None:
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
            self._leave(e, status, now, wall, error=why, forced=cascade_dependents, cause=cause)
            self._move(e, CANCELLING)  # out of the table (and the counts), its slot still held
            return
        self._leave(e, status, now, wall, error=why, forced=cascade_dependents, cause=cause)

    # ------------------------------------------------------------------ cancellation (F23)

    def cancel(self, task_id: int, domain: str | None, now: float, wall: float) -> bool:
        """Cancel one active task (and its children); True if found (in ``domain``, when given)."""
        self.wall_now = wall
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
