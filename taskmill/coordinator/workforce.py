"""The worker side of the coordinator's shell: dispatch, results, deaths, spawns, hooks.

A mixin of ``Coordinator`` (``loop``). It translates between worker processes
and the lifecycle: a ready task becomes a ``Run`` on an idle worker; a
``Done`` becomes ``completed``/``failed``; a silent exit becomes a retryable
failure naming the signal; a ``Spawn`` from a running task becomes submissions
answered on the worker's pipe once durable; a cancelled run gets the cancel
flag in its slot and a kill-grace timer; an ``on_cancel`` hook runs on the
next idle worker, bounded by ``cancel_hook_timeout``. Worker timers (timeouts,
kill graces, hook limits, respawns) live here; task timers live in the
lifecycle. Imports leaves, the lifecycle and the worker pool.
"""

from __future__ import annotations

import pickle
import signal
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

import structlog

from taskmill import protocol
from taskmill.coordinator.core.entry import Ended, Entry
from taskmill.coordinator.wire import check_items
from taskmill.shm import OUTSTANDING_MAX
from taskmill.workers.pool import WorkerHandle, describe_exit

if TYPE_CHECKING:
    from taskmill.coordinator.core.lifecycle import Lifecycle
    from taskmill.coordinator.core.progress import ProgressTracker
    from taskmill.coordinator.core.queues import Timers
    from taskmill.coordinator.writer import Writer
    from taskmill.shm import SharedState
    from taskmill.store import Store
    from taskmill.workers.pool import WorkerPool

__all__ = ["Workforce"]

log = structlog.get_logger("taskmill.coordinator")

#: Seconds a cancelled running task gets to notice ``ctx.cancelled`` before its worker is killed.
CANCEL_GRACE = 5.0
#: Longest the coordinator waits for a new worker's ``Ready``.
WORKER_READY_TIMEOUT = 60.0
#: About how much work (ms) to queue behind a busy worker's run, in one message: runs of a task type
#: that averages a tenth of this get ten queued (one wake-up of the worker for ten runs); a type
#: whose runs take this long or longer, or have no average yet, one.
QUEUE_AHEAD_MS = 5.0
#: Most runs queued behind one run.
QUEUE_DEPTH_MAX = 16


