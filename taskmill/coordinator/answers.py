"""Commits and answers: what the loop owes its clients and the tasks that submit, and when.

A mixin of ``Coordinator`` (``loop``). A change (a submission, a cancel, a
task's spawn) is answered only once the commit holding it is done: the batch
goes to the writer thread and its acknowledgements wait in ``saving`` until
the writer is idle again, while the loop keeps dispatching. The loop commits
itself (after joining the writer) only when it reads the store next: a query,
a deferred call, a waited-on task that finished, idle waiters. A failed
commit answers every change still waiting with the error. Waits (``wait``,
``wait_idle``) and their deadlines live here too.
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

__all__ = ["Answers"]

log = structlog.get_logger("taskmill.coordinator")


class Answers:
    """Commits, acknowledgements and waits (mixed into ``Coordinator``, which provides what is
    declared here)."""

    lc: Lifecycle
    store: Store
    writer: Writer
    readers: QueryRunner
    commits: int
    acks: list[tuple[Connection, Any]]
    runs: Runs
    saving: list[tuple[Connection | Callable[[Any], None], Any]]
    deferred: list[tuple[Connection, Callable[[], Any]]]
    queries: list[tuple[Connection, Callable[[Any], Any], float]]
    waiters: dict[int, list[Connection]]
    wait_deadlines: list[tuple[float, int, Connection]]
    idle_waiters: list[tuple[Connection, float | None]]

    def mono(self) -> float:
        raise NotImplementedError

    def _reply(self, conn: Connection, msg: Any) -> None:
        raise NotImplementedError

    def _unwatch(self, fd: int) -> None:
        raise NotImplementedError

    def _promote(self, ids: list[int], keys: list[str]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ wait deadlines

    def _fire_wait_deadlines(self, now: float) -> None:
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
                if until is not None and until <= now and not self.lc.idle:
                    self._reply(conn, protocol.ErrorReply.of(WaitTimeout("the scheduler did not become idle in time")))
                else:
                    still.append((conn, until))
            self.idle_waiters = still

    # ------------------------------------------------------------------ commit and answers

    def _commit(self, background: bool = False) -> None:
        """Write the buffered batch: on the writer thread, or here (after joining it) when
        someone waits for durability or the loop is about to read the store."""
        fx = self.lc.fx
        if background:
            if len(fx.batch):
                self.writer.submit(fx.take_writes()[0])
                self.commits += 1
            else:
                fx.take_writes()
        else:
            self.writer.join()  # also when there is nothing to write: the loop may read the store next
            batch, _events = fx.take_writes()
            if len(batch):
                try:
                    self.store.apply(batch)
                except StoreError as e:
                    log.error("commit failed; coordinator stops", error=str(e))
                    self._fail_saving(e)
                    raise
                self.commits += 1
        self.saving += self.acks
        self.saving += self.runs.take_acks()
        self.acks.clear()

    def _send_saved(self) -> None:
        """Answer the changes the last commit made durable (none while the writer still works)."""
        if self.saving and not self.writer.busy:
            saving, self.saving = self.saving, []
            for to, reply in saving:
                self._answer_to(to, reply)

    def _fail_saving(self, e: BaseException) -> None:
        """The store failed: every change still waiting for its commit is answered with the error."""
        broken = protocol.ErrorReply.of(SchedulerBroken(f"the store failed: {e}"))
        for to, _ in self.saving + self.acks + self.runs.take_acks():
            self._answer_to(to, broken)
        self.saving, self.acks = [], []

    def _answer_to(self, to: Connection | Callable[[Any], None], reply: Any) -> None:
        """A reply to a client, or to a task that submitted (through its executor's ``answer``)."""
        if isinstance(to, Connection):
            self._reply(to, reply)
        else:
            to(reply)

    def _answer(self) -> None:
        self._send_saved()
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
        if self.lc.fx.finished:
            done = [t for t in self.lc.fx.take_finished() if t in self.waiters]
            if done:
                rows = self.store.history_rows(done)
                for tid in done:
                    for conn in self.waiters.pop(tid, []):
                        self._reply(conn, protocol.Reply(rows.get(tid)))
        if self.idle_waiters and self.lc.idle:
            for conn, _ in self.idle_waiters:
                self._reply(conn, protocol.Reply(True))
            self.idle_waiters = []

    def _wait(self, conn: Connection, task_id: int, timeout: float | None) -> None:
        if self.lc.cold and task_id not in self.lc.tasks:
            self._promote([task_id], [])
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
