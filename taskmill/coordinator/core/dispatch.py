"""Dispatch, the hot path: which ready task starts next, and what starting and ending a run books.

A ``Lifecycle`` mixin, plain code. ``pick`` offers ready tasks to the gate
(``gate.py``) and takes the first it admits:

- without fair share or aging, the least (priority, id) over every lane, as
  fast as the plain heap it replaced;
- with them (``fairness.py``), heads are ranked by their effective priority;
  a task aged to the urgent threshold goes first, then the group fair share
  says is furthest behind (its most urgent head), else the most urgent head.

Either way a lane denied by its domain or group cap is passed over for the
round, a machine-wide denial ends it, a rate-limited task waits for its token
as a delayed task (its ``run_after`` is the time the token comes, so records
and SQL show it delayed; other lanes go on meanwhile), and an admitted task
past its TTL expires instead of running.
"""

from __future__ import annotations

from typing import Any

from taskmill.coordinator.core.entry import Entry
from taskmill.coordinator.core.fairness import effective_priority
from taskmill.coordinator.core.gate import ADMIT, SKIP, STOP
from taskmill.coordinator.core.table import TaskTable
from taskmill.records import TaskStatus

__all__ = ["PAYLOAD_FETCH_CHUNK", "Dispatch"]

#: Payloads of recovered tasks read in one query, in dispatch order.
PAYLOAD_FETCH_CHUNK = 10_000

_RUNNING = TaskStatus.RUNNING.value
Skip = set[tuple[str, str | None]]


