"""The worker process: receive a task, run it, send the outcome, repeat.

Runs in processes forked from the clean fork server (never from a process with
DuckDB open). Imports only leaves, the context and the preloaded registry.
``handle_run`` is a plain function, testable without processes.

A worker that leaves on purpose sends ``Goodbye`` first; the coordinator
therefore reads a silent exit as a crash. If the coordinator dies, the
lifeline pipe reaches EOF and the worker exits at once, even mid-task.
"""

from __future__ import annotations

import faulthandler
import json
import os
import pickle
import signal
import threading
import time
import traceback
from typing import Any

from taskmill import protocol
from taskmill.context import TaskContext
from taskmill.errors import Permanent, Retryable
from taskmill.records import TaskRecord, TaskStatus
from taskmill.shm import WorkerSlot
from taskmill.workers import preload

__all__ = ["handle_run", "worker_main"]


def _watch_lifeline(lifeline: Any) -> None:
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(0)  # the coordinator is gone: nobody will read our result


def handle_run(msg: protocol.Run, registry: dict[str, Any], slot: WorkerSlot | None, conn: Any) -> protocol.Done:
    """Run one task and describe its outcome; never raises."""
    started = time.time()
    pid = os.getpid()
    if slot is not None:
        slot.start(pid, msg.task_id)
    domain = msg.task_type.split("::", 1)[0]
    record = TaskRecord(id=msg.task_id, task_type=msg.task_type, domain=domain, key=msg.key, label=msg.label,
                        priority=msg.priority, status=TaskStatus.RUNNING, retry_count=msg.attempt)
    send = None
    if conn is not None:
        def send(task_id: int, fraction: float | None, message: str | None) -> None:
            conn.send(protocol.Progress(task_id, fraction, message))
    ctx = TaskContext(record, slot=slot, send=send, domain_state=registry["domain_state"].get(domain),
                      global_state=registry["global_state"])
    result = error = kind = retry_after = None
    try:
        fn = registry["tasks"].get(msg.task_type)
        if fn is None:
            raise Permanent(f"task type {msg.task_type!r} is not registered with this scheduler")
        payload = json.loads(msg.payload)
        value = fn(ctx, **payload)
        try:
            result = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise Permanent(f"return value of {msg.task_type} is not JSON-serializable: {e}") from None
    except Permanent as e:
        kind, error = "permanent", _describe(e)
    except Retryable as e:
        kind, error, retry_after = "retryable", _describe(e), e.retry_after
    except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt inside a task are task errors too
        kind, error = "retryable", _describe(e)
    finished = time.time()
    io = ctx.io_totals
    if slot is not None:
        slot.clear(pid)
    return protocol.Done(msg.task_id, result, kind, error, retry_after, started, finished, *io)


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
    return f"{type(e).__name__}: {message}\n{tb}"[:20_000]


def worker_main(conn: Any, lifeline: Any, slot_index: int, shm_name: str) -> None:
    """Entry point of a worker process (target of the fork-server Process)."""
    faulthandler.enable()
    os.setpgid(0, 0)  # own process group: killing the worker also kills what its task started
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
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if type(msg) is tuple:  # protocol.Run, sent as a plain tuple
                done = handle_run(protocol.Run._make(msg), registry, slot, conn)
                conn.send_bytes(pickle.dumps(tuple(done), pickle.HIGHEST_PROTOCOL))
            elif isinstance(msg, protocol.Stop):
                conn.send(protocol.Goodbye(pid))
                return
    finally:
        slot.close()
