"""The default backend: forked worker processes on this host, one duplex pipe each.

Workers come from the clean fork server of ``workers.pool`` (started before the
coordinator opens DuckDB). This module owns them as the loop sees them: which
are idle, the runs sent to each, the runs queued behind a busy worker and the
ticket protocol that takes them back (``shm.py``: claim against revoke under
one lock per slot), the cancel flag of each slot, SIGSTOP/SIGCONT for
suspended runs, respawns (slowed down for a slot that keeps crashing), the
on_cancel hooks and their time limit, and stopping the pool.

What it learns it reports to the host (``runs.Runs``): a ``Done`` becomes
``run_done`` (with the queued run the worker took next, if any), a worker that
dies silently ``run_lost`` with the signal or exit code in words, a run that
never began ``run_interrupted``; it never decides a task's outcome itself.
Imports leaves, the worker pool and the core's entry type.
"""

from __future__ import annotations

import pickle
import signal
import time
from collections.abc import Sequence
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

import structlog

from taskmill import protocol
from taskmill.shm import OUTSTANDING_MAX
from taskmill.workers.pool import WorkerHandle, WorkerPool, describe_exit

if TYPE_CHECKING:
    from taskmill.config import CoordinatorConfig
    from taskmill.coordinator.backends import Host
    from taskmill.coordinator.core.entry import Entry
    from taskmill.shm import SharedState

__all__ = ["LocalProcessBackend"]

log = structlog.get_logger("taskmill.coordinator")

#: Longest the coordinator waits for a new worker's ``Ready``.
WORKER_READY_TIMEOUT = 60.0
#: About how much work (ms) to queue behind a busy worker's run, in one message: runs of a task type
#: that averages a tenth of this get ten queued (one wake-up of the worker for ten runs); a type
#: whose runs take this long or longer, or have no average yet, one.
QUEUE_AHEAD_MS = 5.0
#: Most runs queued behind one run.
QUEUE_DEPTH_MAX = 16