class Workforce:
    """Workers as the loop sees them (mixed into ``Coordinator``, which provides what is declared here)."""

    lc: Lifecycle
    pool: WorkerPool
    shm: SharedState
    store: Store
    writer: Writer
    timers: Timers
    tracker: ProgressTracker
    stopping: bool
    worker_acks: list[tuple[WorkerHandle, Any]]
    _fds: dict[int, tuple[str, Any]]

    def mono(self) -> float:
        raise NotImplementedError

    def clock(self) -> float:
        raise NotImplementedError

    def _watch(self, fd: int, kind: str, obj: Any) -> None:
        raise NotImplementedError

    def _unwatch(self, fd: int) -> None:
        raise NotImplementedError

    def _warm(self, domain: str) -> None:
        raise NotImplementedError

    def _prefetch_cold(self) -> None:
        raise NotImplementedError

    def _apply_submissions(self, items: list[protocol.SubmitItem]) -> list[tuple]:
        raise NotImplementedError

    @property
    def max_concurrency(self) -> int:
        """Most tasks running at once (the gate's cap; workers beyond it stay idle)."""
        return self.lc.gate.max_concurrency

    def set_max_concurrency(self, n: int) -> None:
        """Change the cap at runtime; a larger one grows the pool (up to the segment's slots)."""
        if not 1 <= n <= self.shm.slots:
            raise ValueError(f"max_concurrency must be in 1..{self.shm.slots} (the worker slots of this "
                             f"scheduler), got {n}")
        self.lc.gate.max_concurrency = n
        while self._live_workers() < n and self._add_worker():
            pass

    def _init_workforce(self, max_concurrency: int, cancel_hook_timeout: float) -> None:
        self.workers: list[WorkerHandle | None] = [None] * max_concurrency
        self.idle: list[WorkerHandle] = []
        self.read_ahead: set[WorkerHandle] = set()  # workers whose pipe was read out of turn this step
        self.hook_queue: deque[tuple[int, str, str]] = deque()
        self.cancel_hook_timeout = cancel_hook_timeout
        self._retired: set[int] = set()  # slots of workers stopped on purpose (trimmed): reused first
        self._to_spawn: list[int] = []

    # ------------------------------------------------------------------ starting workers

    def start_workers(self) -> None:
        """Spawn the first worker and wait for it: a registry that cannot load fails startup."""
        first = self._spawn(0)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while not first.ready:
            left = deadline - time.monotonic()
            if left <= 0 or not wait([first.conn, first.sentinel], timeout=left):
                raise RuntimeError("the first worker did not start in time")
            msg = None
            if first.conn.poll():
                try:
                    msg = first.conn.recv()
                except (EOFError, OSError):
                    msg = None
                if isinstance(msg, protocol.Ready):
                    if msg.error:
                        raise RuntimeError(msg.error)
                    first.ready = True
                    self.idle.append(first)
                    continue
            if not first.process.is_alive() or msg is None:
                raise RuntimeError(f"the first worker died while starting: {describe_exit(first.exitcode())}")
        for i in range(1, len(self.workers)):
            self._spawn(i)
        if self.lc.suspending:  # one more worker than slots: a preemptor starts at once
            self._add_worker()

    def _live_workers(self) -> int:
        return sum(1 for w in self.workers if w is not None)

    def _add_worker(self) -> bool:
        """Start one more worker: in the slot of one retired on purpose, else a new slot of the
        segment. False when the segment is full (or the pool stops)."""
        if self.stopping:
            return False
        for i in sorted(self._retired):
            if self.workers[i] is None:
                self._retired.discard(i)
                self._spawn(i)
                return True
        if len(self.workers) < self.shm.slots:
            self.workers.append(None)
            self._spawn(len(self.workers) - 1)
            return True
        return False

    def _trim_pool(self) -> None:
        """Stop idle workers beyond the slots, the spare and the suspended runs' (preemption leaves
        one more each time a suspended run continues or is cancelled)."""
        spare = 1 if self.lc.suspending else 0
        extra = self._live_workers() - (self.max_concurrency + spare + len(self.lc.suspended))
        while extra > 0 and len(self.idle) > spare:
            w = self.idle.pop(0)
            w.stopping = True
            self._retired.add(w.index)
            self._send_to_worker(w, protocol.Stop())
            extra -= 1

    def _spawn(self, index: int) -> WorkerHandle:
        self.shm.reset_slot(index)  # tickets start over with the new worker
        w = self.pool.spawn(index)
        self.workers[index] = w
        self._watch(w.conn.fileno(), "worker", w)
        self._watch(w.sentinel, "sentinel", w)
        return w

    def _respawn_due(self) -> None:
        if self._to_spawn:
            spawn, self._to_spawn = self._to_spawn, []
            for index in spawn:
                if self.workers[index] is None and not self.stopping:
                    self._spawn(index)
            if self.lc.suspended or len(self.workers) > self.max_concurrency + 1:
                self._trim_pool()  # a killed suspended worker came back as a new one

    # ------------------------------------------------------------------ dispatch (the hot path)

    def _dispatch(self, now: float) -> None:
        idle = self.idle
        lc = self.lc
        if lc.fx.hooks:
            self.hook_queue.extend(lc.fx.take_hooks())
        while idle and self.hook_queue:
            self._run_hook(idle.pop(), *self.hook_queue.popleft(), now)
        wall = self.clock()
        if lc.ready.outranked:  # a more urgent task became ready: it goes before the queued runs
            self._take_back_all()
        if lc.fx.suspends:
            self._suspend_workers(now)
        if lc.let_go:
            for held in lc.resume_suspended(now):
                self._continue_worker(held, now)
        if lc.cold and (lc.running_total or idle and lc.running_total < self.max_concurrency):
            for domain in lc.cold_needed():  # the next task in order may still be in the store
                self._warm(domain)
            self._prefetch_cold()
        while idle and lc.running_total < self.max_concurrency:
            e = lc.pick(now, wall)
            if e is None:
                if not lc.reserved or (e := lc.stealable()) is None:
                    break
                self._take_back(next(w for w in self.workers if w is not None and e in w.queued))
                continue  # it is ready again (or it started where it was queued): pick again
            if e.payload is None:
                self.writer.join()
                lc.fill_payloads(self.store.fetch_payloads(lc.payload_chunk(e)))
            w = idle.pop()
            w.ticket = self._send_run(w, _run_of(e, self._occupy(w, e, now, wall)))
        if lc.tasks and not self.hook_queue and lc.may_queue():
            self._queue_ahead()

    # ------------------------------------------------------------------ runs queued on busy workers

    def _queue_ahead(self) -> None:
        """Send each busy worker its next runs, so it starts them without waiting for the loop.
        The lifecycle picks them (``queue_next``); they stay pending until the worker takes them.
        Several go in one message behind a short run (``QUEUE_AHEAD_MS``), one behind a longer one."""
        lc = self.lc
        for w in self.workers:
            if (w is None or w.queued or w.task is None or w.queued_behind == w.ticket
                    or w.hook is not None or w.stopping or w.kill_reason is not None or w.task.cancelled):
                continue  # (once per run: runs taken back wait in the pipe until the worker reads past them)
            runner = w.task
            depth = _queue_depth(self.tracker.average_ms(runner.task_type))
            if w.sent + depth - self.shm.claimed(w.index) > OUTSTANDING_MAX:
                continue  # the worker is far behind in its pipe (runs taken back): not now
            queued = w.queued
            while len(queued) < depth:
                e = lc.queue_next(runner)
                if e is None:
                    break
                queued.append(e)
            if not queued:
                if not lc.ready:
                    return
                continue  # the most urgent task holds something else than this run: not here
            w.queued_behind = w.ticket
            w.queued_from = self._send_queued(w, [_run_of(e, e.payload) for e in queued])

    def _start_queued(self, w: WorkerHandle) -> None:
        """``w`` finished its run and takes the first one queued behind it (it claims it next)."""
        self._occupy(w, w.queued.popleft(), self.mono(), self.clock())
        w.ticket = w.queued_from
        w.queued_from += 1

    def _occupy(self, w: WorkerHandle, e: Entry, now: float, wall: float) -> str:
        """``e`` runs on ``w`` from now (dispatched, or queued there): the lifecycle starts it and its
        timeout starts counting. Returns its payload text."""
        payload = self.lc.started(e, w, now, wall)
        w.task = e
        if e.timeout:
            w.timer = self.timers.add(now + e.timeout, "timeout", w)
        return payload

    def _take_back(self, w: WorkerHandle) -> None:
        """Revoke the runs queued on ``w`` before anything may change them. Those the worker claimed
        already start: the ``Done`` of the run before each is in the pipe, and handling them makes
        the last claimed one the running one. A worker stuck inside its claim (stopped or dying)
        is killed and buried."""
        queued = w.queued
        if not queued:
            return
        claimed = self.shm.revoke(w.index, w.queued_from, w.queued_from + len(queued) - 1, w.claim_lock)
        if claimed is None:
            w.kill("stuck while taking its next run")
            self._on_worker_exit(w)
            return
        started = claimed - w.queued_from + 1
        while len(queued) > max(started, 0):
            self.lc.unqueue(queued.pop())  # revoked: ready again
        if queued:
            self._drain_worker(w, all_pending=True)

    def _give_back(self, w: WorkerHandle) -> None:
        """The runs queued on ``w`` will never start (revoked, or its worker is gone): ready again."""
        while w.queued:
            self.lc.unqueue(w.queued.pop())

    def _take_back_all(self) -> None:
        """Every queued run back to the ready lanes (before a change to tasks, settings or order)."""
        if self.lc.reserved:
            for w in list(self.workers):
                if w is not None and w.queued:
                    self._take_back(w)
        self.lc.ready.outranked = False

    def _kill_run(self, w: WorkerHandle, reason: str) -> None:
        """Kill ``w`` for what its current run did (timeout, cancel grace), unless it finished that run
        meanwhile and took its queued one, which must not die for it."""
        if w.queued:
            ticket = w.ticket
            self._take_back(w)
            if w.ticket != ticket:
                return  # its run ended (and the queued one started) while we looked
        w.kill(reason)

    # ------------------------------------------------------------------ preemption by suspension (F12)

    def _suspend_workers(self, now: float) -> None:
        """Stop the workers of suspended victims; each one is replaced by a new spare worker."""
        self._take_back_all()  # a stopped worker must hold no queued run
        stop = self.lc.fx.take_suspends()
        for e in stop:
            w = e.worker
            if w is None or w.task is not e:
                continue
            w.signal_group(signal.SIGSTOP)
            if w.timer is not None:  # its timeout waits while it is stopped
                w.timeout_left = max(0.0, w.timer.due - now)
                self.timers.cancel(w.timer)
                w.timer = None
            self._add_worker()  # a new spare: the stopped worker keeps its task, the preemptor took the spare

    def _continue_worker(self, e: Entry, now: float) -> None:
        w = e.worker
        if w is None:
            return
        w.signal_group(signal.SIGCONT)
        if w.timeout_left is not None:
            w.timer = self.timers.add(now + w.timeout_left, "timeout", w)
            w.timeout_left = None
        self._trim_pool()

    def _send_run(self, w: WorkerHandle, run: tuple) -> int:
        """Dispatch a ``protocol.Run`` (as a plain tuple) to idle ``w``; returns its ticket."""
        self._clear_stale_cancel(w, (run,))
        w.sent += 1
        self._send_bytes(w, pickle.dumps(run, pickle.HIGHEST_PROTOCOL))
        return w.sent

    def _send_queued(self, w: WorkerHandle, runs: list[tuple]) -> int:
        """Queue ``runs`` behind busy ``w``'s run, in one message; returns the first one's ticket."""
        self._clear_stale_cancel(w, runs)
        w.sent += len(runs)
        self._send_bytes(w, pickle.dumps(runs, pickle.HIGHEST_PROTOCOL))
        return w.sent - len(runs) + 1

    def _clear_stale_cancel(self, w: WorkerHandle, runs: Sequence[tuple]) -> None:
        """A cancel left in ``w``'s slot from an earlier run of one of these tasks (a preemption) is stale."""
        cancel = self.shm.cancel_of(w.index)
        if cancel and any(run[0] == cancel for run in runs):
            self.shm.set_cancel(w.index, 0)

    @staticmethod
    def _send_bytes(w: WorkerHandle, data: bytes) -> None:
        # plain pickle: Connection.send builds a ForkingPickler per call; recv() on the other end is the same
        try:
            w.conn.send_bytes(data)
        except (OSError, ValueError):
            pass  # its sentinel fires next: handled as a worker death

    def _run_hook(self, w: WorkerHandle, task_id: int, task_type: str, payload: str, now: float) -> None:
        """An ``on_cancel`` hook of a cancelled task runs on ``w``, bounded by ``cancel_hook_timeout``."""
        w.hook = (task_id, task_type)
        self._send_run(w, (task_id, task_type, payload, 0, "", task_type, 0, None, "on_cancel", None, None, None))
        w.timer = self.timers.add(now + self.cancel_hook_timeout, "hook", w)

    def _signal_cancels(self, now: float) -> None:
        """Runs the lifecycle asked to stop: their workers see ``ctx.cancelled`` and get a grace period."""
        if not self.lc.fx.signals:
            return
        signals = self.lc.fx.take_signals()
        for e in signals:
            w = e.worker
            if w is not None and w.task is e and e.id in self.lc.suspended:
                w.kill("cancelled while suspended")  # a stopped worker cannot notice ctx.cancelled
            elif w is not None and w.task is e:
                self.shm.set_cancel(w.index, e.id)
                self.timers.cancel(w.timer)  # a timeout gives way to the kill grace
                w.timer = self.timers.add(now + CANCEL_GRACE, "kill", w)

    # ------------------------------------------------------------------ what workers send

    def _drain_worker(self, w: WorkerHandle, all_pending: bool = False) -> None:
        """Handle one message (the poll set reports the fd again if more wait), or all of them."""
        conn = w.conn
        if all_pending:
            self.read_ahead.add(w)
        elif w in self.read_ahead and not conn.poll():
            return  # read already, after the poll set said so (a take-back earlier in this step)
        try:
            while True:
                msg = conn.recv()
                if type(msg) is tuple:  # protocol.Done, sent as a plain tuple
                    self._on_done(w, protocol.Done._make(msg))
                elif isinstance(msg, protocol.Spawn):
                    self._on_spawn(w, msg)
                elif isinstance(msg, protocol.Ready):
                    if msg.error:
                        log.error("worker could not start", pid=msg.pid, error=msg.error)
                        w.kill("registry failed to load")
                    else:
                        w.ready = True
                        self.idle.append(w)
                        self.pool.crashes.pop(w.index, None)
                elif isinstance(msg, protocol.Goodbye):
                    w.stopping = True
                if not all_pending or not conn.poll():
                    return
        except (EOFError, OSError):
            pass  # the sentinel reports the death

    def _release(self, w: WorkerHandle) -> Entry | None:
        """The worker is done with its task (if any): free the slot, end its timer."""
        e = w.task
        self.timers.cancel(w.timer)
        w.timer = None
        if e is not None:
            w.task = None
            self.lc.run_ended(e)
            self.tracker.forget(e.id)
        return e

    def _on_done(self, w: WorkerHandle, msg: protocol.Done) -> None:
        if w.hook is not None:
            task_id, task_type = w.hook
            w.hook = None
            self.timers.cancel(w.timer)
            w.timer = None
            if msg.error_kind is not None:
                log.warning("on_cancel hook failed", task_id=task_id, task_type=task_type, error=(msg.error or "")[:500])
            self._back_to_idle(w)
            return
        if w.task is None or w.task.id != msg.task_id:
            return
        e = self._release(w)
        assert e is not None
        if w.queued:
            self._start_queued(w)
        else:
            self._back_to_idle(w)
        if e.cancelled:
            return  # already in history (cancelled, superseded, failed by its children)
        ended = Ended(msg.started_at, msg.finished_at, msg.duration * 1000.0,
                      (msg.read_bytes, msg.write_bytes, msg.net_rx_bytes, msg.net_tx_bytes))
        now, wall = self.mono(), self.clock()
        if msg.error_kind is None:
            self.tracker.completed(e.task_type, ended.duration_ms)
            self.lc.completed(e, msg.result, ended, now, wall)
        else:
            self.lc.failed(e, msg.error or "", permanent=msg.error_kind == "permanent", retry_after=msg.retry_after,
                           ended=ended, now=now, wall=wall)

    def _back_to_idle(self, w: WorkerHandle) -> None:
        if w.ready and not w.stopping and w.kill_reason is None:
            self.idle.append(w)

    def _on_spawn(self, w: WorkerHandle, msg: protocol.Spawn) -> None:
        """Submissions from inside a running task; answered on its pipe after the commit."""
        self._take_back_all()
        e = w.task
        try:
            if e is None or e.id != msg.task_id or e.cancelled:
                raise RuntimeError("the task that submitted is no longer running")
            items = check_items(msg.items)
            parent = {"child": e.id, "sibling": e.parent_id, "plain": None}.get(msg.kind, -1)
            if parent == -1 or (msg.kind == "sibling" and parent is None):
                raise ValueError(f"task {e.id} has no parent, so it has no siblings" if msg.kind == "sibling"
                                 else f"unknown spawn kind {msg.kind!r}")
            items = [it._replace(parent=parent) for it in items]
            reply: Any = protocol.Reply(self._apply_submissions(items))
            self.worker_acks.append((w, reply))
        except Exception as e:  # noqa: BLE001 - the task gets the error, the loop goes on
            self._send_to_worker(w, protocol.ErrorReply.of(e))

    def _send_to_worker(self, w: WorkerHandle, msg: Any) -> None:
        try:
            w.conn.send(msg)
        except (OSError, ValueError):
            pass  # its sentinel reports the death

    def _on_worker_exit(self, w: WorkerHandle) -> None:
        if self.workers[w.index] is not w:
            return  # already handled (or shut down)
        if w.conn.poll():
            self._drain_worker(w, all_pending=True)  # a result sent just before the exit still counts
        code = w.exitcode()
        w.kill_group()  # whatever its task started dies with it
        self._unwatch(w.conn.fileno())
        self._unwatch(w.sentinel)
        if w in self.idle:
            self.idle.remove(w)
        try:
            w.conn.close()
        except OSError:
            pass
        self.workers[w.index] = None
        if w.hook is not None:
            log.warning("on_cancel hook ended with its worker", task_id=w.hook[0], cause=w.kill_reason or describe_exit(code))
            w.hook = None
        planned = w.stopping and w.task is None
        if w.queued:  # never claimed: the worker died during the run before them
            self._give_back(w)
        unclaimed = w.task is not None and self.shm.claimed(w.index) < w.ticket
        e = self._release(w)
        if e is not None and not e.cancelled:
            if self.stopping or unclaimed:  # (unclaimed: it died between two runs; this one never began)
                self.lc.interrupted(e, self.mono())
            else:
                reason = w.kill_reason or f"worker process {w.pid} died: {describe_exit(code)}"
                if w.kill_reason and w.kill_reason.startswith("timed out"):
                    reason = f"{w.kill_reason}; worker process {w.pid} {describe_exit(code)}"
                self.lc.failed(e, reason, permanent=False, retry_after=None, ended=None, now=self.mono(),
                               wall=self.clock())
        if not planned and not self.stopping:
            if w.kill_reason is None:
                self.pool.crashes[w.index] = self.pool.crashes.get(w.index, 0) + 1
                log.warning("worker died", pid=w.pid, cause=describe_exit(code))
            delay = self.pool.respawn_delay(w.index)
            if delay:
                self.timers.add(self.mono() + delay, "respawn", w.index)
            else:
                self._to_spawn.append(w.index)

    # ------------------------------------------------------------------ worker timers

    def _fire_worker_timers(self, now: float) -> None:
        for t in self.timers.pop_due(now):
            if t.kind == "respawn":
                if self.workers[t.payload] is None and not self.stopping:
                    self._to_spawn.append(t.payload)
                continue
            w: WorkerHandle = t.payload
            if w.timer is not t:
                continue
            w.timer = None
            if t.kind == "hook" and w.hook is not None:
                w.kill(f"the on_cancel hook ran past {self.cancel_hook_timeout:g}s")
            elif w.task is None:
                continue
            elif t.kind == "timeout" and not w.task.cancelled:
                self._kill_run(w, f"timed out after {w.task.timeout:g}s")
            elif t.kind == "kill":
                self._kill_run(w, "did not stop within the cancel grace period")

    # ------------------------------------------------------------------ shutdown

    def _stop_workers(self) -> None:
        """Runs still going are re-queued (not failed); idle workers are asked to stop, the rest killed."""
        for w in list(self.workers):
            if w is None:
                continue
            if w.queued:  # they never start: the worker is stopped below
                self._give_back(w)
            if w.task is not None or w.hook is not None:
                self.shm.set_cancel(w.index, w.task.id if w.task is not None else w.hook[0] if w.hook else 0)
                e = self._release(w)
                if e is not None and not e.cancelled:
                    self.lc.interrupted(e, self.mono())
                w.hook = None
                w.kill("shutdown")
            else:
                w.stopping = True
                try:
                    w.conn.send(protocol.Stop())
                except (OSError, ValueError):
                    w.kill("shutdown")
        deadline = time.monotonic() + 5.0
        for w in self.workers:
            if w is None:
                continue
            w.process.join(timeout=max(deadline - time.monotonic(), 0.0))
            if w.process.exitcode is None:
                w.kill("shutdown")
                w.process.join(timeout=2.0)
        for w in self.workers:
            if w is not None:
                w.kill_group()  # what tasks started and left running (a `sleep 300` …) ends with them
                try:
                    w.conn.close()
                except OSError:
                    pass
        for fd, (kind, _) in list(self._fds.items()):
            if kind in ("worker", "sentinel"):
                self._unwatch(fd)
        self.workers = [None] * len(self.workers)
        self.idle.clear()


def _queue_depth(average_ms: float | None) -> int:
    """How many runs to queue behind a run of a type whose runs average ``average_ms``."""
    if average_ms is None or average_ms >= QUEUE_AHEAD_MS:
        return 1
    return min(QUEUE_DEPTH_MAX, int(QUEUE_AHEAD_MS / max(average_ms, 1e-3)))


def _run_of(e: Entry, payload: str) -> tuple:
    """The ``protocol.Run`` of entry ``e`` as the plain tuple the worker receives."""
    x = e.x
    phase = x.phase if x is not None else "execute"
    return (e.id, e.task_type, payload, e.retry_count, e.key, e.label, e.priority, e.parent_id, phase,
            x.memo if x is not None and phase == "finalize" else None, e.group, e.tags)
