"""Host-side normalisation and bounds (``taskmill.validation``) and their use in domains, records and the scheduler.

Given a user value (a plain builtin, a subclass of one, an enum member, or junk), when it
passes through a normaliser, then it comes out as the exact builtin within its bound, or a
``TypeError``/``ValueError`` names the argument and the rule. No process is started here.
"""

from __future__ import annotations

import json
import math
import os
import random
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from usertypes import Color, Level, Mode, MyDateTime, MyDecimal, MyFloat, MyInt, MyStr, MyUUID

import taskmill as tm
from taskmill import errors, validation
from taskmill.domain import Defaults, Domain, check_timeout, resolve
from taskmill.errors import ConfigError, InvalidPayload
from taskmill.payload import canonical_json
from taskmill.records import IoBudget, Priority, RetryPolicy, Shutdown
from taskmill.validation import (
    INT32_MAX,
    INT64_MAX,
    MAX_DELAY_SECONDS,
    MAX_PAYLOAD_DEPTH,
    MAX_PRUNE_DAYS,
    as_float,
    as_int,
    as_opt_str,
    as_seconds,
    as_str,
    as_wait_timeout,
    check_json,
    sql_params,
    usable_cpus,
)

PROPS = settings(max_examples=150, deadline=None)


# --------------------------------------------------------------------------- user-defined types




