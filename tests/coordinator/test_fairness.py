"""Fair share and aging as plain code (``coordinator/fairness.py``), driven by hypothesis.

- dispatch shares follow the weights whatever the number of slots, and
  minimum slots hold even against much heavier weights;
- a group that was idle rejoins at the current virtual time (no banked burst);
- the slot split of snapshots: sums to at most the slots, respects minimums,
  caps and demand, and is proportional to the weights where nothing binds;
- the aging formula: one level per interval after the grace period, capped,
  never above the base priority, monotone in waiting time.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from taskmill.coordinator.core.fairness import Aging, FairShare, effective_priority


def run(fs: FairShare, groups: list[str | None], slots: int, dispatches: int,
        duration: dict[str | None, int] | None = None) -> dict[str | None, int]:
    """Simulate a pool of ``slots`` where every group is always backlogged; each task runs
    ``duration[group]`` ticks (1 by default). Returns dispatches per group."""
    running: dict[str | None, int] = {g: 0 for g in groups}
    ends: list[tuple[int, str | None]] = []
    counts: dict[str | None, int] = {g: 0 for g in groups}
    tick = 0
    done = 0
    while done < dispatches:
        for end, g in [x for x in ends if x[0] <= tick]:
            ends.remove((end, g))
            running[g] -= 1
        while sum(running.values()) < slots and done < dispatches:
            g = fs.order(groups, running)[0]
            need = fs.min_slots.get(g, 0) if g is not None else 0
            fs.dispatched(g, weighed=running[g] >= need)
            running[g] += 1
            counts[g] += 1
            done += 1
            ends.append((tick + (duration or {}).get(g, 1), g))
        tick += 1
    return counts


@settings(max_examples=60, deadline=None)
@given(slots=st.integers(1, 8))
def test_dispatch_shares_follow_the_weights_with_any_number_of_slots(slots: int) -> None:
    fs = FairShare({"a": 1, "b": 2, "c": 3})
    counts = run(fs, ["a", "b", "c"], slots, 1000)
    for g, w in (("a", 1), ("b", 2), ("c", 3)):
        share = counts[g] / 1000
        assert abs(share - w / 6) <= 0.1 * (w / 6), (slots, counts)


def test_the_ungrouped_tasks_are_a_group_with_the_default_weight() -> None:
    fs = FairShare({"a": 3}, default_weight=1)
    counts = run(fs, ["a", None], 2, 400)
    assert abs(counts["a"] / 400 - 0.75) < 0.05 and abs(counts[None] / 400 - 0.25) < 0.05


def test_minimum_slots_hold_against_much_heavier_weights() -> None:
    fs = FairShare({"light": 1, "heavy": 1000}, min_slots={"light": 2})
    running = {"light": 0, "heavy": 0}
    for _ in range(4):  # four slots free
        g = fs.order(["light", "heavy"], running)[0]
        fs.dispatched(g, weighed=running[g] >= fs.min_slots.get(g, 0))
        running[g] += 1
    assert running == {"light": 2, "heavy": 2}


def test_an_idle_group_does_not_bank_a_burst() -> None:
    fs = FairShare({"a": 1, "b": 1})
    for _ in range(100):  # only "a" has work for a long while
        fs.dispatched(fs.order(["a"], {})[0])
    order = []
    for _ in range(10):  # then "b" arrives: they alternate, "b" does not get 100 turns in a row
        g = fs.order(["a", "b"], {})[0]
        fs.dispatched(g)
        order.append(g)
    assert order.count("b") <= 6 and order.count("a") >= 4


@settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 20),
       demand=st.dictionaries(st.sampled_from(["a", "b", "c", None]), st.integers(0, 10), min_size=1),
       weights=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 5)),
       mins=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 3)),
       caps=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 4)))
def test_the_slot_split_respects_slots_minimums_caps_and_demand(total: int, demand: dict, weights: dict,
                                                                mins: dict, caps: dict) -> None:
    fs = FairShare(weights, min_slots=mins)
    out = fs.allocations(total, demand, caps)
    assert set(out) == set(demand)
    assert sum(out.values()) <= total
    for g, n in out.items():
        assert 0 <= n <= demand[g] and (g not in caps or n <= caps[g])
    limit = {g: min(d, caps.get(g) or d) for g, d in demand.items()}
    if sum(limit.values()) >= total:
        assert sum(out.values()) == total  # work-conserving: every slot is given while anyone can use it
    else:
        assert out == limit
    for g, m in mins.items():  # minimums first (as far as demand, caps and slots allow)
        if g in demand and sum(min(mins.get(h, 0), limit[h]) for h in demand if h is not None) <= total:
            assert out[g] >= min(m, limit[g])


def test_the_slot_split_is_proportional_where_nothing_binds() -> None:
    fs = FairShare({"a": 1, "b": 2, "c": 3})
    assert fs.allocations(12, {"a": 100, "b": 100, "c": 100}, {}) == {"a": 2, "b": 4, "c": 6}
    assert fs.allocations(12, {"a": 100, "b": 1, "c": 100}, {}) == {"a": 3, "b": 1, "c": 8}


AGING = Aging(grace=300.0, interval=60.0, cap=64, urgent=None)


@given(base=st.integers(0, 255), waited=st.floats(0.0, 1e6), more=st.floats(0.0, 1e5))
def test_aging_is_one_level_per_interval_after_the_grace_period_and_capped(base: int, waited: float,
                                                                            more: float) -> None:
    eff = effective_priority(base, waited, AGING)
    assert eff <= base and (eff >= AGING.cap or eff == base)
    if waited <= 300.0:
        assert eff == base
    elif base > AGING.cap:
        assert eff == max(AGING.cap, base - int((waited - 300.0) // 60.0))
    assert effective_priority(base, waited + more, AGING) <= eff  # waiting longer never makes it less urgent
    assert effective_priority(base, waited, None) == base


def test_paused_time_does_not_count() -> None:
    # the caller passes pending time only: 400 s since submission, 200 of them paused
    assert effective_priority(192, 400.0 - 200.0, AGING) == 192
    assert effective_priority(192, 400.0, AGING) == 191
