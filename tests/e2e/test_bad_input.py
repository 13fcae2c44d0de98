"""Bad input and limits (SPEC §6): every one is a clear exception and nothing is half-written."""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

import duckdb
import pytest
from usertypes import Color, Level, Mode, MyFloat, MyInt, MyStr

import taskmill as tm
from taskmill import auth, protocol

DEADLINE = 60.0
MiB = 1024 * 1024

alpha = tm.Domain("alpha")
beta = tm.Domain("beta")


@alpha.task
def echo(ctx: tm.TaskContext, x: Any = None) -> Any:
    return x


@alpha.task
def size_of(ctx: tm.TaskContext, s: str) -> int:
    return len(s)


@beta.task
def beta_task(ctx: tm.TaskContext, x: int = 0) -> int:
    return x


def sched(store: str, **kw: Any) -> tm.Scheduler:
    kw.setdefault("max_concurrency", 1)
    return tm.Scheduler(store_path=store, domains=[alpha, beta], **kw)


def counts(s: tm.Scheduler) -> tuple[int, int]:
    t = s.sql("SELECT count(*) AS n FROM tasks")[0]["n"]
    h = s.sql("SELECT count(*) AS n FROM task_history")[0]["n"]
    return t, h


# --------------------------------------------------------------------------- domains and task types


def test_unknown_domain(store_path: str) -> None:
    with sched(store_path) as s:
        with pytest.raises(tm.UnknownDomain, match="nope"):
            s.domain("nope")
        with pytest.raises(LookupError):
            s.domain("nope")
        assert s.try_domain("nope") is None
        impostor = tm.Domain("alpha")  # same name, not the registered object
        assert s.try_domain(impostor) is None
        with pytest.raises(tm.UnknownDomain):
            s.domain(impostor)
        assert s.domain("alpha") is s.domain(alpha)
        assert s.try_domain(beta) is s.domain("beta")


def test_task_of_another_domain(store_path: str) -> None:
    late = tm.Domain("late")

    @late.task
    def first(ctx: tm.TaskContext) -> int:
        return 1

    with tm.Scheduler(store_path=store_path, domains=[alpha, late], max_concurrency=1) as s:
        with pytest.raises(tm.UnknownTaskType, match="beta"):
            s.domain(alpha).submit(beta_task, x=1)
        with pytest.raises(tm.UnknownTaskType):
            s.domain(alpha).submit(beta_task.options(priority=1), x=1)
        with pytest.raises(tm.UnknownTaskType):
            s.domain(alpha).submit(beta_task.call(x=1))

        @late.task
        def registered_after_start(ctx: tm.TaskContext) -> int:
            return 2

        with pytest.raises(tm.UnknownTaskType, match="not registered"):
            s.domain(late).submit(registered_after_start)
        assert counts(s) == (0, 0)
        assert s.wait(s.domain(late).submit(first).id, timeout=DEADLINE).result == 1


def test_configuration_errors() -> None:
    d = tm.Domain("cfg")
    with pytest.raises(tm.ConfigError):
        tm.Scheduler(store_path=":memory:", domains=[d, tm.Domain("cfg")])

    @d.task
    def t(ctx: tm.TaskContext) -> None: ...

    with pytest.raises(tm.ConfigError):
        d.task(name="t")(lambda ctx: None)
    with pytest.raises(tm.ConfigError):
        d.task(lambda ctx: None)  # a lambda needs a name
    with pytest.raises(ValueError):
        tm.Domain("bad::name")
    with pytest.raises(ValueError):
        tm.Domain("x", default_priority=256)
    with pytest.raises(ValueError):
        d.task(name="p", priority=-1)(lambda ctx: None)
    with pytest.raises(ValueError):
        d.task(name="c", cpus=0)(lambda ctx: None)
    with pytest.raises(ValueError):
        tm.IoBudget.disk(-1, 0)
    with pytest.raises(ValueError):
        tm.Scheduler(store_path=":memory:", max_concurrency=0)
    with pytest.raises(ValueError, match="durability must be one of 'fsync', 'os'"):
        tm.Scheduler(store_path=":memory:", durability="none")
    with pytest.raises(ValueError):
        tm.RetryPolicy.constant(max_retries=-1)


# --------------------------------------------------------------------------- payloads and options


@pytest.mark.parametrize("payload", [
    pytest.param({"x": object()}, id="object"),
    pytest.param({"x": {1, 2}}, id="set"),
    pytest.param({"x": b"bytes"}, id="bytes"),
    pytest.param({"x": math.nan}, id="nan"),
    pytest.param({"x": [math.inf]}, id="inf"),
    pytest.param({"x": "\ud800"}, id="lone-surrogate"),
])
def test_non_json_payload_is_refused(store_path: str, payload: dict) -> None:
    with sched(store_path) as s:
        h = s.domain(alpha)
        with pytest.raises(tm.InvalidPayload):
            h.submit(echo, **payload)
        with pytest.raises(ValueError):  # InvalidPayload is a ValueError too
            h.submit(echo.options(priority=3), **payload)
        assert counts(s) == (0, 0)
        assert s.wait(h.submit(echo, x=[1, "two", None]).id, timeout=DEADLINE).result == [1, "two", None]


