"""The coordinator loop: the I/O shell around the task lifecycle.

    clients ──requests──▶ ┌──────────── one iteration ─────────────┐
    backend (executors) ▶ │ 1 drain every ready connection/fd       │
    host gone (pidfd/EOF) │ 2 fire due timers (delays, timeouts)    │
    acceptor, readers,  ─▶│ 3 group commit (one DuckDB transaction) │──▶ store (writer thread)
    writer (wake pipe)    │ 4 answer: acks, events, queries, waits  │──▶ clients, subscribers, readers
                          │ 5 dispatch (runs.Runs → the backend)    │──▶ executors
                          │ 6 publish counters to shared memory     │──▶ shm
                          └─────────────────────────────────────────┘

Every decision about a task is the core's (``core/``: plain code, no I/O);
this module feeds it inputs (requests, what the backend reports, the clocks)
and carries out the effects it records in its outbox (commits, replies,
events, cancel signals). It owns the poll set, the clients and subscribers,
the calls, the cold tail's reads and shutdown, and composes the parts that do
the rest: ``runs.Runs`` (dispatch and run timers, the backend's host),
``replies.Replies`` (commits, acknowledgements, waits), ``fanout.Fanout``
(subscribers), ``control.Control`` (what calls may do), the writer and reader
threads.

Invariants: a submission is answered only after the commit that stored it
(the loop dispatches meanwhile);
every other write (running marks, finished tasks) is written behind, at the
latest ``FLUSH_MAX_DELAY`` later or before any query reads the store, so a
crash re-runs at most the unflushed work (at-least-once, never a duplicate
history row). Nothing a client or a task sends can end the loop: requests are
decoded and checked in ``wire``, results are checked by the lifecycle before
they are stored. Timers, deadlines and durations read the monotonic clock
only; the wall clock gives the timestamps stored for users. Blocks only in one
``poll``. Imports the core, the store, the backend seam and leaves; never the host API.
"""

from __future__ import annotations

import math
import os
import queue
import select
import socket
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

import structlog

from taskmill import protocol
from taskmill.config import MAX_EVENT_BUFFER, CoordinatorConfig
from taskmill.coordinator.acceptor import Acceptor
from taskmill.coordinator.backends import Backend
from taskmill.coordinator.control import Control
from taskmill.coordinator.core import snapshots
from taskmill.coordinator.core.entry import Entry
from taskmill.coordinator.core.fairness import make_fairness
from taskmill.coordinator.core.gate import gate_figures, make_gate
from taskmill.coordinator.core.lifecycle import Lifecycle
from taskmill.coordinator.core.progress import ProgressTracker
from taskmill.coordinator.core.queues import Timer, Timers
from taskmill.coordinator.fanout import Fanout, Subscriber
from taskmill.coordinator.prefetch import ColdPrefetch
from taskmill.coordinator.reader import QueryRunner
from taskmill.coordinator.replies import Replies
from taskmill.coordinator.routes import QUIET, Kind, route
from taskmill.coordinator.runs import Runs
from taskmill.coordinator.wire import check_items, decode_request
from taskmill.coordinator.writer import Writer
from taskmill.errors import InvalidSubmission, SchedulerBroken, SchedulerClosed
from taskmill.shm import SharedState
from taskmill.store import Queries, Store
from taskmill.store.journal import Journal, journal_path, replay

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
#: Plain pending tasks per domain that recovery loads before the first dispatch; the rest of a
#: deeper queue stays in the store and is loaded in order as dispatch reaches it (``cold.py``).
#: ``TASKMILL_RECOVER_HOT`` overrides it (tests use a small value to exercise the cold tail).
RECOVER_HOT = int(os.environ.get("TASKMILL_RECOVER_HOT", "10000"))
#: Tasks loaded from a cold tail at a time.
WARM_CHUNK = max(1, min(RECOVER_HOT * 5, 50_000))
#: Calls that act on every task (a cold tail is loaded whole first) and calls naming task ids
#: in their first argument (those tasks are loaded first).
WARM_ALL = frozenset({"pause", "cancel_all", "cancel_group", "cancel_type", "cancel_by_tag",
                      "cancel_by_tag_key_prefix"})
NAMES_IDS = frozenset({"cancel", "cancel_ids"})
#: Seconds a query (``sql()`` and the seed's queries) may run, or wait for a reader, before it is interrupted.
QUERY_TIME_LIMIT = 30.0
_READ_OR_GONE = select.POLLIN | select.POLLHUP | select.POLLERR


