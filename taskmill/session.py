"""``Session``: what a ``Scheduler`` shares with its handles and its ``TaskStore``.

The channel to the coordinator (once started), whether it is open, and the
host-side settings every submission is resolved with. ``DomainHandle`` and
``TaskStore`` hold the session, not the ``Scheduler``, so neither needs the
other's private members and the host API has no import circle. Imports leaves,
``domain`` and the channel only.
"""

from __future__ import annotations

from typing import Any

from taskmill import events, protocol
from taskmill.channel import Channel
from taskmill.config import EVENT_BUFFER, MAX_EVENT_BUFFER
from taskmill.domain import Defaults
from taskmill.errors import ConfigError, SchedulerClosed
from taskmill.records import TaskProgress
from taskmill.singles import Singles
from taskmill.stream import EventStream
from taskmill.validation import as_int

__all__ = ["Session"]


class Session:
    """The coordinator channel of one scheduler, and what its submissions are resolved with."""

    def __init__(self, defaults: Defaults, event_buffer: int = EVENT_BUFFER,
                 progress_interval: float | None = None) -> None:
        self.defaults = defaults
        self.event_buffer = event_buffer
        self.progress_interval = progress_interval
        self.registered: frozenset[str] = frozenset()  # qualified task types known to the coordinator
        self.process: Channel | None = None
        self.closed = False  # close() was called: calls say "closed", not "not started"
        self.singles = Singles()  # single submissions of concurrent threads go together

    def proc(self) -> Channel:
        """The running coordinator; ``SchedulerClosed`` when there is none."""
        if self.process is None:
            if self.closed:
                raise SchedulerClosed("the scheduler is closed")
            raise SchedulerClosed("the scheduler is not started (use it as a context manager or call start())")
        return self.process

    def check_open(self) -> None:
        """Raise ``SchedulerClosed`` unless started and not closed; callers do it before any argument check."""
        if self.process is None:
            self.proc()

    def call(self, name: str, *args: Any) -> Any:
        """A call by name (``routes.ROUTES``), its arguments already plain and checked."""
        return self.proc().call(name, *args)

    def submit_one(self, item: tuple[Any, ...]) -> Any:
        """One resolved submission, sent with those of other threads submitting at the same time;
        its outcome in the wire form."""
        proc = self.proc()
        return self.singles.submit(item, lambda items: proc.request(protocol.Submit(items, each=True)))

    def request(self, msg: Any) -> Any:
        """One protocol request (a submission, a wait)."""
        return self.proc().request(msg)

    def subscribe(self, domain: str | None = None, task_type: str | None = None,
                  buffer: int | None = None) -> EventStream[events.Event]:
        """A stream of events (of one domain, or one task type, or all)."""
        n = self._buffer(buffer)
        conn = self.proc().open_stream(protocol.Subscribe("events", domain, task_type, n))
        what = "events" if domain is None else f"events-{task_type or domain}"
        return EventStream(conn, n, events.decode, what)

    def subscribe_progress(self, domain: str | None = None, buffer: int | None = None) -> EventStream[TaskProgress]:
        """A stream of ``TaskProgress`` records, every ``progress_interval``, of running tasks that report bytes."""
        self.check_open()
        if self.progress_interval is None:
            raise ConfigError("subscribe_progress() needs Scheduler(progress_interval=seconds): the coordinator "
                              "sends byte progress only on that tick")
        n = self._buffer(buffer)
        conn = self.proc().open_stream(protocol.Subscribe("progress", domain, None, n))
        return EventStream(conn, n, _same, "progress")

    def _buffer(self, buffer: int | None) -> int:
        self.check_open()
        return self.event_buffer if buffer is None else as_int(buffer, "buffer", lo=1, hi=MAX_EVENT_BUFFER)


def _same(x: Any) -> Any:
    return x
