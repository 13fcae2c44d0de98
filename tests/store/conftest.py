"""Fixtures of the store contract suite: every test that takes ``store`` runs twice,
against a ``:memory:`` store and a file store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskmill.store import Store


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    path = ":memory:" if request.param == "memory" else str(tmp_path / "store.duckdb")
    s = Store(path)
    yield s
    s.close()