class Coordinator:
    """The loop and everything it owns besides the lifecycle and the executors (``runs``, ``backends``).

    ``step()`` runs one iteration and is usable from tests with injected
    clocks; ``run()`` loops until shutdown.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        store: Store,
        shm: SharedState,
        backend: Backend,
        host_lifeline: int | None = None,
        host_pidfd: int | None = None,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        recover_hot: int | None = RECOVER_HOT,
    ) -> None:
        self.config = config
        self.store = store
        self.shm = shm
        self.backend = backend
        self.shutdown_mode = config.shutdown.mode
        self.shutdown_timeout = config.shutdown.timeout
        self.poll_interval = config.poll_interval
        self.clock = clock  # wall clock: only for timestamps stored for users
        self.mono = mono  # every timer, deadline and duration
        self.type_retry = dict(config.type_retry)
        self.start_paused = config.start_paused
        self.recover_hot = recover_hot
        admission = config.admission
        gate = make_gate(config.max_concurrency, config.domain_caps, admission, mono())
        fair, aging = make_fairness(admission)
        self.lc = Lifecycle(gate=gate, fair=fair, aging=aging, preempt_priority=admission.preempt_priority,
                            preemption=admission.preemption, type_retry=self.type_retry,
                            default_retry=config.default_retry, finalizers=config.finalizers,
                            cancel_hooks=config.cancel_hooks, sweep_interval=config.expiry_sweep_interval,
                            retention=config.retention, retention_every=config.retention_every)
        self.timers = Timers()  # the shell's own (run timeouts, kill graces, the backend's): functions to call
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.runs = Runs(self.lc, backend, self.timers, mono=self.mono, clock=self.clock, watch=self._watch_fn,
                         unwatch=self._unwatch, wake_fd=self._wake_w, submit=self._apply_submissions,
                         load_payloads=self._load_payloads, warm=self._warm_needed)
        self.tracker = ProgressTracker()
        self.control = Control(self.lc, store, lambda: self.tracker, mono=self.mono, clock=self.clock,
                               live=backend.live, workers=backend.workers, grow=self.set_max_concurrency,
                               submit=self._apply_submissions, commit=self.commit, shm_name=shm.name)

        self.clients: list[Connection] = []
        self.accepted: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self.host_lifeline = host_lifeline
        self.host_pidfd = host_pidfd
        self.acceptor: Acceptor | None = None
        # One persistent poll set (multiprocessing.connection.wait builds a selector per call,
        # which cost ~20 µs a task here): fd -> (kind, object).
        self._poller = select.poll()
        self._fds: dict[int, tuple[str, Any]] = {}
        self._watch(self._wake_r, "wake", None)
        for fd in (host_lifeline, host_pidfd):
            if fd is not None:
                self._watch(fd, "host", fd)
        self._published = 0.0
        self._publish_pending = False
        path = journal_path(store.path)
        self.journal = Journal(path, sync=config.durability == "fsync") if path is not None else None
        if self.journal is not None:  # what a crash left in the journal goes into the store first
            replayed = replay(self.journal, store.apply_all, store.journal_seq)
            if replayed:
                log.info("journaled commits replayed into the store", commits=replayed)
        self.writer = Writer(store, self._wake_w)
        self.readers = QueryRunner(store, self._wake)
        self.fanout = Fanout(self._watch_subscriber, self._forget_subscriber)
        self.replies = Replies(self.lc, store, self.writer, self.readers, self.runs, reply=self._reply,
                               unwatch=self._unwatch, promote=self._promote, mono=self.mono,
                               release=self.fanout.publish, journal=self.journal)
        self._progress_tick: Timer | None = None
        self.prefetch: ColdPrefetch | None = None  # while a cold tail is left after recovery

        self.stopping = False  # no more dispatch
        self.stop_deadline: float | None = None
        self.stop_waiters: list[Connection] = []
        self.exited = False
        self._stop_requested = False

    # ================================================================== startup

    @property
    def tracker(self) -> ProgressTracker:
        return self._tracker

    @tracker.setter
    def tracker(self, tracker: ProgressTracker) -> None:
        self._tracker = self.runs.tracker = tracker

    def start_workers(self) -> None:
        """Start the backend's executors (before recovery: a registry that cannot load fails start-up)."""
        self.backend.open(self.runs)

    def recover(self) -> int:
        """Load active tasks from the store into memory; returns how many.

        A row that cannot be interpreted is quarantined: moved to history as
        ``failed`` with the reason, and logged. Recovery goes on.
        """
        rec = self.store.recover(hot=None if self.start_paused else self.recover_hot)
        waiting = [row[0] for row in rec.tasks if row[6] == "waiting"]
        failures = self.store.child_failures(waiting) if waiting else {}
        bad = self.lc.recover(rec.next_id, rec.tasks, rec.edges, rec.scopes, self.clock(), self.mono(), failures,
                              rec.cold, rec.max_id)
        self.tracker = ProgressTracker(self.store.type_averages())
        if self.lc.cold:
            self.prefetch = ColdPrefetch(self.store, self.lc.cold_max_id, WARM_CHUNK)
        if self.start_paused:
            self.lc.pause_scope("global", "", self.mono(), self.clock())
        self._quarantine(bad)
        return len(self.lc.tasks)

    def _quarantine(self, bad: list[tuple[int, str]]) -> None:
        """Move stored tasks that cannot be interpreted to history as ``failed``, and log them."""
        for task_id, reason in bad:
            log.error("quarantining a stored task", task_id=task_id, reason=reason)
        if bad:
            for task_id in self.store.quarantine(bad, self.clock()):
                log.error("a stored task could not be quarantined either; it stays in the tasks table",
                          task_id=task_id)

    def _watch(self, fd: int, kind: str, obj: Any) -> None:
        self._fds[fd] = (kind, obj)
        self._poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def _watch_fn(self, fd: int, on_ready: Callable[[], None]) -> None:
        """Call ``on_ready`` when ``fd`` is readable (or hung up): how a backend watches its executors."""
        self._watch(fd, "call", on_ready)

    def _unwatch(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def serve(self, listener: socket.socket, authkey: bytes) -> None:
        """Accept and authenticate clients on the acceptor's thread (see ``acceptor``); the loop
        only ever sees authenticated connections. ``listener`` is a listening Unix socket."""
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
        ready = self._poller.poll(0)  # busy: events are waiting, and the timeout need not be computed
        if not ready:
            ready = self._poller.poll(self._timeout() * 1000.0)
        self.runs.step_no += 1
        for fd, ev in ready:
            handler = self._fds.get(fd)
            if handler is not None:
                if handler[0] == "subscriber":
                    self.fanout.on_ready(handler[1], bool(ev & _READ_OR_GONE))
                else:
                    self._on_ready(*handler)
        if self._stop_requested and not self.stopping:
            self._begin_shutdown(None)
        now = self.mono()
        if self.lc.reserved and (due := self.lc.next_due()) is not None and due <= now:
            self.runs.take_back()  # a timer may change what runs next
        self.lc.fire(now, self.clock())
        for t in self.timers.pop_due(now):
            t.payload()
        replies = self.replies
        replies.fire_deadlines(now)
        self.readers.expire(now)
        try:
            self.writer.check()
        except Exception as e:
            replies.fail_saving(e)
            raise
        self.runs.signal(now)
        lc = self.lc
        if replies.reads_next:
            replies.commit()  # the loop reads the store next
        else:
            if replies.changes_wait and replies.journals:
                replies.journal_changes()  # answered from the journal; DuckDB gets it with the next batch
            if (replies.changes_wait or self._batch_due(now)) and not self.writer.busy:
                replies.commit(background=True)  # on the writer (what waits: answered once applied)
        if lc.fx.events and not lc.fx.dirty:  # events with no write behind them (progress reports)
            replies.release_after(lc.fx.take_events())
        replies.answer()
        if not self.stopping:
            self.runs.dispatch(now)
        elif lc.running_total == 0 or (self.stop_deadline is not None and now >= self.stop_deadline):
            self._finish_shutdown()
        self._publish()

    def _timeout(self) -> float:
        """Seconds until the next thing the loop must do without an event."""
        now = self.mono()
        t = self.poll_interval
        for due in (self.lc.next_due(), self.timers.next_due(), self.readers.next_deadline(), self.stop_deadline):
            if due is not None and due - now < t:
                t = due - now
        since = self.lc.fx.dirty_since
        if since is not None and not self.writer.busy and since + FLUSH_MAX_DELAY - now < t:
            t = since + FLUSH_MAX_DELAY - now  # (a busy writer wakes the loop when it is done)
        if self.replies.wait_deadlines or self.replies.idle_waiters:
            t = min(t, self.replies.next_deadline(now, now + t) - now)
        if self._publish_pending:  # a skipped publication is owed soon, so counters never lag
            t = min(t, PUBLISH_INTERVAL)
        return t if t > 0.0 else 0.0

    def commit(self) -> None:
        """Commit every buffered write here and now (the loop reads the store next)."""
        self.replies.commit()

    def close_journal(self) -> None:
        """Close the journal; remove it when the store holds every commit (a clean stop)."""
        if self.journal is not None:
            self.journal.close(remove=self.store.journal_seq >= self.replies.seq and not self.writer.busy)

    def _batch_due(self, now: float) -> bool:
        fx = self.lc.fx
        since = fx.dirty_since
        return since is not None and (now - since >= FLUSH_MAX_DELAY or fx.ops >= FLUSH_MAX_OPS)

    # ================================================================== inputs

    def _on_ready(self, kind: str, obj: Any) -> None:
        if kind == "call":  # an executor's pipe or sentinel (``backends``)
            obj()
        elif kind == "client":
            self._on_client(obj)
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
        self.replies.drop(conn)
        if conn.closed:
            return  # dropped already (an answer meant for it found it gone)
        self._unwatch(conn.fileno())
        try:
            conn.close()
        except OSError:
            pass

    def _reply(self, conn: Connection, msg: Any) -> None:
        try:
            protocol.send(conn, msg)
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
            self.runs.take_back()  # (a duplicate may supersede or upgrade a queued run)
            if req.each is True:
                self.replies.acks.append((conn, protocol.Reply(self._apply_each(req.items))))
                return
            outcomes = self._apply_submissions(check_items(req.items), batch=req.batch is True)
            self.replies.acks.append((conn, protocol.Reply(outcomes)))
        elif isinstance(req, protocol.Call):
            if type(req.name) is not str or type(req.args) is not tuple:
                raise TypeError("a call is a name and a tuple of arguments")
            self._call(conn, req.name, req.args)
        elif isinstance(req, protocol.Wait):
            if type(req.task_id) is not int or not _timeout_ok(req.timeout):
                raise TypeError("wait takes an int task id and a timeout in seconds (or None)")
            self.replies.wait(conn, req.task_id, req.timeout)
        elif isinstance(req, protocol.WaitIdle):
            if not _timeout_ok(req.timeout):
                raise TypeError("wait_idle takes a timeout in seconds (or None)")
            deadline = None if req.timeout is None else self.mono() + req.timeout
            self.replies.wait_idle(conn, deadline)
        elif isinstance(req, protocol.Stop):
            self._begin_shutdown(conn, hard=req.hard is True)
        elif isinstance(req, protocol.Subscribe):
            self._subscribe(conn, req)
        else:
            raise TypeError(f"unknown request {type(req).__name__}")

    # ================================================================== subscribers (see fanout)

    def _subscribe(self, conn: Connection, req: protocol.Subscribe) -> None:
        """``conn`` becomes a stream of events (or progress ticks): answered, then only written to."""
        if (req.kind not in ("events", "progress") or not (req.domain is None or type(req.domain) is str)
                or not (req.task_type is None or type(req.task_type) is str)
                or type(req.buffer) is not int or not 1 <= req.buffer <= MAX_EVENT_BUFFER):
            raise ValueError(f"subscribe takes a kind (events, progress), a domain and a task type (or None) and "
                             f"a buffer of 1..{MAX_EVENT_BUFFER} events")
        if req.kind == "progress" and self.config.progress_interval is None:
            raise ValueError("progress subscriptions need Scheduler(progress_interval=...)")
        self._reply(conn, protocol.Reply(None))
        if conn not in self.clients:
            return  # the reply could not be sent: it is gone
        self.clients.remove(conn)
        self._unwatch(conn.fileno())
        self.fanout.add(conn, req.kind, req.domain, req.task_type, req.buffer)
        self.lc.fx.listening = self.fanout.listening
        if req.kind == "progress" and self._progress_tick is None:
            self._tick_progress()

    def _watch_subscriber(self, sub: Subscriber, writable: bool) -> None:
        mask = select.POLLIN | select.POLLHUP | select.POLLERR | (select.POLLOUT if writable else 0)
        if sub.fd in self._fds:
            self._poller.modify(sub.fd, mask)
        else:
            self._poller.register(sub.fd, mask)
        self._fds[sub.fd] = ("subscriber", sub)

    def _forget_subscriber(self, sub: Subscriber) -> None:
        self._unwatch(sub.fd)
        try:
            sub.conn.close()
        except OSError:
            pass
        self.lc.fx.listening = self.fanout.listening

    def _tick_progress(self) -> None:
        """Every ``progress_interval``: byte progress of running tasks to progress subscribers."""
        domains = self.fanout.progress_domains
        if not domains or self.config.progress_interval is None:
            self._progress_tick = None
            return
        now = self.mono()
        for domain in domains:
            self.fanout.publish_progress(domain, snapshots.byte_progress(self.lc, self.tracker, self.backend.live,
                                                                         now, domain))
        self._progress_tick = self.timers.add(now + self.config.progress_interval, "call", self._tick_progress)

    def _apply_each(self, items: Any) -> list[Any]:
        """Single submissions sent together: each one checked and applied as if it came alone."""
        if type(items) is not list:
            raise InvalidSubmission("a submission batch must be a list")
        out: list[Any] = []
        for t in items:
            try:
                out.append(self._apply_submissions(check_items([t]))[0])
            except Exception as e:  # noqa: BLE001 - this item's error, to its caller only
                out.append(protocol.ErrorReply.of(e))
        return out

    def _apply_submissions(self, items: list[protocol.SubmitItem], batch: bool = False) -> list[tuple]:
        """Submit checked items; what the store must answer first (outcomes of prerequisites that
        are gone, keys that completed before) is read after a flush, so it sees every finished run."""
        if self.lc.cold:  # tasks these items name (by id or key) may still be in the store: load them
            named = {d for it in items for d in (it.depends_on or ()) if d not in self.lc.tasks}
            named.update(it.parent for it in items if it.parent is not None and it.parent not in self.lc.tasks)
            self._promote(sorted(named), sorted({it.key for it in items if it.key not in self.lc.by_key}))
        ids, keys = self.lc.lookups(items)
        outcomes = completed = None
        if ids or keys:
            self.commit()
            outcomes = self.store.history_outcomes(sorted(ids)) if ids else None
            completed = self.store.completed_keys(sorted(keys)) if keys else None
        return self.lc.submit(items, self.mono(), self.clock(), outcomes=outcomes, completed=completed, batch=batch)

    # ================================================================== the cold tail (see cold.py)

    def _warm(self, domain: str) -> None:
        """Load the next chunk of ``domain``'s cold tail (after a commit: the store must show
        every task that finished, so none comes back)."""
        tail = self.lc.cold.get(domain)
        if tail is None:
            return
        self.commit()
        rows = self.prefetch.take(domain, tail.after) if self.prefetch is not None else None
        if rows is None:
            rows = self.store.cold_rows(domain, tail.after, self.lc.cold_max_id, WARM_CHUNK)
        self.lc.warm(domain, rows, WARM_CHUNK, self.mono(), self.clock())
        self._quarantine_cold()
        self._prefetch_cold()

    def _prefetch_cold(self) -> None:
        """Ask for the next chunk of every cold tail whose loaded part is half used up."""
        if self.prefetch is not None:
            for domain, tail in self.lc.cold.items():
                if self.lc.ready.count(domain) < WARM_CHUNK // 2:
                    self.prefetch.ask(domain, tail.after)

    def _warm_all(self) -> None:
        while self.lc.cold:
            self._warm(next(iter(self.lc.cold)))

    def _promote(self, ids: list[int], keys: list[str]) -> None:
        ids = [i for i in ids if type(i) is int and i not in self.lc.tasks]
        if ids or keys:
            self.commit()
            self.lc.promote(self.store.plain_rows(ids, keys, self.lc.cold_max_id), self.mono(), self.clock())
            self._quarantine_cold()

    def _quarantine_cold(self) -> None:
        if self.lc.fx.quarantine:
            self._quarantine(self.lc.fx.take_quarantine())

    def _call(self, conn: Connection, name: str, args: tuple) -> None:
        """Schedule a call by its route (see ``routes``)."""
        r = route(name, args)
        if name not in QUIET:
            self.runs.take_back()  # queued runs must not start past a change to tasks or settings
        if self.lc.cold and name in WARM_ALL:  # it acts on every task: none may stay in the store
            self._warm_all()
        elif self.lc.cold and name in NAMES_IDS and args:  # an id or a list of ids (others are dropped)
            self._promote(args[0] if type(args[0]) is list else [args[0]], [])
        if r.kind is Kind.MEMORY:
            self._reply(conn, protocol.Reply(r.fn(self.control, *args)))
        elif r.kind is Kind.CHANGE:
            self.replies.acks.append((conn, protocol.Reply(r.fn(self.control, *args))))
        elif r.kind is Kind.READ:
            fn, aging, export_dir = r.fn, self.lc.aging, self.store.export_dir
            if aging is None:
                self.replies.queries.append((conn, lambda cur: fn(Queries(cur, export_dir), *args),
                                             QUERY_TIME_LIMIT))
            else:  # records read from the store learn their aged priority from memory
                wall, paused = self.clock(), self.lc.paused_times()
                self.replies.queries.append((conn, lambda cur: snapshots.with_effective_priority(
                    fn(Queries(cur, export_dir), *args), aging, wall, paused), QUERY_TIME_LIMIT))
        else:
            self.replies.deferred.append((conn, lambda: r.fn(self.control, *args)))

    # ================================================================== services of the loop

    @property
    def max_concurrency(self) -> int:
        """Most tasks running at once (the gate's cap; executors beyond it stay idle)."""
        return self.lc.gate.max_concurrency

    def set_max_concurrency(self, n: int) -> None:
        """Change the cap at runtime; a larger one grows the pool (up to the backend's executors)."""
        most = self.backend.max_executors
        if not 1 <= n <= most:
            raise ValueError(f"max_concurrency must be in 1..{most} (the worker slots of this scheduler), got {n}")
        self.lc.gate.max_concurrency = n
        self.backend.grow(n)

    def _load_payloads(self, e: Entry) -> None:
        """Read the payloads of ``e`` and of the next recovered tasks in dispatch order (one query)."""
        self.writer.join()
        self.lc.fill_payloads(self.store.fetch_payloads(self.lc.payload_chunk(e)))

    def _warm_needed(self) -> None:
        """Load the next chunk of each cold tail whose next task in order may still be in the store."""
        for domain in self.lc.cold_needed():
            self._warm(domain)
        self._prefetch_cold()

    def _publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._published < PUBLISH_INTERVAL:
            self._publish_pending = True
            return
        self._published = now
        self._publish_pending = False
        live = self.backend.live
        for e in self.lc.running.values():  # byte throughput samples (EWMA) for progress and ETAs
            if e.worker is not None:
                view = live(e)
                if view is not None and view.task_id == e.id:
                    self.tracker.sample(e.id, view.bytes_done, now)
        c = dict(self.lc.counters)
        c.update(self.lc.counts)
        c["commits"] = self.replies.commits
        c["running"] = self.lc.running_total
        c["workers"] = self.backend.workers()
        c["max_concurrency"] = self.max_concurrency
        c.update(gate_figures(self.lc.gate))
        c["groups_paused"] = len(self.lc.paused_groups)
        self.shm.publish(c)

    # ================================================================== shutdown (F11)

    def _begin_shutdown(self, conn: Connection | None, hard: bool = False) -> None:
        if conn is not None:
            self.stop_waiters.append(conn)
        if hard:  # now, whatever the mode: a graceful shutdown under way ends at the next step
            self.shutdown_mode = "hard"
            self.stop_deadline = self.mono()
        if self.stopping:
            return
        self.stopping = True
        self.runs.take_back()  # queued runs stay pending; what an executor took already finishes
        self.backend.shutting_down()
        if self.shutdown_mode == "graceful" and self.lc.running_total:
            self.stop_deadline = self.mono() + self.shutdown_timeout
        else:
            self.stop_deadline = self.mono()

    def _finish_shutdown(self) -> None:
        """Cancel what still runs (re-queued, not failed), stop workers, commit, answer, exit."""
        self.backend.stop()
        self.readers.close()
        if self.prefetch is not None:
            self.prefetch.close()
        self.commit()
        self.replies.send_saved()
        self.replies.shut_down()
        self.fanout.end()  # every stream ends (as far as a subscriber's socket takes it now)
        self._publish(force=True)
        for conn in self.stop_waiters:
            self._reply(conn, protocol.Reply(None))
        self.exited = True


def _timeout_ok(v: Any) -> bool:
    return v is None or (type(v) in (int, float) and math.isfinite(v) and v >= 0)
