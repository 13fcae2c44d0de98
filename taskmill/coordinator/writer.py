"""The write-behind thread: commits the loop does not read after, off the loop thread.

The loop hands it numbered batches (``submit``) and goes on; the thread applies
everything handed in since its last transaction in one transaction and records
the last number applied (``applied``). A batch whose changes are journaled
(``taskmill.store.journal``) was answered already; any other's answers wait for
``applied`` to reach it (``Replies.durable_through``).

Invariant: the loop joins the writer before it touches the store itself, so the
DuckDB connection is never used by two threads at once (DuckDB releases the GIL
while it commits, so the loop keeps dispatching meanwhile). Imports the store only.
"""

from __future__ import annotations

import os
import threading

from taskmill.store import Store, WriteBatch

__all__ = ["Writer"]


class Writer:
    """Applies handed-in batches on a second thread, all waiting ones in one transaction."""

    def __init__(self, store: Store, wake_fd: int) -> None:
        self._store = store
        self._wake_fd = wake_fd
        self._cond = threading.Condition()
        self._queued: list[tuple[WriteBatch, int]] = []
        self._in_flight = False
        self._closing = False
        self._error: BaseException | None = None
        #: The number of the last batch in the store (read by the loop; written under the lock).
        self.applied = store.journal_seq
        self._thread = threading.Thread(target=self._run, daemon=True, name="taskmill-writer")
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queued and not self._closing:
                    self._cond.wait()
                if not self._queued:
                    return
                taken, self._queued = self._queued, []
                self._in_flight = True
            try:
                self._store.apply_all([b for b, _ in taken], taken[-1][1])
            except BaseException as e:  # noqa: BLE001 - re-raised on the loop thread by check()/join()
                self._error = e
            with self._cond:
                self._in_flight = False
                if self._error is None:
                    self.applied = taken[-1][1]
                self._cond.notify_all()
            try:
                os.write(self._wake_fd, b"w")
            except OSError:
                pass

    @property
    def busy(self) -> bool:
        """Batches are waiting or being applied."""
        return bool(self._queued) or self._in_flight

    @property
    def backlog(self) -> int:
        """Batches waiting for the thread (not counting the one it applies)."""
        return len(self._queued)

    def submit(self, batch: WriteBatch, seq: int) -> None:
        """Hand over batch number ``seq`` (numbers increase); returns at once."""
        self.check()
        with self._cond:
            self._queued.append((batch, seq))
            self._cond.notify_all()

    def check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def join(self) -> None:
        """Wait until every batch handed over is in the store."""
        with self._cond:
            while (self._queued or self._in_flight) and self._error is None:
                self._cond.wait()
        self.check()

    def close(self) -> None:
        try:
            self.join()
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join(timeout=10)

