"""The admission gate as plain code (``coordinator/gate.py``), driven by hypothesis.

- a state machine offers ready tasks to the gate and finishes running ones in any
  order: the gate never admits past the concurrency cap, a domain or group cap,
  the CPU cores or the memory (a task alone is always admitted), and what it books
  always equals a recount;
- through the lifecycle's pick: a task denied by its group or domain never holds
  up another group's, and nothing is left ready that the gate would admit;
- token buckets: no window of time sees more starts than the burst plus the
  refill, and a bucket that refuses names the time its next token is there;
- the IO window and the throttle policy.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskmill import protocol
from taskmill.admission import ThrottlePolicy
from taskmill.coordinator.core.entry import Entry
from taskmill.coordinator.core.gate import ADMIT, SKIP, STOP, Bucket, Gate, default_throttle
from taskmill.coordinator.core.lifecycle import Lifecycle

DOMAINS = ["d1", "d2"]
GROUPS = [None, "g1", "g2"]


def entry(tid: int, domain: str, group: str | None, cpus: float = 1.0, memory: int = 0, priority: int = 128,
          io: tuple[int, int, int, int] | None = None) -> Entry:
    e = Entry(tid, f"{domain}::t", domain, f"k{tid}", "l", priority, "pending", 0.0, 0, 0, None, None, cpus, memory,
              group)
    e.io = io
    return e


class GateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate(3, cpus=2.0, memory=100, domain_caps={"d1": 2}, group_caps={"g1": 1},
                         default_group_cap=2)
        self.running: list[Entry] = []
        self.next_id = 1
        self.now = 0.0

    @rule(domain=st.sampled_from(DOMAINS), group=st.sampled_from(GROUPS),
          cpus=st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0]), memory=st.sampled_from([0, 0, 30, 60, 100]))
    def offer(self, domain: str, group: str | None, cpus: float, memory: int) -> None:
        e = entry(self.next_id, domain, group, cpus, memory)
        self.next_id += 1
        verdict = self.gate.admit(e, self.now)
        g = self.gate
        if verdict == ADMIT:
            g.take(e, self.now)
            self.running.append(e)
        elif verdict == SKIP:  # scoped to its domain or group: that cap is what is full
            assert (g.by_domain.get(domain, 0) >= g.domain_caps.get(domain, math.inf)
                    or (group is not None and g.by_group.get(group, 0) >= (g.group_cap(group) or math.inf)))
        else:
            assert verdict == STOP and self.running  # a task alone is always admitted

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: Any) -> None:
        e = data.draw(st.sampled_from(self.running))
        self.running.remove(e)
        self.gate.give(e)

    @rule(dt=st.floats(0.0, 2.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def never_past_a_capacity(self) -> None:
        g, run = self.gate, self.running
        assert len(run) <= g.max_concurrency
        if len(run) > 1:
            assert sum(e.cpus for e in run) <= g.cpus_total + 1e-9
            assert sum(e.memory for e in run) <= g.memory_total
        for d, cap in g.domain_caps.items():
            assert sum(1 for e in run if e.domain == d) <= cap
        for grp in ("g1", "g2"):
            assert sum(1 for e in run if e.group == grp) <= (g.group_cap(grp) or math.inf)
        g.check(run)


TestGate = GateMachine.TestCase
TestGate.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def submit_item(domain: str, key: str, group: str | None, priority: int = 128) -> protocol.SubmitItem:
    return protocol.SubmitItem(f"{domain}::t", domain, f"{domain}:{key}", key, priority, "{}", 1, None, None, 1.0, 0,
                               0, 0, 0, 0, group, None, "skip")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DOMAINS), st.sampled_from(GROUPS), st.sampled_from([0, 128, 255])),
                min_size=1, max_size=30),
       st.dictionaries(st.sampled_from(["g1", "g2"]), st.integers(1, 2)),
       st.dictionaries(st.sampled_from(DOMAINS), st.integers(1, 3)))
def test_pick_passes_over_capped_lanes_and_leaves_nothing_admissible(
        subs: list[tuple[str, str | None, int]], group_caps: dict[str, int], domain_caps: dict[str, int]) -> None:
    lc = Lifecycle(gate=Gate(100, domain_caps=domain_caps, group_caps=group_caps))
    lc.submit([submit_item(d, f"k{i}", g, p) for i, (d, g, p) in enumerate(subs)], 0.0, 0.0)
    started = []
    while (e := lc.pick(0.0, 0.0)) is not None:
        lc.started(e, object(), 0.0, 0.0)
        started.append(e)
    lc.check()
    # every task still ready is denied by its own domain's or group's cap, and by nothing else
    for e in lc.tasks.values():
        if e.queued:
            assert lc.gate.admit(e, 0.0) == SKIP, e
    # within one lane, tasks start in (priority, id) order
    for lane in {(e.domain, e.group) for e in started}:
        order = [(e.priority, e.id) for e in started if (e.domain, e.group) == lane]
        assert order == sorted(order)
        left = [(e.priority, e.id) for e in lc.tasks.values() if e.queued and (e.domain, e.group) == lane]
        assert not left or max(order) < min(left)


@settings(max_examples=200, deadline=None)
@given(permits=st.integers(1, 10), interval=st.sampled_from([0.5, 1.0, 60.0]), burst=st.integers(1, 10),
       gaps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=80))
def test_a_token_bucket_never_allows_more_than_burst_plus_refill(permits: int, interval: float, burst: int,
                                                                   gaps: list[float]) -> None:
    b = Bucket(permits, interval, burst, now=0.0)
    now, taken = 0.0, []
    for gap in gaps:
        now += gap
        due = b.next_token(now)
        if due <= now:
            b.take(now)
            taken.append(now)
        else:  # refused: a token is there at ``due``, not before
            assert b.available(now) < 1.0
            later = copy.copy(b)  # (asking at a later time refills: ask a copy)
            assert later.next_token(due) <= due + 1e-9
    for i, start in enumerate(taken):  # any window [start, end] holds at most burst + refill
        for j in range(i, len(taken)):
            assert j - i + 1 <= burst + (taken[j] - start) * permits / interval + 1e-6
    assert 0.0 <= b.available(now) <= burst


def test_the_io_window_admits_what_fits_and_lets_a_large_budget_run_alone() -> None:
    g = Gate(10, cpus=10.0)
    g.observe([100.0, 0.0, 0.0, 0.0])  # 100 B/s read: window 2 s x 0.8 = 160 B
    a = entry(1, "d1", None, io=(100, 0, 0, 0))
    assert g.admit(a, 0.0) == ADMIT
    g.take(a, 0.0)
    assert g.admit(entry(2, "d1", None, io=(61, 0, 0, 0)), 0.0) == STOP
    assert g.admit(entry(3, "d1", None, io=(60, 0, 0, 0)), 0.0) == ADMIT
    assert g.admit(entry(4, "d1", None, io=(0, 500, 0, 0)), 0.0) == ADMIT  # no write rate seen: no window
    assert g.admit(entry(5, "d1", None), 0.0) == ADMIT  # no budget: not held by the window
    g.give(a)
    assert g.admit(entry(6, "d1", None, io=(10_000, 0, 0, 0)), 0.0) == ADMIT  # larger than the window: alone
    assert g.denials["io"] == 1


@given(st.integers(0, 255), st.floats(0.0, 1.0))
def test_the_default_throttle_policy_matches_the_spec(priority: int, pressure: float) -> None:
    waits = (priority >= 192 and pressure > 0.5) or (128 <= priority and pressure > 0.75)
    assert default_throttle(priority, pressure) == waits
    assert ThrottlePolicy().throttled(priority, pressure) == waits


def test_throttle_denials_stop_the_round_and_are_counted() -> None:
    g = Gate(10, cpus=10.0)
    g.set_pressure(0.6, [("disk", 0.6)])
    assert g.admit(entry(1, "d1", None, priority=192), 0.0) == STOP
    assert g.admit(entry(2, "d1", None, priority=128), 0.0) == ADMIT
    g.set_pressure(0.9, [("disk", 0.9)])
    assert g.admit(entry(3, "d1", None, priority=128), 0.0) == STOP
    assert g.admit(entry(4, "d1", None, priority=64), 0.0) == ADMIT
    assert g.denials["throttle"] == 2


def test_a_refill_a_hair_short_of_a_token_counts_as_a_token() -> None:
    b = Bucket(10, 1.0, 1, now=0.0)
    b.take(0.5)
    assert b.next_token(0.6) == 0.6  # (0.6 - 0.5) * 10 is 0.9999999999999998 in floats
    b.take(0.6)
    assert b.available(0.6) == 0.0
