"""The loop's side of the execution seam: which run goes where, how long it may take, what it did.

``Runs`` hands admitted tasks to the backend (``backends/``) and turns what
the backend reports into lifecycle transitions:

    dispatch ─ lifecycle.pick ─▶ backend.claim/start ─┐ timeout timer (per run, here)
                                                      │
    backend reports:  run_done(e, done, then) ──▶ completed / failed (then: the queued run taken next)
                      run_lost(e, cause)     ──▶ failed, retryable, the cause in the error text
                      run_interrupted(e)     ──▶ back to pending, no retry counted
                      run_spawn(e, …)        ──▶ submissions, answered after their commit
                      run_progress(e, …)     ──▶ (events)

Timers of runs are kept here, not by a backend: a run's timeout, the kill
grace after its cancel (the earlier of the two applies), the time left of a
suspended run's timeout. It also keeps the ``on_cancel`` hooks waiting for a
free executor. Implements ``backends.Host``. Imports the core, the wire
checks and leaves.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from taskmill import protocol
from taskmill.coordinator.core.entry import Ended, Entry
from taskmill.coordinator.core.queues import Timer, Timers
from taskmill.coordinator.wire import check_items

if TYPE_CHECKING:
    from taskmill.coordinator.backends import Backend
    from taskmill.coordinator.core.lifecycle import Lifecycle
    from taskmill.coordinator.core.progress import ProgressTracker

__all__ = ["CANCEL_GRACE", "Runs", "run_of"]

#: Seconds a cancelled running task gets to notice ``ctx.cancelled`` before its run is killed.
CANCEL_GRACE = 5.0

Watch = Callable[[int, Callable[[], None]], None]


class Runs:
    """Dispatch, run timers and the backend's reports (see the module docstring)."""

    def __init__(self, lc: Lifecycle, backend: Backend, timers: Timers, *, mono: Callable[[], float],
                 clock: Callable[[], float], watch: Watch, unwatch: Callable[[int], None], wake_fd: int,
                 submit: Callable[[list[protocol.SubmitItem]], list[tuple]],
                 load_payloads: Callable[[Entry], None], warm: Callable[[], None]) -> None:
        self.lc = lc
        self.backend = backend
        self.timers = timers  # the loop's timer heap; each timer's payload is a function to call
        self.mono = mono
        self.clock = clock
        self.watch = watch
        self.unwatch = unwatch
        self._wake_fd = wake_fd
        self._submit = submit
        self._load_payloads = load_payloads
        self._warm = warm
        self.tracker: ProgressTracker | None = None  # set by the loop (replaced at recovery)
        self.step_no = 0  # the loop counts its steps (``Host.step_no``)
        self.hook_queue: deque[tuple[int, str, str]] = deque()
        self.deadlines: dict[int, Timer] = {}  # task id -> its run's timeout or kill-grace timer
        self.timeout_left: dict[int, float] = {}  # task id -> what a suspended run had left of its timeout
        self.acks: list[tuple[Callable[[Any], None], Any]] = []  # spawn replies, sent after the commit

    # ------------------------------------------------------------------ Host: the loop's services

    def wake(self) -> None:
        try:
            os.write(self._wake_fd, b"x")
        except OSError:
            pass  # a full pipe wakes the loop anyway

    def call_at(self, due: float, fn: Callable[[], None]) -> Timer:
        return self.timers.add(due, "call", fn)

    def cancel_timer(self, timer: Timer | None) -> None:
        self.timers.cancel(timer)

    @property
    def max_concurrency(self) -> int:
        return self.lc.gate.max_concurrency

    def average_ms(self, task_type: str) -> float | None:
        return self.tracker.average_ms(task_type) if self.tracker is not None else None

    def queue_next(self, runner: Entry) -> Entry | None:
        return self.lc.queue_next(runner)

    def unqueue(self, e: Entry) -> None:
        self.lc.unqueue(e)

    # ------------------------------------------------------------------ dispatch (the hot path)

    def dispatch(self, now: float) -> None:
        """Start what may start: hooks first, then suspended runs that may go on, then ready tasks
        the lifecycle picks; then each busy executor may be sent its next run ahead."""
        lc, be = self.lc, self.backend
        fx = lc.fx
        if fx.hooks:
            self.hook_queue.extend(fx.take_hooks())
        while self.hook_queue and (x := be.claim()) is not None:
            be.start_hook(x, *self.hook_queue.popleft())
        wall = self.clock()
        if lc.ready.outranked:  # a more urgent task became ready: it goes before the queued runs
            self.take_back()
        if fx.suspends:
            self._suspend(now)
        if lc.let_go:
            for held in lc.resume_suspended(now):
                self._resume(held, now)
        if lc.cold and (lc.running_total or be.idle() and lc.running_total < lc.gate.max_concurrency):
            self._warm()  # the next task in order may still be in the store
        while lc.running_total < lc.gate.max_concurrency and be.idle():
            e = lc.pick(now, wall)
            if e is None:
                if not lc.reserved or (e := lc.stealable()) is None:
                    break
                be.take_back(e)
                continue  # it is ready again (or it started where it was queued): pick again
            if e.payload is None:
                self._load_payloads(e)
            x = be.claim()
            be.start(x, e, run_of(e, self._occupy(e, x, now, wall)))
        if lc.tasks and not self.hook_queue and lc.may_queue():
            be.queue_ahead()

    def _occupy(self, e: Entry, executor: Any, now: float, wall: float) -> str:
        """``e`` runs on ``executor`` from now (dispatched, or queued there): the lifecycle starts it
        and its timeout starts counting. Returns its payload text."""
        payload = self.lc.started(e, executor, now, wall)
        if e.timeout:
            self.deadlines[e.id] = self.timers.add(now + e.timeout, "call", lambda: self._timed_out(e))
        return payload

    def take_back(self) -> None:
        """Every queued run back to the ready lanes (before a change to tasks, settings or order)."""
        if self.lc.reserved:
            self.backend.take_back()
        self.lc.ready.outranked = False

    # ------------------------------------------------------------------ stopping runs

    def signal(self, now: float) -> None:
        """Runs the lifecycle asked to stop: they see ``ctx.cancelled`` and get a grace period; a
        suspended one cannot notice, so it is killed."""
        if not self.lc.fx.signals:
            return
        for e in self.lc.fx.take_signals():
            if e.worker is None:
                continue
            if e.id in self.lc.suspended:
                self.backend.kill(e, "cancelled while suspended")
                continue
            self.backend.cancel(e)
            timeout = self.deadlines.get(e.id)
            if timeout is not None and timeout.alive and timeout.due <= now + CANCEL_GRACE:
                continue  # its timeout comes first: that stops it
            self.timers.cancel(self.deadlines.pop(e.id, None))
            self.deadlines[e.id] = self.timers.add(now + CANCEL_GRACE, "call", lambda e=e: self._grace_over(e))

    def _timed_out(self, e: Entry) -> None:
        self.deadlines.pop(e.id, None)
        if e.worker is not None:  # also a cancelled run still stopping: the earlier of the two applies
            self.backend.kill(e, f"timed out after {e.timeout:g}s")

    def _grace_over(self, e: Entry) -> None:
        self.deadlines.pop(e.id, None)
        if e.worker is not None:
            self.backend.kill(e, "did not stop within the cancel grace period")

    def _suspend(self, now: float) -> None:
        """Stop the runs of suspended victims; their timeouts wait meanwhile."""
        self.take_back()  # a stopped executor must hold no queued run
        for e in self.lc.fx.take_suspends():
            if e.worker is None:
                continue
            t = self.deadlines.pop(e.id, None)
            if t is not None and t.alive:
                self.timeout_left[e.id] = max(0.0, t.due - now)
                self.timers.cancel(t)
            self.backend.suspend(e)

    def _resume(self, e: Entry, now: float) -> None:
        if e.worker is None:
            return
        left = self.timeout_left.pop(e.id, None)
        if left is not None:
            self.deadlines[e.id] = self.timers.add(now + left, "call", lambda: self._timed_out(e))
        self.backend.resume(e)

    # ------------------------------------------------------------------ Host: what the backend reports

    def _release(self, e: Entry) -> None:
        """``e``'s executor is done with it: its slot is free, its timers end."""
        self.timers.cancel(self.deadlines.pop(e.id, None))
        self.timeout_left.pop(e.id, None)
        self.lc.run_ended(e)
        if self.tracker is not None:
            self.tracker.forget(e.id)

    def run_done(self, e: Entry, done: protocol.Done, then: Entry | None) -> None:
        executor = e.worker
        self._release(e)
        if then is not None:  # the executor took the run queued behind: it is the running one now
            self._occupy(then, executor, self.mono(), self.clock())
        if e.cancelled:
            return  # already in history (cancelled, superseded, failed by its children)
        ended = Ended(done.started_at, done.finished_at, done.duration * 1000.0,
                      (done.read_bytes, done.write_bytes, done.net_rx_bytes, done.net_tx_bytes))
        now, wall = self.mono(), self.clock()
        if done.error_kind is None:
            if self.tracker is not None:
                self.tracker.completed(e.task_type, ended.duration_ms)
            self.lc.completed(e, done.result, ended, now, wall)
        else:
            self.lc.failed(e, done.error or "", permanent=done.error_kind == "permanent",
                           retry_after=done.retry_after, ended=ended, now=now, wall=wall)

    def run_lost(self, e: Entry, cause: str) -> None:
        self._release(e)
        if not e.cancelled:
            self.lc.failed(e, cause, permanent=False, retry_after=None, ended=None, now=self.mono(),
                           wall=self.clock())

    def run_interrupted(self, e: Entry) -> None:
        self._release(e)
        if not e.cancelled:
            self.lc.interrupted(e, self.mono())

    def run_progress(self, e: Entry, fraction: float | None, message: str | None) -> None:
        self.lc.report_progress(e, fraction, message)  # subscribers see it; the numbers are in the live view

    def run_spawn(self, e: Entry | None, task_id: int, kind: str, items: list[tuple],
                  answer: Callable[[Any], None]) -> None:
        """Submissions from inside running task ``e``; answered once durable (an error at once)."""
        self.take_back()
        try:
            if e is None or e.id != task_id or e.cancelled:
                raise RuntimeError("the task that submitted is no longer running")
            checked = check_items(items)
            parent = {"child": e.id, "sibling": e.parent_id, "plain": None}.get(kind, -1)
            if parent == -1 or (kind == "sibling" and parent is None):
                raise ValueError(f"task {e.id} has no parent, so it has no siblings" if kind == "sibling"
                                 else f"unknown spawn kind {kind!r}")
            checked = [it._replace(parent=parent) for it in checked]
            self.acks.append((answer, protocol.Reply(self._submit(checked))))
        except Exception as exc:  # noqa: BLE001 - the task gets the error, the loop goes on
            answer(protocol.ErrorReply.of(exc))

    def take_acks(self) -> list[tuple[Callable[[Any], None], Any]]:
        acks, self.acks = self.acks, []
        return acks


def run_of(e: Entry, payload: str) -> tuple:
    """The ``protocol.Run`` of entry ``e`` as the plain tuple an executor receives."""
    x = e.x
    phase = x.phase if x is not None else "execute"
    return (e.id, e.task_type, payload, e.retry_count, e.key, e.label, e.priority, e.parent_id, phase,
            x.memo if x is not None and phase == "finalize" else None, e.group, e.tags)
