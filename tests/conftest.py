"""Shared fixtures and helpers for the whole test tree.

- ``store_path``: a fresh store file path in ``tmp_path``.
- ``wait_until``: poll a condition with a generous deadline (never sleep blindly).
- ``no_leaks``: the leak guard that ``tests/e2e`` and ``tests/crash`` turn on for
  every test (see their ``conftest.py``): after the test, no taskmill process
  (coordinator, fork server + workers, resource tracker) started by this test
  session is left, and no ``/dev/shm/taskmill_*`` segment created by one of
  our coordinators remains.

Ownership of processes is decided by an environment marker set here at import
time: every process this session starts (directly or through a coordinator)
inherits it, and nothing else on the machine has it, so concurrent test runs of
other people never cause false alarms.
"""

from __future__ import annotations

import functools
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from polling import poll_until

#: Environment marker inherited by every process this test session starts.
SESSION_MARK = "TASKMILL_TEST_SESSION"
os.environ.setdefault(SESSION_MARK, f"{os.getpid()}-{uuid.uuid4().hex}")
_MARK_VALUE = os.environ[SESSION_MARK]

#: Words in the command line of processes that belong to a taskmill coordinator.
PROCESS_WORDS = ("taskmill.coordinator", "forkserver", "resource_tracker")
#: Seconds the leak guard waits for processes and segments to go away.
LEAK_DEADLINE = 10.0
SHM_DIR = "/dev/shm"


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """``wait_until(cond, timeout=30, what=...)``: poll ``cond`` until truthy or fail."""
    return functools.partial(poll_until, timeout=30.0)


@pytest.fixture
def store_path(tmp_path: Any) -> str:
    """Path of a not-yet-existing store file in this test's ``tmp_path``."""
    return str(tmp_path / "store.duckdb")


# --------------------------------------------------------------------------- leak guard


def _is_ours(p: psutil.Process) -> bool:
    try:
        return p.environ().get(SESSION_MARK) == _MARK_VALUE
    except (psutil.Error, OSError):
        return False


def taskmill_processes() -> dict[tuple[int, float], list[str]]:
    """Live (non-zombie) taskmill processes that carry this session's marker or descend from us."""
    me = psutil.Process()
    try:
        descendants = {c.pid for c in me.children(recursive=True)}
    except psutil.Error:
        descendants = set()
    out: dict[tuple[int, float], list[str]] = {}
    for p in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
        info = p.info
        if info["pid"] == me.pid or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmd = info["cmdline"] or []
        text = " ".join(cmd)
        if not any(w in text for w in PROCESS_WORDS):
            continue
        if info["pid"] in descendants or _is_ours(p):
            out[(info["pid"], info["create_time"])] = cmd
    return out


def shm_segments() -> set[str]:
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith("taskmill_")}
    except FileNotFoundError:
        return set()


def _segment_pid(name: str) -> int | None:
    parts = name.split("_")
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return None


class LeakTracker:
    """What existed before a test, and which coordinators the test started."""

    def __init__(self) -> None:
        self.procs_before = set(taskmill_processes())
        self.shm_before = shm_segments()
        self.coordinator_pids: set[int] = set()
        self.shm_names: set[str] = set()

    def note(self, coordinator_pid: int | None = None, shm_name: str | None = None) -> None:
        """Tell the guard about a coordinator started outside this process (e.g. in a subprocess host)."""
        if coordinator_pid is not None:
            self.coordinator_pids.add(coordinator_pid)
        if shm_name is not None:
            self.shm_names.add(shm_name)

    def leaked(self) -> tuple[dict[tuple[int, float], list[str]], set[str]]:
        procs = {k: v for k, v in taskmill_processes().items() if k not in self.procs_before}
        ours = set(self.coordinator_pids) | {pid for pid, _ in procs}
        segs = set()
        for name in shm_segments() - self.shm_before:
            if name in self.shm_names or _segment_pid(name) in ours:
                segs.add(name)
        return procs, segs


def record_starts(monkeypatch: pytest.MonkeyPatch, tracker: LeakTracker) -> None:
    """Tell ``tracker`` about every coordinator a ``Scheduler`` starts while ``monkeypatch`` holds."""
    import taskmill.scheduler

    original_start = taskmill.scheduler.Scheduler.start

    def recording_start(self: Any) -> Any:
        out = original_start(self)
        proc = getattr(self, "_process", None)
        if proc is not None:
            tracker.note(proc.pid, proc.info.get("shm"))
        return out

    monkeypatch.setattr(taskmill.scheduler.Scheduler, "start", recording_start)


def fail_on_leaks(tracker: LeakTracker, what: str = "") -> None:
    """Wait up to ``LEAK_DEADLINE`` for ``tracker``'s processes and segments to go; else clean up
    what was started (so later tests are not blamed) and fail, naming ``what`` leaked."""
    deadline = time.monotonic() + LEAK_DEADLINE
    while True:
        procs, segs = tracker.leaked()
        if not procs and not segs:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for pid, _ct in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name in segs:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass
    lines = [f"  pid {pid}: {' '.join(cmd)[:160]}" for (pid, _), cmd in sorted(procs.items())]
    pytest.fail(
        f"{what + ' ' if what else ''}leaked after {LEAK_DEADLINE:g}s: {len(procs)} taskmill process(es), "
        f"{len(segs)} shm segment(s)\n" + "\n".join(lines + [f"  /dev/shm/{n}" for n in sorted(segs)]),
        pytrace=False,
    )


@pytest.fixture
def no_leaks(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Fail the test if it leaves taskmill processes or shared-memory segments behind."""
    tracker = LeakTracker()
    record_starts(monkeypatch, tracker)
    yield tracker
    fail_on_leaks(tracker)
