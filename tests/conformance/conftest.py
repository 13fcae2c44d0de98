"""The leak guard for the conformance tests.

Every test runs under the ``no_leaks`` guard of ``tests/conftest.py`` exactly as
in ``tests/e2e`` -- except while a module-scoped scheduler (one shared world
per module, see ``helpers.module_world``) is deliberately alive: then the
function-scoped guard would blame its processes on whichever test runs first,
so it stands aside and a module-scoped guard, built from the same pieces
(``LeakTracker``, ``record_starts``, ``fail_on_leaks``), checks at module
teardown that nothing the module started outlives it.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module", autouse=True)
def _module_leak_guard(request: pytest.FixtureRequest) -> Any:
    """Nothing a module started (its shared world included) may outlive the module."""
    root = _root_conftest(request.config)
    tracker = root.LeakTracker()
    mp = pytest.MonkeyPatch()
    root.record_starts(mp, tracker)
    try:
        yield tracker
    finally:
        mp.undo()
    root.fail_on_leaks(tracker, "the module")


@pytest.fixture(autouse=True)
def _leak_guard(request: pytest.FixtureRequest) -> Any:
    """No taskmill process or shared-memory segment may outlive a test (``no_leaks``), unless a
    module's shared world is alive: then the module guard above checks at module teardown."""
    if ALIVE_WORLDS:
        yield None
        return
    yield request.getfixturevalue("no_leaks")
