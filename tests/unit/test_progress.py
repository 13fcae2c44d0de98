"""Progress estimates as plain code (F28): reported beats extrapolated, extrapolation from the
type's average duration is capped at 0.99, byte throughput is an EWMA and gives an ETA."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskmill.coordinator.core.progress import ALPHA, EXTRAPOLATION_CAP, SAMPLE_INTERVAL, ProgressTracker


def test_no_history_and_no_report_is_zero() -> None:
    assert ProgressTracker().estimate("a::t", None, 5.0) == (None, None, 0.0)


def test_extrapolated_from_the_average_duration_of_the_type() -> None:
    t = ProgressTracker({"a::t": (2, 4000.0)})  # two runs, 2 s on average
    t.completed("a::t", 2000.0)
    assert t.average_ms("a::t") == pytest.approx(2000.0)
    assert t.estimate("a::t", None, 0.5) == (None, pytest.approx(0.25), pytest.approx(0.25))


def test_the_reported_fraction_wins() -> None:
    t = ProgressTracker({"a::t": (1, 1000.0)})
    assert t.estimate("a::t", 0.1, 0.9) == (pytest.approx(0.1), pytest.approx(0.9), pytest.approx(0.1))


@given(elapsed=st.floats(0, 1e6), avg_ms=st.floats(1, 1e6))
def test_extrapolation_never_claims_done(elapsed: float, avg_ms: float) -> None:
    _rep, ext, pct = ProgressTracker({"a::t": (1, avg_ms)}).estimate("a::t", None, elapsed)
    assert ext is not None and 0.0 <= ext <= EXTRAPOLATION_CAP and pct == ext


def test_throughput_is_an_ewma_and_gives_an_eta() -> None:
    t = ProgressTracker()
    t.sample(1, 0, 0.0)
    t.sample(1, 1000, 1.0)  # 1000 B/s: the first rate is taken as it is
    assert t.throughput(1) == pytest.approx(1000.0)
    t.sample(1, 1000 + 3000, 2.0)  # 3000 B/s
    assert t.throughput(1) == pytest.approx(ALPHA * 3000 + (1 - ALPHA) * 1000)
    assert t.eta(1, 4000, 10_000) == pytest.approx(6000 / t.throughput(1))
    assert t.eta(1, 4000, None) is None  # no total, no ETA
    t.sample(1, 9000, 2.0 + SAMPLE_INTERVAL / 2)  # too soon after the last sample: ignored
    assert t.throughput(1) == pytest.approx(ALPHA * 3000 + (1 - ALPHA) * 1000)
    t.forget(1)
    assert t.throughput(1) == 0.0 and t.eta(1, 0, 10) is None
