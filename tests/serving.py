"""A ``taskmill serve`` process in the background, for the tests of serve, connect and the command line."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import taskmill as tm
from taskmill.connect import read_state
from tests.polling import DEADLINE, poll_until

__all__ = ["JOBS", "Served", "module_of", "reap", "run_script", "taskmill_cli"]

JOBS = """
import os, time
import taskmill as tm

media = tm.Domain("media")

@media.task
def double(ctx, n: int) -> int:
    return n * 2

@media.task
def hold(ctx, flag: str, n: int = 0) -> str:  # (n tells otherwise equal tasks apart: no dedup)
    ctx.progress(0.5, "holding")
    while not os.path.exists(flag):
        time.sleep(0.01)
    return "released"

@media.task(retry=tm.RetryPolicy.constant(max_retries=1, delay=0.01))
def boom(ctx, n: int) -> int:
    raise ValueError(f"boom {n}")

def make():
    return tm.Scheduler("jobs.duckdb", [media], max_concurrency=2)

def graceful():
    return tm.Scheduler("jobs.duckdb", [media], max_concurrency=2, shutdown=tm.Shutdown.graceful(120))

not_a_scheduler = 42
"""


class Served:
    """A ``taskmill serve`` process in the background, on ``jobs.duckdb`` in its directory."""

    def __init__(self, directory: Path, module: str, no_leaks: Any, factory: str = "make",
                 extra: list[str] | None = None) -> None:
        self.dir, self.module, self.no_leaks, self.factory = directory, module, no_leaks, factory
        self.extra = extra or []
        self.store = str(directory / "jobs.duckdb")
        self.log_path = directory / f"serve-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.coordinator_pid = 0

    def start(self) -> Served:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskmill", "serve", f"{self.module}:{self.factory}", "--log-format", "json",
                 *self.extra],
                cwd=self.dir, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        state = poll_until(self._state, what="the served coordinator's state file")
        self.coordinator_pid = int(state["pid"])
        self.no_leaks.note(self.coordinator_pid, state["shm"])
        return self

    def _state(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"taskmill serve exited with {self.proc.returncode}: {self.log()}")
        try:
            return read_state(self.store)
        except tm.ConnectError:
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.log().splitlines() if ln.startswith("{")]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = DEADLINE) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of the whole session if it does not end in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(DEADLINE)
            raise


def module_of(served: Served) -> ModuleType:
    """The task module, imported here as a producer does (connect() itself never imports it)."""
    if str(served.dir) not in sys.path:
        sys.path.append(str(served.dir))
    return importlib.import_module(served.module)


def run_script(directory: Path, body: str, *args: str, timeout: float = DEADLINE * 2) -> subprocess.Popen[str]:
    script = directory / f"client-{uuid.uuid4().hex[:6]}.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(script), *args], cwd=directory, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reap(p: subprocess.Popen[str]) -> None:
    """Kill ``p`` if it still runs, and close its pipes."""
    if p.poll() is None:
        p.kill()
    p.wait(DEADLINE)
    for pipe in (p.stdin, p.stdout, p.stderr):
        if pipe is not None:
            pipe.close()



def taskmill_cli(*args: str, cwd: Path, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    """``python -m taskmill ARGS`` in ``cwd``, to its end."""
    return subprocess.run([sys.executable, "-m", "taskmill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
