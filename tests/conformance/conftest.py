"""The leak guard for the conformance tests.

Every test runs under the ``no_leaks`` guard of ``tests/conftest.py`` exactly as
in ``tests/e2e`` -- except while a module-scoped scheduler (one shared world
per module, see ``helpers.module_world``) is deliberately alive: then the
function-scoped guard would blame its processes on whichever test runs first,
so it stands aside and a module-scoped guard, built from the same helpers
(``LeakTracker``, ``taskmill_processes``, ``shm_segments``), checks at module
teardown that nothing the module started outlives it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .helpers import ALIVE_WORLDS

_ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"


def _root_conftest(config: pytest.Config) -> ModuleType:
    """``tests/conftest.py`` as pytest loaded it (the name ``conftest`` in ``sys.modules`` may be
    another directory's by now, so find it among the registered plugins)."""
    for plugin in config.pluginmanager.get_plugins():
        f = getattr(plugin, "__file__", None)
        if f and Path(f).resolve() == _ROOT_CONFTEST:
            return plugin
    raise RuntimeError(f"{_ROOT_CONFTEST} is not loaded")


def _fail_on_leaks(root: ModuleType, tracker: Any, what: str) -> None:
    """Wait up to ``LEAK_DEADLINE`` for ``tracker``'s processes and segments to go; else kill, unlink, fail."""
    LEAK_DEADLINE, SHM_DIR = root.LEAK_DEADLINE, root.SHM_DIR
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
    pytest.fail(f"{what} leaked after {LEAK_DEADLINE:g}s: {len(procs)} taskmill process(es), {len(segs)} shm "
                "segment(s)\n" + "\n".join(lines + [f"  /dev/shm/{n}" for n in sorted(segs)]), pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def _module_leak_guard(request: pytest.FixtureRequest) -> Any:
    """Nothing a module started (its shared world included) may outlive the module."""
    import taskmill.scheduler

    root = _root_conftest(request.config)
    tracker = root.LeakTracker()
    original_start = taskmill.scheduler.Scheduler.start

    def recording_start(self: Any) -> Any:
        out = original_start(self)
        proc = getattr(self, "_process", None)
        if proc is not None:
            tracker.note(proc.pid, proc.info.get("shm"))
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(taskmill.scheduler.Scheduler, "start", recording_start)
    try:
        yield tracker
    finally:
        mp.undo()
    _fail_on_leaks(root, tracker, "the module")


@pytest.fixture(autouse=True)
def _leak_guard(request: pytest.FixtureRequest) -> Any:
    """No taskmill process or shared-memory segment may outlive a test (``no_leaks``), unless a
    module's shared world is alive: then the module guard above checks at module teardown."""
    if ALIVE_WORLDS:
        yield None
        return
    yield request.getfixturevalue("no_leaks")