def exact(value: Any) -> bool:
    """Every scalar in ``value`` is of an exact builtin type (containers recursed)."""
    if isinstance(value, dict):
        return type(value) is dict and all(type(k) is str and exact(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value) in (list, tuple) and all(exact(v) for v in value)
    return type(value) in (str, int, float, bool, type(None), bytes, datetime, date, time, timedelta, Decimal,
                           uuid.UUID)


# =========================================================================== constants


def test_the_bounds_have_their_documented_values() -> None:
    assert INT64_MAX == 2**63 - 1
    assert INT32_MAX == 2**31 - 1
    assert MAX_DELAY_SECONDS == 365 * 24 * 3600.0
    assert MAX_PAYLOAD_DEPTH == 100
    assert MAX_PRUNE_DAYS == 100_000


def test_max_delay_seconds_has_one_definition_in_errors_re_exported_by_validation() -> None:
    assert validation.MAX_DELAY_SECONDS is errors.MAX_DELAY_SECONDS
    source = Path(validation.__file__).read_text()
    assert "MAX_DELAY_SECONDS =" not in source


def test_usable_cpus_is_this_process_affinity() -> None:
    assert usable_cpus() == float(len(os.sched_getaffinity(0)))
    assert Defaults().cpu_capacity == usable_cpus()


# =========================================================================== scalars


def test_as_str_converts_subclasses_to_the_exact_plain_value() -> None:
    for value, plain in [("a", "a"), (MyStr("a"), "a"), (Mode.FAST, "fast")]:
        out = as_str(value, "key")
        assert out == plain and type(out) is str


@pytest.mark.parametrize("bad", [None, 1, b"a", Color.RED, Path("/x"), ["a"]])
def test_as_str_refuses_what_is_not_a_str_naming_the_argument(bad: Any) -> None:
    with pytest.raises(TypeError, match="^label must be a str"):
        as_str(bad, "label")


def test_as_opt_str_passes_none_and_says_none_is_allowed() -> None:
    assert as_opt_str(None, "group") is None
    with pytest.raises(TypeError, match="group must be a str or None, got enum member Color.RED"):
        as_opt_str(Color.RED, "group")


def test_as_int_converts_int_subclasses_with_their_real_value() -> None:
    for value, plain in [(5, 5), (MyInt(5), 5), (Level.HIGH, 64), (Priority.HIGH, 64)]:
        out = as_int(value, "task_id")
        assert out == plain and type(out) is int


@pytest.mark.parametrize("bad, exc", [
    (True, TypeError), ("1", TypeError), (1.0, TypeError), (None, TypeError), (Color.RED, TypeError),
    (-1, ValueError), (2**63, ValueError), (10**30, ValueError),
])
def test_as_int_refuses_bools_non_ints_and_values_out_of_range(bad: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="task_id"):
        as_int(bad, "task_id")


def test_as_int_bounds_and_wrong_type_class_are_configurable() -> None:
    assert as_int(INT32_MAX, "n", hi=INT32_MAX) == INT32_MAX
    with pytest.raises(ValueError, match=r"n must be in 1\.\.2147483647, got 0"):
        as_int(0, "n", lo=1, hi=INT32_MAX)
    with pytest.raises(ValueError, match="n must be an int"):
        as_int("x", "n", wrong_type=ValueError)


def test_as_float_converts_numbers_and_subclasses_to_exact_floats() -> None:
    for value, plain in [(1, 1.0), (2.5, 2.5), (MyFloat(2.5), 2.5), (MyInt(3), 3.0), (Level.HIGH, 64.0)]:
        out = as_float(value, "x")
        assert out == plain and type(out) is float


@pytest.mark.parametrize("bad, exc, fragment", [
    ("5", TypeError, "x must be a finite number of seconds, got str '5'"),
    (True, TypeError, "finite number"),
    (None, TypeError, "finite number"),
    (math.nan, ValueError, "x must be a finite number of seconds, got nan"),
    (math.inf, ValueError, "got inf"),
    (10**400, ValueError, "got inf"),
    (-1, ValueError, "x must be > 0 and <= 31536000 seconds (MAX_DELAY_SECONDS), got -1"),
    (0, ValueError, "> 0"),
    (1e15, ValueError, "<= 31536000 seconds (MAX_DELAY_SECONDS), got 1e+15"),
])
def test_as_seconds_refuses_with_a_message_naming_the_rule(bad: Any, exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc) as info:
        as_seconds(bad, "x", lo_open=True)
    assert fragment in str(info.value)


def test_as_seconds_accepts_a_timedelta() -> None:
    assert as_seconds(timedelta(minutes=2), "t") == 120.0


def test_wait_timeouts_are_none_or_finite_and_non_negative() -> None:
    assert as_wait_timeout(None) is None
    assert as_wait_timeout(0) == 0.0
    assert as_wait_timeout(MyFloat(1.5)) == 1.5
    assert as_wait_timeout(timedelta(seconds=3)) == 3.0
    with pytest.raises(TypeError, match="timeout"):
        as_wait_timeout("x")
    for bad in (-1, math.nan, math.inf):
        with pytest.raises(ValueError, match="timeout=None"):
            as_wait_timeout(bad)


# =========================================================================== payloads


@pytest.mark.parametrize("payload, fragment", [
    ({"path": PurePosixPath("/a")}, "payload['path']: PurePosixPath is not JSON-serializable"),
    ({"a": [0, 1, {"b": math.nan}]}, "payload['a'][2]['b']: float nan is not allowed (JSON has no NaN/Infinity)"),
    ({"a": (math.inf,)}, "payload['a'][0]: float inf is not allowed"),
    ({"a": {1: "x"}}, "payload['a']: key 1 (int) is not a str; JSON object keys must be str"),
    ({"a": [{"b": {None: 1}}]}, "payload['a'][0]['b']: key None"),
    ({"c": Color.RED}, "payload['c']: enum member Color.RED is not JSON-serializable"),
    ({"f": lambda: 1}, "payload['f']: function is not JSON-serializable"),
    ({"s": {1, 2}}, "payload['s']: set is not JSON-serializable"),
    ({"b": b"x"}, "payload['b']: bytes is not JSON-serializable"),
])
def test_check_json_names_the_offending_place(payload: dict, fragment: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        check_json(payload)
    assert fragment in str(info.value)
    with pytest.raises(InvalidPayload) as info:
        canonical_json(payload)
    assert fragment in str(info.value)


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_nesting_up_to_the_limit_is_fine_and_deeper_is_invalid_payload_not_recursion_error() -> None:
    canonical_json({"x": nested(MAX_PAYLOAD_DEPTH - 1)})  # the payload dict itself is one level
    with pytest.raises(InvalidPayload, match="MAX_PAYLOAD_DEPTH"):
        canonical_json({"x": nested(MAX_PAYLOAD_DEPTH)})
    with pytest.raises(InvalidPayload, match="MAX_PAYLOAD_DEPTH"):
        canonical_json({"x": nested(5000)})


def test_a_circular_payload_is_named_as_such() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(InvalidPayload, match=r"payload\['x'\]\[1\]: circular reference"):
        canonical_json({"x": loop})


def test_a_non_str_top_level_key_is_refused_not_silently_stringified() -> None:
    with pytest.raises(InvalidPayload, match="key 1"):
        canonical_json({1: "a"})


def test_subclasses_and_tuples_in_a_payload_encode_as_their_plain_values() -> None:
    payload = {"s": MyStr("a"), "i": MyInt(5), "f": MyFloat(1.5), "m": Mode.FAST, "l": Level.HIGH,
               "t": (1, (2, "x")), "n": {"deep": [Mode.FAST]}}
    text = canonical_json(payload)
    assert json.loads(text) == {"s": "a", "i": 5, "f": 1.5, "m": "fast", "l": 64, "t": [1, [2, "x"]],
                                "n": {"deep": ["fast"]}}


def test_brackets_inside_strings_only_cost_a_walk() -> None:
    assert canonical_json({"s": "{[x]}"}) == '{"s":"{[x]}"}'


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=16,
)


@PROPS
@given(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6))
def test_canonical_json_is_byte_for_byte_json_dumps(payload: dict) -> None:
    """Dedup keys of stored tasks depend on this text: the prebuilt encoder must not change it."""
    expected = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert canonical_json(payload) == expected


