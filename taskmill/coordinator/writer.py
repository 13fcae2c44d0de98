"""The write-behind thread: commits the loop does not read after, off the loop thread.

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
    """Runs write-behind commits on a second thread, at most one batch at a time.

    Commits the loop will not read after go here (their acknowledgements wait until
    the batch is done, see ``Coordinator.saving``); the loop joins the writer
    before it touches the store itself, so the connection is never used by two
    threads at once (DuckDB releases the GIL while it commits, so the loop keeps
    dispatching meanwhile).
    """

    def __init__(self, store: Store, wake_fd: int) -> None:
        self._store = store
        self._wake_fd = wake_fd
        self._jobs: queue.SimpleQueue[WriteBatch | None] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="taskmill-writer")
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            try:
                self._store.apply(batch)
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

    def submit(self, batch: WriteBatch) -> None:
        self.join()
        self._idle.clear()
        self._jobs.put(batch)

    def check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def join(self) -> None:
        self._idle.wait()
        self.check()

    def close(self) -> None:
        self.join()
        self._jobs.put(None)
        self._thread.join(timeout=10)
