"""Reading the next chunk of a cold tail ahead of need, on its own thread and cursor.

After a restart with a deep queue, each chunk of the cold tail (``cold.py``) is a
query over the whole ``tasks`` table; run on the loop thread, dispatch stopped
for its whole duration. The loop asks for a domain's next chunk while half of
the current one is still queued; DuckDB runs the query here, off the loop
thread, and the loop takes the rows when the queue reaches the mark. Rows are
only used if the tail's mark has not moved since they were asked for (the
lifecycle skips any task that was loaded meanwhile, so early rows are safe:
the rows of a cold tail do not change while they are cold). Imports the store.
"""

from __future__ import annotations

import queue
import threading

from taskmill.store import Store

__all__ = ["ColdPrefetch"]


class ColdPrefetch:
    """One reader thread for cold-tail chunks; the loop calls ``ask``, ``take`` and ``close``."""

    def __init__(self, store: Store, max_id: int, limit: int) -> None:
        self._store = store
        self._max_id = max_id
        self._limit = limit
        self._jobs: queue.SimpleQueue[tuple[str, tuple[int, int]] | None] = queue.SimpleQueue()
        self._cv = threading.Condition()
        self._asked: dict[str, tuple[int, int]] = {}  # domain -> the mark its job reads after
        self._ready: dict[str, tuple[tuple[int, int], list[tuple] | None]] = {}  # domain -> (mark, rows)
        self._thread = threading.Thread(target=self._serve, name="taskmill-prefetch", daemon=True)
        self._thread.start()

    def ask(self, domain: str, after: tuple[int, int]) -> None:
        """Read ``domain``'s chunk after ``after`` unless it is already asked for or read."""
        with self._cv:
            if domain in self._asked or domain in self._ready:
                return
            self._asked[domain] = after
        self._jobs.put((domain, after))

    def take(self, domain: str, after: tuple[int, int]) -> list[tuple] | None:
        """The rows read after ``after`` (waiting for a job under way), or None: read them now."""
        with self._cv:
            while domain in self._asked:
                self._cv.wait()
            mark, rows = self._ready.pop(domain, (None, None))
        return rows if mark == after else None

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        cur = self._store.con.cursor()
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                domain, after = job
                rows: list[tuple] | None
                try:
                    rows = self._store.cold_rows(domain, after, self._max_id, self._limit, con=cur)
                except Exception:  # noqa: BLE001 - the loop reads the chunk itself and sees the error there
                    rows = None
                with self._cv:
                    del self._asked[domain]
                    self._ready[domain] = (after, rows)
                    self._cv.notify_all()
        finally:
            cur.close()
