"""Decoding and checking what clients send: nothing a peer sends can stop the loop.

Requests are unpickled by an unpickler that builds only protocol messages and
plain standard-library values (no user classes, no callables), and every
submitted item is checked field by field against the store's column types
before any item of its batch is applied. A request that fails either check is
answered with an error; the loop goes on. Imports leaves only.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from json import JSONDecoder
from typing import Any

from taskmill import protocol
from taskmill.errors import InvalidSubmission
from taskmill.records import DuplicateStrategy, RetryPolicy
from taskmill.validation import INT32_MAX, INT64_MAX, MAX_DELAY_SECONDS

__all__ = ["BadRequest", "check_items", "decode_request"]

# The only globals a request may name: protocol messages, and the value types
# ``sql()`` parameters may carry. Builtin containers and scalars need none.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("taskmill.protocol", name): getattr(protocol, name)
    for name in ("Submit", "Call", "Wait", "WaitIdle", "Stop", "Subscribe")
}
for _module, _names in (("datetime", ("datetime", "date", "time", "timedelta", "timezone")),
                        ("decimal", ("Decimal",)), ("uuid", ("UUID", "SafeUUID"))):
    _mod = __import__(_module)
    for _name in _names:
        _ALLOWED[(_module, _name)] = getattr(_mod, _name)

_REQUEST_TYPES = (protocol.Submit, protocol.Call, protocol.Wait, protocol.WaitIdle, protocol.Stop, protocol.Subscribe)
_DUPLICATES = frozenset(s.value for s in DuplicateStrategy) | {"skip_completed"}
_TTL_FROM = frozenset({"submission", "first_attempt"})
_DEP_POLICIES = frozenset({"cancel", "fail", "ignore"})
#: Most prerequisites one task may name.
MAX_DEPENDENCIES = 10_000
#: The last second DuckDB's TIMESTAMP can hold (9999-12-31T23:59:59).
MAX_TIMESTAMP = 253_402_300_799.0
_decode_json = JSONDecoder().raw_decode


class BadRequest(ValueError):
    """A request the coordinator cannot decode; answered as an error, never fatal."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise BadRequest(
                f"a request may carry only plain values; it named {module}.{name} "
                "(convert it to str/int/float/list/dict on the host)") from None


def decode_request(data: bytes) -> protocol.HostRequest:
    """Unpickle one request; raises ``BadRequest`` for anything but a protocol message."""
    try:
        msg = _Unpickler(io.BytesIO(data)).load()
    except BadRequest:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or crafted bytes: a bad request, not a crash
        raise BadRequest(f"cannot decode the request: {type(e).__name__}: {e}") from None
    if not isinstance(msg, _REQUEST_TYPES):
        raise BadRequest(f"not a request: {type(msg).__name__}")
    return msg


