"""Time in the lifecycle: TTLs, recurring schedules and the timers behind them (F15, F16).

A ``Lifecycle`` mixin. TTL deadlines sit in their own heap and are checked at
dispatch and by a periodic sweep (``expiry_sweep_interval``); a task expires
while it is pending, paused or blocked, into history as ``expired`` with its
children. A recurring task keeps its id: after each run (completed, or failed
for good) the same task is scheduled again on its grid (first occurrence +
n × interval); occurrences missed while a run was late or the scheduler was
down are skipped, never piled up, and a time already passed runs at once.
Every time here is monotonic except what is stored for users. Plain code.
"""

from __future__ import annotations

import math

from taskmill.config import EXPIRY_SWEEP_INTERVAL
from taskmill.coordinator.core.entry import Entry, Schedule
from taskmill.coordinator.core.table import TaskTable
from taskmill.records import HistoryStatus, TaskStatus

__all__ = ["Schedules"]

_EXPIRABLE = frozenset({TaskStatus.PENDING.value, TaskStatus.PAUSED.value, TaskStatus.BLOCKED.value})
#: Default seconds between two TTL sweeps.
SWEEP_INTERVAL = EXPIRY_SWEEP_INTERVAL


class Schedules(TaskTable):
    """TTL and recurring schedules of the lifecycle (mixed into ``Lifecycle``)."""

    def _init_schedules(self, sweep_interval: float) -> None:
        self.sweep_interval = sweep_interval
        self.next_sweep: float | None = None

    # ------------------------------------------------------------------ TTL

    def _expire_at(self, e: Entry, expires_at: float, now: float, wall: float) -> None:
        """``e`` expires at ``expires_at`` (wall clock): mapped onto the monotonic clock once."""
        x = e.extra()
        x.expires_at = expires_at
        e.expires = now + (expires_at - wall)
        self.ttl_timers.cancel(x.ttl_timer)
        x.ttl_timer = self.ttl_timers.add(e.expires, "ttl", e)
        if self.next_sweep is None:
            self.next_sweep = now + self.sweep_interval

    def _ttl_starts(self, e: Entry, now: float, wall: float) -> None:
        """A first attempt starts: a ``ttl_from="first_attempt"`` clock starts now (once)."""
        x = e.x
        if x is not None and x.ttl_seconds is not None and x.ttl_from == "first_attempt" and x.expires_at is None:
            self._expire_at(e, wall + x.ttl_seconds, now, wall)
            self.fx.update(e.id, expires_at=x.expires_at)

    def _expired(self, e: Entry, now: float) -> bool:
        return e.expires is not None and e.expires <= now and e.status in _EXPIRABLE

    def _expire(self, e: Entry, now: float, wall: float) -> None:
        x = e.x
        ttl = f"{x.ttl_seconds:g}s " if x is not None and x.ttl_seconds is not None else ""
        since = x.ttl_from.replace("_", " ") if x is not None else "submission"
        self._end(e, HistoryStatus.EXPIRED, f"expired: its TTL {ttl}from {since} ran out", now, wall)

    def sweep(self, now: float, wall: float) -> int:
        """Expire every pending, paused or blocked task past its TTL; returns how many."""
        n = 0
        for t in self.ttl_timers.pop_due(now):
            e: Entry = t.payload
            if e.x is not None and e.x.ttl_timer is t:
                e.x.ttl_timer = None
                if self.tasks.get(e.id) is e and self._expired(e, now):
                    self._expire(e, now, wall)
                    n += 1
                elif self.tasks.get(e.id) is e:  # running or waiting now: checked again when it is pending
                    e.x.ttl_timer = self.ttl_timers.add(max(e.expires or now, now) + self.sweep_interval, "ttl", e)
        self.next_sweep = now + self.sweep_interval if len(self.ttl_timers) else None
        return n

    # ------------------------------------------------------------------ recurring

    def _first_occurrence(self, e: Entry, schedule: Schedule, run_after: float | None, wall: float) -> float | None:
        """Wall-clock time of the first run as asked for (``run_after``/``run_at``, also one already
        passed, or the initial delay); None: at once, no time asked for."""
        if run_after is not None:
            schedule.due_wall = run_after
        elif schedule.initial_delay > 0:
            schedule.due_wall = wall + schedule.initial_delay
        else:
            schedule.due_wall = wall
            return None
        return schedule.due_wall

    def _recurs(self, e: Entry) -> bool:
        """After this run, does ``e`` have another occurrence?"""
        s = e.x.schedule if e.x is not None else None
        if s is None or s.ended:
            return False
        return s.max_executions is None or s.count + 1 < s.max_executions

    @staticmethod
    def _next_due(s: Schedule, wall: float) -> tuple[float, int]:
        """The wall-clock time of the occurrence after the current one, and how many are skipped
        because their time passed already."""
        due = (s.due_wall if s.due_wall is not None else wall) + s.interval
        if due > wall:
            return due, 0
        missed = math.floor((wall - due) / s.interval) + 1
        return due + missed * s.interval, missed

    def _next_occurrence(self, e: Entry, now: float, wall: float) -> None:
        """A run of a recurring task ended and its schedule goes on: the same task, next time on the grid."""
        assert e.x is not None and e.x.schedule is not None
        s = e.x.schedule
        s.count += 1
        due, missed = self._next_due(s, wall)
        if missed:  # runs missed while this one was late (or the scheduler down): skipped, not piled up
            self.counters["recurring_skipped"] += missed
            if self.fx.listening:
                self.wall_now = wall
                self._emit("RecurringSkipped", e, f"{missed} occurrence(s) skipped: the run before ended after "
                                                  "their time (or the scheduler was down)")
        s.due_wall = due
        e.run_after = now + (due - wall)
        e.x.run_after_wall = due
        e.retry_count = 0
        self.fx.update(e.id, run_after=due, retry_count=0, recurring_execution_count=s.count, last_error=None,
                          started_at=None)
        s.held = s.paused  # a paused schedule enqueues no new occurrence until it is resumed
        self._settle(e, now)

    def set_recurring_paused(self, task_id: int, paused: bool, now: float) -> bool:
        """Pause or resume a recurring schedule by task id; False if there is no such schedule.

        A pause stops new occurrences: the one already enqueued (pending, or running) still
        runs; the next is not enqueued (it waits as ``paused``, reason ``recurring``) until the
        resume, which goes on where the schedule left off (count, ``max_executions``)."""
        e = self.tasks.get(task_id)
        s = e.x.schedule if e is not None and e.x is not None else None
        if e is None or s is None or s.ended:
            return False
        if s.paused == paused:
            return True
        s.paused = paused
        self.fx.update(e.id, recurring_paused=paused)
        self.fx.touch(now)
        if not paused and s.held:
            s.held = False
            if e.status in (TaskStatus.PENDING.value, TaskStatus.PAUSED.value):
                e.run_after = e.run_after if e.run_after is not None and e.run_after > now else None
                self._settle(e, now)
        return True

    def cancel_recurring(self, task_id: int, now: float, wall: float) -> bool:
        """End a schedule: a waiting occurrence is cancelled; a running one finishes, with no next."""
        e = self.tasks.get(task_id)
        s = e.x.schedule if e is not None and e.x is not None else None
        if e is None or s is None or s.ended:
            return False
        if e.worker is not None:
            s.ended = True
            return True
        self._end(e, HistoryStatus.CANCELLED, "recurring schedule cancelled", now, wall)
        return True

    # ------------------------------------------------------------------ timers

    def _fire_schedules(self, now: float, wall: float) -> None:
        if self.next_sweep is not None and now >= self.next_sweep:
            self.sweep(now, wall)

    def _next_schedule_due(self) -> float | None:
        return self.next_sweep