def test_payload_size_limit(store_path: str) -> None:
    overhead = len('{"s":""}')
    with sched(store_path) as s:
        h = s.domain(alpha)
        with pytest.raises(tm.InvalidPayload, match="1048576"):
            h.submit(size_of, s="a" * (MiB - overhead + 1))
        with pytest.raises(tm.InvalidPayload):  # counted in UTF-8 bytes, not characters
            h.submit(size_of, s="é" * (MiB // 2))
        assert counts(s) == (0, 0)
        ok = h.submit(size_of, s="a" * (MiB - overhead))  # exactly 1 MiB is accepted
        rec = s.wait(ok.id, timeout=DEADLINE)
        assert rec.status == "completed" and rec.result == MiB - overhead


@pytest.mark.parametrize("prio,exc", [(256, ValueError), (-1, ValueError), (1000, ValueError), ("high", TypeError),
                                      (1.5, TypeError)])
def test_priority_out_of_range(store_path: str, prio: Any, exc: type) -> None:
    with sched(store_path) as s:
        h = s.domain(alpha)
        with pytest.raises(exc):
            h.submit(echo.options(priority=prio), x=1)
        with pytest.raises(tm.InvalidSubmission):
            h.submit_batch([echo.call(x=0), echo.options(priority=prio).call(x=1)])
        assert counts(s) == (0, 0)
        for good in (0, 255, tm.Priority.HIGH):
            assert isinstance(h.submit(echo.options(priority=good), x=good), tm.Inserted)
        s.wait_idle(timeout=DEADLINE)


def test_other_option_limits(store_path: str) -> None:
    with sched(store_path) as s:
        h = s.domain(alpha)
        bad = [
            echo.options(cpus=0),
            echo.options(cpus=-1),
            echo.options(memory=-5),
            echo.options(expected_io="lots"),
            echo.options(tags={f"k{i}": "v" for i in range(33)}),
            echo.options(tags={"k" * 65: "v"}),
            echo.options(tags={"k": "v" * 257}),
            echo.options(tags={"k": 1}),
            echo.options(timeout=-1),
            echo.options(retry="often"),
            echo.options(duplicate="sometimes"),
            echo.options(key=42),
        ]
        for i, opt in enumerate(bad):
            with pytest.raises((ValueError, TypeError)):
                h.submit(opt, x=i)
        with pytest.raises(TypeError):
            echo.options(colour="blue")
        with pytest.raises(TypeError):
            h.submit(echo.call(x=1), x=2)  # payload twice
        with pytest.raises(TypeError):
            h.submit("alpha::echo", x=1)
        assert counts(s) == (0, 0)
        assert isinstance(h.submit(echo.options(tags={f"k{i}": "v" for i in range(32)}), x=1), tm.Inserted)
        s.wait_idle(timeout=DEADLINE)


@pytest.mark.parametrize("bad_index,bad_item", [
    pytest.param(0, lambda: size_of.call(s="a" * (MiB + 1)), id="oversize-first"),
    pytest.param(1, lambda: echo.options(priority=256).call(x=1), id="priority"),
    pytest.param(2, lambda: echo.call(x=object()), id="non-json"),
    pytest.param(3, lambda: beta_task.call(x=1), id="other-domain"),
    pytest.param(4, lambda: 42, id="not-a-submission"),
    pytest.param(5, lambda: echo.options(tags={"k": 1}).call(x=1), id="bad-tag"),
])
def test_batch_with_one_bad_item_writes_nothing(store_path: str, bad_index: int, bad_item: Any) -> None:
    with sched(store_path) as s:
        h = s.domain(alpha)
        first = h.submit(echo, x="before")
        s.wait(first.id, timeout=DEADLINE)
        before = counts(s)
        items = [echo.call(x=f"item{i}") for i in range(8)]
        items[bad_index] = bad_item()
        with pytest.raises(tm.InvalidSubmission) as info:
            h.submit_batch(items)
        assert info.value.index == bad_index
        assert f"item {bad_index}" in str(info.value)
        assert counts(s) == before
        assert s.store.pending_count() == 0
        # the same batch without the bad item goes through whole
        del items[bad_index]
        out = h.submit_batch(items)
        assert len(out.inserted) == 7
        # no id was burnt by the refused batch
        assert out.inserted[0] == first.id + 1
        s.wait_idle(timeout=DEADLINE)
        assert counts(s) == (0, 8)


# --------------------------------------------------------------------------- host-side normalisation
#
# The coordinator must never die from user input: the host turns every value into a plain
# builtin within the store's types, or refuses it. The user-defined types below live in this
# test module on purpose: before normalisation they travelled pickled and the coordinator
# could not load them. One scheduler serves each table (module scope) to keep this fast.




class MyDateTime(datetime):
    pass


class MyDecimal(Decimal):
    pass


@alpha.task
def resize(ctx: tm.TaskContext, path: str, size: int = 256) -> str:
    return f"{path}@{size}"


RETRY_AFTER = {"inf": math.inf, "nan": math.nan, "huge": 1e15, "text": "5", "negative": -1}


@alpha.task(retry=tm.RetryPolicy.none())
def retry_later(ctx: tm.TaskContext, how: str) -> None:
    raise tm.Retryable("again", retry_after=RETRY_AFTER[how])


CAPACITY = len(os.sched_getaffinity(0))
_fresh = itertools.count()


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture(scope="module")
def shared(tmp_path_factory: Any) -> Iterator[tm.Scheduler]:
    """One scheduler (a real coordinator) for a whole table; its processes end with the module."""
    with sched(str(tmp_path_factory.mktemp("shared") / "store.duckdb")) as s:
        yield s


def still_usable(s: tm.Scheduler) -> None:
    x = f"after-{next(_fresh)}"  # a fresh payload, so never a duplicate of an earlier check
    rec = s.wait(s.domain(alpha).submit(echo, x=x).id, timeout=DEADLINE)
    assert (rec.status, rec.result) == ("completed", x)


def refused(s: tm.Scheduler, call: Callable[[tm.Scheduler], Any], exc: type[Exception], fragment: str) -> None:
    """``call`` raises exactly ``exc`` with ``fragment`` in its message, writes nothing, harms nothing."""
    before = counts(s)
    with pytest.raises(exc) as info:
        call(s)
    assert type(info.value) is exc, f"{type(info.value).__name__}: {info.value}"
    assert fragment in str(info.value), str(info.value)
    assert counts(s) == before
    still_usable(s)


SUBMISSIONS: list[Any] = [
    ("group-plain-enum", lambda h: h.submit(echo.options(group=Color.RED), x=1), TypeError,
     "group must be a str or None, got enum member Color.RED"),
    ("group-int", lambda h: h.submit(echo.options(group=123), x=1), TypeError, "group must be a str or None"),
    ("key-plain-enum", lambda h: h.submit(echo.options(key=Color.RED), x=1), TypeError, "key must be a str"),
    ("label-int", lambda h: h.submit(echo.options(label=5), x=1), TypeError, "label must be a str"),
    ("tag-plain-enum", lambda h: h.submit(echo.options(tags={"k": Color.RED}), x=1), TypeError,
     "tags must map str to str"),
    ("priority-plain-enum", lambda h: h.submit(echo.options(priority=Color.RED), x=1), TypeError, "priority"),
    ("duplicate-plain-enum", lambda h: h.submit(echo.options(duplicate=Color.RED), x=1), TypeError,
     "duplicate must be one of"),
    ("memory-2**63", lambda h: h.submit(echo.options(memory=2**63), x=1), ValueError,
     "memory must be in 0..9223372036854775807"),
    ("cpus-over-capacity", lambda h: h.submit(echo.options(cpus=CAPACITY + 1), x=1), ValueError,
     f"is more than the scheduler's CPU capacity of {CAPACITY} cores"),
    ("cpus-nan", lambda h: h.submit(echo.options(cpus=math.nan), x=1), TypeError, "cpus must be a finite number"),
    ("timeout-1e15", lambda h: h.submit(echo.options(timeout=1e15), x=1), ValueError,
     "timeout must be > 0 and <= 31536000 seconds (MAX_DELAY_SECONDS)"),
    ("timeout-inf", lambda h: h.submit(echo.options(timeout=math.inf), x=1), TypeError, "timeout"),
    ("payload-path", lambda h: h.submit(echo, x=Path("/a.jpg")), tm.InvalidPayload,
     "payload['x']: PosixPath is not JSON-serializable"),
    ("payload-nested-nan", lambda h: h.submit(echo, x={"a": [0, 1, {"b": math.nan}]}), tm.InvalidPayload,
     "payload['x']['a'][2]['b']: float nan is not allowed (JSON has no NaN/Infinity)"),
    ("payload-int-key", lambda h: h.submit(echo, x={1: "a"}), tm.InvalidPayload,
     "payload['x']: key 1 (int) is not a str"),
    ("payload-too-deep", lambda h: h.submit(echo, x=nested(1000)), tm.InvalidPayload, "MAX_PAYLOAD_DEPTH"),
    ("payload-plain-enum", lambda h: h.submit(echo, x=Color.RED), tm.InvalidPayload,
     "payload['x']: enum member Color.RED is not JSON-serializable"),
    ("payload-lambda", lambda h: h.submit(echo, x=lambda: 1), tm.InvalidPayload, "payload['x']: function"),
    ("payload-ctx", lambda h: h.submit(echo, x=1, ctx=2), TypeError, "'ctx', which is reserved"),
    ("misspelled-keyword", lambda h: h.submit(resize, path="a", sise=3), TypeError,
     "alpha::resize() got an unexpected keyword 'sise' (did you mean 'size'?)"),
    ("missing-keyword", lambda h: h.submit(resize, size=3), TypeError,
     "alpha::resize() missing required keyword 'path'"),
    ("batch-misspelled", lambda h: h.submit_batch([resize.call(path="a"), resize.call(path="b", sise=1)]),
     tm.InvalidSubmission, "batch item 1 is invalid: alpha::resize() got an unexpected keyword 'sise'"),
    ("batch-plain-enum", lambda h: h.submit_batch([echo.call(x=1), echo.options(group=Color.RED).call(x=2)]),
     tm.InvalidSubmission, "batch item 1 is invalid: group"),
    ("batch-of-one-submission", lambda h: h.submit_batch(echo.call(x=1)), TypeError,
     "submit_batch() takes a list of submissions"),
]


@pytest.mark.parametrize("call, exc, fragment", [pytest.param(*c[1:], id=c[0]) for c in SUBMISSIONS])
def test_a_bad_submission_is_refused_on_the_host(shared: tm.Scheduler, call: Any, exc: type[Exception],
                                                 fragment: str) -> None:
    refused(shared, lambda s: call(s.domain(alpha)), exc, fragment)


QUERIES: list[Any] = [
    ("task_by_id-str", lambda s: s.store.task_by_id("x"), TypeError, "task_id must be an int"),
    ("task_by_id-bool", lambda s: s.store.task_by_id(True), TypeError, "task_id must be an int"),
    ("task_by_id-negative", lambda s: s.store.task_by_id(-1), ValueError, "task_id must be in 0..9223372036854775807"),
    ("task-2**63", lambda s: s.task(2**63), ValueError, "task_id must be in 0..9223372036854775807"),
    ("cancel-str", lambda s: s.domain(alpha).cancel("1"), TypeError, "task_id"),
    ("wait-str", lambda s: s.wait("abc"), TypeError, "task_id must be an int"),
    ("wait-timeout-str", lambda s: s.wait(1, timeout="x"), TypeError, "timeout must be a finite number"),
    ("wait-timeout-negative", lambda s: s.wait(1, timeout=-1), ValueError, "timeout=None"),
    ("wait_idle-timeout-nan", lambda s: s.wait_idle(timeout=math.nan), ValueError, "timeout"),
    ("retry_dead_letter-float", lambda s: s.retry_dead_letter(1.0), TypeError, "task_id"),
    ("handle-retry_dead_letter-enum", lambda s: s.domain(alpha).retry_dead_letter(Color.RED), TypeError, "task_id"),
    ("history_stats-None", lambda s: s.store.history_stats(None), TypeError, "task_type must be a str, got NoneType"),
    ("history_stats-plain-enum", lambda s: s.store.history_stats(Color.RED), TypeError,
     "task_type must be a str, got enum member Color.RED"),
    ("task_by_key-int", lambda s: s.store.task_by_key(123), TypeError, "key must be a str"),
    ("task_lookup-None", lambda s: s.store.task_lookup(None, None), TypeError, "task_type must be a str"),
    ("task_lookup-key-int", lambda s: s.store.task_lookup("alpha::echo", 1), TypeError, "key must be a str"),
    ("pending_by_type-bytes", lambda s: s.store.pending_by_type(b"alpha::echo"), TypeError, "task_type"),
    ("history_by_key-None", lambda s: s.store.history_by_key(None), TypeError, "key must be a str"),
    ("history_by_type-limit", lambda s: s.store.history_by_type("alpha::echo", -1), ValueError, "limit"),
    ("avg_throughput-limit", lambda s: s.store.avg_throughput("alpha::echo", 2**64), ValueError, "limit"),
    ("history-2**63", lambda s: s.store.history(2**63), ValueError, "limit must be in 0..9223372036854775807"),
    ("history-offset-str", lambda s: s.store.history(10, "0"), TypeError, "offset must be an int"),
    ("pending_tasks-10**30", lambda s: s.store.pending_tasks(10**30), ValueError, "limit"),
    ("failed_tasks-float", lambda s: s.store.failed_tasks(1.5), TypeError, "limit"),
    ("dead_letter_tasks-negative", lambda s: s.domain(alpha).dead_letter_tasks(-1), ValueError, "limit"),
    ("prune_by_age-1e10", lambda s: s.store.prune_history_by_age(1e10), ValueError,
     "days must be >= 0 and <= 100000, got 10000000000"),
    ("prune_by_age-nan", lambda s: s.store.prune_history_by_age(math.nan), ValueError, "days"),
    ("prune_by_count-negative", lambda s: s.store.prune_history_by_count(-1), ValueError, "keep"),
    ("prune_by_count-str", lambda s: s.store.prune_history_by_count("0"), TypeError, "keep"),
    ("lookup_typed-str", lambda s: s.store.lookup_typed("x"), TypeError, "lookup_typed() takes task.call(...)"),
    ("sql-lambda", lambda s: s.sql("SELECT ? AS a", [lambda: 1]), TypeError, "sql() params[0]: function"),
    ("sql-object", lambda s: s.sql("SELECT ? AS a", [object()]), TypeError, "sql() params[0]: object"),
    ("sql-named-plain-enum", lambda s: s.sql("SELECT $a AS a", {"a": Color.RED}), TypeError,
     "sql() params['a']: enum member Color.RED"),
    ("sql-int-key", lambda s: s.sql("SELECT $a AS a", {1: 2}), TypeError, "key 1 (int) is not a str"),
    ("sql-params-str", lambda s: s.sql("SELECT 1 AS a", "abc"), TypeError, "params must be None, a list or tuple"),
    ("sql-huge-int", lambda s: s.sql("SELECT ? AS a", [2**200]), ValueError, "sql() params[0]: int"),
    ("sql-query-bytes", lambda s: s.sql(b"SELECT 1"), TypeError, "query must be a str"),
    ("domain-int", lambda s: s.domain(123), TypeError, "domain (a Domain or its name) must be a str"),
]


@pytest.mark.parametrize("call, exc, fragment", [pytest.param(*c[1:], id=c[0]) for c in QUERIES])
def test_a_bad_query_argument_is_refused_on_the_host(shared: tm.Scheduler, call: Any, exc: type[Exception],
                                                     fragment: str) -> None:
    refused(shared, call, exc, fragment)


def test_subclasses_and_str_enums_travel_as_plain_values(shared: tm.Scheduler) -> None:
    s = shared
    key = MyStr(f"plain-{next(_fresh)}")
    out = s.domain(alpha).submit(
        echo.options(group=Mode.FAST, key=key, label=MyStr("a label"), priority=Level.HIGH, memory=MyInt(5),
                     cpus=MyFloat(1.0), timeout=MyInt(30), tags={MyStr("t"): Mode.FAST},
                     expected_io=tm.IoBudget(disk_read=MyInt(5))),
        x=[Mode.FAST, Level.HIGH, MyStr("s"), MyInt(7), MyFloat(1.5), (1, MyStr("t"))])
    rec = s.wait(MyInt(out.id), timeout=MyFloat(DEADLINE))
    assert (rec.status, rec.result) == ("completed", ["fast", 64, "s", 7, 1.5, [1, "t"]])
    assert (rec.group, rec.label, rec.priority, rec.tags) == ("fast", "a label", 64, {"t": "fast"})
    # query arguments are converted the same way
    assert s.store.task_by_id(MyInt(out.id)) is None  # finished
    assert out.id in [r.id for r in s.store.history_by_type(MyStr("alpha::echo"), limit=Level.HIGH)]
    assert s.store.task_lookup(MyStr("alpha::echo"), key).history.id == out.id
    assert s.store.history_stats(MyStr("alpha::echo")).count >= 1
    assert s.store.lookup_typed(echo.options(key=key).call(x=0)).history.id == out.id
    assert s.store.prune_history_by_age(MyInt(100_000)) == 0  # the largest age the host lets through
    rows = s.sql("SELECT ? AS a, ? AS b, ? AS c, ? AS d, ? AS e, ? AS f",
                 [MyStr("x"), MyInt(3), Mode.FAST, Level.HIGH, MyDecimal("1.5"), MyDateTime(2024, 1, 2, 3, 4, 5)])
    assert rows == [{"a": "x", "b": 3, "c": "fast", "d": 64, "e": Decimal("1.5"), "f": datetime(2024, 1, 2, 3, 4, 5)}]
    assert s.sql("SELECT $name AS n", {MyStr("name"): Mode.FAST}) == [{"n": "fast"}]
    still_usable(s)


MAIN_TYPES_SCRIPT = """
import enum, json, sys
import taskmill as tm

class Mode(enum.StrEnum):
    FAST = "fast"

class Level(enum.IntEnum):
    HIGH = 64

class MyStr(str):
    pass

class MyInt(int):
    pass

jobs = tm.Domain("jobs")

@jobs.task
def echo(ctx, x):
    return x

with tm.Scheduler(store_path=sys.argv[1], domains=[jobs], max_concurrency=1) as s:
    h = s.domain(jobs)
    out = h.submit(echo.options(group=Mode.FAST, key=MyStr("k"), label=MyStr("l"), priority=Level.HIGH,
                                memory=MyInt(1), tags={MyStr("t"): Mode.FAST}), x=[Mode.FAST, MyInt(2)])
    rec = s.wait(MyInt(out.id), timeout=60)
    found = s.store.task_lookup(MyStr("jobs::echo"), MyStr("k")).history.id == out.id
    rows = s.sql("SELECT ? AS a, ? AS b", [MyStr("x"), Level.HIGH])
    print(json.dumps([rec.status, rec.result, rec.group, rec.label, rec.priority, found, rows]))
"""


def test_types_defined_in_the_hosts_main_module_reach_the_coordinator_as_plain_values(tmp_path: Path) -> None:
    """The original bug: ``__main__.MyStr`` travelled pickled and the coordinator could not load it."""
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(MAIN_TYPES_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(Path(tm.__file__).resolve().parent.parent)}  # the taskmill under test
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "s.duckdb")], cwd=tmp_path, env=env,
                          check=False, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [
        "completed", ["fast", 2], "fast", "l", 64, True, [{"a": "x", "b": 64}]]


