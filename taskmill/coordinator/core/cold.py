"""The cold tail of a deep queue: plain pending tasks recovery left in the store (issue 6 §2).

A ``Lifecycle`` mixin, plain code. After a restart with a deep queue, loading
every task before the first dispatch took seconds per million. Recovery loads
every task that has anything but a place in the queue (a delay, a TTL, a
schedule, a pause, edges, a parent or children) and, per domain, only the first
``hot`` plain pending ones in dispatch order; the rest stay in the store as that
domain's cold tail: a count and the (priority, id) of the last task loaded. The
store's rows of a cold tail do not change while they are cold: anything that
would touch one of them loads it first (``promote``).

Rules the loop follows (each needs the store, so the loop does the reading):
- before a pick, a domain whose ready head comes after its tail's mark (or that
  has no ready task) loads its next chunk (``cold_needed`` → ``warm``), so the
  dispatch order is exactly what a full load gives;
- a submission, ``wait`` or cancel naming a cold id, or a key a cold task holds,
  promotes those tasks first (``promote``), so dedup and dependencies see them;
- a pause and a bulk cancel load every tail (they act on every task).
Counts: a cold task is pending; ``cold_count`` adds them where counts are shown.
"""

from __future__ import annotations

from taskmill.coordinator.core.entry import Entry
from taskmill.coordinator.core.rows import plain_entry
from taskmill.coordinator.core.table import TaskTable

__all__ = ["ColdTails", "Tail"]


class Tail:
    """One domain's cold tail: how many tasks are left in the store, and the (priority, id) of
    the last one loaded in order; ``promoted``: tasks beyond it loaded early, one by one."""

    __slots__ = ("left", "after", "promoted")

    def __init__(self, left: int, after: tuple[int, int]) -> None:
        self.left = left
        self.after = after
        self.promoted: set[int] = set()


class ColdTails(TaskTable):
    """The cold tails of the table (see the module docstring)."""

    def _init_cold(self) -> None:
        self.cold: dict[str, Tail] = {}
        self.cold_max_id = 0  # ids above it were submitted after recovery: never cold

    @property
    def idle(self) -> bool:
        """No active task, none left in the store either, and nothing left to write."""
        return not self.tasks and self.fx.dirty_since is None and not self.cold

    def cold_count(self, domain: str | None = None) -> int:
        """Pending tasks still in the store (all domains, or one)."""
        if domain is not None:
            t = self.cold.get(domain)
            return t.left if t is not None else 0
        return sum(t.left for t in self.cold.values())

    def cold_needed(self) -> list[str]:
        """Domains whose next task in dispatch order may be in the store: load a chunk first."""
        out = []
        for domain, tail in self.cold.items():
            head = self.ready.peek(domain)
            if head is None or (head.priority, head.id) > tail.after:
                out.append(domain)
        return out

    def _is_cold(self, row: tuple) -> Tail | None:
        tid, domain, prio = row[0], row[2], row[5]
        tail = self.cold.get(domain)
        if tail is None or tid in self.tasks or tid in tail.promoted or tid > self.cold_max_id:
            return None
        return tail if (prio, tid) > tail.after else None

    def warm(self, domain: str, rows: list[tuple], limit: int, now: float, wall: float) -> int:
        """Load the next chunk of ``domain``'s tail (``rows``: up to ``limit`` rows after its mark,
        in order); fewer than ``limit`` means the tail is used up. Returns how many were loaded."""
        tail = self.cold.get(domain)
        if tail is None:
            return 0
        loaded: list[Entry] = []
        for row in rows:
            if self._is_cold(row) is not None:
                e = self._loadable(row)
                if e is not None:
                    self._add(e)
                    loaded.append(e)
                    if e.payload is None:  # a long one: read when it is about to run
                        self.payload_missing.append(e.id)
                else:
                    tail.left -= 1
            tail.promoted.discard(row[0])
            tail.after = (row[5], row[0])
        self.ready.load(loaded)
        tail.left -= len(loaded)
        if len(rows) < limit or tail.left <= 0:
            del self.cold[domain]
        return len(loaded)

    def promote(self, rows: list[tuple], now: float, wall: float) -> None:
        """Load cold tasks out of order (they are about to be named by a call); rows of tasks
        that are not cold (already loaded, or never cold) are ignored."""
        for row in rows:
            tail = self._is_cold(row)
            if tail is None:
                continue
            e = self._loadable(row)
            tail.promoted.add(row[0])
            tail.left -= 1
            if e is None:
                continue
            self._add(e)
            self._settle(e, now)
            if e.payload is None:
                self.payload_missing.append(e.id)

    def _loadable(self, row: tuple) -> Entry | None:
        """The row's entry, or None when it cannot be interpreted (then noted in the outbox's ``quarantine``)."""
        try:
            e = plain_entry(row)
        except Exception as ex:  # noqa: BLE001 - a stored row that cannot be read is quarantined, not fatal
            self.fx.quarantine.append((row[0], "quarantined when loaded from the store: the stored task cannot be "
                                          f"interpreted ({type(ex).__name__}: {ex})"))
            return None
        self.payload_bytes += len(e.payload or "")
        return e

    def _cold_from_recovery(self, cold: dict[str, tuple[int, tuple[int, int]]], max_id: int) -> None:
        self.cold = {d: Tail(left, after) for d, (left, after) in cold.items() if left > 0}
        self.cold_max_id = max_id
