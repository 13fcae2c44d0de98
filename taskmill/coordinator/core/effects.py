"""The core's outbox: every effect of every transition, in one value the shell drains.

A transition of the lifecycle (or of one of its parts) never does anything
outside memory; it records what must happen in ``Effects``:

    batch        rows for the next commit (durable changes)        the shell commits it
    delta        the same changes since the last journal record     the shell journals it
                 (only while the shell journals: ``journaling``)
    events       what happened, for subscribers (only while some    released after the commit
                 listen: ``listening``)                             holding ``batch``
    finished     ids that reached history                           their waiters are answered
    signals      running tasks that must stop (``ctx.cancelled``)   the backend tells the run
    hooks        ``on_cancel`` runs to start                        the backend runs them
    suspends     running victims to stop where they are (SIGSTOP)   the backend stops them
    quarantine   stored rows that cannot be interpreted             moved to history as failed

The shell drains the immediate effects once per step (``take_signals`` …) and
the batch with its events at each commit (``take_writes``): an event is never
released before the commit that makes it true. Every write goes through one
method here (``update``, ``insert``, ``finish`` …), which records it in ``batch``
and, while journaling, in ``delta`` too: ``batch`` gathers every change until
the writer is free (one DuckDB transaction, the lifecycle's own merging of a
task's successive changes), while ``delta`` holds the changes of the last few
steps, made durable by one journal record (``take_delta``) so waiting changes
can be answered at once. A batch taken with ``take_writes`` includes the delta
(which starts empty again): the journal's records and the batches stay in step.
``trace``, when a test sets it, records every status change (``moved``): the
one function that changes a task's status (``TaskTable._move``) reports there,
so a test can check that nothing changes a status another way. Plain code, no
I/O.
"""

from __future__ import annotations

from typing import Any

from taskmill.batch import FinishedRow, WriteBatch

__all__ = ["Effects"]


class Effects:
    """What the decision core asks the shell to do (see the module docstring)."""

    __slots__ = ("batch", "delta", "journaling", "ops", "dirty_since", "events", "listening", "finished", "signals",
                 "hooks", "suspends", "quarantine", "trace")

    def __init__(self) -> None:
        self.batch = WriteBatch()
        self.delta = WriteBatch()  # (filled only while ``journaling``)
        self.journaling = False  # set by the shell when it has a journal
        self.ops = 0  # changes buffered in ``batch``
        self.dirty_since: float | None = None  # monotonic time of the oldest unwritten change
        self.events: list[tuple] = []  # event records (``core/events.py``) of the changes in ``batch``
        self.listening = False  # set by the shell while anyone subscribes: events are recorded only then
        self.finished: list[int] = []
        self.signals: list[Any] = []  # running entries that must stop
        self.hooks: list[tuple[int, str, str]] = []  # (task id, task type, payload) on_cancel runs
        self.suspends: list[Any] = []  # running entries whose run stops where it is
        self.quarantine: list[tuple[int, str]] = []  # (id, reason) of rows that cannot be interpreted
        self.trace: list[tuple[int, str, str]] | None = None  # (id, old, new) of every status move, when set

    def touch(self, now: float) -> None:
        """One more change waits in ``batch``."""
        self.ops += 1
        if self.dirty_since is None:
            self.dirty_since = now

    def moved(self, task_id: int, old: str, new: str) -> None:
        """A task's status changed (``TaskTable._move`` is the only caller)."""
        if self.trace is not None:
            self.trace.append((task_id, old, new))

    @property
    def dirty(self) -> bool:
        """Writes wait for a commit."""
        return self.dirty_since is not None

    def take_writes(self) -> tuple[WriteBatch, list[tuple]]:
        """The buffered writes and the events they make true; both start empty again (the delta too:
        the batch holds it)."""
        batch, self.batch = self.batch, WriteBatch()
        if self.journaling:
            self.delta = WriteBatch()
        events, self.events = self.events, []
        self.ops = 0
        self.dirty_since = None
        return batch, events

    def take_delta(self) -> tuple[WriteBatch, list[tuple]]:
        """The writes since the last ``take_delta``/``take_writes`` and the events they make true;
        ``batch`` keeps them for its commit."""
        delta, self.delta = self.delta, WriteBatch()
        events, self.events = self.events, []
        return delta, events

    # ------------------------------------------------------------------ writes (batch, and delta)

    def _targets(self) -> tuple[WriteBatch, ...]:
        return (self.batch, self.delta) if self.journaling else (self.batch,)

    def update(self, task_id: int, **cols: Any) -> None:
        """Set columns of one task row (``WriteBatch.update``)."""
        for b in self._targets():
            b.update(task_id, **cols)

    def insert(self, row: tuple) -> None:
        for b in self._targets():
            b.inserts.append(row)

    def mark_running(self, task_id: int, started_at: float) -> None:
        for b in self._targets():
            b.running[task_id] = started_at

    def forget_running(self, task_id: int) -> None:
        for b in self._targets():
            b.forget_running(task_id)

    def finish(self, row: FinishedRow) -> None:
        for b in self._targets():
            b.finished.append(row)

    def retry(self, task_id: int, how: tuple[int, float | None, str]) -> None:
        for b in self._targets():
            b.retries[task_id] = how

    def requeue_run(self, task_id: int, priority: int) -> None:
        for b in self._targets():
            b.requeued_runs[task_id] = priority

    def upgrade(self, task_id: int, priority: int) -> None:
        for b in self._targets():
            b.priorities[task_id] = priority

    def mark_requeue(self, task_id: int, priority: int) -> None:
        for b in self._targets():
            b.requeue_marks[task_id] = priority

    def set_scope(self, key: tuple[str, str], value: tuple[float, float | None] | None) -> None:
        for b in self._targets():
            b.scopes[key] = value

    def add_dep(self, edge: tuple[int, int]) -> None:
        for b in self._targets():
            b.deps.append(edge)

    def release_deps(self, task_id: int) -> None:
        for b in self._targets():
            b.deps_released.add(task_id)

    def move_deps(self, edge: tuple[int, int]) -> None:
        for b in self._targets():
            b.dep_moves.append(edge)

    def set_next_id(self, next_id: int) -> None:
        for b in self._targets():
            b.next_id = next_id

    def set_prune(self, prune: tuple[str, float]) -> None:
        for b in self._targets():
            b.prune = prune

    def take_events(self) -> list[tuple]:
        """Events recorded with no write behind them (a progress report): nothing to wait for."""
        events, self.events = self.events, []
        return events

    def take_finished(self) -> list[int]:
        out, self.finished = self.finished, []
        return out

    def take_signals(self) -> list[Any]:
        out, self.signals = self.signals, []
        return out

    def take_hooks(self) -> list[tuple[int, str, str]]:
        out, self.hooks = self.hooks, []
        return out

    def take_suspends(self) -> list[Any]:
        out, self.suspends = self.suspends, []
        return out

    def take_quarantine(self) -> list[tuple[int, str]]:
        out, self.quarantine = self.quarantine, []
        return out