@pytest.mark.parametrize("how", sorted(RETRY_AFTER))
def test_a_bad_retry_after_inside_a_task_fails_that_task_only(shared: tm.Scheduler, how: str) -> None:
    rec = shared.wait(shared.domain(alpha).submit(retry_later, how=how).id, timeout=DEADLINE)
    assert rec.status == "dead_letter"  # the ValueError is the task's error; its policy never retries
    assert "retry_after" in (rec.last_error or ""), rec.last_error
    still_usable(shared)


def test_calls_before_start_say_not_started_and_after_close_say_closed(store_path: str) -> None:
    s = sched(store_path)
    calls: list[Callable[[], Any]] = [
        lambda: s.store.task_by_id(1), lambda: s.store.task_by_id("x"), lambda: s.store.history(10),
        lambda: s.sql("SELECT 1"), lambda: s.wait(1, timeout=1), lambda: s.wait_idle(timeout=1), lambda: s.snapshot(),
        lambda: s.task(1), lambda: s.domain(alpha).submit(echo, x=object()), lambda: s.domain(alpha).cancel(1),
        lambda: s.domain(alpha).submit_batch([echo.call(x=1)]), lambda: s.store.lookup_typed(echo.call(x=1)),
    ]
    for call in calls:
        with pytest.raises(tm.SchedulerClosed, match="not started"):
            call()
    with s:
        still_usable(s)
    for call in calls:
        with pytest.raises(tm.SchedulerClosed) as info:
            call()
        assert str(info.value) == "the scheduler is closed"