# =========================================================================== sql() parameters


def test_sql_params_keep_plain_values_and_convert_subclasses() -> None:
    u = uuid.uuid4()
    out = sql_params([MyStr("a"), MyInt(2), MyFloat(1.5), Mode.FAST, Level.HIGH, True, None, b"x", bytearray(b"y"),
                      MyDateTime(2024, 1, 2, 3, 4, 5), date(2024, 1, 2), time(1, 2), timedelta(seconds=3),
                      MyDecimal("1.5"), MyUUID(int=u.int), [MyStr("n"), {"k": MyInt(1)}], (1, 2)])
    assert isinstance(out, list) and exact(out)
    assert out[:9] == ["a", 2, 1.5, "fast", 64, True, None, b"x", b"y"]
    assert out[9] == datetime(2024, 1, 2, 3, 4, 5)
    assert out[13] == Decimal("1.5") and out[14] == u
    assert out[15] == ["n", {"k": 1}] and out[16] == (1, 2)
    assert sql_params(None) is None
    assert sql_params({"name": MyStr("x")}) == {"name": "x"}
    assert type(sql_params((1,))) is tuple


def test_sql_params_turn_timezones_into_fixed_offsets_for_the_same_instant() -> None:
    aware = datetime(2024, 6, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))
    (out,) = sql_params([aware])  # type: ignore[misc]
    assert type(out.tzinfo) is timezone and out == aware


@pytest.mark.parametrize("params, exc, fragment", [
    ([lambda: 1], TypeError, "sql() params[0]: function is not a supported SQL parameter"),
    ([1, object()], TypeError, "params[1]: object"),
    ({"a": Color.RED}, TypeError, "params['a']: enum member Color.RED"),
    ({"a": [1, {"b": Path("/x")}]}, TypeError, "params['a'][1]['b']: PosixPath"),
    ({1: "a"}, TypeError, "key 1"),
    ([2**200], ValueError, "params[0]: int"),
    ("abc", TypeError, "params must be None, a list or tuple"),
    ({1, 2}, TypeError, "params must be"),
    ([nested(MAX_PAYLOAD_DEPTH + 1)], ValueError, "nested deeper"),
])
def test_sql_params_refuse_other_types_naming_the_parameter(params: Any, exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc) as info:
        sql_params(params)
    assert fragment in str(info.value)


# =========================================================================== resolve(): conversions and limits


