"""Commits and answers: what the loop owes its clients and the tasks that submit, and when.

A change (a submission, a cancel, a task's spawn) is answered only once the
commit holding it is durable. Every commit has a number. Waiting changes, when
few enough, are appended to the journal as one record (``taskmill.store.journal``:
one ``fdatasync``) and are durable at once; the writer thread applies them to
DuckDB later with the write-behind batch, which then carries that record's
number. Any other commit is durable once the writer (or the loop) has applied
it. Answers and events wait in ``saving``/``unreleased``, stamped with
their commit, until it and every commit before it are durable, so nothing is
answered out of order, and the loop keeps dispatching meanwhile. The loop
commits itself (after joining the writer) only when it reads the store next: a
query, a deferred call, a waited-on task that finished, idle waiters. A failed
commit answers every change still waiting with the error. Waits (``wait``,
``wait_idle``) and their deadlines live here too. Imports the store's types,
the protocol and leaves; the loop hands in how to reply and to stop watching a
client.
"""

from __future__ import annotations

from collections import deque
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
    from taskmill.store.journal import Journal

__all__ = ["Replies"]

log = structlog.get_logger("taskmill.coordinator")

To = Connection | Callable[[Any], None]  # a client, or a task's executor (its ``answer``)

#: Largest commit (in changes) that goes through the journal; a larger one (a big batch of
#: submissions) is answered once the writer has applied it: writing it twice costs more than waiting.
JOURNAL_MAX_OPS = 2000
#: The journal is emptied once it is this large and everything in it is in the store.
JOURNAL_RESET_BYTES = 3 << 20


class Replies:
    """Commits, acknowledgements and waits (see the module docstring)."""

    def __init__(self, lc: Lifecycle, store: Store, writer: Writer, readers: QueryRunner, runs: Runs, *,
                 reply: Callable[[Connection, Any], None], unwatch: Callable[[int], None],
                 promote: Callable[[list[int], list[str]], None], mono: Callable[[], float],
                 release: Callable[[list[tuple]], None], journal: Journal | None = None) -> None:
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
        self.journal = journal
        lc.fx.journaling = journal is not None
        self.seq = store.journal_seq  # the number of the last commit
        self.direct: deque[int] = deque()  # commits handed to the writer unjournaled, not known applied
        self.unreleased: list[tuple[int, list[tuple]]] = []  # (commit, events) not known durable yet
        self.commits = 0
        self.acks: list[tuple[Connection, Any]] = []  # replies to changes not yet handed to a commit
        self.saving: list[tuple[int, To, Any]] = []  # (commit, to, reply) whose commit is not durable yet
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
        return bool(self.deferred or self.queries or (self.idle_waiters and not self.lc.tasks) or self.journal_full
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
        self.saving = [a for a in self.saving if a[1] is not conn]
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
        """Write every buffered change to the store: on the writer thread, or here (after joining
        it) when the loop reads the store next. A batch whose changes are all journaled already
        carries the last journal record's number and makes nobody wait; any other gets a number
        of its own and is durable once applied (``durable_through``)."""
        fx = self.lc.fx
        if not background:
            self.writer.join()  # also when there is nothing to write: the loop may read the store next
        elif fx.journaling and 0 < len(fx.delta) <= JOURNAL_MAX_OPS:
            self.journal_changes()  # then the batch holds nothing the journal lacks
        own = not fx.journaling or len(fx.delta) > 0
        batch, events = fx.take_writes()
        if len(batch):
            if own:
                self.seq += 1
            if background:
                if own:
                    self.direct.append(self.seq)
                self.writer.submit(batch, self.seq)
            else:
                try:
                    self.store.apply(batch, self.seq)
                except StoreError as e:
                    log.error("commit failed; coordinator stops", error=str(e))
                    self.fail_saving(e)
                    raise
            self.commits += 1
        if not background:
            self.direct.clear()  # everything is in the store
            if self.journal is not None and self.journal.size > JOURNAL_RESET_BYTES:
                self.journal.reset()  # ... the journal's records too
        self._stamp(events)

    def journal_changes(self) -> None:
        """Make the changes since the last journal record durable now: one record, one ``fdatasync``;
        the changes waiting for it are answered as soon as every commit before it is durable too."""
        assert self.journal is not None
        delta, events = self.lc.fx.take_delta()
        if len(delta):
            self.seq += 1
            try:
                self.journal.append(self.seq, delta)
            except OSError as e:
                self.fail_saving(e)
                raise StoreError(f"the commit journal {self.journal.path} failed: {e}") from e
        self._stamp(events)

    def _stamp(self, events: list[tuple]) -> None:
        """What waits for the commit numbered ``seq``: these events, and every waiting answer."""
        if events:
            self.unreleased.append((self.seq, events))
        self.saving += [(self.seq, to, reply) for to, reply in self.acks]
        self.saving += [(self.seq, to, reply) for to, reply in self.runs.take_acks()]
        self.acks.clear()

    @property
    def journals(self) -> bool:
        """Waiting changes can be made durable by the journal now (small enough to write twice)."""
        return self.lc.fx.journaling and len(self.lc.fx.delta) <= JOURNAL_MAX_OPS

    @property
    def journal_full(self) -> bool:
        """The journal should be emptied: the next commit is made here, with everything in it."""
        return self.journal is not None and self.journal.size > JOURNAL_RESET_BYTES

    def release_after(self, events: list[tuple]) -> None:
        """Events with no write of their own: released after every commit before them."""
        self.unreleased.append((self.seq, events))

    def durable_through(self) -> int:
        """The last commit number such that it and every one before it are durable."""
        applied = self.writer.applied
        direct = self.direct
        while direct and direct[0] <= applied:
            direct.popleft()
        return direct[0] - 1 if direct else self.seq

    def send_saved(self) -> None:
        """Answer the changes that are durable, and release their events (in commit order)."""
        through = self.durable_through()
        if self.saving:
            n = _durable(self.saving, through)
            saved, self.saving = self.saving[:n], self.saving[n:]
            for _, to, reply in saved:
                self.answer_to(to, reply)
        if self.unreleased:
            n = _durable(self.unreleased, through)
            if n:
                ready, self.unreleased = self.unreleased[:n], self.unreleased[n:]
                self.release([e for _, events in ready for e in events])

    def fail_saving(self, e: BaseException) -> None:
        """The store failed: every change still waiting for its commit is answered with the error."""
        broken = protocol.ErrorReply.of(SchedulerBroken(f"the store failed: {e}"))
        for _, to, _ in self.saving:
            self.answer_to(to, broken)
        for to, _ in self.acks + self.runs.take_acks():
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


def _durable(stamped: list[Any], through: int) -> int:
    """How many leading entries (stamped with their commit, in commit order) are durable."""
    n = 0
    for entry in stamped:
        if entry[0] > through:
            break
        n += 1
    return n