# --------------------------------------------------------------------------- stores


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _text(path: Path) -> None:
    path.write_text("id,name\n1,photo.jpg\n" * 100)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign_duckdb(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE photos (id INTEGER, path VARCHAR)")
    con.execute("INSERT INTO photos VALUES (1, '/a.jpg')")
    con.close()


def _foreign_meta(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('app', 'something-else'), ('schema_version', '1')")
    con.close()


def _sqlite(path: Path) -> None:
    con = sqlite3.connect(str(path))
    con.execute("CREATE TABLE photos (id INTEGER)")
    con.commit()
    con.close()


@pytest.mark.parametrize("make", [
    _random_bytes, _text, _empty, _foreign_duckdb, _foreign_meta,
    _sqlite,
])
def test_not_a_taskmill_store(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "store.duckdb"
    make(path)
    before = path.read_bytes()
    t0 = time.monotonic()
    with pytest.raises(tm.NotATaskmillStore):
        tm.Scheduler(store_path=str(path), domains=[alpha], max_concurrency=1).start()
    assert time.monotonic() - t0 < 30
    assert path.read_bytes() == before, "the foreign file was modified"
    assert not os.path.exists(str(path) + ".taskmill.json")


def test_schema_too_new(store_path: str) -> None:
    with sched(store_path) as s:
        s.wait(s.domain(alpha).submit(echo, x=1).id, timeout=DEADLINE)
    con = duckdb.connect(store_path)
    (version,) = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(int(version) + 1)])
    con.close()
    with pytest.raises(tm.SchemaTooNew, match=str(int(version) + 1)):
        sched(store_path).start()
    con = duckdb.connect(store_path, read_only=True)
    try:  # untouched: still the newer version and the old history
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(int(version) + 1),)
        assert con.execute("SELECT count(*) FROM task_history").fetchone() == (1,)
    finally:
        con.close()