def _int(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _number(v: Any, lo: float, hi: float, *, open_low: bool = False) -> bool:
    if type(v) is not float and type(v) is not int:
        return False
    return math.isfinite(v) and (lo < v if open_low else lo <= v) and v <= hi


def _text(v: Any) -> bool:
    """A str the store can hold: valid UTF-8 (no lone surrogates)."""
    if type(v) is not str:
        return False
    if v.isascii():
        return True
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_object(text: Any) -> bool:
    """JSON text of an object that DuckDB's JSON type accepts (it refuses escaped lone surrogates)."""
    if not _text(text):
        return False
    try:
        value, end = _decode_json(text)
    except ValueError:
        return False
    if end != len(text) or type(value) is not dict:
        return False
    if "\\u" in text and ("\\ud" in text or "\\uD" in text):  # rare: UTF-16 halves; only pairs are valid
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _shared_problem(rest: tuple) -> str | None:
    """Why the fields an item shares with its batch's template are invalid, or None.

    ``rest`` is the item without its key, label and payload (see ``_split``).
    """
    (task_type, domain, priority, max_retries, retry, timeout, cpus, memory, io_read, io_write, io_rx, io_tx,
     group, tags, duplicate, ttl, ttl_from, run_after, depends_on, on_dep_failure, parent, fail_fast,
     recurring) = rest
    if not (_text(task_type) and _text(domain)):
        return "task_type and domain must be str"
    if not _int(priority, 0, 255):
        return f"priority must be an int in 0..255, got {priority!r}"
    if not _int(max_retries, 0, INT32_MAX):
        return f"max_retries must be an int in 0..{INT32_MAX}"
    if retry is not None:
        try:
            RetryPolicy.from_dict(_decode_json(retry)[0])
        except Exception as e:  # noqa: BLE001 - any malformed policy text is the item's fault
            return f"retry policy is not valid: {e}"
    if timeout is not None and not _number(timeout, 0.0, MAX_DELAY_SECONDS, open_low=True):
        return f"timeout must be a number in (0, {MAX_DELAY_SECONDS:g}]"
    if not _number(cpus, 0.0, float(INT32_MAX), open_low=True):
        return f"cpus must be a finite number > 0, got {cpus!r}"
    for name, v in (("memory", memory), ("io_read", io_read), ("io_write", io_write), ("io_rx", io_rx),
                    ("io_tx", io_tx)):
        if not _int(v, 0, INT64_MAX):
            return f"{name} must be an int in 0..{INT64_MAX}"
    if not (group is None or _text(group)):
        return "group must be a str (valid UTF-8) or None"
    if not (tags is None or _json_object(tags)):
        return "tags must be the JSON text of an object of str"
    if duplicate not in _DUPLICATES:
        return f"unknown duplicate strategy {duplicate!r}"
    return _lifecycle_problem(ttl, ttl_from, run_after, depends_on, on_dep_failure, parent, fail_fast, recurring)


def _lifecycle_problem(ttl: Any, ttl_from: Any, run_after: Any, depends_on: Any, on_dep_failure: Any, parent: Any,
                       fail_fast: Any, recurring: Any) -> str | None:
    if ttl is not None and not _number(ttl, 0.0, MAX_DELAY_SECONDS, open_low=True):
        return f"ttl must be a number of seconds in (0, {MAX_DELAY_SECONDS:g}]"
    if ttl_from not in _TTL_FROM:
        return f"ttl_from must be one of {sorted(_TTL_FROM)}"
    if run_after is not None and not _number(run_after, 0.0, MAX_TIMESTAMP):
        return "run_after must be a point in time (epoch seconds)"
    if depends_on is not None:
        if type(depends_on) is not tuple or len(depends_on) > MAX_DEPENDENCIES:
            return f"depends_on must be a tuple of at most {MAX_DEPENDENCIES} task ids"
        if not all(_int(d, 1, INT64_MAX) for d in depends_on) or len(set(depends_on)) != len(depends_on):
            return "depends_on must hold distinct task ids"
    if on_dep_failure not in _DEP_POLICIES:
        return f"on_dependency_failure must be one of {sorted(_DEP_POLICIES)}"
    if parent is not None and not _int(parent, 1, INT64_MAX):
        return "parent must be a task id"
    if type(fail_fast) is not bool:
        return "fail_fast must be a bool"
    if recurring is not None:
        if type(recurring) is not tuple or len(recurring) != 3:
            return "recurring must be (interval, max_executions, initial_delay)"
        interval, most, delay = recurring
        if not (_number(interval, 0.0, MAX_DELAY_SECONDS, open_low=True)
                and (most is None or _int(most, 1, INT64_MAX)) and _number(delay, 0.0, MAX_DELAY_SECONDS)):
            return "recurring has an interval > 0, max_executions >= 1 or None, and initial_delay >= 0"
        if parent is not None:
            return "a recurring task cannot have a parent"
    return None


def _split(t: tuple) -> tuple:
    """An item without its key (2), label (3) and payload (5): what a batch's items share."""
    return t[:2] + t[4:5] + t[6:]


def check_items(wire_items: Any) -> list[protocol.SubmitItem]:
    """Check every item of a ``Submit`` before any is applied; the first bad one is named.

    The fields an item shares with others (everything but key, label and payload)
    are checked once per distinct combination in the batch: a batch of one task
    type costs one full check plus three cheap ones per item.
    """
    if type(wire_items) is not list:
        raise InvalidSubmission("a submission batch must be a list")
    width = len(protocol.SubmitItem._fields)
    checked: set[tuple] = set()
    for i, t in enumerate(wire_items):
        if type(t) is not tuple or len(t) != width:
            raise InvalidSubmission(f"item {i}: not a resolved submission", index=i)
        rest = _split(t)
        try:
            known = rest in checked
        except TypeError:  # an unhashable field (a list …) cannot be valid anyway
            known = False
        if not known:
            why = _shared_problem(rest)
            if why is not None:
                raise InvalidSubmission(f"item {i}: {why}", index=i)
            checked.add(rest)
        if not (_text(t[2]) and _text(t[3])):
            raise InvalidSubmission(f"item {i}: key and label must be str (valid UTF-8)", index=i)
        if not _json_object(t[5]):
            raise InvalidSubmission(f"item {i}: payload must be the JSON text of an object", index=i)
    return [protocol.SubmitItem._make(t) for t in wire_items]
