"""The coordinator loop: one thread owns all scheduling state.

    clients ──requests──▶ ┌──────────── one iteration ─────────────┐
    workers ──results───▶ │ 1 drain every ready connection/sentinel │
    stdin EOF (host died) │ 2 fire due timers (delays, timeouts)    │
    acceptor thread ─────▶│ 3 group commit (one DuckDB transaction) │──▶ store
                          │ 4 answer: acks, queries, waiters        │──▶ clients
                          │ 5 dispatch ready tasks to idle workers  │──▶ workers
                          │ 6 publish counters to shared memory     │──▶ shm
                          └─────────────────────────────────────────┘

Invariants: a submission is answered only after the commit that stored it;
every other write (running marks, finished tasks) is written behind, at the
latest ``FLUSH_MAX_DELAY`` later or before any query reads the store, so a
crash re-runs at most the unflushed work (at-least-once, never a duplicate
history row). Nothing a client or a task sends can end the loop: requests are
decoded and checked in ``wire``, results are checked before they are stored.
Timers, deadlines and durations read the monotonic clock only; the wall clock
gives the timestamps stored for users. Blocks only in one ``poll``.
Imports the store, the worker pool and leaves; never the host API.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import queue
import random
import select
import time
from datetime import datetime, timezone
from multiprocessing.connection import Connection, Listener, wait
from typing import Any, Callable, NamedTuple

import structlog

from taskmill import protocol
from taskmill.coordinator.acceptor import Acceptor
from taskmill.coordinator.queues import Entry, ReadyQueues, Timers
from taskmill.coordinator.reader import QueryRunner
from taskmill.coordinator.wire import check_items, decode_request
from taskmill.coordinator.writer import Writer
from taskmill.domain import dedup_key
from taskmill.errors import (
    SchedulerBroken,
    SchedulerClosed,
    StoreError,
    TaskNotFound,
    WaitTimeout,
)
from taskmill.records import (
    DuplicateStrategy,
    HistoryStatus,
    ModuleSnapshot,
    RetryPolicy,
    SchedulerSnapshot,
    TaskProgress,
    TaskRecord,
    TaskStatus,
)
from taskmill.shm import SharedState
from taskmill.store import FinishedRow, Store, WriteBatch, select as select_rows
from taskmill.store.store import utc
from taskmill.validation import MAX_DELAY_SECONDS
from taskmill.workers.pool import WorkerHandle, WorkerPool, describe_exit

__all__ = ["Coordinator"]

log = structlog.get_logger("taskmill.coordinator")

#: Most buffered write-behind operations before a commit is forced.
FLUSH_MAX_OPS = 5000
#: Longest a finished task waits in memory before its commit (seconds). A commit
#: costs ~5 ms whatever its size, so longer windows mean cheaper tasks; queries,
#: waits and submissions flush at once, so only crash re-runs see this window.
FLUSH_MAX_DELAY = 0.2
#: Seconds between shared-memory counter publications (the heartbeat).
PUBLISH_INTERVAL = 0.02
#: Seconds a cancelled running task gets to notice ``ctx.cancelled`` before its worker is killed.
CANCEL_GRACE = 5.0
#: Payload bytes kept in memory for queued tasks; beyond it payloads are read back at dispatch.
PAYLOAD_CACHE_BYTES = 256 * 1024 * 1024
#: Payloads fetched per query when a recovered (uncached) task is dispatched.
PAYLOAD_FETCH_CHUNK = 2000
#: Longest the coordinator waits for a new worker's ``Ready``.
WORKER_READY_TIMEOUT = 60.0
#: Seconds an ``sql()`` query may run (or wait for a reader) before it is interrupted.
SQL_TIME_LIMIT = 30.0
#: Longest text stored as a task's error (characters).
MAX_ERROR_CHARS = 20_000
#: Largest task result stored, as JSON text (bytes); larger results fail the task.
MAX_RESULT_BYTES = 16 * 1024 * 1024

# Store methods a client may call by name (seed query API); each reads only.
STORE_QUERIES = frozenset({
    "running_tasks", "running_count", "pending_tasks", "pending_count", "pending_by_type", "paused_tasks",
    "paused_count", "task_by_id", "task_by_key", "running_io_totals", "history", "history_by_type",
    "history_by_key", "failed_tasks", "history_stats", "avg_throughput", "dead_letter_tasks",
})
STORE_WRITES = frozenset({"prune_history_by_count", "prune_history_by_age"})


class Coordinator:
    """All scheduling state and the loop that drives it.

    ``step()`` runs one iteration and is usable from tests with an injected
    clock; ``run()`` loops until shutdown.
    """

    def __init__(
        self,
        *,
        store: Store,
        pool: WorkerPool,
        shm: SharedState,
        max_concurrency: int,
        domain_caps: dict[str, int | None],
        type_retry: dict[str, RetryPolicy],
        default_retry: RetryPolicy,
        shutdown_mode: str,
        shutdown_timeout: float,
        poll_interval: float = 0.5,
        host_lifeline: int | None = None,
        host_pidfd: int | None = None,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.pool = pool
        self.shm = shm
        self.max_concurrency = max_concurrency
        self.domain_caps = domain_caps
        self.type_retry = type_retry
        self.default_retry = default_retry
        self.shutdown_mode = shutdown_mode
        self.shutdown_timeout = shutdown_timeout
        self.poll_interval = poll_interval
        self.clock = clock  # wall clock: only for timestamps stored for users
        self.mono = mono  # every timer, deadline and duration
        self.rng = random.Random()

        self.tasks: dict[int, Entry] = {}
        self.by_key: dict[str, Entry] = {}
        self.ready = ReadyQueues()
        self.timers = Timers()
        self.running_total = 0
        self.running_by_domain: dict[str, int] = {}
        self.status_counts = {s.value: 0 for s in TaskStatus}
        self.next_id = 1
        self.payload_bytes = 0
        self.payload_missing: list[int] = []

        self.workers: list[WorkerHandle | None] = [None] * max_concurrency
        self.idle: list[WorkerHandle] = []

        self.batch = WriteBatch()
        self.batch_ops = 0
        self.batch_since: float | None = None
        self.must_commit = False
        self.acks: list[tuple[Connection, Any]] = []
        self.deferred: list[tuple[Connection, Callable[[], Any]]] = []
        self.waiters: dict[int, list[Connection]] = {}
        self.wait_deadlines: list[tuple[float, int, Connection]] = []
        self.idle_waiters: list[tuple[Connection, float | None]] = []
        self.finished_ids: list[int] = []

        self.clients: list[Connection] = []
        self.accepted: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.host_lifeline = host_lifeline
        self.host_pidfd = host_pidfd
        self.acceptor: Acceptor | None = None
        self.queries: list[tuple[Connection, Callable[[Any], Any], float]] = []  # (client, fn(cursor), limit)
        # One persistent poll set (multiprocessing.connection.wait builds a selector per call,
        # which cost ~20 µs a task here): fd -> (kind, object).
        self._poller = select.poll()
        self._fds: dict[int, tuple[str, Any]] = {}
        self._watch(self._wake_r, "wake", None)
        for fd in (host_lifeline, host_pidfd):
            if fd is not None:
                self._watch(fd, "host", fd)
        self._to_spawn: list[int] = []
        self._published = 0.0
        self._publish_pending = False
        self.writer = Writer(store, self._wake_w)
        self.readers = QueryRunner(store, self._wake)

        self.counters: dict[str, int] = {k: 0 for k in (
            "submitted", "dispatched", "completed", "failed", "retried", "dead_lettered", "cancelled",
            "superseded", "commits")}
        self.stopping = False  # no more dispatch
        self.stop_deadline: float | None = None
        self.stop_waiters: list[Connection] = []
        self.exited = False
        self._stop_requested = False

    # ================================================================== startup

    def recover(self) -> int:
        """Load active tasks from the store into memory; returns how many.

        A row that cannot be interpreted is quarantined: moved to history as
        ``failed`` with the reason, and logged. Recovery goes on.
        """
        next_id, rows = self.store.recover()
        self.next_id = next_id
        wall, mono = self.clock(), self.mono()
        bad: list[tuple[int, str]] = []
        for row in rows:
            try:
                e, run_after = _entry_from_row(row)
            except Exception as ex:  # noqa: BLE001 - any uninterpretable row is quarantined, not fatal
                reason = f"quarantined at recovery: the stored task cannot be interpreted ({type(ex).__name__}: {ex})"
                log.error("quarantining a stored task", task_id=row[0], reason=reason)
                bad.append((row[0], reason))
                continue
            self.tasks[e.id] = e
            self.by_key[e.key] = e
            self.status_counts[e.status] += 1
            if e.status == TaskStatus.PENDING:
                # A stored run_after is wall-clock time: map it onto the monotonic clock once.
                self._make_ready(e, None if run_after is None or run_after <= wall else mono + (run_after - wall))
        if bad:
            for task_id in self.store.quarantine(bad, wall):
                log.error("a stored task could not be quarantined either; it stays in the tasks table",
                          task_id=task_id)
        self.payload_missing = sorted((e.id for e in self.tasks.values()), key=lambda i: (self.tasks[i].priority, i))
        return len(self.tasks)

    def start_workers(self) -> None:
        """Spawn the first worker and wait for it: a registry that cannot load fails startup."""
        first = self._spawn(0)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while not first.ready:
            left = deadline - time.monotonic()
            if left <= 0 or not wait([first.conn, first.sentinel], timeout=left):
                raise RuntimeError("the first worker did not start in time")
            if first.conn.poll():
                try:
                    msg = first.conn.recv()
                except (EOFError, OSError):
                    msg = None
                if isinstance(msg, protocol.Ready):
                    if msg.error:
                        raise RuntimeError(msg.error)
                    first.ready = True
                    self.idle.append(first)
                    continue
            if not first.process.is_alive() or msg is None:
                raise RuntimeError(f"the first worker died while starting: {describe_exit(first.exitcode())}")
        for i in range(1, self.max_concurrency):
            self._spawn(i)

    def _watch(self, fd: int, kind: str, obj: Any) -> None:
        self._fds[fd] = (kind, obj)
        self._poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def _unwatch(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def _spawn(self, index: int) -> WorkerHandle:
        w = self.pool.spawn(index)
        self.workers[index] = w
        self._watch(w.conn.fileno(), "worker", w)
        self._watch(w.sentinel, "sentinel", w)
        return w

    def serve(self, listener: Listener, authkey: bytes) -> None:
        """Accept and authenticate clients on helper threads (see ``acceptor``); the loop only
        ever sees authenticated connections. ``listener`` must have no authkey of its own."""
        self.acceptor = Acceptor(listener, authkey, self._deliver)
        self.acceptor.start()

    def _deliver(self, conn: Connection) -> None:
        """Called on the acceptor's threads: queue an authenticated client for the loop."""
        self.accepted.put(conn)
        self._wake()

    def _wake(self) -> None:
        """Wake the loop from another thread."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # a full pipe wakes the loop anyway

    # ================================================================== the loop

    def request_stop(self) -> None:
        """Ask the loop to shut down (safe from a signal handler)."""
        self._stop_requested = True
        self._wake()

    def run(self) -> None:
        while not self.exited:
            self.step()

    def step(self) -> None:
        for fd, _ev in self._poller.poll(self._timeout() * 1000.0):
            handler = self._fds.get(fd)
            if handler is not None:
                self._on_ready(*handler)
        if self._to_spawn:
            spawn, self._to_spawn = self._to_spawn, []
            for index in spawn:
                if self.workers[index] is None and not self.stopping:
                    self._spawn(index)
        if self._stop_requested and not self.stopping:
            self._begin_shutdown(None)
        now = self.mono()
        self._fire_timers(now)
        self.readers.expire(now)
        self.writer.check()
        if (self.must_commit or self.acks or self.deferred or self.queries
                or (self.idle_waiters and not self.tasks)
                or (self.waiters and any(t in self.waiters for t in self.finished_ids))):
            self._commit()
        elif self._batch_due(now) and not self.writer.busy:
            self._commit(background=True)
        self._answer()
        if not self.stopping:
            self._dispatch(now)
        elif self.running_total == 0 or (self.stop_deadline is not None and now >= self.stop_deadline):
            self._finish_shutdown()
        self._publish()

    def _timeout(self) -> float:
        """Seconds until the next thing the loop must do without an event."""
        now = self.mono()
        t = self.poll_interval
        for due in (self.timers.next_due(), self.readers.next_deadline(), self.stop_deadline):
            if due is not None and due - now < t:
                t = due - now
        if self.batch_since is not None and not self.writer.busy and self.batch_since + FLUSH_MAX_DELAY - now < t:
            t = self.batch_since + FLUSH_MAX_DELAY - now  # (a busy writer wakes the loop when it is done)
        if self.wait_deadlines or self.idle_waiters:
            soonest = min([d for d, _, _ in self.wait_deadlines] + [d for _, d in self.idle_waiters if d is not None],
                          default=now + t)
            t = min(t, soonest - now)
        if self._publish_pending:  # a skipped publication is owed soon, so counters never lag
            t = min(t, PUBLISH_INTERVAL)
        return t if t > 0.0 else 0.0

    def _batch_due(self, now: float) -> bool:
        return self.batch_since is not None and (
            now - self.batch_since >= FLUSH_MAX_DELAY or self.batch_ops >= FLUSH_MAX_OPS)

    def _touch_batch(self) -> None:
        self.batch_ops += 1
        if self.batch_since is None:
            self.batch_since = self.mono()

    # ================================================================== inputs

    def _on_ready(self, kind: str, obj: Any) -> None:
        if kind == "worker":
            self._drain_worker(obj)
        elif kind == "client":
            self._on_client(obj)
        elif kind == "sentinel":
            self._on_worker_exit(obj)
        elif kind == "wake":
            os.read(self._wake_r, 4096)
            while True:
                try:
                    conn = self.accepted.get_nowait()
                except queue.Empty:
                    break
                self.clients.append(conn)
                self._watch(conn.fileno(), "client", conn)
            for conn, usable in self.readers.returned():
                if usable and conn in self.clients:
                    self._watch(conn.fileno(), "client", conn)  # the reader gives it back
                else:
                    self._drop_client(conn)
        elif kind == "host":
            self._on_host(obj)

    def _on_host(self, fd: int) -> None:
        """The host's stdin (EOF) or its pidfd (readable once it exited): is the host gone?"""
        if fd == self.host_lifeline:
            try:
                if os.read(fd, 4096):
                    return
            except OSError:
                pass
        log.info("host went away; shutting down")
        for lifeline in (self.host_lifeline, self.host_pidfd):
            if lifeline is not None:
                self._unwatch(lifeline)
        self.host_lifeline = self.host_pidfd = None
        self.shutdown_mode = "hard"
        self._begin_shutdown(None)

    def _on_client(self, conn: Connection) -> None:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            self._drop_client(conn)
            return
        try:
            self._handle(conn, decode_request(data))
        except Exception as e:  # noqa: BLE001 - every error goes back to the caller; the loop goes on
            self._reply(conn, protocol.ErrorReply.of(e))

    def _drop_client(self, conn: Connection) -> None:
        if conn in self.clients:
            self.clients.remove(conn)
        self._unwatch(conn.fileno())
        for lst in self.waiters.values():
            while conn in lst:
                lst.remove(conn)
        self.idle_waiters = [(c, d) for c, d in self.idle_waiters if c is not conn]
        self.wait_deadlines = [w for w in self.wait_deadlines if w[2] is not conn]
        try:
            conn.close()
        except OSError:
            pass

    def _reply(self, conn: Connection, msg: Any) -> None:
        try:
            conn.send(msg)
        except (OSError, ValueError):
            self._drop_client(conn)
        except Exception as e:  # noqa: BLE001 - a reply that cannot be pickled: say so instead
            log.error("cannot send a reply", error=f"{type(e).__name__}: {e}")
            try:
                conn.send(protocol.ErrorReply.of(SchedulerBroken(f"the reply cannot be sent: {e}")))
            except Exception:  # noqa: BLE001
                self._drop_client(conn)

    def _handle(self, conn: Connection, req: Any) -> None:
        if self.stopping and not isinstance(req, (protocol.Stop, protocol.Call)):
            raise SchedulerClosed("the scheduler is shutting down")
        if isinstance(req, protocol.Submit):
            outcomes = self.submit(req.items)
            self.acks.append((conn, protocol.Reply(outcomes)))
            self.must_commit = True
        elif isinstance(req, protocol.Call):
            if type(req.name) is not str or type(req.args) is not tuple:
                raise TypeError("a call is a name and a tuple of arguments")
            self._call(conn, req.name, req.args)
        elif isinstance(req, protocol.Wait):
            if type(req.task_id) is not int or not _timeout_ok(req.timeout):
                raise TypeError("wait takes an int task id and a timeout in seconds (or None)")
            self._wait(conn, req.task_id, req.timeout)
        elif isinstance(req, protocol.WaitIdle):
            if not _timeout_ok(req.timeout):
                raise TypeError("wait_idle takes a timeout in seconds (or None)")
            deadline = None if req.timeout is None else self.mono() + req.timeout
            self.idle_waiters.append((conn, deadline))
        elif isinstance(req, protocol.Stop):
            self._begin_shutdown(conn)
        else:
            raise TypeError(f"unknown request {type(req).__name__}")

    def _call(self, conn: Connection, name: str, args: tuple) -> None:
        if name in STORE_QUERIES or name in STORE_WRITES:
            method = getattr(self.store, name)
            self.deferred.append((conn, lambda: method(*args)))
        elif name == "sql":
            query, params = args
            self.queries.append((conn, lambda cur: select_rows(cur, query, params), SQL_TIME_LIMIT))
        elif name == "task_lookup":
            task_type, key = args
            if type(task_type) is not str or type(key) is not str:
                raise TypeError("task_lookup takes a task type and a key, both str")
            self.deferred.append((conn, lambda: self.store.task_lookup_by_dedup_key(dedup_key(task_type, key))))
        elif name == "lookup_key":
            self.deferred.append((conn, lambda: self.store.task_lookup_by_dedup_key(args[0])))
        elif name == "cancel":
            self.acks.append((conn, protocol.Reply(self.cancel(args[0], domain=args[1] if len(args) > 1 else None))))
            self.must_commit = True
        elif name == "retry_dead_letter":
            self.deferred.append((conn, lambda: self.retry_dead_letter(args[0], args[1] if len(args) > 1 else None)))
        elif name == "snapshot":
            self._reply(conn, protocol.Reply(self.snapshot(args[0] if args else None)))
        elif name == "active_tasks":
            self._reply(conn, protocol.Reply(self.active_tasks(args[0] if args else None)))
        elif name == "task":
            self.deferred.append((conn, lambda: self.store.task_by_id(args[0])))
        elif name == "ping":
            self._reply(conn, protocol.Reply({"pid": os.getpid(), "shm": self.shm.name}))
        else:
            raise ValueError(f"unknown call {name!r}")

    # ================================================================== submission (F3, F4, F6)

    def submit(self, wire_items: list[tuple[Any, ...]]) -> list[tuple]:
        """Apply a batch of resolved submissions in memory; the caller commits before answering.

        Dedup also applies inside the batch. Returns compact outcome tuples in input order.
        """
        items = check_items(wire_items)  # every item, before any is applied
        now = self.clock()
        created = utc(now)
        out: list[tuple] = []
        inserts = self.batch.inserts
        for it in items:
            existing = self.by_key.get(it.key)
            if existing is not None:
                strategy = it.duplicate
                if strategy == DuplicateStrategy.REJECT:
                    out.append(("r", existing.id))
                    continue
                if strategy == DuplicateStrategy.SUPERSEDE:
                    replaced = existing.id
                    self._cancel_entry(existing, HistoryStatus.SUPERSEDED, "superseded by a newer submission")
                    new = self._insert(it, now, created, inserts)
                    out.append(("s", new.id, replaced))
                    continue
                out.append(self._skip_duplicate(existing, it.priority))
                continue
            out.append(("i", self._insert(it, now, created, inserts).id, False))
        self.counters["submitted"] += len(items)
        self.batch.next_id = self.next_id
        self._touch_batch()
        return out

    def _skip_duplicate(self, e: Entry, priority: int) -> tuple:
        if e.status in (TaskStatus.PENDING, TaskStatus.PAUSED) and not e.cancelled:
            if priority < e.priority:
                e.priority = priority
                self.batch.priorities[e.id] = priority
                if e.queued:
                    self.ready.push(e)  # re-key the heap item
                return ("u", e.id)
            return ("d", e.id)
        if e.status == TaskStatus.RUNNING and not e.cancelled:
            if not e.requeue:
                e.requeue = True
                e.requeue_priority = min(priority, e.priority)
                self.batch.requeue_marks[e.id] = e.requeue_priority
                return ("q", e.id)
        return ("d", e.id)

    def _insert(self, it: protocol.SubmitItem, now: float, created: Any, inserts: list) -> Entry:
        tid = self.next_id
        self.next_id = tid + 1
        (task_type, domain, key, label, priority, payload, max_retries, retry, timeout, cpus, memory,
         io_read, io_write, io_rx, io_tx, group, tags, _dup) = it
        e = Entry(tid, task_type, domain, key, label, priority, _PENDING, now, 0, max_retries,
                  RetryPolicy.from_dict(json.loads(retry)) if retry else None, timeout, cpus, memory, group)
        if self.payload_bytes < PAYLOAD_CACHE_BYTES:
            e.payload = payload
            self.payload_bytes += len(payload)
        inserts.append((tid, task_type, domain, key, label, priority, _PENDING, payload, tags, group, created, None,
                        None, 0, max_retries, retry, None, timeout, cpus, memory, io_read, io_write, io_rx, io_tx,
                        False, None, None))
        self.tasks[tid] = e
        self.by_key[key] = e
        self.status_counts[_PENDING] += 1
        self.ready.push(e)
        return e

    # ================================================================== dispatch (the hot path)

    def _make_ready(self, e: Entry, due: float | None) -> None:
        """Pending now (``due`` None) or at ``due`` on the monotonic clock."""
        e.status = TaskStatus.PENDING.value
        e.run_after = due
        self.timers.cancel(e.timer)
        if due is None:
            e.timer = None
            self.ready.push(e)
        else:
            e.timer = self.timers.add(due, "due", e)

    def _domain_blocked(self, domain: str) -> bool:
        cap = self.domain_caps.get(domain)
        return cap is not None and self.running_by_domain.get(domain, 0) >= cap

    def _dispatch(self, now: float) -> None:
        idle = self.idle
        wall = self.clock()
        while idle and self.running_total < self.max_concurrency:
            e = self.ready.pop_best(self._domain_blocked)
            if e is None:
                return
            if e.payload is None:
                self._fetch_payloads(e)
            w = idle.pop()
            e.status = TaskStatus.RUNNING.value
            e.started_at = wall
            e.started_mono = now
            e.worker = w
            w.task = e
            self.status_counts["pending"] -= 1
            self.status_counts["running"] += 1
            self.running_total += 1
            self.running_by_domain[e.domain] = self.running_by_domain.get(e.domain, 0) + 1
            self.batch.running[e.id] = wall
            self._touch_batch()
            self.shm.set_cancel(w.index, False)
            payload = e.payload
            if payload is not None:
                self.payload_bytes -= len(payload)
                e.payload = None
            try:
                # plain pickle: Connection.send builds a ForkingPickler per call; recv() on the other end is the same
                w.conn.send_bytes(pickle.dumps(
                    (e.id, e.task_type, payload or "{}", e.retry_count, e.key, e.label, e.priority),  # a protocol.Run
                    pickle.HIGHEST_PROTOCOL))
            except (OSError, ValueError):
                pass  # its sentinel fires next: handled as a worker death
            self.counters["dispatched"] += 1
            if e.timeout:
                e.timer = self.timers.add(now + e.timeout, "timeout", e)

    def _fetch_payloads(self, e: Entry) -> None:
        """Read payloads of queued tasks that are not cached, the wanted one first, in one query."""
        ids = [e.id]
        keep = []
        for tid in self.payload_missing:
            other = self.tasks.get(tid)
            if other is None or other.payload is not None or other is e:
                continue
            if len(ids) < PAYLOAD_FETCH_CHUNK:
                ids.append(tid)
            else:
                keep.append(tid)
        self.payload_missing = keep
        self.writer.join()
        for tid, payload in self.store.fetch_payloads(ids).items():
            entry = self.tasks.get(tid)
            if entry is not None and entry.payload is None:
                entry.payload = payload
                self.payload_bytes += len(payload)
        if e.payload is None:
            e.payload = "{}"

    # ================================================================== results

    def _drain_worker(self, w: WorkerHandle, all_pending: bool = False) -> None:
        """Handle one message (the poll set reports the fd again if more wait), or all of them."""
        conn = w.conn
        try:
            while True:
                msg = conn.recv()
                if type(msg) is tuple:  # protocol.Done, sent as a plain tuple
                    self._on_done(w, protocol.Done._make(msg))
                elif isinstance(msg, protocol.Ready):
                    if msg.error:
                        log.error("worker could not start", pid=msg.pid, error=msg.error)
                        w.kill("registry failed to load")
                    else:
                        w.ready = True
                        self.idle.append(w)
                        self.pool.crashes.pop(w.index, None)
                elif isinstance(msg, protocol.Goodbye):
                    w.stopping = True
                elif isinstance(msg, protocol.Progress):
                    pass  # text progress feeds the event stream (a later issue); numbers are in shm
                if not all_pending or not conn.poll():
                    return
        except (EOFError, OSError):
            pass  # the sentinel reports the death

    def _release_worker(self, w: WorkerHandle, e: Entry) -> None:
        w.task = None
        e.worker = None
        self.timers.cancel(e.timer)  # its timeout or kill grace
        e.timer = None
        self.running_total -= 1
        self.running_by_domain[e.domain] -= 1
        if e.status == TaskStatus.RUNNING:
            self.status_counts["running"] -= 1

    def _on_done(self, w: WorkerHandle, msg: protocol.Done) -> None:
        e = w.task
        if e is None or e.id != msg.task_id:
            return
        self._release_worker(w, e)
        if w.ready and not w.stopping and w.kill_reason is None:
            self.idle.append(w)
        if e.cancelled:
            return  # already in history as cancelled/superseded
        ended = Ended(msg.started_at, msg.finished_at, msg.duration * 1000.0,
                      (msg.read_bytes, msg.write_bytes, msg.net_rx_bytes, msg.net_tx_bytes))
        if msg.error_kind is None:
            unstorable = _unstorable_result(msg.result)
            if unstorable is None:
                self._finish(e, HistoryStatus.COMPLETED, result=msg.result, ended=ended)
            else:
                self._finish(e, HistoryStatus.FAILED, error=unstorable, ended=ended)
        elif msg.error_kind == "permanent":
            self._finish(e, HistoryStatus.FAILED, error=msg.error, ended=ended)
        else:
            self._retry_or_dead(e, msg.error or "", msg.retry_after, ended)

    def _policy(self, e: Entry) -> RetryPolicy:
        return e.retry or self.type_retry.get(e.task_type) or self.default_retry

    def _retry_or_dead(self, e: Entry, error: str, retry_after: Any, ended: Ended | None = None) -> None:
        if retry_after is not None and not _delay_ok(retry_after):
            self._finish(e, HistoryStatus.FAILED, error=f"{error}\n(taskmill: retry_after={retry_after!r} is not a "
                         f"number of seconds in 0..{MAX_DELAY_SECONDS:g}, so the task is failed, not retried)",
                         ended=ended)
            return
        if e.retry_count < e.max_retries:
            e.retry_count += 1
            delay = retry_after if retry_after is not None else self._policy(e).delay(e.retry_count, self.rng)
            delay = min(float(delay), MAX_DELAY_SECONDS)
            stored = self.clock() + delay if delay > 0 else None  # the wall-clock time users see
            self.batch.forget_running(e.id)
            self.batch.retries[e.id] = (e.retry_count, stored, _clean_text(error))
            self._touch_batch()
            self.status_counts["pending"] += 1
            self.counters["retried"] += 1
            self._make_ready(e, self.mono() + delay if delay > 0 else None)
            return
        self._finish(e, HistoryStatus.DEAD_LETTER, error=error, ended=ended)

    def _finish(self, e: Entry, status: HistoryStatus, *, result: str | None = None, error: str | None = None,
                ended: Ended | None = None) -> None:
        """Record a terminal outcome: a history row now, and the task leaves memory (unless requeued).

        ``ended`` is what the worker measured; without it (a crash, a cancel) the run
        ends now and its duration comes from the monotonic clock since dispatch.
        """
        if ended is not None:
            started, finished, duration_ms, io = ended
        else:
            started, finished, duration_ms, io = e.started_at, self.clock(), None, (0, 0, 0, 0)
            if e.started_mono is not None and started is not None:
                duration_ms = (self.mono() - e.started_mono) * 1000.0
        keep = status == HistoryStatus.COMPLETED and e.requeue
        self.batch.forget_running(e.id)
        self.batch.finished.append(FinishedRow(
            e.id, status.value, result, None if error is None else _clean_text(error), e.retry_count, started,
            finished, duration_ms, io[0], io[1], io[2], io[3], keep_active=keep))
        self._touch_batch()
        self.counters[_COUNTER_OF[status]] += 1
        if keep:
            e.requeue = False
            prio = e.requeue_priority if e.requeue_priority is not None else e.priority
            e.priority = prio
            e.requeue_priority = None
            e.retry_count = 0
            self.batch.requeued_runs[e.id] = prio
            self.status_counts["pending"] += 1
            self._make_ready(e, None)
            return
        self.timers.cancel(e.timer)
        e.timer = None
        del self.tasks[e.id]
        if self.by_key.get(e.key) is e:
            del self.by_key[e.key]
        self.finished_ids.append(e.id)

    def _on_worker_exit(self, w: WorkerHandle) -> None:
        if self.workers[w.index] is not w:
            return  # already handled (or shut down)
        if w.conn.poll():
            self._drain_worker(w, all_pending=True)  # a result sent just before the exit still counts
        code = w.exitcode()
        w.kill_group()  # whatever its task started dies with it
        self._unwatch(w.conn.fileno())
        self._unwatch(w.sentinel)
        if w in self.idle:
            self.idle.remove(w)
        try:
            w.conn.close()
        except OSError:
            pass
        self.workers[w.index] = None
        e = w.task
        planned = w.stopping and e is None
        if e is not None:
            self._release_worker(w, e)
            if not e.cancelled and not self.stopping:
                reason = w.kill_reason or f"worker process {w.pid} died: {describe_exit(code)}"
                if w.kill_reason and w.kill_reason.startswith("timed out"):
                    reason = f"{w.kill_reason}; worker process {w.pid} {describe_exit(code)}"
                self._retry_or_dead(e, reason, None)
            elif not e.cancelled:
                self._interrupt(e)
        if not planned and not self.stopping:
            if w.kill_reason is None:
                self.pool.crashes[w.index] = self.pool.crashes.get(w.index, 0) + 1
                log.warning("worker died", pid=w.pid, cause=describe_exit(code))
            delay = self.pool.respawn_delay(w.index)
            if delay:
                self.timers.add(self.mono() + delay, "respawn", w.index)
            else:
                self._to_spawn.append(w.index)

    def _interrupt(self, e: Entry) -> None:
        """A running task stopped by shutdown: back to pending, no retry counted (F11)."""
        self.batch.forget_running(e.id)
        self.batch.to_pending.add(e.id)
        self._touch_batch()
        e.status = TaskStatus.PENDING.value
        self.status_counts["pending"] += 1

    # ================================================================== timers

    def _fire_timers(self, now: float) -> None:
        for t in self.timers.pop_due(now):
            kind = t.kind
            if kind == "due":
                e = t.payload
                if e.timer is t:
                    e.timer = None
                    e.run_after = None
                    self.ready.push(e)
            elif kind == "timeout":
                e = t.payload
                if e.timer is t and e.worker is not None and not e.cancelled:
                    e.timer = None
                    e.worker.kill(f"timed out after {e.timeout:g}s")
            elif kind == "kill":
                e = t.payload
                if e.timer is t and e.worker is not None:
                    e.timer = None
                    e.worker.kill("did not stop within the cancel grace period")
            elif kind == "respawn":
                if self.workers[t.payload] is None and not self.stopping:
                    self._to_spawn.append(t.payload)
        if self.wait_deadlines:
            keep = []
            for d, tid, conn in self.wait_deadlines:
                if d <= now and conn in self.waiters.get(tid, ()):
                    self.waiters[tid].remove(conn)
                    self._reply(conn, protocol.ErrorReply.of(WaitTimeout(f"task {tid} did not finish in time")))
                elif d > now:
                    keep.append((d, tid, conn))
            self.wait_deadlines = keep
        if self.idle_waiters:
            still: list[tuple[Connection, float | None]] = []
            for conn, until in self.idle_waiters:
                if until is not None and until <= now and not self._is_idle():
                    self._reply(conn, protocol.ErrorReply.of(WaitTimeout("the scheduler did not become idle in time")))
                else:
                    still.append((conn, until))
            self.idle_waiters = still

    # ================================================================== commit and answers

    def _commit(self, background: bool = False) -> None:
        """Write the buffered batch: on the writer thread, or here (after joining it) when
        someone waits for durability or the loop is about to read the store."""
        if background:
            if len(self.batch):
                batch, self.batch = self.batch, WriteBatch()
                self.writer.submit(batch)
                self.counters["commits"] += 1
            self.batch_since = None
            self.batch_ops = 0
            return
        self.writer.join()  # also when there is nothing to write: the loop may read the store next
        if len(self.batch):
            batch, self.batch = self.batch, WriteBatch()
            try:
                self.store.apply(batch)
            except StoreError as e:
                log.error("commit failed; coordinator stops", error=str(e))
                broken = SchedulerBroken(f"the store failed: {e}")
                for conn, _ in self.acks:
                    self._reply(conn, protocol.ErrorReply.of(broken))
                self.acks.clear()
                raise
            self.counters["commits"] += 1
        self.batch_since = None
        self.batch_ops = 0
        self.must_commit = False

    def _answer(self) -> None:
        for conn, reply in self.acks:
            self._reply(conn, reply)
        self.acks.clear()
        if self.queries:  # the store is flushed: hand each query, and its client, to a reader
            now = self.mono()
            queries, self.queries = self.queries, []
            for conn, query, limit in queries:
                self._unwatch(conn.fileno())
                self.readers.run(conn, query, limit, now)
        deferred, self.deferred = self.deferred, []
        for conn, fn in deferred:
            try:
                value = fn()
            except Exception as e:  # noqa: BLE001
                self._reply(conn, protocol.ErrorReply.of(e))
            else:
                self._reply(conn, protocol.Reply(value))
        if self.finished_ids:
            done = [t for t in self.finished_ids if t in self.waiters]
            self.finished_ids = []
            if done:
                rows = self.store.history_rows(done)
                for tid in done:
                    for conn in self.waiters.pop(tid, []):
                        self._reply(conn, protocol.Reply(rows.get(tid)))
        if self.idle_waiters and self._is_idle():
            for conn, _ in self.idle_waiters:
                self._reply(conn, protocol.Reply(True))
            self.idle_waiters = []

    def _is_idle(self) -> bool:
        return not self.tasks and self.batch_since is None

    def _wait(self, conn: Connection, task_id: int, timeout: float | None) -> None:
        if task_id in self.tasks:
            self.waiters.setdefault(task_id, []).append(conn)
            if timeout is not None:
                self.wait_deadlines.append((self.mono() + timeout, task_id, conn))
            return

        def finished() -> Any:
            row = self.store.history_row(task_id)
            if row is None:
                raise TaskNotFound(f"no task with id {task_id}")
            return row

        self.deferred.append((conn, finished))

    # ================================================================== control

    def cancel(self, task_id: int, domain: str | None = None) -> bool:
        """Cancel one active task (F23 subset); True if it was found and cancelled."""
        e = self.tasks.get(task_id)
        if e is None or e.cancelled or (domain is not None and e.domain != domain):
            return False
        self._cancel_entry(e, HistoryStatus.CANCELLED, "cancelled")
        return True

    def _cancel_entry(self, e: Entry, status: HistoryStatus, why: str) -> None:
        w = e.worker
        if w is not None:
            e.cancelled = True
            self.shm.set_cancel(w.index, True)
            self._finish(e, status, error=why)  # also ends its timeout timer
            e.timer = self.timers.add(self.mono() + CANCEL_GRACE, "kill", e)  # until the worker gives it back
            self.status_counts["running"] -= 1
            e.status = "cancelling"
            return
        if e.queued:
            self.ready.discard(e)
        self.timers.cancel(e.timer)
        e.timer = None
        self.status_counts[e.status] -= 1
        e.cancelled = True
        if e.payload is not None:
            self.payload_bytes -= len(e.payload)
            e.payload = None
        e.requeue = False
        self._finish(e, status, error=why)

    def retry_dead_letter(self, task_id: int, domain: str | None) -> tuple:
        """Resubmit the newest dead-letter execution of ``task_id`` as a new task."""
        row = self.store.dead_letter_row(task_id)
        if row is None:
            raise TaskNotFound(f"no dead-letter task with id {task_id}")
        (task_type, dom, key, label, prio, payload, tags, group, cpus, memory, rb, wb, rx, tx, _parent) = row
        if domain is not None and dom != domain:
            raise TaskNotFound(f"dead-letter task {task_id} belongs to domain {dom!r}, not {domain!r}")
        policy = self.type_retry.get(task_type) or self.default_retry
        item = protocol.SubmitItem(task_type, dom, key, label, prio, payload, policy.max_retries, None, None, cpus,
                                   memory, rb, wb, rx, tx, group, tags, DuplicateStrategy.SKIP.value)
        out = self.submit([tuple(item)])[0]
        self._commit()
        return out

    # ================================================================== snapshots

    def _record(self, e: Entry) -> TaskRecord:
        return TaskRecord(id=e.id, task_type=e.task_type, domain=e.domain, key=e.key, label=e.label,
                          priority=e.priority, status=TaskStatus(e.status) if e.status != "cancelling" else TaskStatus.RUNNING,
                          group=e.group, created_at=_dt(e.created_at), started_at=_dt(e.started_at),
                          retry_count=e.retry_count, max_retries=e.max_retries, timeout=e.timeout, cpus=e.cpus,
                          memory=e.memory, requeue=e.requeue)

    def active_tasks(self, domain: str | None = None) -> list[TaskRecord]:
        out = [self._record(w.task) for w in self.workers
               if w is not None and w.task is not None and not w.task.cancelled
               and (domain is None or w.task.domain == domain)]
        return sorted(out, key=lambda r: (r.priority, r.id))

    def progress(self, domain: str | None = None) -> list[TaskProgress]:
        out = []
        now = self.mono()
        for w in self.workers:
            if w is None or w.task is None or w.task.cancelled or (domain and w.task.domain != domain):
                continue
            s = self.shm.read_slot(w.index)
            if s.task_id != w.task.id:
                continue
            out.append(TaskProgress(task_id=w.task.id, task_type=w.task.task_type,
                                    fraction=max(s.progress, 0.0), bytes_done=s.bytes_done, bytes_total=s.bytes_total,
                                    read_bytes=s.read_bytes, write_bytes=s.write_bytes,
                                    elapsed_s=now - (w.task.started_mono or now)))
        return out

    def snapshot(self, domain: str | None = None) -> SchedulerSnapshot | ModuleSnapshot:
        if domain is None:
            c = self.status_counts
            return SchedulerSnapshot(
                running=self.active_tasks(), running_count=self.running_total, pending_count=c["pending"],
                paused_count=c["paused"], blocked_count=c["blocked"], waiting_count=c["waiting"], pressure=0.0,
                progress=self.progress(), max_concurrency=self.max_concurrency,
                workers=sum(1 for w in self.workers if w is not None))
        counts = {s.value: 0 for s in TaskStatus}
        for e in self.tasks.values():
            if e.domain == domain and e.status in counts:
                counts[e.status] += 1
        return ModuleSnapshot(domain=domain, running=self.active_tasks(domain), pending_count=counts["pending"],
                              paused_count=counts["paused"], blocked_count=counts["blocked"],
                              waiting_count=counts["waiting"], progress=self.progress(domain))

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._published < PUBLISH_INTERVAL:
            self._publish_pending = True
            return
        self._published = now
        self._publish_pending = False
        c = dict(self.counters)
        c.update(self.status_counts)
        c["running"] = self.running_total
        c["workers"] = sum(1 for w in self.workers if w is not None)
        c["max_concurrency"] = self.max_concurrency
        self.shm.publish(c)

    # ================================================================== shutdown (F11)

    def _begin_shutdown(self, conn: Connection | None) -> None:
        if conn is not None:
            self.stop_waiters.append(conn)
        if self.stopping:
            return
        self.stopping = True
        if self.shutdown_mode == "graceful" and self.running_total:
            self.stop_deadline = self.mono() + self.shutdown_timeout
        else:
            self.stop_deadline = self.mono()

    def _finish_shutdown(self) -> None:
        """Cancel what still runs (re-queued, not failed), stop workers, commit, answer, exit."""
        for w in list(self.workers):
            if w is None:
                continue
            e = w.task
            if e is not None:
                if not e.cancelled:
                    self.shm.set_cancel(w.index, True)
                    self._release_worker(w, e)
                    self._interrupt(e)
                w.kill("shutdown")
            else:
                w.stopping = True
                try:
                    w.conn.send(protocol.Stop())
                except (OSError, ValueError):
                    w.kill("shutdown")
        deadline = time.monotonic() + 5.0
        for w in self.workers:
            if w is None:
                continue
            w.process.join(timeout=max(deadline - time.monotonic(), 0.0))
            if w.process.exitcode is None:
                w.kill("shutdown")
                w.process.join(timeout=2.0)
        for w in self.workers:
            if w is not None:
                w.kill_group()  # what tasks started and left running (a `sleep 300` …) ends with them
                try:
                    w.conn.close()
                except OSError:
                    pass
        for fd, (kind, _) in list(self._fds.items()):
            if kind in ("worker", "sentinel"):
                self._unwatch(fd)
        self.workers = [None] * len(self.workers)
        self.idle.clear()
        self.readers.close()
        self._commit()
        for conn, _ in self.idle_waiters:
            self._reply(conn, protocol.ErrorReply.of(SchedulerBroken("the scheduler shut down")))
        self.idle_waiters = []
        for lst in self.waiters.values():
            for conn in lst:
                self._reply(conn, protocol.ErrorReply.of(SchedulerBroken("the scheduler shut down")))
        self.waiters.clear()
        self._publish(force=True)
        for conn in self.stop_waiters:
            self._reply(conn, protocol.Reply(None))
        self.exited = True


