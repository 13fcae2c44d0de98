"""Property tests: dispatch order, dedup keys, retry delays and priorities.

Given any input hypothesis finds, the invariant the scheduler relies on holds.
"""

from __future__ import annotations

import json
import math
import random
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from taskmill.coordinator.core.entry import Entry
from taskmill.coordinator.core.queues import ReadyQueues
from taskmill.domain import Defaults, Domain, resolve
from taskmill.errors import InvalidPayload
from taskmill.payload import MAX_PAYLOAD_BYTES, canonical_json, dedup_key
from taskmill.records import BackoffKind, Priority, RetryPolicy

PROPS = settings(max_examples=150, deadline=None)
FEW = settings(max_examples=40, deadline=None)

DOMAIN_NAMES = ["media", "mail", "index", "backup"]
DOMAINS = st.sampled_from(DOMAIN_NAMES)
# a few common levels make ties (FIFO within a level) frequent
PRIORITIES = st.one_of(st.sampled_from([0, 64, 128, 255]), st.integers(0, 255))


def make_entry(tid: int, domain: str, priority: int) -> Entry:
    return Entry(id=tid, task_type=f"{domain}::t", domain=domain, key=f"k{tid}", label="l", priority=priority,
                 status="pending", created_at=0.0, retry_count=0, max_retries=3, retry=None, timeout=None,
                 cpus=1.0, memory=0, group=None)


def pop_best(q: ReadyQueues, blocked: Any) -> Entry | None:
    """The most urgent entry whose domain is not blocked, taken off (lanes of group None)."""
    e = q.best({(d, None) for d in DOMAIN_NAMES if blocked(d)})
    if e is not None:
        q.take(e)
    return e


def drain(q: ReadyQueues, blocked: Any = lambda d: False) -> list[Entry]:
    out = []
    while (e := pop_best(q, blocked)) is not None:
        out.append(e)
    return out


# =========================================================================== dispatch order


@PROPS
@given(st.lists(st.tuples(DOMAINS, PRIORITIES), max_size=60))
def test_ready_queues_pop_in_priority_then_id_order(subs: list[tuple[str, int]]) -> None:
    q = ReadyQueues()
    entries = [make_entry(i, d, p) for i, (d, p) in enumerate(subs, start=1)]
    for e in entries:
        q.push(e)
    assert len(q) == len(entries)

    popped = drain(q)
    assert [e.id for e in popped] == [e.id for e in sorted(entries, key=lambda e: (e.priority, e.id))]
    assert len(q) == 0
    assert pop_best(q, lambda d: False) is None
    assert not any(e.queued for e in entries)


# Operations interpreted against a model of what is queued; indexes pick among known entries.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("push_new"), DOMAINS, PRIORITIES),
        st.tuples(st.just("discard"), st.integers(0, 10**6)),
        st.tuples(st.just("upgrade"), st.integers(0, 10**6), PRIORITIES),
        st.tuples(st.just("repush"), st.integers(0, 10**6), PRIORITIES),
        st.tuples(st.just("pop")),
        st.tuples(st.just("toggle_block"), DOMAINS),
    ),
    max_size=120,
)