def make_task(**options: Any) -> tm.TaskType:
    d = Domain("media")

    def thumbnail(ctx: Any, path: Any = None, size: int = 1, extra: Any = None) -> None:
        return None

    return d.task(thumbnail, **options)


@PROPS
@given(
    st.sampled_from([str, MyStr]), st.sampled_from([int, MyInt]), st.text(min_size=1, max_size=10),
    st.integers(0, 255), st.integers(0, INT64_MAX), st.sampled_from([None, Mode.FAST, Level.HIGH]),
    st.booleans(),
)
def test_resolve_output_contains_only_exact_builtins(
    str_type: type, int_type: type, text: str, prio: int, memory: int, enum_value: Any, fast: bool
) -> None:
    t = make_task()
    payload = {"path": str_type(text), "size": int_type(prio), "extra": [enum_value, (str_type(text),)]}
    if fast:
        item = resolve(t.call(**payload), Defaults())
    else:
        opts = dict(priority=int_type(prio), key=str_type(text), label=str_type(text), group=str_type(text),
                    memory=int_type(memory), tags={str_type("k"): str_type(text)}, cpus=int_type(1),
                    timeout=int_type(5))
        item = resolve(t.options(**opts).call(**payload), Defaults())
        assert (item.priority, item.memory, item.group, item.label) == (prio, memory, text, text)
    for name, value in item._asdict().items():
        assert type(value) in (str, int, float, bool, type(None)), (name, type(value))
    assert json.loads(item.payload)["path"] == text


@pytest.mark.parametrize("option, value, exc, fragment", [
    ("group", Color.RED, TypeError, "group must be a str or None, got enum member Color.RED"),
    ("group", 123, TypeError, "group"),
    ("key", Color.RED, TypeError, "key must be a str"),
    ("label", 5, TypeError, "label must be a str"),
    ("tags", {"k": Color.RED}, TypeError, "tags must map str to str"),
    ("memory", 2**63, ValueError, "memory must be in 0..9223372036854775807"),
    ("memory", Color.RED, ValueError, "memory"),
    ("cpus", math.nan, TypeError, "cpus must be a finite number"),
    ("cpus", 0, ValueError, "cpus must be > 0"),
    ("timeout", 1e15, ValueError, "MAX_DELAY_SECONDS"),
    ("timeout", math.inf, TypeError, "timeout"),
    ("duplicate", Color.RED, TypeError, "duplicate must be one of"),
    ("duplicate", "sometimes", ValueError, "duplicate must be one of"),
    ("priority", Color.RED, TypeError, "priority"),
    ("retry", "often", TypeError, "RetryPolicy"),
])
def test_bad_submission_options_name_the_option(option: str, value: Any, exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc) as info:
        resolve(make_task().options(**{option: value}).call(path="a"), Defaults())
    assert fragment in str(info.value)


def test_cpus_over_the_capacity_are_refused_on_both_resolution_paths() -> None:
    defaults = Defaults(cpu_capacity=2.0)
    assert resolve(make_task(cpus=2).call(path="a"), defaults).cpus == 2.0
    with pytest.raises(ValueError, match=r"media::thumbnail: cpus=3 is more than the scheduler's CPU capacity of 2 "):
        resolve(make_task(cpus=3).call(path="a"), defaults)  # the per-type fast path
    with pytest.raises(ValueError, match="capacity"):
        resolve(make_task().options(cpus=2.5).call(path="a"), defaults)


def test_the_per_type_template_follows_a_new_capacity() -> None:
    t = make_task(cpus=2)
    with pytest.raises(ValueError, match="capacity"):
        resolve(t.call(path="a"), Defaults(cpu_capacity=1.0))
    assert resolve(t.call(path="a"), Defaults(cpu_capacity=4.0)).cpus == 2.0