def test_second_scheduler_on_same_store_is_locked(store_path: str) -> None:
    with sched(store_path) as s:
        h = s.domain(alpha)
        with pytest.raises(tm.StoreLocked):
            sched(store_path).start()
        # the first one is unharmed
        assert s.wait(h.submit(echo, x="still here").id, timeout=DEADLINE).result == "still here"
    # once closed, the store is free again
    with sched(store_path) as s2:
        assert s2.sql("SELECT count(*) AS n FROM task_history") == [{"n": 1}]


def test_store_held_by_another_duckdb_process_is_locked(store_path: str) -> None:
    with sched(store_path) as s:
        s.wait(s.domain(alpha).submit(echo, x=1).id, timeout=DEADLINE)
    holder = duckdb.connect(store_path)  # this (test) process holds the write lock
    try:
        with pytest.raises(tm.StoreLocked):
            sched(store_path).start()
    finally:
        holder.close()
    with sched(store_path) as s:
        assert counts(s) == (0, 1)


# --------------------------------------------------------------------------- sql() is read-only


WRITES = [
    "DELETE FROM task_history",
    "UPDATE task_history SET status = 'failed'",
    "INSERT INTO meta VALUES ('x', 'y')",
    "CREATE TABLE evil (a INTEGER)",
    "CREATE TEMP TABLE evil AS SELECT 1",
    "DROP TABLE task_history",
    "ALTER TABLE tasks ADD COLUMN evil INTEGER",
    "SELECT 1; DELETE FROM task_history",
    "SELECT 1; SELECT 2",
    "COPY task_history TO '{out}'",
    "EXPORT DATABASE '{out}'",
    "ATTACH '{out}' AS other",
    "CHECKPOINT",
    "SET memory_limit = '1MB'",
    "PRAGMA memory_limit = '1MB'",
    "INSTALL sqlite",
    "VACUUM",
    "BEGIN TRANSACTION",
]


