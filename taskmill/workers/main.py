"""The worker process: receive a task, run it, send the outcome, repeat.

Runs in processes forked from the clean fork server (never from a process with
DuckDB open). Imports only leaves, the context and the preloaded registry.
``handle_run`` is a plain function, testable without processes.

A worker that leaves on purpose sends ``Goodbye`` first; the coordinator
therefore reads a silent exit as a crash. If the coordinator dies, the
lifeline pipe reaches EOF and the worker exits at once, even mid-task.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable

from taskmill import protocol
from taskmill.context import TaskContext
from taskmill.domain import Defaults, as_submission, resolve
from taskmill.errors import InvalidSubmission, Permanent, Retryable, UnknownDomain, UnknownTaskType
from taskmill.outcomes import BatchOutcome, outcomes_from_wire
from taskmill.records import TaskRecord, TaskStatus
from taskmill.shm import WorkerSlot
from taskmill.workers import preload

__all__ = ["handle_run", "worker_main"]


#: Largest task result, as JSON text (bytes); a larger one fails the task (the coordinator checks too).
MAX_RESULT_BYTES = 16 * 1024 * 1024


def _watch_lifeline(lifeline: Any) -> None:
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    # The coordinator is gone: nobody will read our result. Take our process group with us
    # (what the task started), then ourselves.
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    finally:
        os._exit(0)


def handle_run(msg: protocol.Run, registry: dict[str, Any], slot: WorkerSlot | None, conn: Any,
               inbox: deque[Any] | None = None) -> protocol.Done:
    """Run one task and describe its outcome; never raises. ``inbox`` keeps runs that arrive
    while the task waits for the answer to a submission (the runs queued behind it)."""
    started = time.time()
    t0 = time.monotonic()
    pid = os.getpid()
    if slot is not None:
        slot.start(pid, msg.task_id)
    domain = msg.task_type.split("::", 1)[0]
    try:
        shown = json.loads(msg.payload)
    except ValueError:  # the run below reports it; the record just goes without
        shown = None
    record = TaskRecord(id=msg.task_id, task_type=msg.task_type, domain=domain, key=msg.key, label=msg.label,
                        priority=msg.priority, status=TaskStatus.RUNNING, payload=shown, retry_count=msg.attempt,
                        parent_id=msg.parent_id, group=msg.group, tags=json.loads(msg.tags) if msg.tags else {})
    send = submit = None
    if conn is not None:
        def send(task_id: int, fraction: float | None, message: str | None) -> None:
            conn.send(protocol.Progress(task_id, fraction, message))
        submit = _submitter(registry, conn, msg.task_id, deque() if inbox is None else inbox)
    ctx = TaskContext(record, slot=slot, send=send, submit=submit, domain_state=registry["domain_state"].get(domain),
                      global_state=registry["global_state"])
    result = error = kind = retry_after = None
    try:
        fns = registry.get(_PHASE_FUNCTIONS.get(msg.phase, "tasks"), {})
        fn = fns.get(msg.task_type)
        if fn is None:
            raise Permanent(f"task type {msg.task_type!r} has no {msg.phase} function registered with this scheduler")
        payload = json.loads(msg.payload) if shown is None else dict(shown)
        if msg.phase == "finalize":  # fn(ctx, memo, **payload): memo is what the task's own run returned
            value = fn(ctx, None if msg.memo is None else json.loads(msg.memo), **payload)
        else:
            value = fn(ctx, **payload)
        result = _encode_result(msg.task_type, value)
    except Permanent as e:
        kind, error = "permanent", _describe(e)
    except Retryable as e:
        kind, error, retry_after = "retryable", _describe(e), e.retry_after
    except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt inside a task are task errors too
        kind, error = "retryable", _describe(e)
    duration = time.monotonic() - t0
    finished = time.time()
    io = ctx.io_totals
    if slot is not None:
        slot.clear(pid)
    return protocol.Done(msg.task_id, result, kind, error, retry_after, started, finished, duration, *io)


#: Which registry table holds the function of each phase of a run.
_PHASE_FUNCTIONS = {"execute": "tasks", "finalize": "finalizers", "on_cancel": "on_cancel"}


def _submitter(registry: dict[str, Any], conn: Any, task_id: int, inbox: deque[Any]) -> Callable[..., Any]:
    """What ``ctx.spawn_child``/``spawn_sibling``/``ctx.domain(...).submit`` call: resolve the
    submissions here (as the host does), send them, and wait for the committed outcomes."""
    domains = registry.get("domains", {})
    defaults = registry.get("defaults") or Defaults()

    def submit(kind: str, task: Any, payload: dict[str, Any], domain: str | None) -> Any:
        if domain is not None and domain not in domains:
            raise UnknownDomain(f"no domain named {domain!r}; registered: {sorted(domains)}")
        if kind == "check":
            return None
        batch = kind == "plain_batch"
        subs = [as_submission(t, {}, "submit_batch()") for t in task] if batch else [as_submission(task, payload)]
        items = []
        for i, sub in enumerate(subs):
            try:
                t = sub.task
                if t.qualified not in registry["tasks"]:
                    raise UnknownTaskType(f"task {t.qualified} was not registered when the scheduler started")
                if domain is not None and t.domain.name != domain:
                    raise UnknownTaskType(f"task {t.qualified} belongs to domain {t.domain.name!r}, not {domain!r}")
                items.append(tuple(resolve(sub, defaults)))
            except (ValueError, TypeError, LookupError) as e:
                if not batch:
                    raise
                raise InvalidSubmission(f"batch item {i} is invalid: {e}", index=i) from e
        if not items:
            return BatchOutcome(())
        conn.send(protocol.Spawn(task_id, "plain" if kind.startswith("plain") else kind, items))
        reply = conn.recv()
        while type(reply) in (tuple, list):  # runs sent behind this one came first: they wait their turn
            inbox.append(reply)
            reply = conn.recv()
        if isinstance(reply, protocol.ErrorReply):
            raise reply.exception()
        outcomes = outcomes_from_wire(reply.value)
        return BatchOutcome(outcomes) if batch else outcomes[0]

    return submit


def _encode_result(task_type: str, value: Any) -> str:
    """The return value as JSON text the store can keep; ``Permanent`` if there is none."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise Permanent(f"return value of {task_type} is not JSON-serializable: {type(e).__name__}: {e}") from None
    if not text.isascii():
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise Permanent(f"return value of {task_type} is not valid UTF-8 text: {e}") from None
    else:
        size = len(text)
    if size > MAX_RESULT_BYTES:
        raise Permanent(f"return value of {task_type} is {size} bytes as JSON; the limit is {MAX_RESULT_BYTES}")
    return text