@pytest.mark.parametrize("make, exc, fragment", [
    (lambda: Domain("d", group=123), TypeError, "domain 'd' group must be a str or None"),
    (lambda: Domain("d", group=Color.RED), TypeError, "Color.RED"),
    (lambda: Domain("d", timeout=1e15), ValueError, "MAX_DELAY_SECONDS"),
    (lambda: Domain("d", max_concurrency=2**31), ValueError, "max_concurrency"),
    (lambda: Domain("d", state=[1]), TypeError, "state must be a mapping"),
    (lambda: Domain("d", state={1: "x"}), TypeError, "state key"),
    (lambda: make_task(group=Color.RED), TypeError, "media::thumbnail group"),
    (lambda: make_task(memory=2**63), ValueError, "media::thumbnail memory"),
    (lambda: make_task(timeout=MAX_DELAY_SECONDS * 2), ValueError, "media::thumbnail timeout"),
    (lambda: make_task(key=42), TypeError, "media::thumbnail key"),
    (lambda: make_task(duplicate=Color.RED), TypeError, "duplicate"),
    (lambda: make_task(name="x::y"), ValueError, "task name must be a non-empty str without '::'"),
    (lambda: make_task(name=""), ValueError, "task name"),
    (lambda: make_task(name=3), TypeError, "task name must be a str"),
])
def test_bad_domain_and_task_settings_are_refused_at_definition(make: Any, exc: type[Exception],
                                                                  fragment: str) -> None:
    with pytest.raises(exc) as info:
        make()
    assert fragment in str(info.value)


def test_domain_and_task_settings_convert_subclasses() -> None:
    d = Domain(MyStr("media"), group=Mode.FAST, tags={Mode.FAST: MyStr("v")}, max_concurrency=MyInt(2),
               timeout=timedelta(seconds=5), state={MyStr("s"): 1})
    assert (type(d.name), d.group, type(d.group), d.max_concurrency, d.timeout) == (str, "fast", str, 2, 5.0)
    assert d.tags == {"fast": "v"} and all(type(k) is str and type(v) is str for k, v in d.tags.items())
    assert [type(k) for k in d.state] == [str]
    t = d.task(lambda ctx: None, name=MyStr("job"), memory=MyInt(5), group=MyStr("g"), key=MyStr("k"),
               duplicate=MyStr("reject"))
    assert (t.qualified, t.memory, type(t.memory), t.group, type(t.key)) == ("media::job", 5, int, "g", str)
    assert t.duplicate == "reject"


# =========================================================================== the payload fits the function


def typed_task() -> tm.TaskType:
    d = Domain("media")

    @d.task
    def thumbnail(ctx: Any, path: str, size: int = 256, *, fmt: str = "jpg") -> None:
        return None

    return thumbnail


@pytest.mark.parametrize("payload, fragment", [
    ({"path": "a", "sise": 3}, "media::thumbnail() got an unexpected keyword 'sise' (did you mean 'size'?)"),
    ({"path": "a", "colour": 3}, "media::thumbnail() got an unexpected keyword 'colour'"),
    ({"size": 3}, "media::thumbnail() missing required keyword 'path'"),
    ({"path": "a", "ctx": 1}, "'ctx', which is reserved"),
])
@pytest.mark.parametrize("path", ["fast", "full"])
def test_a_payload_that_does_not_fit_the_signature_is_a_type_error_on_the_host(
    payload: dict, fragment: str, path: str
) -> None:
    t = typed_task()
    sub = t.call(**payload) if path == "fast" else t.options(priority=1).call(**payload)
    with pytest.raises(TypeError) as info:
        resolve(sub, Defaults())
    assert fragment in str(info.value)


def test_a_fitting_payload_passes_with_keyword_only_and_defaulted_parameters() -> None:
    t = typed_task()
    assert json.loads(resolve(t.call(path="a", fmt="png"), Defaults()).payload) == {"path": "a", "fmt": "png"}


def test_several_missing_keywords_are_all_named() -> None:
    d = Domain("d")
    t = d.task(lambda ctx, a, b, c=1: None, name="t")
    with pytest.raises(TypeError, match=r"missing required keywords 'a', 'b'"):
        resolve(t.call(), Defaults())