def _store_state(s: tm.Scheduler) -> Any:
    return (s.sql("SELECT id, status FROM task_history ORDER BY id"),
            s.sql("SELECT key, value FROM meta ORDER BY key"),
            s.sql("SELECT table_name FROM information_schema.tables ORDER BY 1"),
            s.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks' ORDER BY 1"),
            s.sql("SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t"))


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory: Any) -> str:
    path = str(tmp_path_factory.mktemp("sqlstore") / "store.duckdb")
    with sched(path) as s:
        h = s.domain(alpha)
        for i in range(3):
            s.wait(h.submit(echo, x=i).id, timeout=DEADLINE)
    return path


def test_sql_refuses_writes_and_nothing_is_written(finished_store: str, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    with sched(finished_store) as s:
        before = _store_state(s)
        for q in WRITES:
            with pytest.raises(tm.QueryRefused):
                s.sql(q.format(out=out))
            assert not os.path.exists(out), q
        assert _store_state(s) == before
        # malformed SQL is a StoreError, not a crash
        with pytest.raises(tm.StoreError):
            s.sql("SELEC nonsense FROM")
        with pytest.raises(tm.StoreError):
            s.sql("SELECT * FROM no_such_table")
        with pytest.raises(TypeError):
            s.sql(b"SELECT 1")  # type: ignore[arg-type]
        # reads work, the scheduler is fine
        assert s.sql("SELECT 42 AS answer") == [{"answer": 42}]
        assert s.sql("SELECT count(*) AS n FROM task_history WHERE payload->>'x' = $x", {"x": "1"}) == [{"n": 1}]
        assert s.wait(s.domain(alpha).submit(echo, x=99).id, timeout=DEADLINE).result == 99


@pytest.mark.parametrize("query", [
    "EXPLAIN ANALYZE DELETE FROM task_history",
    "EXPLAIN ANALYZE UPDATE meta SET value = '999' WHERE key = 'schema_version'",
    "WITH gone AS (DELETE FROM task_history RETURNING id) SELECT count(*) FROM gone",
])
def test_sql_write_hidden_in_a_read_is_not_persisted(finished_store: str, query: str) -> None:
    with sched(finished_store) as s:
        before = _store_state(s)
        try:
            s.sql(query)
        except tm.StoreError:
            pass  # refusing is fine too
        assert _store_state(s) == before
    with sched(finished_store) as s:  # and it did not persist across a restart either
        assert _store_state(s) == before


@pytest.mark.parametrize("query", [
    "EXPLAIN ANALYZE COPY task_history TO '{out}'",
    "EXPLAIN ANALYZE SET memory_limit = '123MB'",
    "EXPLAIN ANALYZE SET GLOBAL threads = 1",
    "EXPLAIN ANALYZE CHECKPOINT",
])
def test_sql_explain_analyze_cannot_write(finished_store: str, tmp_path: Path, query: str) -> None:
    """EXPLAIN ANALYZE executes its statement, and neither a file write nor a SET is undone by a rollback."""
    out = str(tmp_path / "leak.csv")
    with sched(finished_store) as s:
        before = _store_state(s)
        with pytest.raises(tm.QueryRefused):
            s.sql(query.format(out=out))
        assert not os.path.exists(out)
        assert _store_state(s) == before


# --------------------------------------------------------------------------- the control socket


def test_unauthenticated_client_is_refused(store_path: str) -> None:
    with sched(store_path) as s:
        path = s._process.socket_path
        assert os.path.exists(path)
        assert (os.stat(os.path.dirname(path)).st_mode & 0o077) == 0, "runtime dir is readable by others"
        for _ in range(3):  # the wrong key: refused, by taskmill's client and by multiprocessing's
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.connect(path)
            with pytest.raises(auth.AuthError, match="refused this key"):
                auth.client_handshake(raw, b"wrong key", time.monotonic() + DEADLINE)
            raw.close()
            with pytest.raises((AuthenticationError, EOFError, OSError)):
                Client(path, family="AF_UNIX", authkey=b"wrong key")
        # no key at all: the client skips the handshake and sends a request straight away
        c = Client(path, family="AF_UNIX")
        c.send(protocol.Call("snapshot", ()))
        got = b""
        raw_c = socket.socket(fileno=os.dup(c.fileno()))
        raw_c.settimeout(DEADLINE)
        try:
            while chunk := raw_c.recv(4096):
                got += chunk
        except (ConnectionError, TimeoutError):
            pass
        finally:
            raw_c.close()
            c.close()
        # the challenge, then the refusal (the request was taken for a wrong answer), then nothing
        assert got.startswith(auth.MAGIC) and got[auth.CHALLENGE_SIZE:] in (b"", auth.REFUSED), got
        # garbage instead of a handshake
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(path)
        raw.sendall(b"\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n")
        raw.close()
        # the scheduler keeps working, also for new connections (a fresh thread opens one)
        h = s.domain(alpha)
        assert s.wait(h.submit(echo, x="ok").id, timeout=DEADLINE).result == "ok"
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(s.snapshot().running_count), daemon=True)
        t.start()
        t.join(DEADLINE)
        assert box == [0]