class LocalProcessBackend:
    """Forked worker processes (see the module docstring)."""

    suspends = True

    def __init__(self, config: CoordinatorConfig, shm: SharedState, registry_path: str) -> None:
        self.pool = WorkerPool(registry_path, shm.name)  # the fork server starts here, before DuckDB
        self.shm = shm
        self.max_executors = shm.slots
        self.hook_timeout = config.cancel_hook_timeout
        admission = config.admission
        self.spare = 1 if admission.preempt_priority is not None and admission.preemption == "suspend" else 0
        self.handles: list[WorkerHandle | None] = [None] * config.max_concurrency
        self.idle_workers: list[WorkerHandle] = []
        self.suspended: set[int] = set()  # slots whose worker is stopped with its run
        self._retired: set[int] = set()  # slots of workers stopped on purpose (trimmed): reused first
        self._over = False  # more workers than wanted, none idle to stop when last trimmed
        self._to_spawn: list[int] = []
        self._respawn_pending = False
        self.stopping = False
        self.host: Host

    # ------------------------------------------------------------------ starting workers

    def open(self, host: Host) -> None:
        """Spawn the first worker and wait for it: a registry that cannot load fails start-up."""
        self.host = host
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
                    self.idle_workers.append(first)
                    continue
            if not first.process.is_alive() or msg is None:
                raise RuntimeError(f"the first worker died while starting: {describe_exit(first.exitcode())}")
        for i in range(1, len(self.handles)):
            self._spawn(i)
        if self.spare:  # one more worker than slots: a preemptor starts at once
            self._add_worker()

    def workers(self) -> int:
        return sum(1 for w in self.handles if w is not None)

    def grow(self, n: int) -> None:
        while self.workers() < n and self._add_worker():
            pass

    def _add_worker(self) -> bool:
        """Start one more worker: in the slot of one retired on purpose, else a new slot of the
        segment. False when the segment is full (or the pool stops)."""
        if self.stopping:
            return False
        for i in sorted(self._retired):
            if self.handles[i] is None:
                self._retired.discard(i)
                self._spawn(i)
                return True
        if len(self.handles) < self.shm.slots:
            self.handles.append(None)
            self._spawn(len(self.handles) - 1)
            return True
        return False

    def _trim(self) -> None:
        """Stop idle workers beyond the slots, the spare and the suspended runs' (preemption leaves
        one more each time a suspended run continues or is cancelled)."""
        extra = self.workers() - (self.host.max_concurrency + self.spare + len(self.suspended))
        while extra > 0 and len(self.idle_workers) > self.spare:
            w = self.idle_workers.pop(0)
            w.stopping = True
            self._retired.add(w.index)
            self._send(w, protocol.Stop())
            extra -= 1
        # Too few idle now (the new spare still starting, the preemptor still busy): try again
        # whenever a worker falls idle or becomes ready, until the pool is back to size.
        self._over = extra > 0

    def _spawn(self, index: int) -> WorkerHandle:
        self.shm.reset_slot(index)  # tickets start over with the new worker
        w = self.pool.spawn(index)
        w.read_step = -1
        self.handles[index] = w
        self.host.watch(w.conn.fileno(), lambda: self._drain(w))
        self.host.watch(w.sentinel, lambda: self._exited(w))
        return w

    def _respawn(self) -> None:
        """Start the workers of slots whose worker died (on the loop's next pass, see ``_exited``)."""
        self._respawn_pending = False
        spawn, self._to_spawn = self._to_spawn, []
        for index in spawn:
            if self.handles[index] is None and not self.stopping:
                self._spawn(index)
        if self.suspended or len(self.handles) > self.host.max_concurrency + 1:
            self._trim()  # a killed suspended worker came back as a new one

    def _respawn_soon(self, index: int) -> None:
        self._to_spawn.append(index)
        if not self._respawn_pending:
            self._respawn_pending = True
            self.host.call_at(self.host.mono(), self._respawn)

    # ------------------------------------------------------------------ runs

    def idle(self) -> int:
        return len(self.idle_workers)

    def claim(self) -> WorkerHandle | None:
        return self.idle_workers.pop() if self.idle_workers else None

    def start(self, w: WorkerHandle, e: Entry, run: tuple) -> None:
        """Dispatch ``run`` to idle ``w``: alone, it always starts."""
        w.task = e
        w.ticket = self._send_run(w, run)

    def start_hook(self, w: WorkerHandle, task_id: int, task_type: str, payload: str) -> None:
        """An ``on_cancel`` hook of a cancelled task runs on ``w``, bounded by ``cancel_hook_timeout``."""
        w.hook = (task_id, task_type)
        self._send_run(w, (task_id, task_type, payload, 0, "", task_type, 0, None, "on_cancel", None, None, None))
        w.timer = self.host.call_at(self.host.mono() + self.hook_timeout, lambda: self._hook_overran(w))

    def _hook_overran(self, w: WorkerHandle) -> None:
        w.timer = None
        if w.hook is not None:
            w.kill(f"the on_cancel hook ran past {self.hook_timeout:g}s")

    def _send_run(self, w: WorkerHandle, run: tuple) -> int:
        """Send a ``protocol.Run`` (as a plain tuple) to idle ``w``; returns its ticket."""
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

    @staticmethod
    def _send(w: WorkerHandle, msg: Any) -> None:
        try:
            w.conn.send(msg)
        except (OSError, ValueError):
            pass  # its sentinel reports the death

    def live(self, e: Entry) -> Any:
        w = e.worker
        return self.shm.read_slot(w.index) if w is not None else None

    # ------------------------------------------------------------------ runs queued on busy workers

    def queue_ahead(self) -> None:
        """Send each busy worker its next runs, so it starts them without waiting for the loop.
        The host picks them (``queue_next``); they stay pending until the worker takes them.
        Several go in one message behind a short run (``QUEUE_AHEAD_MS``), one behind a longer one."""
        host = self.host
        for w in self.handles:
            if (w is None or w.queued or w.task is None or w.queued_behind == w.ticket
                    or w.hook is not None or w.stopping or w.kill_reason is not None or w.task.cancelled):
                continue  # (once per run: runs taken back wait in the pipe until the worker reads past them)
            runner = w.task
            depth = _queue_depth(host.average_ms(runner.task_type))
            if w.sent + depth - self.shm.claimed(w.index) > OUTSTANDING_MAX:
                continue  # the worker is far behind in its pipe (runs taken back): not now
            queued = w.queued
            while len(queued) < depth:
                e = host.queue_next(runner)
                if e is None:
                    break
                queued.append(e)
            if not queued:
                continue  # the most urgent task holds something else than this run: not here
            w.queued_behind = w.ticket
            w.queued_from = self._send_queued(w, [_run_of_queued(e) for e in queued])

    def take_back(self, e: Entry | None = None) -> None:
        """Revoke the runs queued on every worker (or on the one holding ``e``)."""
        for w in list(self.handles):
            if w is not None and w.queued and (e is None or e in w.queued):
                self._take_back(w)

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
            self._exited(w)
            return
        started = claimed - w.queued_from + 1
        while len(queued) > max(started, 0):
            self.host.unqueue(queued.pop())  # revoked: ready again
        if queued:
            self._drain(w, all_pending=True)

    def _give_back(self, w: WorkerHandle) -> None:
        """The runs queued on ``w`` will never start (its worker is gone or stops): ready again."""
        while w.queued:
            self.host.unqueue(w.queued.pop())

    # ------------------------------------------------------------------ stopping runs

    def cancel(self, e: Entry) -> None:
        w = e.worker
        if w is not None and w.task is e:
            self.shm.set_cancel(w.index, e.id)

    def kill(self, e: Entry, reason: str) -> None:
        """Kill ``e``'s worker for what its run did (timeout, cancel grace), unless it finished that
        run meanwhile and took its queued one, which must not die for it."""
        w = e.worker
        if w is None or w.task is not e:
            return
        if w.queued:
            ticket = w.ticket
            self._take_back(w)
            if w.ticket != ticket:
                return  # its run ended (and the queued one started) while we looked
        w.kill(reason)

    def suspend(self, e: Entry) -> None:
        """Stop ``e``'s worker (SIGSTOP, with what its task started); a new spare worker replaces it."""
        w = e.worker
        if w is None or w.task is not e:
            return
        w.signal_group(signal.SIGSTOP)
        self.suspended.add(w.index)
        self._add_worker()  # a new spare: the stopped worker keeps its task, the preemptor took the spare

    def resume(self, e: Entry) -> None:
        w = e.worker
        if w is None:
            return
        w.signal_group(signal.SIGCONT)
        self.suspended.discard(w.index)
        self._trim()

    # ------------------------------------------------------------------ what workers send

    def _drain(self, w: WorkerHandle, all_pending: bool = False) -> None:
        """Handle one message (the poll set reports the fd again if more wait), or all of them."""
        conn = w.conn
        step = self.host.step_no
        if all_pending:
            w.read_step = step
        elif w.read_step == step and not conn.poll():
            return  # read already, after the poll set said so (a take-back earlier in this step)
        try:
            while True:
                msg = conn.recv()
                if type(msg) is tuple:  # protocol.Done, sent as a plain tuple
                    self._done(w, protocol.Done._make(msg))
                elif isinstance(msg, protocol.Progress):
                    if w.task is not None and w.task.id == msg.task_id:
                        self.host.run_progress(w.task, msg.fraction, msg.message)
                elif isinstance(msg, protocol.Spawn):
                    self._spawned(w, msg)
                elif isinstance(msg, protocol.Ready):
                    if msg.error:
                        log.error("worker could not start", pid=msg.pid, error=msg.error)
                        w.kill("registry failed to load")
                    else:
                        w.ready = True
                        self.idle_workers.append(w)
                        self.pool.crashes.pop(w.index, None)
                        if self._over:
                            self._trim()
                elif isinstance(msg, protocol.Goodbye):
                    w.stopping = True
                if not all_pending or not conn.poll():
                    return
        except (EOFError, OSError):
            pass  # the sentinel reports the death

    def _done(self, w: WorkerHandle, msg: protocol.Done) -> None:
        if w.hook is not None:
            task_id, task_type = w.hook
            w.hook = None
            self.host.cancel_timer(w.timer)
            w.timer = None
            if msg.error_kind is not None:
                log.warning("on_cancel hook failed", task_id=task_id, task_type=task_type, error=(msg.error or "")[:500])
            self._back_to_idle(w)
            return
        e = w.task
        if e is None or e.id != msg.task_id:
            return
        then = None
        if w.queued:  # it claimed the first run queued behind this one: that one runs now
            then = w.queued.popleft()
            w.task = then
            w.ticket = w.queued_from
            w.queued_from += 1
        else:
            w.task = None
            self._back_to_idle(w)
        self.host.run_done(e, msg, then)

    def _back_to_idle(self, w: WorkerHandle) -> None:
        if w.ready and not w.stopping and w.kill_reason is None:
            self.idle_workers.append(w)
            if self._over:
                self._trim()

    def _spawned(self, w: WorkerHandle, msg: protocol.Spawn) -> None:
        """Submissions from inside a running task; answered on its pipe once durable."""
        e = w.task
        self.host.run_spawn(e if e is not None and e.id == msg.task_id else None, msg.task_id, msg.kind, msg.items,
                            lambda reply: self._send(w, reply))

    def _exited(self, w: WorkerHandle) -> None:
        if self.handles[w.index] is not w:
            return  # already handled (or shut down)
        if w.conn.poll():
            self._drain(w, all_pending=True)  # a result sent just before the exit still counts
        code = w.exitcode()
        w.kill_group()  # whatever its task started dies with it
        self.host.unwatch(w.conn.fileno())
        self.host.unwatch(w.sentinel)
        if w in self.idle_workers:
            self.idle_workers.remove(w)
        try:
            w.conn.close()
        except OSError:
            pass
        self.handles[w.index] = None
        self.suspended.discard(w.index)
        self.host.cancel_timer(w.timer)
        w.timer = None
        if w.hook is not None:
            log.warning("on_cancel hook ended with its worker", task_id=w.hook[0],
                        cause=w.kill_reason or describe_exit(code))
            w.hook = None
        planned = w.stopping and w.task is None
        if w.queued:  # never claimed: the worker died during the run before them
            self._give_back(w)
        e, w.task = w.task, None
        if e is not None:
            if self.stopping or self.shm.claimed(w.index) < w.ticket:
                self.host.run_interrupted(e)  # (unclaimed: it died between two runs; this one never began)
            else:
                reason = w.kill_reason or f"worker process {w.pid} died: {describe_exit(code)}"
                if w.kill_reason and w.kill_reason.startswith("timed out"):
                    reason = f"{w.kill_reason}; worker process {w.pid} {describe_exit(code)}"
                self.host.run_lost(e, reason)
        if not planned and not self.stopping:
            if w.kill_reason is None:
                self.pool.crashes[w.index] = self.pool.crashes.get(w.index, 0) + 1
                log.warning("worker died", pid=w.pid, cause=describe_exit(code))
            delay = self.pool.respawn_delay(w.index)
            if delay:
                self.host.call_at(self.host.mono() + delay, lambda: self._respawn_soon(w.index))
            else:
                self._respawn_soon(w.index)

    # ------------------------------------------------------------------ shutdown

    def shutting_down(self) -> None:
        self.stopping = True

    def stop(self) -> None:
        """Runs still going are interrupted (re-queued, not failed); idle workers are asked to stop,
        the rest killed."""
        self.stopping = True
        for w in list(self.handles):
            if w is None:
                continue
            if w.queued:  # they never start: the worker is stopped below
                self._give_back(w)
            if w.task is not None or w.hook is not None:
                self.shm.set_cancel(w.index, w.task.id if w.task is not None else w.hook[0] if w.hook else 0)
                e, w.task = w.task, None
                if e is not None:
                    self.host.run_interrupted(e)
                w.hook = None
                w.kill("shutdown")
            else:
                w.stopping = True
                try:
                    w.conn.send(protocol.Stop())
                except (OSError, ValueError):
                    w.kill("shutdown")
        deadline = time.monotonic() + 5.0
        for w in self.handles:
            if w is None:
                continue
            w.process.join(timeout=max(deadline - time.monotonic(), 0.0))
            if w.process.exitcode is None:
                w.kill("shutdown")
                w.process.join(timeout=2.0)
        for w in self.handles:
            if w is not None:
                w.kill_group()  # what tasks started and left running (a `sleep 300` …) ends with them
                self.host.unwatch(w.conn.fileno())
                self.host.unwatch(w.sentinel)
                try:
                    w.conn.close()
                except OSError:
                    pass
        self.handles = [None] * len(self.handles)
        self.idle_workers.clear()

    def close(self) -> None:
        """Kill whatever is left and stop the fork server (at exit, also after a failure)."""
        for w in self.handles:
            if w is not None:
                try:
                    w.kill("coordinator exiting")
                except Exception:  # noqa: BLE001 - keep going: the rest matters more
                    pass
        self.pool.close()


def _queue_depth(average_ms: float | None) -> int:
    """How many runs to queue behind a run of a type whose runs average ``average_ms``."""
    if average_ms is None or average_ms >= QUEUE_AHEAD_MS:
        return 1
    return min(QUEUE_DEPTH_MAX, int(QUEUE_AHEAD_MS / max(average_ms, 1e-3)))


def _run_of_queued(e: Entry) -> tuple:
    """The ``protocol.Run`` of a queued entry (plain: no phase, memo or lifecycle extras)."""
    return (e.id, e.task_type, e.payload, e.retry_count, e.key, e.label, e.priority, e.parent_id, "execute", None,
            e.group, e.tags)