@PROPS
@given(OPS)
def test_ready_queues_agree_with_a_model_under_discards_upgrades_repushes_and_blocks(ops: list[tuple]) -> None:
    q = ReadyQueues()
    entries: list[Entry] = []
    queued: dict[int, Entry] = {}  # the model: what must still come out
    discarded: set[int] = set()
    blocked: set[str] = set()
    next_id = 1

    def expected_best() -> Entry | None:
        live = [e for e in queued.values() if e.domain not in blocked]
        return min(live, key=lambda e: (e.priority, e.id)) if live else None

    for op in ops:
        kind = op[0]
        if kind == "push_new":
            e = make_entry(next_id, op[1], op[2])
            next_id += 1
            entries.append(e)
            q.push(e)
            queued[e.id] = e
        elif kind == "discard" and entries:
            e = entries[op[1] % len(entries)]
            q.discard(e)
            if queued.pop(e.id, None) is not None:
                discarded.add(e.id)
        elif kind == "upgrade" and queued:
            # the coordinator's duplicate-submission upgrade: lower the number, re-key if queued
            e = list(queued.values())[op[1] % len(queued)]
            if op[2] < e.priority:
                e.priority = op[2]
                q.push(e)
        elif kind == "repush" and entries:
            # a retry or resume puts a popped/discarded entry back, possibly at another priority
            e = entries[op[1] % len(entries)]
            if e.id not in queued:
                e.priority = op[2]
                q.push(e)
                queued[e.id] = e
                discarded.discard(e.id)
        elif kind == "pop":
            want = expected_best()
            got = pop_best(q, lambda d: d in blocked)
            assert got is want
            if got is not None:
                assert got.id not in discarded
                assert got.domain not in blocked
                del queued[got.id]
        elif kind == "toggle_block":
            blocked.symmetric_difference_update({op[1]})
        assert len(q) == len(queued)
        assert {e.id for e in entries if e.queued} == set(queued)

    # whatever is left comes out in (priority, id) order once nothing is blocked
    rest = drain(q)
    assert [e.id for e in rest] == [e.id for e in sorted(queued.values(), key=lambda e: (e.priority, e.id))]
    assert not ({e.id for e in rest} & discarded)


@PROPS
@given(st.lists(st.tuples(DOMAINS, PRIORITIES), min_size=1, max_size=60), st.data())
def test_discarded_entries_never_come_out(subs: list[tuple[str, int]], data: st.DataObject) -> None:
    q = ReadyQueues()
    entries = [make_entry(i, d, p) for i, (d, p) in enumerate(subs, start=1)]
    for e in entries:
        q.push(e)
    gone = data.draw(st.sets(st.sampled_from([e.id for e in entries])))
    for e in entries:
        if e.id in gone:
            q.discard(e)
            q.discard(e)  # discarding twice is harmless
    kept = [e for e in entries if e.id not in gone]
    assert len(q) == len(kept)
    assert [e.id for e in drain(q)] == [e.id for e in sorted(kept, key=lambda e: (e.priority, e.id))]


@PROPS
@given(st.lists(st.tuples(DOMAINS, st.integers(1, 255)), min_size=2, max_size=40), st.data())
def test_an_upgraded_entry_comes_out_at_its_new_priority_in_id_order(
    subs: list[tuple[str, int]], data: st.DataObject
) -> None:
    q = ReadyQueues()
    entries = [make_entry(i, d, p) for i, (d, p) in enumerate(subs, start=1)]
    for e in entries:
        q.push(e)
    target = data.draw(st.sampled_from(entries))
    target.priority = data.draw(st.integers(0, target.priority - 1))
    q.push(target)  # re-key while queued
    assert len(q) == len(entries)

    popped = drain(q)
    assert [e.id for e in popped] == [e.id for e in sorted(entries, key=lambda e: (e.priority, e.id))]
    assert [e.id for e in popped].count(target.id) == 1


@PROPS
@given(st.lists(st.tuples(DOMAINS, PRIORITIES), max_size=60), st.sets(DOMAINS))
def test_blocked_domains_never_come_out_while_others_keep_flowing(
    subs: list[tuple[str, int]], blocked: set[str]
) -> None:
    q = ReadyQueues()
    entries = [make_entry(i, d, p) for i, (d, p) in enumerate(subs, start=1)]
    for e in entries:
        q.push(e)

    flowing = drain(q, lambda d: d in blocked)
    free = [e for e in entries if e.domain not in blocked]
    assert [e.id for e in flowing] == [e.id for e in sorted(free, key=lambda e: (e.priority, e.id))]
    held = [e for e in entries if e.domain in blocked]
    assert len(q) == len(held)
    assert all(e.queued for e in held)

    # unblocking releases the held entries, still in order
    assert [e.id for e in drain(q)] == [e.id for e in sorted(held, key=lambda e: (e.priority, e.id))]


