"""What a client may send: only protocol messages and plain values, each item checked before any is applied."""

from __future__ import annotations

import enum
import json
import pickle
from datetime import datetime, timezone
from decimal import Decimal
from multiprocessing.reduction import ForkingPickler
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmill import protocol
from taskmill.coordinator.wire import BadRequest, check_items, decode_request
from taskmill.errors import InvalidSubmission
from taskmill.validation import INT32_MAX, INT64_MAX


class Color(enum.Enum):
    RED = 1


class MyStr(str):
    pass


def wire(obj: Any) -> bytes:
    return bytes(ForkingPickler.dumps(obj))


def good_item(**changes: Any) -> tuple:
    item = protocol.SubmitItem(
        task_type="d::t", domain="d", key="k" * 64, label="d::t", priority=128, payload='{"x":1}', max_retries=3,
        retry=None, timeout=None, cpus=1.0, memory=0, io_read=0, io_write=0, io_rx=0, io_tx=0, group=None,
        tags=None, duplicate="skip")
    return tuple(item._replace(**changes))


# --------------------------------------------------------------------------- decoding


def test_protocol_messages_with_plain_values_decode() -> None:
    call = protocol.Call("sql", ("SELECT ?", [1, "a", 2.5, None, True, b"x", Decimal("1.5"),
                                              datetime(2026, 1, 1, tzinfo=timezone.utc), {"k": [1]}]))
    assert decode_request(wire(call)) == call
    for msg in (protocol.Submit([good_item()]), protocol.Wait(3, 1.5), protocol.WaitIdle(None), protocol.Stop()):
        assert decode_request(wire(msg)) == msg


@pytest.mark.parametrize("value", [Color.RED, MyStr("a"), lambda: 1, object(), pickle.PickleError("x")])
def test_a_user_class_in_a_request_is_refused_by_name(value: Any) -> None:
    try:
        data = wire(protocol.Call("task_by_id", (value,)))
    except Exception:  # noqa: BLE001 - a lambda does not even pickle: nothing to send
        return
    with pytest.raises(BadRequest, match="plain values"):
        decode_request(data)


def test_a_class_that_would_run_code_is_refused() -> None:
    class Evil:
        def __reduce__(self) -> Any:
            import os

            return (os.system, ("true",))

    with pytest.raises(BadRequest, match="posix.system|os.system"):
        decode_request(wire(protocol.Call("ping", (Evil(),))))


@pytest.mark.parametrize("data", [b"", b"\x80\x05", b"not a pickle at all", wire(protocol.Call("x"))[:-3]])
def test_truncated_or_garbage_bytes_are_a_bad_request(data: bytes) -> None:
    with pytest.raises(BadRequest, match="cannot decode"):
        decode_request(data)


@pytest.mark.parametrize("obj", [1, "Stop", [protocol.Stop()], {"name": "x"}])
def test_anything_but_a_request_is_refused(obj: Any) -> None:
    with pytest.raises(BadRequest, match="not a request"):
        decode_request(wire(obj))


# --------------------------------------------------------------------------- submitted items


def test_surrogate_pairs_and_control_escapes_are_fine() -> None:
    check_items([good_item(payload='{"smile":"\\ud83d\\ude00","nul":"\\u0000"}', label="caf\u00e9")])


def test_a_resolved_item_passes() -> None:
    items = check_items([good_item(), good_item(retry=json.dumps({"kind": "constant", "max_retries": 1}),
                                                timeout=5.0, group="g", tags='{"a":"b"}', duplicate="supersede")])
    assert [it.task_type for it in items] == ["d::t", "d::t"]


BAD_FIELDS = [
    ({"priority": 256}, "priority"),
    ({"priority": -1}, "priority"),
    ({"priority": True}, "priority"),
    ({"priority": 1.0}, "priority"),
    ({"payload": "{bad"}, "payload"),
    ({"payload": "[1]"}, "payload"),
    ({"payload": '{"a":1} trailing'}, "payload"),
    ({"max_retries": INT32_MAX + 1}, "max_retries"),
    ({"retry": '{"kind": "nope"}'}, "retry policy"),
    ({"retry": "not json"}, "retry policy"),
    ({"timeout": float("inf")}, "timeout"),
    ({"timeout": float("nan")}, "timeout"),
    ({"timeout": 0.0}, "timeout"),
    ({"timeout": 1e15}, "timeout"),
    ({"cpus": float("nan")}, "cpus"),
    ({"cpus": 0}, "cpus"),
    ({"memory": INT64_MAX + 1}, "memory"),
    ({"memory": -1}, "memory"),
    ({"io_read": 2**63}, "io_read"),
    ({"group": 5}, "group"),
    ({"tags": "{"}, "tags"),
    ({"duplicate": "bogus"}, "duplicate"),
    ({"key": MyStr("k")}, "key"),
    ({"label": None}, "label"),
    # text the store cannot hold: the commit would fail for everyone
    ({"label": "a\udcffb"}, "label"),
    ({"group": "g\ud800"}, "group"),
    ({"payload": '{"a":"\\udcff"}'}, "payload"),
    ({"payload": '{"a":"\udcff"}'}, "payload"),
    ({"tags": '{"t":"\\ud800"}'}, "tags"),
]


@pytest.mark.parametrize("change,fragment", BAD_FIELDS)
def test_each_bad_field_names_the_item_and_the_rule(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidSubmission, match=fragment) as info:
        check_items([good_item(), good_item(**change)])
    assert info.value.index == 1
    assert "item 1" in str(info.value)


@pytest.mark.parametrize("items", [(), [("too", "short")], [good_item()[:-1]], [list(good_item())], "x"])
def test_malformed_batches_are_refused(items: Any) -> None:
    with pytest.raises(InvalidSubmission):
        check_items(items if not isinstance(items, tuple) else items)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary()),
                min_size=18, max_size=18))
def test_check_items_never_fails_with_anything_but_invalid_submission(fields: list[Any]) -> None:
    try:
        check_items([tuple(fields)])
    except InvalidSubmission:
        pass
