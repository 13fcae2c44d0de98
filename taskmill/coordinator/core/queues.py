"""In-memory ready queues and timers: the hot path never asks DuckDB what is next.

Invariant: a task entry is in at most one place — a lane heap (ready now),
the timer heap (due later) or a worker (running). Heaps use lazy deletion: an
item is live only while its version matches the entry's. Cost per pick is
O(lanes · log n) (a lane per domain, group and priority level in use), so
dispatch does not slow down as the queue grows.
Imports nothing from taskmill but leaves.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskmill.coordinator.core.entry import Entry

__all__ = ["Lane", "ReadyQueues", "Timer", "Timers"]

#: Dead timers tolerated before a purge is considered (purging tiny heaps is not worth it).
PURGE_MIN_DEAD = 256


class Lane:
    """The ready entries of one (domain, group, priority), a heap by id: FIFO within the level."""

    __slots__ = ("key", "priority", "heap", "live")

    def __init__(self, key: tuple[str, str | None, int]) -> None:
        self.key = key
        self.priority = key[2]
        self.heap: list[tuple[int, int, Entry]] = []
        self.live = 0

    def head(self) -> Entry | None:
        """The oldest live entry, left queued (stale items on top are dropped)."""
        heap = self.heap
        while heap:
            e = heap[0][2]
            if heap[0][1] == e.qver:
                return e
            heapq.heappop(heap)
        return None


class ReadyQueues:
    """Ready entries in lanes, one per (domain, group, priority), each FIFO by id.

    A pick looks at the head of every lane: the most urgent is the least (priority, id);
    a lane that may not run now (its domain or group is at its cap) is passed over
    without blocking the others, and with aging the head of each level is its oldest
    task, so an effective priority is computed for heads only. Empty lanes are dropped.
    """

    def __init__(self) -> None:
        self._lanes: dict[tuple[str, str | None, int], Lane] = {}
        self._len = 0
        #: The least urgent (priority, id) of the runs queued on busy workers (None: none is);
        #: a push more urgent than it sets ``outranked``, so the shell takes the queued runs back.
        self.floor: tuple[int, int] | None = None
        self.outranked = False

    def __len__(self) -> int:
        return self._len

    def _lane(self, e: Entry) -> Lane:
        key = (e.domain, e.group, e.priority)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(key)
        return lane

    def push(self, e: Entry) -> None:
        if e.queued:
            self.discard(e)
        e.qver += 1
        if self.floor is not None and (e.priority, e.id) < self.floor:
            self.outranked = True
        lane = self._lane(e)
        heapq.heappush(lane.heap, (e.id, e.qver, e))
        e.queued = True
        e.lane = lane
        lane.live += 1
        self._len += 1

    def load(self, entries: list[Entry]) -> None:
        """Queue many entries that are not queued yet (recovery): one heapify per lane
        instead of a push each (rows come sorted by priority and id, so it is cheap)."""
        touched: set[Lane] = set()
        for e in entries:
            e.qver += 1
            e.queued = True
            lane = e.lane = self._lane(e)
            lane.heap.append((e.id, e.qver, e))
            lane.live += 1
            touched.add(lane)
        for lane in touched:
            heapq.heapify(lane.heap)
        self._len += len(entries)

    def _gone(self, e: Entry) -> None:
        lane: Lane = e.lane
        e.queued = False
        e.qver += 1
        e.lane = None
        lane.live -= 1
        self._len -= 1
        if lane.live == 0 and self._lanes.get(lane.key) is lane:
            del self._lanes[lane.key]

    def discard(self, e: Entry) -> None:
        """Remove ``e`` if queued (lazy: its heap item goes stale)."""
        if e.queued:
            self._gone(e)

    def lanes(self) -> list[Lane]:
        """Every lane with a ready entry."""
        return list(self._lanes.values())

    def count(self, domain: str) -> int:
        """Ready entries of ``domain``."""
        return sum(lane.live for key, lane in self._lanes.items() if key[0] == domain)

    def peek(self, domain: str) -> Entry | None:
        """The most urgent ready entry of ``domain``, left queued (None: nothing ready)."""
        best: Entry | None = None
        for key, lane in self._lanes.items():
            if key[0] == domain:
                e = lane.head()
                if e is not None and (best is None or (e.priority, e.id) < (best.priority, best.id)):
                    best = e
        return best

    def best(self, skip: set[tuple[str, str | None]] | None = None) -> Entry | None:
        """The most urgent ready entry (least (priority, id)) over every lane whose
        (domain, group) is not in ``skip``, left queued."""
        best: Entry | None = None
        for key, lane in self._lanes.items():
            if skip is not None and key[:2] in skip:
                continue
            e = lane.head()
            if e is not None and (best is None or (e.priority, e.id) < (best.priority, best.id)):
                best = e
        return best

    def take(self, e: Entry) -> None:
        """Take ``e`` (the head of its lane, as ``best`` or ``Lane.head`` returned it) off its queue."""
        heapq.heappop(e.lane.heap)
        self._gone(e)


class Timer:
    """One pending timer; ``Timers.cancel`` kills it without searching the heap."""

    __slots__ = ("due", "kind", "payload", "alive")

    def __init__(self, due: float, kind: str, payload: Any) -> None:
        self.due = due
        self.kind = kind
        self.payload = payload
        self.alive = True


class Timers:
    """A heap of timers on the monotonic clock, with cancellation.

    A cancelled timer stays in the heap until it reaches the top or a purge
    drops it; a purge runs whenever dead timers outnumber live ones, so memory
    follows live timers (a finished task's one-hour timeout does not linger).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._dead = 0

    def __len__(self) -> int:
        """Live timers."""
        return len(self._heap) - self._dead

    @property
    def heap_size(self) -> int:
        """Items held, dead ones included (what memory follows)."""
        return len(self._heap)

    def add(self, due: float, kind: str, payload: Any) -> Timer:
        t = Timer(due, kind, payload)
        heapq.heappush(self._heap, (due, next(self._seq), t))
        return t

    def cancel(self, t: Timer | None) -> None:
        if t is None or not t.alive:
            return
        t.alive = False
        self._dead += 1
        if self._dead > PURGE_MIN_DEAD and self._dead * 2 > len(self._heap):
            self._heap = [item for item in self._heap if item[2].alive]
            heapq.heapify(self._heap)
            self._dead = 0

    def _drop_dead_top(self) -> None:
        heap = self._heap
        while heap and not heap[0][2].alive:
            heapq.heappop(heap)
            self._dead -= 1

    def next_due(self) -> float | None:
        self._drop_dead_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Timer]:
        """Live timers due at ``now``, earliest first; they count as fired (no longer alive)."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, t = heapq.heappop(heap)
            if t.alive:
                t.alive = False
                out.append(t)
            else:
                self._dead -= 1
        return out
