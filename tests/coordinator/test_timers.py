"""Timers follow live work: a cancelled timer does not hold memory until it would have fired."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from taskmill.coordinator.core.queues import PURGE_MIN_DEAD, Timers


def test_cancelled_timers_are_purged_so_memory_follows_live_timers() -> None:
    timers = Timers()
    live = [timers.add(10.0 + i, "keep", i) for i in range(10)]
    for i in range(100_000):  # a finished task's one-hour timeout, many times over
        timers.cancel(timers.add(3600.0 + i, "timeout", i))
    assert len(timers) == 10
    assert timers.heap_size <= 10 + 2 * PURGE_MIN_DEAD
    assert [t.payload for t in timers.pop_due(1e9)] == [t.payload for t in live]


def test_a_cancelled_timer_never_fires_and_next_due_skips_it() -> None:
    timers = Timers()
    first = timers.add(1.0, "a", None)
    timers.add(2.0, "b", None)
    timers.cancel(first)
    timers.cancel(first)  # twice is harmless
    assert timers.next_due() == 2.0
    assert [t.kind for t in timers.pop_due(5.0)] == ["b"]
    assert len(timers) == 0 and timers.heap_size == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.booleans()), max_size=2000), st.floats(0, 100))
def test_pop_due_returns_exactly_the_live_due_timers_in_order(spec: list[tuple[float, bool]], now: float) -> None:
    timers = Timers()
    made = []
    for due, cancel in spec:
        t = timers.add(due, "k", len(made))
        made.append((t, cancel))
        if cancel:
            timers.cancel(t)
    expected = sorted((t.due, t.payload) for t, c in made if not c and t.due <= now)
    assert [(t.due, t.payload) for t in timers.pop_due(now)] == expected
    assert len(timers) == sum(1 for t, c in made if not c and t.due > now)
