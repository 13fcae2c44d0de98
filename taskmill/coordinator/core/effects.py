"""The core's outbox: every effect of every transition, in one value the shell drains.

A transition of the lifecycle (or of one of its parts) never does anything
outside memory; it records what must happen in ``Effects``:

    batch        rows for the next commit (durable changes)        the shell commits it
    events       what happened, for subscribers (only while some    released after the commit
                 listen: ``listening``)                             holding ``batch``
    finished     ids that reached history                           their waiters are answered
    signals      running tasks that must stop (``ctx.cancelled``)   the backend tells the run
    hooks        ``on_cancel`` runs to start                        the backend runs them
    suspends     running victims to stop where they are (SIGSTOP)   the backend stops them
    quarantine   stored rows that cannot be interpreted             moved to history as failed

The shell drains the immediate effects once per step (``take_signals`` …) and
the batch with its events at each commit (``take_writes``): an event is never
released before the commit that makes it true. ``trace``, when a test sets
it, records every status change (``moved``): the one function that changes a
task's status (``TaskTable._move``) reports there, so a test can check that
nothing changes a status another way. Plain code, no I/O.
"""

from __future__ import annotations

from typing import Any

from taskmill.batch import WriteBatch

__all__ = ["Effects"]


class Effects:
    """What the decision core asks the shell to do (see the module docstring)."""

    __slots__ = ("batch", "ops", "dirty_since", "events", "listening", "finished", "signals", "hooks", "suspends",
                 "quarantine", "trace")

    def __init__(self) -> None:
        self.batch = WriteBatch()
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
        """The buffered writes and the events they make true; both start empty again."""
        batch, self.batch = self.batch, WriteBatch()
        events, self.events = self.events, []
        self.ops = 0
        self.dirty_since = None
        return batch, events

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
