"""The systems under test behind one small interface.

Each system is a context manager that starts from a fresh temporary directory,
warms up (every worker has run a task, so start-up is never timed) and cleans
everything up on exit:

    submit(kind, payloads)  hand over tasks (``kind`` names a body in bench.tasks)
    wait_all()              block until everything submitted is finished and recorded
    verify_finished()       untimed check that every task succeeded; returns the task results
    verify_queued()         untimed check that every submission is durably queued
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from typing import Any

import taskmill as tm
from bench import tasks
from bench.harness import chunks, poll_until
from taskmill.shm import SegmentReader

__all__ = ["HUEY_ERROR", "HueySystem", "PoolSystem", "System", "TaskmillSystem"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Longest any single phase may take before the benchmark gives up.
PHASE_TIMEOUT = 600.0
#: Workers of every system (the machine has 2 cores).
WORKERS = 2

try:
    from bench import huey_app
    HUEY_ERROR: str | None = None
except ImportError as _e:  # huey is an optional extra: pip install -e .[bench]
    huey_app = None  # type: ignore[assignment]
    HUEY_ERROR = f"huey is not importable ({_e}); install it with `pip install -e .[bench]`"


class System:
    """Base: owns an ExitStack with a fresh temporary directory."""

    name = "?"

    def __init__(self) -> None:
        self.submitted = 0
        self._stack = ExitStack()
        self.workdir = ""

    def __enter__(self) -> System:
        try:
            self.workdir = self._stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{self.name}-"))
            self.start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def start(self) -> None:
        raise NotImplementedError

    def submit(self, kind: str, payloads: list[dict]) -> None:
        raise NotImplementedError

    def wait_all(self) -> None:
        raise NotImplementedError

    def verify_finished(self) -> list[Any]:
        raise NotImplementedError

    def verify_queued(self) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- taskmill


class TaskmillSystem(System):
    """taskmill: ``submit_batch`` in chunks, ``wait_idle``; history is the record."""

    name = "taskmill"
    TYPES = {"noop": tasks.tm_noop, "busy": tasks.tm_busy, "sleeper": tasks.tm_sleeper}

    def __init__(self, chunk: int) -> None:
        super().__init__()
        self.chunk = chunk
        self.last_warmup_id = 0

    def start(self) -> None:
        self.sched = self._stack.enter_context(tm.Scheduler(
            os.path.join(self.workdir, "store.duckdb"), [tasks.DOMAIN], max_concurrency=WORKERS,
            shutdown=tm.Shutdown.hard()))
        self.handle = self.sched.domain(tasks.DOMAIN)
        self.reader = SegmentReader(self.sched.shm_name)
        self._stack.callback(self.reader.close)
        self._warm_up()

    def _warm_up(self) -> None:
        """Run no-ops until every worker slot shows a pid (the second worker starts asynchronously)."""
        for round_ in range(50):
            warm = [tasks.tm_noop.call(i=k, run=f"warmup-{round_}") for k in range(4 * WORKERS)]
            out = self.handle.submit_batch(warm)
            self.sched.wait_idle(timeout=PHASE_TIMEOUT)
            self.last_warmup_id = max(out.inserted)
            if all(self.reader.slot(k).pid for k in range(WORKERS)):
                return
        raise RuntimeError("taskmill workers did not all start")

    def counter(self, name: str) -> int:
        """A live counter from shared memory (the coordinator publishes at most every 20 ms)."""
        return self.reader.counters()[name]

    def submit(self, kind: str, payloads: list[dict]) -> None:
        task = self.TYPES[kind]
        for part in chunks(payloads, self.chunk):
            self.handle.submit_batch([task.call(**p) for p in part])
        self.submitted += len(payloads)

    def wait_all(self) -> None:
        self.sched.wait_idle(timeout=PHASE_TIMEOUT)

    def verify_finished(self) -> list[Any]:
        rows = self.sched.sql("SELECT status, result FROM task_history WHERE id > ?", [self.last_warmup_id])
        completed = [r["result"] for r in rows if r["status"] == "completed"]
        if len(completed) != self.submitted or len(rows) != self.submitted:
            raise AssertionError(f"taskmill recorded {len(completed)} completed of {len(rows)} history rows, "
                                 f"expected {self.submitted} completed")
        return completed  # (sql() decodes the JSON column)

    def verify_queued(self) -> None:
        active = self.sched.store.pending_count() + self.sched.store.running_count()
        if active != self.submitted:
            raise AssertionError(f"taskmill holds {active} active tasks, expected {self.submitted}")


# --------------------------------------------------------------------------- ProcessPoolExecutor


class PoolSystem(System):
    """concurrent.futures.ProcessPoolExecutor: one ``submit`` per task, then wait on all futures."""

    name = "ProcessPoolExecutor"
    FUNCS = {"noop": tasks.noop, "busy": tasks.busy, "sleeper": tasks.sleeper}

    def start(self) -> None:
        self.pool = self._stack.enter_context(cf.ProcessPoolExecutor(max_workers=WORKERS))
        self.futures: list[cf.Future] = []
        list(self.pool.map(tasks.noop, range(4 * WORKERS), ["warmup"] * 4 * WORKERS))

    def submit(self, kind: str, payloads: list[dict]) -> None:
        fn = self.FUNCS[kind]
        submit = self.pool.submit
        self.futures.extend([submit(fn, **p) for p in payloads])
        self.submitted += len(payloads)

    def wait_all(self) -> None:
        cf.wait(self.futures, timeout=PHASE_TIMEOUT)

    def verify_finished(self) -> list[Any]:
        failed = [f for f in self.futures if not f.done() or f.exception() is not None]
        if failed or len(self.futures) != self.submitted:
            raise AssertionError(f"{len(failed)} ProcessPoolExecutor futures failed or unfinished")
        return [f.result() for f in self.futures]


# --------------------------------------------------------------------------- Huey


class HueySystem(System):
    """Huey with SqliteHuey storage; a ``huey_consumer`` subprocess with 2 process workers.

    With ``consumer=False`` nothing runs the tasks (W3 measures enqueueing alone).
    """

    name = "Huey"
    #: Consumer flags: process workers, no periodic-task scheduler; polling delays are Huey's defaults.
    CONSUMER_ARGS = ("-w", str(WORKERS), "-k", "process", "-n", "-q")
    #: Seconds between result-count polls while waiting (each poll is one SQLite query).
    POLL = 0.01

    def __init__(self, consumer: bool = True) -> None:
        if huey_app is None:
            raise RuntimeError(HUEY_ERROR)
        super().__init__()
        self.with_consumer = consumer
        self.consumer: subprocess.Popen | None = None

    def start(self) -> None:
        db = os.path.join(self.workdir, "huey.db")
        self.app = huey_app.make_huey(db)
        self._stack.callback(self.app.huey.storage.close)
        if self.with_consumer:
            self._start_consumer(db)
            self.app.noop(i=-1, run="warmup").get(blocking=True, timeout=60)  # consumer is up and polling
        assert self.app.huey.result_count() == 0, "the warm-up result was not consumed"

    def _start_consumer(self, db: str) -> None:
        env = dict(os.environ, **{huey_app.DB_ENV: db})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
        log = self._stack.enter_context(open(os.path.join(self.workdir, "consumer.log"), "wb"))
        self.consumer = subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "bench.huey_app.huey", *self.CONSUMER_ARGS],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._stack.callback(self._stop_consumer)

    def _stop_consumer(self) -> None:
        """Graceful stop (SIGINT), then SIGKILL to the consumer's own process group."""
        p = self.consumer
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)

    def _check_consumer(self) -> None:
        """Fail fast if the consumer died or logged an error (a lost result would otherwise hang the wait)."""
        if self.consumer is None:
            return
        with open(os.path.join(self.workdir, "consumer.log"), errors="replace") as f:
            log = f.read()
        if self.consumer.poll() is not None or "ERROR" in log:
            first = log[log.find("ERROR"):][:300] if "ERROR" in log else log[-300:]
            last = log.strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"huey consumer failed (exit code {self.consumer.returncode}): {first.splitlines()[0]} "
                               f"... {last[0]}")

    def submit(self, kind: str, payloads: list[dict]) -> None:
        task = getattr(self.app, kind)
        for p in payloads:  # Huey enqueues one task per SQLite transaction
            task(**p)
        self.submitted += len(payloads)

    def _results(self) -> int:
        self._check_consumer()
        return self.app.huey.result_count()

    def wait_all(self) -> None:
        poll_until(lambda: self._results() >= self.submitted, PHASE_TIMEOUT, self.POLL, "all Huey results")

    def verify_finished(self) -> list[Any]:
        from huey.utils import Error

        values = [self.app.huey.serializer.deserialize(v) for v in self.app.huey.all_results().values()]
        errors = sum(isinstance(v, Error) for v in values)
        if len(values) != self.submitted or errors:
            raise AssertionError(f"Huey stored {len(values)} results ({errors} errors), expected {self.submitted}")
        return values

    def verify_queued(self) -> None:
        queued = self.app.huey.pending_count()
        if queued != self.submitted:
            raise AssertionError(f"Huey queue holds {queued} tasks, expected {self.submitted}")