def test_a_function_taking_kwargs_accepts_any_name_but_the_reserved_ones() -> None:
    d = Domain("d")
    t = d.task(lambda context, **kw: None, name="t")
    assert resolve(t.call(anything=1), Defaults()).payload == '{"anything":1}'
    for reserved in ("ctx", "context"):
        with pytest.raises(TypeError, match="reserved"):
            resolve(t.call(**{reserved: 1}), Defaults())


def test_the_signature_is_read_once_per_task_type(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    t = typed_task()
    calls: list[Any] = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda *a, **k: calls.append(a) or real(*a, **k))
    for i in range(50):
        resolve(t.call(path=str(i)), Defaults())
        resolve(t.options(priority=1).call(path=str(i)), Defaults())
    assert calls == []


@pytest.mark.parametrize("fn", [
    pytest.param(lambda: None, id="no-parameters"),
    pytest.param(lambda *, x: None, id="keyword-only"),
    pytest.param(lambda **kw: None, id="only-kwargs"),
])
def test_a_function_that_cannot_take_the_context_is_refused_at_registration(fn: Any) -> None:
    with pytest.raises(ConfigError, match="first parameter receives the TaskContext"):
        Domain("d").task(fn, name="t")


def test_other_signatures_that_can_never_be_called_are_refused_at_registration() -> None:
    def positional(ctx: Any, x: int, /) -> None: ...

    def second_ctx(context: Any, ctx: Any = None) -> None: ...

    with pytest.raises(ConfigError, match="positional-only"):
        Domain("d").task(positional)
    with pytest.raises(ConfigError, match="only the first parameter may be named 'ctx'"):
        Domain("d").task(second_ctx)


def test_lambdas_star_args_and_callables_still_register() -> None:
    d = Domain("d")
    lam = d.task(lambda ctx, x: 2 * x, name="double")
    assert resolve(lam.call(x=2), Defaults()).payload == '{"x":2}'
    star = d.task(lambda *args, **kw: None, name="star")
    assert resolve(star.call(ctx2=1), Defaults()).payload == '{"ctx2":1}'

    class Job:
        def __call__(self, ctx: Any, n: int) -> int:
            return n

    job = d.task(Job(), name="job")
    with pytest.raises(TypeError, match="missing required keyword 'n'"):
        resolve(job.call(), Defaults())


# =========================================================================== records and errors