def _describe(e: BaseException) -> str:
    """Type, message and traceback as text; never raises, even if ``str(e)`` does."""
    try:
        message = str(e)
    except BaseException as inner:  # noqa: BLE001
        message = f"<str() of the exception failed: {type(inner).__name__}>"
    try:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=20))
    except BaseException:  # noqa: BLE001
        tb = "(traceback unavailable)"
    text = f"{type(e).__name__}: {message}\n{tb}"[:20_000]
    if not text.isascii():  # lone surrogates cannot be stored as text; keep them visible, escaped
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _run(run: tuple, registry: dict[str, Any], slot: WorkerSlot, conn: Any, inbox: deque[Any]) -> None:
    done = handle_run(protocol.Run._make(run), registry, slot, conn, inbox)
    conn.send_bytes(pickle.dumps(tuple(done), pickle.HIGHEST_PROTOCOL))


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent (the fork server, which ends with the
    coordinator) is gone. The lifeline thread does the same, but a worker stopped by a
    preemption (SIGSTOP) runs no thread: without this it would outlive a killed coordinator."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the lifeline is all there is


def worker_main(conn: Any, lifeline: Any, slot_index: int, shm_name: str, claim_lock: Any) -> None:
    """Entry point of a worker process (target of the fork-server Process)."""
    faulthandler.enable()
    for stream in (sys.stdout, sys.stderr):  # a pipe to the host (taskmill.relay): each line goes at once,
        if hasattr(stream, "reconfigure"):  # whole (PYTHONUNBUFFERED's write-through sent print()'s text and
            stream.reconfigure(line_buffering=True, write_through=False)  # its newline apart: lines tore)
    os.setpgid(0, 0)  # own process group: killing the worker also kills what its task started
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when we stop
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True, name="taskmill-lifeline").start()
    pid = os.getpid()
    try:
        registry = preload.load()
        slot = WorkerSlot(shm_name, slot_index)
    except BaseException as e:  # noqa: BLE001
        conn.send(protocol.Ready(pid, error=_describe(e)))
        return
    conn.send(protocol.Ready(pid))
    ticket = 0  # the n-th Run received is ticket n (the coordinator counts the same way)
    inbox: deque[Any] = deque()  # runs received while a task waited for a reply, in order
    try:
        while True:
            try:
                msg = inbox.popleft() if inbox else conn.recv()
            except (EOFError, OSError):
                return
            if type(msg) is tuple:  # a dispatched protocol.Run, sent as a plain tuple: it starts
                ticket += 1
                slot.claim(ticket, claim_lock, queued=False)
                _run(msg, registry, slot, conn, inbox)
            elif type(msg) is list:  # runs queued behind the last one, in order
                for run in msg:
                    ticket += 1
                    if slot.claim(ticket, claim_lock, queued=True):  # else taken back while it waited
                        _run(run, registry, slot, conn, inbox)
            elif isinstance(msg, protocol.Stop):
                conn.send(protocol.Goodbye(pid))
                return
    finally:
        slot.close()