def test_silent_client_does_not_block_new_connections(store_path: str) -> None:
    with sched(store_path) as s:
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.connect(s._process.socket_path)
        try:
            box: list[Any] = []
            t = threading.Thread(target=lambda: box.append(s.snapshot().running_count), daemon=True)
            t.start()
            t.join(10.0)
            answered = box == [0]
        finally:
            silent.close()  # unblocks the accept thread either way
            t.join(DEADLINE)
        assert answered, "a new connection was not served while a silent peer was connected"


# --------------------------------------------------------------------------- task modules on sys.path


TASK_MODULE = """
import taskmill as tm

jobs = tm.Domain("jobs")

def helper(x):
    return x + 1

@jobs.task
def bump(ctx, x):
    return helper(x)
"""

HOST_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])          # the task module is importable only through sys.path
import mytasks
import taskmill as tm

with tm.Scheduler(store_path=sys.argv[2], domains=[mytasks.jobs], max_concurrency=1) as s:
    out = s.domain(mytasks.jobs).submit(mytasks.bump, x=1)
    print(json.dumps(s.wait(out.id, timeout=60).result))
"""


def test_task_module_only_on_sys_path(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mytasks.py").write_text(textwrap.dedent(TASK_MODULE))
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST_SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), str(pkg), str(tmp_path / "s.duckdb")], cwd=tmp_path,
                          env=env, check=False, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == 2


FAILED_START_SCRIPT = """
import os, sys
import taskmill as tm

