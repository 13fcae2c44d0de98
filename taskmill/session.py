"""``Session``: what a ``Scheduler`` shares with its handles and its ``TaskStore``.

The channel to the coordinator (once started), whether it is open, and the
host-side settings every submission is resolved with. ``DomainHandle`` and
``TaskStore`` hold the session, not the ``Scheduler``, so neither needs the
other's private members and the host API has no import circle. Imports leaves,
``domain`` and the client channel only.
"""

from __future__ import annotations

from typing import Any

from taskmill.client import CoordinatorProcess
from taskmill.domain import Defaults
from taskmill.errors import SchedulerClosed

__all__ = ["Session"]


class Session:
    """The coordinator channel of one scheduler, and what its submissions are resolved with."""

    def __init__(self, defaults: Defaults) -> None:
        self.defaults = defaults
        self.registered: frozenset[str] = frozenset()  # qualified task types known to the coordinator
        self.process: CoordinatorProcess | None = None
        self.closed = False  # close() was called: calls say "closed", not "not started"

    def proc(self) -> CoordinatorProcess:
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

    def request(self, msg: Any) -> Any:
        """One protocol request (a submission, a wait)."""
        return self.proc().request(msg)