# =========================================================================== dedup keys

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
PAYLOADS = st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6)
TASK_TYPES = st.from_regex(r"[a-z]{1,8}::[a-z_]{1,10}", fullmatch=True)


def reorder(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every dict's keys in another insertion order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: reorder(v, rng) for k, v in items}
    if isinstance(value, list):
        return [reorder(v, rng) for v in value]
    return value


@PROPS
@given(TASK_TYPES, PAYLOADS, st.randoms(use_true_random=False))
def test_dedup_key_is_stable_across_key_order(task_type: str, payload: dict, rng: random.Random) -> None:
    shuffled = reorder(payload, rng)
    assert canonical_json(shuffled) == canonical_json(payload)
    assert dedup_key(task_type, canonical_json(shuffled)) == dedup_key(task_type, canonical_json(payload))


@PROPS
@given(TASK_TYPES, PAYLOADS)
def test_dedup_key_is_64_lowercase_hex_chars(task_type: str, payload: dict) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", dedup_key(task_type, canonical_json(payload)))


@PROPS
@given(TASK_TYPES, PAYLOADS, st.text(max_size=12), JSON_VALUES, JSON_VALUES)
def test_dedup_key_differs_when_a_payload_value_differs(
    task_type: str, payload: dict, name: str, old: Any, new: Any
) -> None:
    assume(canonical_json({"v": old}) != canonical_json({"v": new}))
    a = {**payload, name: old}
    b = {**payload, name: new}
    assert dedup_key(task_type, canonical_json(a)) != dedup_key(task_type, canonical_json(b))


@PROPS
@given(TASK_TYPES, TASK_TYPES, PAYLOADS)
def test_dedup_key_differs_when_the_task_type_differs(type_a: str, type_b: str, payload: dict) -> None:
    assume(type_a != type_b)
    body = canonical_json(payload)
    assert dedup_key(type_a, body) != dedup_key(type_b, body)


@PROPS
@given(PAYLOADS)
def test_canonical_json_round_trips_and_is_compact_and_sorted(payload: dict) -> None:
    text = canonical_json(payload)
    assert json.loads(text) == payload
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


NON_JSON = st.sampled_from([
    float("nan"), float("inf"), float("-inf"), object(), {1, 2}, b"bytes", bytearray(b"x"), complex(1, 2),
    datetime(2024, 1, 1), Decimal("1.5"), lambda: None, range(3),
])


@PROPS
@given(PAYLOADS, st.text(max_size=8), NON_JSON, st.integers(0, 2))
def test_canonical_json_refuses_nan_and_non_json_values(payload: dict, name: str, bad: Any, depth: int) -> None:
    value: Any = bad
    for _ in range(depth):
        value = [value] if depth % 2 else {"inner": value}
    with pytest.raises(InvalidPayload):
        canonical_json({**payload, name: value})


def test_canonical_json_refuses_circular_and_unsortable_payloads() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidPayload):
        canonical_json(loop)
    with pytest.raises(InvalidPayload):
        canonical_json({1: "a", "b": 2})  # mixed key types cannot be sorted


@pytest.fixture(scope="module")
def blob_task() -> Any:
    d = Domain("blobs")

    @d.task
    def store_blob(ctx: Any, data: str) -> None:
        """Keep a blob."""

    return store_blob


OVERHEAD = len(canonical_json({"data": ""}))


