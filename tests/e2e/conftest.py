"""Every test here runs under the leak guard of ``tests/conftest.py``."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.serving import JOBS, Served


@pytest.fixture(autouse=True)
def _leak_guard(no_leaks: Any) -> Any:
    """No taskmill process or shared-memory segment may outlive a test."""
    yield no_leaks


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory with a task module of a unique name (this process imports it too)."""
    module = f"jobs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(JOBS))
    yield tmp_path, module
    sys.modules.pop(module, None)
    while str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


@pytest.fixture
def served(jobs_dir: tuple[Path, str], no_leaks: Any) -> Iterator[Served]:
    s = Served(jobs_dir[0], jobs_dir[1], no_leaks).start()
    try:
        yield s
    finally:
        s.stop()