_PENDING = TaskStatus.PENDING.value


class Ended(NamedTuple):
    """How a run ended, as its worker measured it: wall-clock start and end, monotonic duration, IO."""

    started: float | None
    finished: float
    duration_ms: float | None
    io: tuple[int, int, int, int]

_COUNTER_OF = {
    HistoryStatus.COMPLETED: "completed",
    HistoryStatus.FAILED: "failed",
    HistoryStatus.DEAD_LETTER: "dead_lettered",
    HistoryStatus.CANCELLED: "cancelled",
    HistoryStatus.SUPERSEDED: "superseded",
    HistoryStatus.EXPIRED: "cancelled",
    HistoryStatus.DEPENDENCY_FAILED: "failed",
}


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


def _timeout_ok(v: Any) -> bool:
    return v is None or (type(v) in (int, float) and math.isfinite(v) and v >= 0)


def _delay_ok(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and 0 <= v <= MAX_DELAY_SECONDS


def _clean_text(text: str) -> str:
    """Error text as the store can keep it: bounded, valid UTF-8 (lone surrogates escaped)."""
    text = text[:MAX_ERROR_CHARS]
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _unstorable_result(text: str | None) -> str | None:
    """Why a task's JSON result cannot be stored, or None if it can."""
    if text is None:
        return None
    if len(text) > MAX_RESULT_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_RESULT_BYTES:
        return f"the return value is larger than {MAX_RESULT_BYTES // (1024 * 1024)} MiB as JSON, so it cannot be stored"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"the return value is not valid UTF-8 text ({e}), so it cannot be stored"
    if "\\ud" in text or "\\uD" in text:  # JSON escapes of UTF-16 halves: DuckDB refuses lone ones
        try:
            json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
        except (ValueError, UnicodeEncodeError) as e:
            return f"the return value holds a lone UTF-16 surrogate ({e}), so it cannot be stored"
    return None


def _entry_from_row(row: tuple) -> tuple[Entry, float | None]:
    """An in-memory entry from a stored ``tasks`` row (see ``Store.recover``), checked field by field."""
    (tid, ttype, domain, key, label, prio, status, created, run_after, retries, max_retries, retry_json,
     timeout, cpus, memory, group, requeue, requeue_prio) = row
    status = TaskStatus(status).value
    if not 0 <= prio <= 255 or (requeue_prio is not None and not 0 <= requeue_prio <= 255):
        raise ValueError(f"priority {prio} is outside 0..255")
    if retries < 0 or max_retries < 0:
        raise ValueError("a negative retry count")
    if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= MAX_DELAY_SECONDS):
        raise ValueError(f"timeout {timeout!r} is not a number of seconds in (0, {MAX_DELAY_SECONDS:g}]")
    if not (math.isfinite(cpus) and cpus > 0) or memory < 0:
        raise ValueError(f"cpus {cpus!r} / memory {memory!r} out of range")
    if run_after is not None and not math.isfinite(run_after):
        raise ValueError(f"run_after {run_after!r} is not a time")
    policy = RetryPolicy.from_dict(json.loads(retry_json)) if retry_json else None
    e = Entry(tid, ttype, domain, key, label, prio, status, created, retries, max_retries, policy, timeout, cpus,
              memory, group)
    e.requeue = bool(requeue)
    e.requeue_priority = requeue_prio
    return e, run_after