@pytest.mark.parametrize("char", ["a", "é", "€", "𝄞"], ids=["1-byte", "2-byte", "3-byte", "4-byte"])
def test_resolve_accepts_a_payload_of_exactly_1_mib_and_refuses_one_byte_more(blob_task: Any, char: str) -> None:
    width = len(char.encode())
    room = MAX_PAYLOAD_BYTES - OVERHEAD
    fits = char * (room // width) + "x" * (room % width)
    item = resolve(blob_task.call(data=fits), Defaults())
    assert len(item.payload.encode()) == MAX_PAYLOAD_BYTES
    with pytest.raises(InvalidPayload):
        resolve(blob_task.call(data=fits + "x"), Defaults())
    with pytest.raises(InvalidPayload):
        resolve(blob_task.options(priority=1).call(data=fits + "x"), Defaults())  # the full path too


def test_resolve_refuses_a_non_json_payload(blob_task: Any) -> None:
    with pytest.raises(InvalidPayload):
        resolve(blob_task.call(data=float("nan")), Defaults())
    with pytest.raises(InvalidPayload):
        resolve(blob_task.options(label="x").call(data=object()), Defaults())


# =========================================================================== retry delays

DELAYS = st.floats(0, 3600, allow_nan=False)
RETRY_NUMBERS = st.integers(1, 5000)
MULTIPLIERS = st.floats(1, 4, allow_nan=False)


def exponential_formula(initial: float, multiplier: float, max_delay: float, n: int) -> float:
    try:
        raw = initial * multiplier ** (n - 1)
    except OverflowError:
        raw = math.inf if initial > 0 else 0.0
    return min(raw, max_delay)


@PROPS
@given(st.integers(0, 20), DELAYS, st.integers(1, 10**6))
def test_constant_delay_is_always_the_delay(max_retries: int, delay: float, n: int) -> None:
    p = RetryPolicy.constant(max_retries, delay)
    assert p.kind is BackoffKind.CONSTANT
    assert p.delay(n) == delay
    assert p.delay(n) <= p.max_delay


@PROPS
@given(DELAYS, DELAYS, DELAYS, st.integers(1, 10**6))
def test_linear_delay_follows_its_formula_capped_at_max(initial: float, step: float, cap: float, n: int) -> None:
    p = RetryPolicy.linear(3, initial=initial, step=step, max=cap)
    assert p.delay(n) == min(initial + step * (n - 1), cap)
    assert p.delay(n) <= cap


@PROPS
@given(DELAYS, DELAYS, MULTIPLIERS, RETRY_NUMBERS)
def test_exponential_delay_follows_its_formula_capped_at_max(
    initial: float, cap: float, multiplier: float, n: int
) -> None:
    p = RetryPolicy.exponential(3, initial=initial, max=cap, multiplier=multiplier)
    assert p.delay(n) == exponential_formula(initial, multiplier, cap, n)
    assert p.delay(n) <= cap


@PROPS
@given(DELAYS, DELAYS, MULTIPLIERS, st.integers(1, 2000))
def test_exponential_delay_never_decreases_with_the_retry_number(
    initial: float, cap: float, multiplier: float, n: int
) -> None:
    p = RetryPolicy.exponential(3, initial=initial, max=cap, multiplier=multiplier)
    assert p.delay(n) <= p.delay(n + 1)


@PROPS
@given(DELAYS, DELAYS, MULTIPLIERS, RETRY_NUMBERS, st.randoms(use_true_random=False))
def test_jittered_delay_lies_in_the_upper_half_of_the_exponential_delay(
    initial: float, cap: float, multiplier: float, n: int, rng: random.Random
) -> None:
    p = RetryPolicy.exponential_jitter(3, initial=initial, max=cap, multiplier=multiplier)
    d = exponential_formula(initial, multiplier, cap, n)
    got = p.delay(n, rng)
    assert d / 2 <= got <= d
    assert got <= cap
    assert p.delay(n) <= cap  # module-level random too


def test_jitter_uses_the_given_rng_reproducibly() -> None:
    p = RetryPolicy.exponential_jitter(3, initial=8.0, max=100.0)
    a = [p.delay(n, random.Random(7)) for n in range(1, 6)]
    b = [p.delay(n, random.Random(7)) for n in range(1, 6)]
    assert a == b


@pytest.mark.parametrize("policy", [
    RetryPolicy.constant(), RetryPolicy.linear(), RetryPolicy.exponential(), RetryPolicy.exponential_jitter(),
    RetryPolicy.none(),
])
@pytest.mark.parametrize("n", [0, -1])
def test_retry_numbers_are_one_based(policy: RetryPolicy, n: int) -> None:
    with pytest.raises(ValueError):
        policy.delay(n)


def test_none_policy_never_retries_and_waits_zero() -> None:
    p = RetryPolicy.none()
    assert p.max_retries == 0
    assert p.delay(1) == 0.0


def test_default_policy_is_exponential_with_three_retries() -> None:
    p = RetryPolicy()
    assert (p.kind, p.max_retries) == (BackoffKind.EXPONENTIAL, 3)
    assert [p.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize("make", [
    lambda: RetryPolicy.constant(-1),
    lambda: RetryPolicy.constant(3, -1.0),
    lambda: RetryPolicy.linear(3, initial=float("nan")),
    lambda: RetryPolicy.exponential(3, multiplier=0.5),
    lambda: RetryPolicy.exponential(3, max=float("inf")),
    lambda: RetryPolicy(max_retries=True),
    lambda: RetryPolicy(kind="fibonacci"),
])
def test_bad_retry_policies_are_rejected(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("initial, multiplier, expected", [(1.0, 1.0, 1.0), (0.0, 1.5, 0.0)])
def test_exponential_delay_past_retry_1025_still_follows_the_formula(
    initial: float, multiplier: float, expected: float
) -> None:
    p = RetryPolicy.exponential(3, initial=initial, max=60.0, multiplier=multiplier)
    assert p.delay(1025) == expected
    assert p.delay(1026) == expected


@pytest.mark.parametrize("multiplier, n", [(10.0, 400), (1000.0, 200)])  # 1000 is MAX_MULTIPLIER
def test_exponential_delay_with_a_huge_multiplier_is_capped_not_an_overflow(multiplier: float, n: int) -> None:
    p = RetryPolicy.exponential(3, initial=1.0, max=60.0, multiplier=multiplier)
    assert p.delay(n) == 60.0


# =========================================================================== priorities


@PROPS
@given(st.integers(0, 255))
def test_priority_accepts_every_level_from_0_to_255(n: int) -> None:
    p = Priority(n)
    assert int(p) == n
    assert isinstance(p, int)
    assert Priority(p) == p


@PROPS
@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=256)))
def test_priority_rejects_ints_outside_0_to_255_with_value_error(n: int) -> None:
    with pytest.raises(ValueError):
        Priority(n)


