"""In-memory ready queues and timers: the hot path never asks DuckDB what is next.

Invariant: a task entry is in at most one place — a domain heap (ready now),
the timer heap (due later) or a worker (running). Heaps use lazy deletion: an
item is live only while its version matches the entry's. Cost per pick is
O(domains · log n), so dispatch does not slow down as the queue grows.
Imports nothing from taskmill but leaves.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from taskmill.coordinator.entry import Entry

__all__ = ["ReadyQueues", "Timer", "Timers"]

#: Dead timers tolerated before a purge is considered (purging tiny heaps is not worth it).
PURGE_MIN_DEAD = 256


class _DomainHeap:
    __slots__ = ("heap", "live")

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, int, Entry]] = []
        self.live = 0


class ReadyQueues:
    """Per-domain heaps ordered by (priority, id): most urgent first, FIFO within a level."""

    def __init__(self) -> None:
        self._domains: dict[str, _DomainHeap] = {}
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(self, e: Entry) -> None:
        if e.queued:
            self.discard(e)
        e.qver += 1
        d = self._domains.get(e.domain)
        if d is None:
            d = self._domains[e.domain] = _DomainHeap()
        heapq.heappush(d.heap, (e.priority, e.id, e.qver, e))
        e.queued = True
        d.live += 1
        self._len += 1

    def load(self, entries: list[Entry]) -> None:
        """Queue many entries that are not queued yet (recovery): one heapify per domain
        instead of a push each (rows come sorted by priority and id, so it is cheap)."""
        touched: set[str] = set()
        domains = self._domains
        for e in entries:
            e.qver += 1
            e.queued = True
            d = domains.get(e.domain)
            if d is None:
                d = domains[e.domain] = _DomainHeap()
            d.heap.append((e.priority, e.id, e.qver, e))
            d.live += 1
            touched.add(e.domain)
        for name in touched:
            heapq.heapify(domains[name].heap)
        self._len += len(entries)

    def discard(self, e: Entry) -> None:
        """Remove ``e`` if queued (lazy: its heap item goes stale)."""
        if e.queued:
            e.queued = False
            e.qver += 1
            self._domains[e.domain].live -= 1
            self._len -= 1

    def _head(self, d: _DomainHeap) -> Entry | None:
        heap = d.heap
        while heap:
            prio, tid, ver, e = heap[0]
            if ver == e.qver:
                return e
            heapq.heappop(heap)
        return None

    def count(self, domain: str) -> int:
        """Ready entries of ``domain``."""
        d = self._domains.get(domain)
        return d.live if d is not None else 0

    def peek(self, domain: str) -> Entry | None:
        """The most urgent ready entry of ``domain``, left queued (None: nothing ready)."""
        d = self._domains.get(domain)
        return self._head(d) if d is not None and d.live else None

    def pop_best(self, blocked: Callable[[str], bool]) -> Entry | None:
        """Pop the most urgent ready entry whose domain is not blocked."""
        best: Entry | None = None
        best_d: _DomainHeap | None = None
        for name, d in self._domains.items():
            if d.live == 0 or blocked(name):
                continue
            e = self._head(d)
            if e is not None and (best is None or (e.priority, e.id) < (best.priority, best.id)):
                best, best_d = e, d
        if best is None or best_d is None:
            return None
        heapq.heappop(best_d.heap)
        best.queued = False
        best.qver += 1
        best_d.live -= 1
        self._len -= 1
        return best


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
