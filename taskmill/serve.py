"""``taskmill serve MODULE:SCHEDULER``: run a scheduler as a long-lived service in the foreground.

The target is a ``Scheduler`` (not started) or a function returning one, named
as ``module:attribute`` (the current directory is importable, as for
``python -m``). This process is the scheduler's host: it starts the
coordinator, logs to stderr (structlog, ``console`` or ``json`` lines) and
waits. SIGTERM or SIGINT shut it down by the scheduler's ``shutdown`` setting
(graceful: running tasks get their grace); a second SIGINT makes it hard (what
still runs is stopped and re-queued). Other processes of the same user attach
with ``taskmill.connect(store)`` meanwhile. Imports the host API.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from typing import Any

import structlog

from taskmill.client import CoordinatorProcess
from taskmill.errors import TaskmillError
from taskmill.scheduler import Scheduler

__all__ = ["ServeError", "load_target", "serve"]

#: Seconds between two checks that the coordinator still runs.
WATCH_INTERVAL = 0.5


class ServeError(TaskmillError):
    """The ``MODULE:SCHEDULER`` target cannot be served (the message says why and what to write)."""


def load_target(spec: str) -> Scheduler:
    """The scheduler ``spec`` (``module:attr`` or ``module:function``) names, not started."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ServeError(f"{spec!r} is not MODULE:SCHEDULER (for example jobs:scheduler, or jobs:make for a "
                         "function returning a Scheduler)")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the current directory's modules import
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name.split(".")[0] and e.name != module_name:
            raise  # the module exists; something it imports is missing: its own traceback says what
        raise ServeError(f"no module named {module_name!r} here (run taskmill serve in its directory, or put "
                         "it on PYTHONPATH)") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ServeError(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(target) and not isinstance(target, Scheduler):
        target = target()
    if not isinstance(target, Scheduler):
        raise ServeError(f"{spec} is a {type(target).__name__}, not a taskmill.Scheduler (or a function "
                         "returning one)")
    if target._process is not None:
        raise ServeError(f"{spec} is already started: serve a Scheduler that is not (no `with`, no start())")
    return target


def configure_logging(fmt: str, level: int = logging.INFO) -> None:
    """Log lines of this process to stderr: ``console`` (readable) or ``json`` (one object a line)."""
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty())
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s", force=True)
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.processors.TimeStamper(fmt="iso"), renderer],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def serve(sched: Scheduler, *, log_format: str = "console") -> int:
    """Start ``sched`` and serve until SIGTERM/SIGINT (or the coordinator's end); the exit code."""
    log = structlog.get_logger("taskmill.serve")
    sched._log_level = logging.WARNING
    sched._log_format = log_format
    stop, hard = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            hard.set()
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        sched.start()
        proc = sched._process
        assert isinstance(proc, CoordinatorProcess)
        log.info("serving", store=sched.store_path, coordinator_pid=proc.pid,
                 domains=sorted(sched._domains), max_concurrency=sched.max_concurrency,
                 shutdown=sched.shutdown_mode.mode, connect=f"taskmill.connect({sched.store_path!r})",
                 metrics=None if sched.metrics_port is None else f"http://127.0.0.1:{sched.metrics_port}/metrics")
        while not stop.wait(WATCH_INTERVAL):
            if not proc.alive():
                log.error("the coordinator exited", exit_code=proc.exit_code())
                sched.close()
                return 1
        log.info("shutting down", mode=sched.shutdown_mode.mode,
                 hint="press Ctrl-C again to stop at once" if sched.shutdown_mode.mode == "graceful" else None)
        queued = _queued(sched)
        closer = threading.Thread(target=sched.close, name="taskmill-serve-close")
        closer.start()
        hurried = False
        while closer.is_alive():
            closer.join(0.1)
            if hard.is_set() and not hurried:
                hurried = True
                log.warning("stopping at once: what still runs is re-queued")
                proc.hurry()
        log.info("stopped", store=sched.store_path, queued=queued,
                 hint="serving this store again resumes them" if queued else None)
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if sched._process is not None:
            sched.close()


def _queued(sched: Scheduler) -> int | None:
    """Active tasks (they stay in the store), or None if the coordinator cannot tell now."""
    try:
        snap = sched.snapshot()  # (not the shared-memory gauges: they follow the lifecycle a step later)
    except TaskmillError:
        return None
    return snap.running_count + snap.pending_count + snap.paused_count + snap.blocked_count + snap.waiting_count