@FEW
@given(st.one_of(
    st.booleans(), st.floats(), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2),
    st.decimals(allow_nan=False),
))
def test_priority_rejects_non_ints_and_bools_with_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        Priority(value)


def test_named_priorities_have_their_values() -> None:
    assert (Priority.REALTIME, Priority.HIGH, Priority.NORMAL, Priority.BACKGROUND, Priority.IDLE) == (
        0, 64, 128, 192, 255)
    assert all(isinstance(p, Priority) for p in (Priority.REALTIME, Priority.IDLE))
    assert repr(Priority.HIGH) == "Priority.HIGH"
    assert repr(Priority(7)) == "Priority(7)"
    assert Priority.REALTIME < Priority.HIGH < Priority.NORMAL < Priority.BACKGROUND < Priority.IDLE


# --------------------------------------------------------------------------- max_concurrency above the CPU capacity


@PROPS
@given(n=st.integers(1, 256), cpus=st.sampled_from([0.5, 1.0, 2.0, 3.0, 8.0, 64.0]),
       lightest=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 2.0]))
def test_the_concurrency_warning_comes_exactly_when_max_concurrency_cannot_be_reached(
        n: int, cpus: float, lightest: float) -> None:
    from taskmill.admission import concurrency_warning

    said = concurrency_warning(n, cpus, lightest)
    fits = lightest == 0 or n * lightest <= cpus + 1e-9  # n tasks of the lightest type fit on the cores
    assert (said is None) == fits
    if said is not None:
        most = int(cpus / lightest + 1e-9)
        assert f"max_concurrency={n} " in said and f"{cpus:g} cores" in said
        assert f"at most {max(most, 1)} task(s)" in said and most < n
        assert "cpus=" in said and f"capacity=Capacity(cpus={n * lightest:g})" in said
