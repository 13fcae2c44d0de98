"""The write-behind thread: commits the loop does not read after, off the loop thread.

The loop hands it one numbered batch at a time (``submit``, only while it is not
``busy``) and goes on; the thread applies it in one transaction and records its
number (``applied``). A batch whose changes are journaled
(``taskmill.store.journal``) was answered already; any other's answers wait for
``applied`` to reach it (``Replies.durable_through``).

Invariant: at most one batch in flight, and the loop joins the writer before
it touches the store itself, so the DuckDB connection is never used by two
threads at once (DuckDB releases the GIL while it commits, so the loop keeps
dispatching meanwhile). Imports the store only.
"""

from __future__ import annotations

import os
import queue
import threading

from taskmill.store import Store, WriteBatch

__all__ = ["Writer"]


class Writer:
    """Runs write-behind commits on a second thread, at most one batch at a time."""

    def __init__(self, store: Store, wake_fd: int) -> None:
        self._store = store
        self._wake_fd = wake_fd
        self._jobs: queue.SimpleQueue[tuple[WriteBatch, int] | None] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._error: BaseException | None = None
        #: The number of the last batch in the store (written by the thread, read by the loop).
        self.applied = store.journal_seq
        self._thread = threading.Thread(target=self._run, daemon=True, name="taskmill-writer")
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch, seq = job
            try:
                self._store.apply(batch, seq)
                self.applied = seq
            except BaseException as e:  # noqa: BLE001 - re-raised on the loop thread by check()/join()
                self._error = e
            finally:
                self._idle.set()
                try:
                    os.write(self._wake_fd, b"w")
                except OSError:
                    pass

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def submit(self, batch: WriteBatch, seq: int) -> None:
        """Hand over batch number ``seq`` (numbers increase; waits for the one before, if any)."""
        self.join()
        self._idle.clear()
        self._jobs.put((batch, seq))

    def check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def join(self) -> None:
        """Wait until the batch handed over is in the store."""
        self._idle.wait()
        self.check()

    def close(self) -> None:
        self.join()
        self._jobs.put(None)
        self._thread.join(timeout=10)
