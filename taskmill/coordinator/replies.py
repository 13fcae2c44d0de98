"""Commits and answers: what the loop owes its clients and the tasks that submit, and when.

A change (a submission, a cancel, a task's spawn) is answered only once the
commit holding it is done: the batch goes to the writer thread and its
acknowledgements wait in ``saving`` until the writer is idle again, while the
loop keeps dispatching. The loop commits itself (after joining the writer)
only when it reads the store next: a query, a deferred call, a waited-on task
that finished, idle waiters. Events go with the commit that makes them true
and are released when it is done (``Events``). A failed commit answers every
change still waiting with the error. Waits (``wait``, ``wait_idle``) and
their deadlines live here too. Imports the store's types, the protocol and
leaves; the loop hands in how to reply and to stop watching a client.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Callable

import structlog

from taskmill import protocol
from taskmill.errors import SchedulerBroken, StoreError, TaskNotFound, WaitTimeout

if TYPE_CHECKING:
    from taskmill.coordinator.core.lifecycle import Lifecycle
    from taskmill.coordinator.reader import QueryRunner
    from taskmill.coordinator.runs import Runs
    from taskmill.coordinator.writer import Writer
    from taskmill.store import Store

__all__ = ["Replies"]

log = structlog.get_logger("taskmill.coordinator")

To = Connection | Callable[[Any], None]  # a client, or a task's executor (its ``answer``)


class Replies:
    """Commits, acknowledgements and waits (see the module docstring)."""

    def __init__(self, lc: Lifecycle, store: Store, writer: Writer, readers: QueryRunner, runs: Runs, *,
                 reply: Callable[[Connection, Any], None], unwatch: Callable[[int], None],
                 promote: Callable[[list[int], list[str]], None], mono: Callable[[], float],
                 release: Callable[[list[tuple]], None]) -> None:
        self.lc = lc
        self.store = store
        self.writer = writer
        self.readers = readers
        self.runs = runs
        self.reply = reply
        self.unwatch = unwatch
        self.promote = promote
        self.mono = mono
        self.release = release  # events out to subscribers (``Fanout.publish``)
        self.unreleased: list[tuple] = []  # events whose commit is handed out, not yet known done
        self.commits = 0
        self.acks: list[tuple[Connection, Any]] = []  # replies to changes not yet handed to a commit
        self.saving: list[tuple[To, Any]] = []  # ... whose commit is under way
        self.deferred: list[tuple[Connection, Callable[[], Any]]] = []  # calls that read the store on the loop
        self.queries: list[tuple[Connection, Callable[[Any], Any], float]] = []  # (client, fn(cursor), limit)
        self.waiters: dict[int, list[Connection]] = {}
        self.wait_deadlines: list[tuple[float, int, Connection]] = []
        self.idle_waiters: list[tuple[Connection, float | None]] = []

    # ------------------------------------------------------------------ what the loop asks

    @property
    def reads_next(self) -> bool:
        """Something must read the store after this step: commit here, not on the writer."""
        fx = self.lc.fx
        return bool(self.deferred or self.queries or (self.idle_waiters and not self.lc.tasks)
                    or (self.waiters and any(t in self.waiters for t in fx.finished)))

    @property
    def changes_wait(self) -> bool:
        """Changes wait for their acknowledgement: commit them (on the writer) soon."""
        return bool(self.acks or self.runs.acks)

    def next_deadline(self, now: float, default: float) -> float:
        """The soonest wait deadline (``default`` when none is sooner)."""
        soonest = default
        for d, _, _ in self.wait_deadlines:
            soonest = min(soonest, d)
        for _, until in self.idle_waiters:
            if until is not None:
                soonest = min(soonest, until)
        return soonest

    def drop(self, conn: Connection) -> None:
        """A client is gone: forget its waits, and the answers it would have had (its changes
        still commit: a client killed after its request arrived gets all of it, unanswered)."""
        for lst in self.waiters.values():
            while conn in lst:
                lst.remove(conn)
        self.idle_waiters = [(c, d) for c, d in self.idle_waiters if c is not conn]
        self.wait_deadlines = [w for w in self.wait_deadlines if w[2] is not conn]
        self.acks = [a for a in self.acks if a[0] is not conn]
        self.saving = [a for a in self.saving if a[0] is not conn]
        self.queries = [q for q in self.queries if q[0] is not conn]

    # ------------------------------------------------------------------ wait deadlines

    def fire_deadlines(self, now: float) -> None:
        if self.wait_deadlines:
            keep = []
            for d, tid, conn in self.wait_deadlines:
                if d <= now and conn in self.waiters.get(tid, ()):
                    self.waiters[tid].remove(conn)
                    self.reply(conn, protocol.ErrorReply.of(WaitTimeout(f"task {tid} did not finish in time")))
                elif d > now:
                    keep.append((d, tid, conn))
            self.wait_deadlines = keep
        if self.idle_waiters:
            still: list[tuple[Connection, float | None]] = []
            for conn, until in self.idle_waiters:
                if until is not None and until <= now and not self.lc.idle:
                    self.reply(conn, protocol.ErrorReply.of(WaitTimeout("the scheduler did not become idle in time")))
                else:
                    still.append((conn, until))
            self.idle_waiters = still

    # ------------------------------------------------------------------ commit and answers

    def commit(self, background: bool = False) -> None:
        """Write the buffered batch: on the writer thread, or here (after joining it) when
        someone waits for durability or the loop is about to read the store."""
        fx = self.lc.fx
        if background:
            batch, events = fx.take_writes()
            if len(batch):
                self.writer.submit(batch)
                self.commits += 1
        else:
            self.writer.join()  # also when there is nothing to write: the loop may read the store next
            batch, events = fx.take_writes()
            if len(batch):
                try:
                    self.store.apply(batch)
                except StoreError as e:
                    log.error("commit failed; coordinator stops", error=str(e))
                    self.fail_saving(e)
                    raise
                self.commits += 1
        if events:
            self.unreleased += events
        self.saving += self.acks
        self.saving += self.runs.take_acks()
        self.acks.clear()

    def send_saved(self) -> None:
        """Answer the changes the last commit made durable, and release its events (none while the
        writer still works: the commit in flight holds the newest of them)."""
        if self.writer.busy:
            return
        if self.saving:
            saving, self.saving = self.saving, []
            for to, reply in saving:
                self.answer_to(to, reply)
        if self.unreleased:
            events, self.unreleased = self.unreleased, []
            self.release(events)

    def fail_saving(self, e: BaseException) -> None:
        """The store failed: every change still waiting for its commit is answered with the error."""
        broken = protocol.ErrorReply.of(SchedulerBroken(f"the store failed: {e}"))
        for to, _ in self.saving + self.acks + self.runs.take_acks():
            self.answer_to(to, broken)
        self.saving, self.acks = [], []

    def answer_to(self, to: To, reply: Any) -> None:
        """A reply to a client, or to a task that submitted (through its executor's ``answer``)."""
        if isinstance(to, Connection):
            self.reply(to, reply)
        else:
            to(reply)

    def answer(self) -> None:
        self.send_saved()
        if self.queries:  # the store is flushed: hand each query, and its client, to a reader
            now = self.mono()
            queries, self.queries = self.queries, []
            for conn, query, limit in queries:
                self.unwatch(conn.fileno())
                self.readers.run(conn, query, limit, now)
        deferred, self.deferred = self.deferred, []
        for conn, fn in deferred:
            try:
                value = fn()
            except Exception as e:  # noqa: BLE001
                self.reply(conn, protocol.ErrorReply.of(e))
            else:
                self.reply(conn, protocol.Reply(value))
        if self.lc.fx.finished:
            done = [t for t in self.lc.fx.take_finished() if t in self.waiters]
            if done:
                rows = self.store.history_rows(done)
                for tid in done:
                    for conn in self.waiters.pop(tid, []):
                        self.reply(conn, protocol.Reply(rows.get(tid)))
        if self.idle_waiters and self.lc.idle:
            for conn, _ in self.idle_waiters:
                self.reply(conn, protocol.Reply(True))
            self.idle_waiters = []

    def wait(self, conn: Connection, task_id: int, timeout: float | None) -> None:
        if self.lc.cold and task_id not in self.lc.tasks:
            self.promote([task_id], [])
        if task_id in self.lc.tasks:
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

    def wait_idle(self, conn: Connection, deadline: float | None) -> None:
        self.idle_waiters.append((conn, deadline))

    def shut_down(self) -> None:
        """The scheduler stops: every wait still open is answered with ``SchedulerBroken``."""
        broken = protocol.ErrorReply.of(SchedulerBroken("the scheduler shut down"))
        for conn, _ in self.idle_waiters:
            self.reply(conn, broken)
        self.idle_waiters = []
        for lst in self.waiters.values():
            for conn in lst:
                self.reply(conn, broken)
        self.waiters.clear()
