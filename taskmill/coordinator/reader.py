"""Read-only queries on their own DuckDB cursors and threads, so none stalls the loop.

The loop flushes what a query must see, then hands the query and the client's
connection to a reader thread; until the reader hands the connection back,
only that thread touches it (it sends the reply itself). Every query has a
deadline on the monotonic clock: a queued query that reaches it is answered at
once, a running one is interrupted (``cursor.interrupt()``) by the loop.
Imports the store and leaves.
"""

from __future__ import annotations

import os
import pickle
import queue
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

import duckdb

from taskmill import protocol
from taskmill.errors import QueryTimeout, StoreError
from taskmill.store import Store

__all__ = ["QueryRunner"]

#: Nice value of the reader threads (Linux: per thread). With ``DUCKDB_THREADS`` = 1 a query
#: runs on the reader thread itself, so a long analytical query takes only idle CPU.
READER_NICE = 19
#: Reader threads (each with its own cursor); more lets a slow query not hold up a quick one.
READER_THREADS = 2


class _Job:
    __slots__ = ("conn", "fn", "deadline", "limit", "cursor", "interrupted")

    def __init__(self, conn: Connection, fn: Callable[[duckdb.DuckDBPyConnection], Any], deadline: float,
                 limit: float) -> None:
        self.conn = conn
        self.fn = fn
        self.deadline = deadline
        self.limit = limit
        self.cursor: duckdb.DuckDBPyConnection | None = None
        self.interrupted = False


class QueryRunner:
    """A small pool of reader threads; the loop calls every method but the threads' own."""

    def __init__(self, store: Store, wake: Callable[[], None], threads: int = READER_THREADS) -> None:
        self._wake = wake
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._returned: queue.SimpleQueue[tuple[Connection, bool]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: set[_Job] = set()
        self._queued: list[_Job] = []
        self._threads = []
        for i in range(threads):
            cur = store.cursor()
            t = threading.Thread(target=self._serve, args=(cur,), daemon=True, name=f"taskmill-reader-{i}")
            t.start()
            self._threads.append((t, cur))

    def run(self, conn: Connection, fn: Callable[[duckdb.DuckDBPyConnection], Any], limit: float,
            now: float) -> None:
        """Queue ``fn(cursor)`` for ``conn``; the reply goes out from a reader thread."""
        job = _Job(conn, fn, now + limit, limit)
        with self._lock:
            self._queued.append(job)
        self._jobs.put(job)

    def returned(self) -> list[tuple[Connection, bool]]:
        """Connections whose reply went out: ``(conn, still usable)``."""
        out = []
        while True:
            try:
                out.append(self._returned.get_nowait())
            except queue.Empty:
                return out

    def next_deadline(self) -> float | None:
        if not self._running:  # (read without the lock; a query starting meanwhile counts next step)
            return None
        with self._lock:
            pending = [j.deadline for j in self._running if not j.interrupted]
        return min(pending, default=None)

    def expire(self, now: float) -> None:
        """Interrupt running queries past their deadline (queued ones expire when picked up)."""
        with self._lock:
            for job in self._running:
                if not job.interrupted and now >= job.deadline and job.cursor is not None:
                    job.interrupted = True
                    job.cursor.interrupt()

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running) + len(self._queued)

    def close(self) -> None:
        """Interrupt what runs, answer nothing more, and join the threads."""
        with self._lock:
            for job in self._running:
                job.interrupted = True
                if job.cursor is not None:
                    job.cursor.interrupt()
        for _ in self._threads:
            self._jobs.put(None)
        for t, cur in self._threads:
            t.join(timeout=10)
            try:
                cur.close()
            except duckdb.Error:
                pass

    # ------------------------------------------------------------------ reader threads

    def _serve(self, cur: duckdb.DuckDBPyConnection) -> None:
        try:  # a query runs at the lowest CPU priority: tasks and the loop come first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICE)
        except (OSError, AttributeError):
            pass
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._queued.remove(job)
                job.cursor = cur
                self._running.add(job)
            try:
                if time.monotonic() >= job.deadline:
                    raise QueryTimeout(f"the query waited {job.limit:g}s for a free reader and was not run")
                reply: Any = protocol.Reply(job.fn(cur))
            except duckdb.InterruptException:
                reply = protocol.ErrorReply.of(QueryTimeout(
                    f"the query ran longer than {job.limit:g}s and was interrupted"))
            except StoreError as e:
                error: Exception = e
                if job.interrupted:  # interrupted while fetching: the store wraps the duckdb error
                    error = QueryTimeout(f"the query ran longer than {job.limit:g}s and was interrupted")
                reply = protocol.ErrorReply.of(error)
            except Exception as e:  # noqa: BLE001 - every failure goes back to the caller
                reply = protocol.ErrorReply.of(e)
            finally:
                with self._lock:
                    self._running.discard(job)
            self._returned.put((job.conn, self._send(job.conn, reply)))
            self._wake()

    @staticmethod
    def _send(conn: Connection, reply: Any) -> bool:
        try:
            blob = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - a value that cannot be pickled is the query's error
            blob = pickle.dumps(protocol.ErrorReply.of(StoreError(f"the result cannot be sent: {e}")))
        try:
            conn.send_bytes(blob)
        except (OSError, ValueError):
            return False
        return True