class Dispatch(TaskTable):
    """Picking, starting and ending runs (mixed into ``Lifecycle``)."""

    cold: dict[str, Any]  # the cold tails (``cold.py``): name -> Tail

    # ------------------------------------------------------------------ effective priority

    def waited(self, e: Entry, wall: float) -> float:
        """Seconds ``e`` has been waiting, paused time left out (what aging counts)."""
        paused = e.x.paused_for if e.x is not None else 0.0
        return max(0.0, wall - e.created_at - paused)

    def _effective(self, e: Entry, wall: float) -> int:
        """``e``'s effective priority at ``wall``: its own, aged by the time since it was submitted."""
        return e.priority if self.aging is None else effective_priority(e.priority, self.waited(e, wall), self.aging)

    def paused_times(self) -> dict[int, float]:
        """Seconds paused of every task that ever was (aging leaves them out)."""
        out = {}
        for tid in self.were_paused:
            e = self.tasks.get(tid)
            if e is not None and e.x is not None:
                out[tid] = e.x.paused_for
        return out

    # ------------------------------------------------------------------ the pick

    def pick(self, now: float, wall: float) -> Entry | None:
        """The next ready task the gate admits, taken off its queue (None: nothing may start now)."""
        weighed = self.fair.configured or self.aging is not None
        skip: Skip | None = None
        while True:
            if weighed:
                e, eff, weighed_turn = self._candidate(skip, wall)
            else:
                e, eff, weighed_turn = self.ready.best(skip), None, True
            if e is None:
                return None
            verdict = self.gate.admit(e, now, eff)
            if verdict == ADMIT:
                self.ready.take(e)
                if e.expires is not None and e.expires <= now:
                    self._expire(e, now, wall)
                    continue
                if self.fair.configured:
                    self.fair.dispatched(e.group, weighed_turn)
                return e
            if verdict == STOP:
                return None
            if verdict == SKIP:
                if skip is None:
                    skip = set()
                skip.add((e.domain, e.group))
                continue
            self.ready.take(e)  # rate-limited: back when its token is there, and its record says when
            self.counters["rate_limit_throttles"] += 1
            self._make_ready(e, float(verdict))
            e.extra().run_after_wall = due_wall = wall + (float(verdict) - now)
            self.fx.update(e.id, run_after=due_wall)

    def _candidate(self, skip: Skip | None, wall: float) -> tuple[Entry | None, int | None, bool]:
        """The head fair share and aging put first, its effective priority, and whether it is a
        weighed turn."""
        aging = self.aging
        urgent = aging.urgent if aging is not None else None
        best: dict[str | None, tuple[tuple[int, int], Entry]] = {}  # group -> its most urgent head
        first: tuple[tuple[int, int], Entry] | None = None
        for lane in self.ready.lanes():
            if skip is not None and lane.key[:2] in skip:
                continue
            e = lane.head()
            if e is None:
                continue
            k = (effective_priority(lane.priority, self.waited(e, wall), aging), e.id)
            held = best.get(e.group)
            if held is None or k < held[0]:
                best[e.group] = (k, e)
            if first is None or k < first[0]:
                first = (k, e)
        if first is None:
            return None, None, True
        if urgent is not None and first[0][0] <= urgent:  # aged past the threshold: bypasses weights
            return first[1], first[0][0], False
        if not self.fair.configured:
            return first[1], first[0][0], True
        running = self.gate.running_by_group()
        group = self.fair.order(best, running)[0]
        (eff, _), e = best[group]
        return e, eff, running.get(group, 0) >= self.fair.minimum(group)

    # ------------------------------------------------------------------ runs queued on busy workers

    def may_queue(self) -> bool:
        """May a busy worker be sent its next run ahead (``queue_next``)? Only while nothing but a
        more urgent arrival (``ReadyQueues.outranked``) could change which task goes next or whether
        it may start: no fair share, aging or rate limit, no preemption. (A new pressure reading
        takes queued runs back; under pressure, ``queue_next`` asks the throttle policy.)"""
        gate = self.gate
        return not (self.fair.configured or self.aging is not None or gate.type_limits or gate.group_limits
                    or self.preemptors or self.suspended)

    def queue_next(self, after: Entry) -> Entry | None:
        """The task to start on ``after``'s worker when ``after`` ends: the most urgent ready one, if
        it holds what ``after`` holds (domain, group, cores, memory; neither declares IO), so that
        one taking the other's place changes no sum the gate keeps. Off its lane, still pending;
        ``started`` when the worker takes it, or ``unqueue``d."""
        e = self.ready.best()
        if (e is None or e.x is not None or e.expires is not None or e.payload is None or e.io is not None
                or after.io is not None or e.domain != after.domain or e.group != after.group
                or e.cpus != after.cpus or e.memory != after.memory):
            return None
        if self.cold and any((e.priority, e.id) > tail.after for tail in self.cold.values()):
            return None  # a task still in the store may come first: the next dispatch loads it
        if self.gate.throttled(e.priority):
            return None  # it would wait for the pressure to drop
        self.ready.take(e)
        self.reserved[e.id] = e
        floor = self.ready.floor
        if floor is None or (e.priority, e.id) > floor:
            self.ready.floor = (e.priority, e.id)
        return e

    def stealable(self) -> Entry | None:
        """The most urgent queued run that could start now on a worker of its own (one fell idle
        with nothing ready): it would wait for its runner's run to end for nothing. Counts no denial."""
        gate = self.gate
        for e in sorted(self.reserved.values(), key=lambda r: (r.priority, r.id)):
            if gate.fits(e) and not gate.throttled(e.priority):
                return e
        return None

    def unqueue(self, e: Entry) -> None:
        """A queued run was taken back before it started: the task is ready again."""
        self._unreserve(e)
        self.ready.push(e)

    def _unreserve(self, e: Entry) -> None:
        del self.reserved[e.id]
        if self.ready.floor == (e.priority, e.id):  # it was the least urgent: the next one is
            self.ready.floor = max(((r.priority, r.id) for r in self.reserved.values()), default=None)

    # ------------------------------------------------------------------ payloads

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

    # ------------------------------------------------------------------ runs

    def started(self, e: Entry, worker: Any, now: float, wall: float) -> str:
        """``e`` (just picked, or queued on ``worker``) now runs on ``worker``; returns its payload text."""
        if self.reserved and e.id in self.reserved:
            self._unreserve(e)
        self.wall_now = wall
        if self.fx.listening:
            self._emit("Dispatched", e)
        self._move(e, _RUNNING)
        e.started_at = wall
        e.started_mono = now
        e.worker = worker
        self.running[e.id] = e
        self.gate.take(e, now)
        self.fx.mark_running(e.id, wall)
        self.fx.touch(now)
        self.counters["dispatched"] += 1
        if e.x is not None:
            self._ttl_starts(e, now, wall)
        # the payload stays until the task leaves the table: a retry, a recurring or requeued run, an
        # on_cancel hook and the final history record of an event all need it again
        return e.payload if e.payload is not None else "{}"

    def run_ended(self, e: Entry) -> None:
        """The worker gave ``e`` back (done, crashed or killed): its slot is free. The outcome
        comes next (``completed``, ``failed``, ``interrupted``) unless ``e`` was cancelled."""
        e.worker = None
        if self.running.pop(e.id, None) is not None:
            self.gate.give(e)
        else:  # a suspended run (its slot and resources were given back when it stopped)
            del self.suspended[e.id]

    # ------------------------------------------------------------------ defined by the parts

    def _expire(self, e: Entry, now: float, wall: float) -> None:  # schedules
        raise NotImplementedError

    def _ttl_starts(self, e: Entry, now: float, wall: float) -> None:  # schedules
        raise NotImplementedError
