"""Wall-clock times reach the store by two paths: ``utc()`` on the host side of a write (inserts)
and ``make_timestamp((t * 1e6)::BIGINT)`` in SQL (updates). Both must give the same microsecond,
or a child's inherited ``expires_at`` differs from its parent's by one (a flaky test found it)."""

from __future__ import annotations

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmill.batch import utc

CON = duckdb.connect()


@settings(max_examples=500, deadline=None)
@given(st.floats(0.0, 4e9, allow_nan=False) | st.sampled_from([1795481465.1970475, 0.0000025, 2.5e-6]))
def test_host_and_sql_round_a_time_to_the_same_microsecond(t: float) -> None:
    (sql,) = CON.execute("SELECT make_timestamp((?::DOUBLE * 1e6)::BIGINT)", [t]).fetchone()
    assert utc(t) == sql
