"""Every test here runs under the leak guard of ``tests/conftest.py``."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _leak_guard(no_leaks: Any) -> Any:
    """No taskmill process or shared-memory segment may outlive a test."""
    yield no_leaks