d = tm.Domain("d")
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(os.urandom(4096))
for _ in range(3):
    try:
        tm.Scheduler(store_path=path, domains=[d], max_concurrency=1).start()
    except tm.NotATaskmillStore:
        print("refused", flush=True)
"""


def test_failed_start_is_quiet_and_clean(tmp_path: Path) -> None:
    script = tmp_path / "failing.py"
    script.write_text(textwrap.dedent(FAILED_START_SCRIPT))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "junk.duckdb")], cwd=tmp_path,
                          check=False, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["refused"] * 3
    assert "leaked" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_a_bad_single_submission_among_other_threads_fails_alone(store_path: str) -> None:
    """Single submissions of threads that call together travel in one request (``taskmill.singles``);
    each is still checked on its own: a bad one raises in its own thread only."""
    with sched(store_path, start_paused=True) as s:
        h = s.domain(alpha)
        got: dict[tuple[int, int], Any] = {}

        def submitter(t: int) -> None:
            for i in range(50):
                try:
                    if t == 0 and i % 5 == 0:  # a prerequisite that never existed
                        got[(t, i)] = h.submit(echo.options(depends_on=[10_000_000 + i]), x=[t, i])
                    else:
                        got[(t, i)] = h.submit(echo, x=[t, i])
                except Exception as e:  # noqa: BLE001 - what the test checks
                    got[(t, i)] = e

        threads = [threading.Thread(target=submitter, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(DEADLINE)
        bad = {k for k, v in got.items() if isinstance(v, Exception)}
        assert bad == {(0, i) for i in range(0, 50, 5)}
        for t, i in bad:
            assert isinstance(got[(t, i)], tm.InvalidSubmission)
            assert str(got[(t, i)]).startswith(f"depends_on: task {10_000_000 + i} does not exist"), got[(t, i)]
        ids = {v.task_id for v in got.values() if isinstance(v, tm.Inserted)}
        assert len(ids) == 200 - len(bad)
        assert s.store.paused_count() + s.store.pending_count() == len(ids)