def test_io_budget_converts_int_subclasses_and_bounds_each_field() -> None:
    io = IoBudget(disk_read=MyInt(5), net_tx=Level.HIGH)
    assert (io.disk_read, type(io.disk_read), io.net_tx, type(io.net_tx)) == (5, int, 64, int)
    assert IoBudget.disk(INT64_MAX, 0).disk_read == INT64_MAX
    with pytest.raises(ValueError, match=r"IoBudget.disk_read must be in 0..9223372036854775807"):
        IoBudget.disk(2**63, 0)
    with pytest.raises(TypeError, match="IoBudget.net_rx"):
        IoBudget(net_rx=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("make, fragment", [
    (lambda: RetryPolicy.constant(3, 1e15), "RetryPolicy.initial must be >= 0 and <= 31536000 seconds"),
    (lambda: RetryPolicy(max_retries=2**31), "RetryPolicy.max_retries must be in 0..2147483647"),
    (lambda: RetryPolicy(max_retries="3"), "RetryPolicy.max_retries"),
    (lambda: RetryPolicy.linear(3, step=math.inf), "RetryPolicy.step must be a finite number"),
    (lambda: RetryPolicy.exponential(3, max=MAX_DELAY_SECONDS + 1), "RetryPolicy.max_delay"),
    (lambda: RetryPolicy.exponential(3, multiplier=1001), "RetryPolicy.multiplier must be >= 1 and <= 1000"),
    (lambda: RetryPolicy.exponential(3, multiplier=math.nan), "RetryPolicy.multiplier"),
    (lambda: RetryPolicy(kind=Color.RED), "RetryPolicy.kind must be one of"),
    (lambda: RetryPolicy(kind="fibonacci"), "RetryPolicy.kind must be one of"),
])
def test_bad_retry_policies_name_the_field_and_the_bound(make: Any, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        make()
    assert fragment in str(info.value)


def test_retry_policy_fields_become_exact_builtins() -> None:
    p = RetryPolicy(kind=MyStr("linear"), max_retries=MyInt(4), initial=MyFloat(1.5), step=Level.HIGH)
    assert (p.kind, p.max_retries, type(p.max_retries), p.initial, type(p.initial), p.step, type(p.step)) == (
        "linear", 4, int, 1.5, float, 64.0, float)
    assert RetryPolicy.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@PROPS
@given(st.sampled_from(["constant", "linear", "exponential", "exponential_jitter"]),
       st.floats(0, MAX_DELAY_SECONDS), st.floats(0, MAX_DELAY_SECONDS), st.floats(0, MAX_DELAY_SECONDS),
       st.floats(1, 1000), st.integers(1, 10**400), st.randoms(use_true_random=False))
def test_a_retry_delay_never_exceeds_max_delay_seconds(kind: str, initial: float, cap: float, step: float,
                                                       multiplier: float, n: int, rng: random.Random) -> None:
    p = RetryPolicy(kind=kind, initial=initial, max_delay=cap, step=step, multiplier=multiplier)
    d = p.delay(n, rng)
    assert 0.0 <= d <= min(cap, MAX_DELAY_SECONDS) or (kind == "constant" and d <= MAX_DELAY_SECONDS)


@pytest.mark.parametrize("bad", [math.inf, 1e15, math.nan, "5", -1, True, MAX_DELAY_SECONDS + 1])
def test_retry_after_must_be_finite_seconds_within_max_delay(bad: Any) -> None:
    with pytest.raises(ValueError, match="retry_after"):
        tm.Retryable("later", retry_after=bad)


def test_retry_after_becomes_a_plain_float_and_survives_pickling() -> None:
    import pickle

    e = tm.Retryable("later", retry_after=MyInt(5))
    assert (e.retry_after, type(e.retry_after)) == (5.0, float)
    assert tm.Retryable("x", retry_after=timedelta(minutes=1)).retry_after == 60.0
    assert tm.Retryable("x").retry_after is None
    again = pickle.loads(pickle.dumps(e))
    assert (str(again), again.retry_after) == ("later", 5.0)


@pytest.mark.parametrize("make, fragment", [
    (lambda: Shutdown(mode="bogus"), "Shutdown.mode must be one of ['hard', 'graceful']"),
    (lambda: Shutdown(mode=Color.RED), "Shutdown.mode"),
    (lambda: Shutdown.graceful(math.nan), "graceful shutdown timeout must be a finite number"),
    (lambda: Shutdown.graceful(-1), "graceful shutdown timeout must be >= 0"),
    (lambda: Shutdown.graceful(1e15), "MAX_DELAY_SECONDS"),
    (lambda: Shutdown(mode="graceful", timeout="5"), "Shutdown.timeout"),
])
def test_bad_shutdowns_are_value_errors(make: Any, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        make()
    assert fragment in str(info.value)


def test_shutdown_converts_its_fields() -> None:
    s = Shutdown(mode=MyStr("graceful"), timeout=MyInt(3))
    assert (s.mode, type(s.mode), s.timeout, type(s.timeout)) == ("graceful", str, 3.0, float)
    assert Shutdown.graceful(MyFloat(2.0)).timeout == 2.0


def test_check_timeout_is_shared_by_every_level() -> None:
    assert check_timeout(MyInt(5)) == 5.0
    with pytest.raises(ValueError, match="default_timeout must be > 0"):
        check_timeout(-1, "default_timeout")


# =========================================================================== Scheduler(...) arguments


DOM = Domain("sched_args")


@pytest.mark.parametrize("kwargs, exc, fragment", [
    (dict(domains=DOM), TypeError, "domains must be a list of Domain objects, got a single Domain"),
    (dict(domains="sched_args"), TypeError, "domains must be a list"),
    (dict(domains=[DOM, "x"]), TypeError, "domains must be Domain objects"),
    (dict(store_path=123), TypeError, "store_path must be a str or os.PathLike"),
    (dict(store_path=b"/tmp/x"), TypeError, "store_path"),
    (dict(store_path=""), ValueError, "store_path"),
    (dict(poll_interval=math.nan), ValueError, "poll_interval must be a finite number"),
    (dict(poll_interval=math.inf), ValueError, "poll_interval"),
    (dict(poll_interval=0), ValueError, "poll_interval must be > 0 and <= 60"),
    (dict(poll_interval=61), ValueError, "poll_interval"),
    (dict(poll_interval="x"), TypeError, "poll_interval"),
    (dict(default_timeout="5"), TypeError, "default_timeout"),
    (dict(default_timeout=-1), ValueError, "default_timeout must be > 0"),
    (dict(default_timeout=1e15), ValueError, "MAX_DELAY_SECONDS"),
    (dict(default_retry="x"), TypeError, "default_retry must be a RetryPolicy"),
    (dict(default_priority=256), ValueError, "default_priority"),
    (dict(default_priority="high"), TypeError, "default_priority"),
    (dict(default_priority=Color.RED), TypeError, "default_priority"),
    (dict(state=[("a", 1)]), TypeError, "state must be a dict"),
    (dict(state={1: "a"}), TypeError, "state key"),
    (dict(max_concurrency=2**31), ValueError, "max_concurrency"),
    (dict(max_concurrency="4"), ValueError, "max_concurrency"),
    (dict(shutdown="hard"), TypeError, "shutdown must be a Shutdown"),
    (dict(resource_monitoring="yes"), TypeError, "resource_monitoring must be a bool"),
])
def test_bad_scheduler_arguments_are_refused_before_any_process_starts(kwargs: dict, exc: type[Exception],
                                                                       fragment: str) -> None:
    kwargs.setdefault("store_path", ":memory:")
    with pytest.raises(exc) as info:
        tm.Scheduler(**kwargs)
    assert fragment in str(info.value)


def test_scheduler_arguments_are_converted_and_the_capacity_is_filled() -> None:
    s = tm.Scheduler(MyStr(":memory:"), (DOM,), max_concurrency=MyInt(2), default_priority=Level.HIGH,
                     default_timeout=timedelta(seconds=5), poll_interval=MyFloat(0.25), state={MyStr("k"): 1})
    assert (s.store_path, type(s.store_path), s.max_concurrency, type(s.max_concurrency)) == (
        ":memory:", str, 2, int)
    assert (s._defaults.priority, type(s._defaults.priority), s._defaults.timeout, s._poll) == (64, int, 5.0, 0.25)
    assert s._defaults.cpu_capacity == usable_cpus()
    assert [type(k) for k in s._state] == [str]
    assert tm.Scheduler(Path("/tmp/x.duckdb")).store_path == "/tmp/x.duckdb"


def test_a_scheduler_that_is_not_started_says_so_and_a_closed_one_says_closed() -> None:
    s = tm.Scheduler(":memory:", [DOM])
    for call in (lambda: s.store.task_by_id(1), lambda: s.store.task_by_id("x"), lambda: s.sql("SELECT 1"),
                 lambda: s.wait(1), lambda: s.snapshot()):
        with pytest.raises(tm.SchedulerClosed, match="not started"):
            call()
    s.close()
    for call in (lambda: s.store.task_by_id(1), lambda: s.store.history("x"), lambda: s.wait_idle(),
                 lambda: s.task(1)):
        with pytest.raises(tm.SchedulerClosed, match="^the scheduler is closed$"):
            call()


@pytest.mark.parametrize("opts", [{"label": "a\udcff"}, {"tags": {"k": "v\udcff"}}, {"tags": {"k\ud800": "v"}},
                                  {"group": "g\udcff"}, {"key": "k\udcff"}])
def test_text_the_store_cannot_hold_is_refused_on_the_host(opts: dict[str, Any]) -> None:
    d = Domain("surrogates")

    @d.task
    def f(ctx: Any, x: int) -> int:
        return x

    with pytest.raises(ValueError, match="valid UTF-8"):
        resolve(f.options(**opts).call(x=1), Defaults())
