"""Host-side bounds and normalisers: every value a user passes is made plain before it travels.

Invariant: a normaliser returns an exact builtin (``str``, ``int``, ``float`` …) within the
store's column types, or raises ``TypeError``/``ValueError`` naming the argument and the rule.
Leaf module: imports only ``taskmill.errors`` (``records`` and ``domain`` import this one) and the
stdlib. ``MAX_DELAY_SECONDS`` lives in ``errors`` (``Retryable`` needs it) and is re-exported here.
"""

from __future__ import annotations

import difflib
import enum
import math
import operator
import os
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterable

from taskmill.errors import MAX_DELAY_SECONDS, InvalidPayload

__all__ = [
    "INT32_MAX",
    "INT64_MAX",
    "MAX_DELAY_SECONDS",
    "MAX_PAYLOAD_DEPTH",
    "MAX_POLL_INTERVAL",
    "MAX_PRUNE_DAYS",
    "SQL_INT_MAX",
    "SQL_INT_MIN",
    "as_float",
    "as_int",
    "as_opt_str",
    "as_seconds",
    "as_str",
    "as_wait_timeout",
    "check_json",
    "describe",
    "did_you_mean",
    "sql_params",
    "usable_cpus",
]

#: Largest DuckDB BIGINT: ids, byte counts, memory, IO budgets, limits and offsets.
INT64_MAX = 2**63 - 1
#: Largest DuckDB INTEGER: ``max_retries`` and retry counts.
INT32_MAX = 2**31 - 1
#: Deepest nesting of lists/dicts in a payload or SQL parameter. Real payloads are a few levels
#: deep; far deeper is a bug and would hit the recursion limit of json and pickle.
MAX_PAYLOAD_DEPTH = 100
#: Largest ``days`` for ``prune_history_by_age`` (~274 years): more would overflow the date cutoff.
MAX_PRUNE_DAYS = 100_000
#: Longest ``poll_interval`` in seconds: the coordinator loop must wake at least this often.
MAX_POLL_INTERVAL = 60.0
#: Integer range DuckDB binds as a SQL parameter (HUGEINT minimum .. UHUGEINT maximum).
SQL_INT_MIN = -(2**127)
SQL_INT_MAX = 2**128 - 1

_NONE_TYPE = type(None)
#: Exact types JSON writes as themselves; floats need a finiteness check on top.
_JSON_LEAVES = frozenset({str, int, bool, _NONE_TYPE})
_JSON_SCALARS = _JSON_LEAVES | {float}
#: Exact types a SQL parameter may have unchanged (besides containers).
_SQL_EXACT = frozenset({str, int, float, bool, _NONE_TYPE, bytes, datetime, date, time, timedelta, Decimal,
                        uuid.UUID})
_SQL_TYPES_HINT = ("str, int, float, bool, None, bytes, datetime/date/time/timedelta, Decimal, UUID, "
                   "or lists/tuples/dicts of them")


# --------------------------------------------------------------------------- messages


def describe(value: Any) -> str:
    """A short description of ``value``'s type for error messages (``PosixPath``, ``enum member Color.RED``)."""
    if isinstance(value, enum.Enum):
        return f"enum member {type(value).__name__}.{value.name}"
    return type(value).__name__


def _num(x: float) -> str:
    """A bound for a message: ``31536000`` rather than ``3.1536e+07``, ``1e+15`` when it is huge."""
    return f"{x:.15g}"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- scalars


def as_str(value: Any, what: str, *, expected: str = "a str") -> str:
    """``value`` as an exact ``str``; subclasses (``StrEnum`` members too) are converted.

    Raises:
        TypeError: not a str (a plain ``Enum`` member, a number, None …).
        ValueError: not valid UTF-8 text (a lone surrogate), so the store could not keep it.
    """
    if type(value) is not str:
        if not isinstance(value, str):
            raise TypeError(f"{what} must be {expected}, got {describe(value)} {value!r}")
        value = str.__str__(value)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{what} must be valid UTF-8 text: {e.reason} at position {e.start}") from None
    return value


def as_opt_str(value: Any, what: str) -> str | None:
    """Like :func:`as_str`, with None passed through."""
    return None if value is None else as_str(value, what, expected="a str or None")


def as_int(value: Any, what: str, *, lo: int = 0, hi: int = INT64_MAX,
           wrong_type: type[Exception] = TypeError) -> int:
    """``value`` as an exact ``int`` in ``lo..hi``; int subclasses (``IntEnum``) are converted, bools refused.

    Args:
        value: The user's value.
        what: The argument's name for the message.
        lo: Smallest accepted value.
        hi: Largest accepted value (default: a BIGINT column's).
        wrong_type: Exception class for a value that is not an int (some existing
            checks promised ``ValueError``).

    Raises:
        TypeError: not an int (or ``wrong_type``).
        ValueError: outside ``lo..hi``.
    """
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong_type(f"{what} must be an int in {lo}..{hi}, got {describe(value)} {value!r}")
        value = operator.index(value)
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}, got {value}")
    return value


def as_float(value: Any, what: str, *, lo: float = 0.0, hi: float = math.inf, lo_open: bool = False,
             wrong_type: type[Exception] = TypeError, nonfinite: type[Exception] = ValueError,
             unit: str = "") -> float:
    """``value`` as a finite exact ``float`` in ``lo..hi`` (``lo`` excluded when ``lo_open``).

    Ints and int/float subclasses are converted; bools are refused.

    Args:
        value: The user's value.
        what: The argument's name for the message.
        lo: Smallest accepted value (excluded when ``lo_open``).
        hi: Largest accepted value.
        lo_open: Refuse ``lo`` itself (``> 0`` rather than ``>= 0``).
        wrong_type: Exception class for a value that is not a number.
        nonfinite: Exception class for nan and infinities.
        unit: Unit word for the message, e.g. ``"seconds"``.

    Raises:
        TypeError: not a number (or ``wrong_type``).
        ValueError: out of range; nan or infinite (or ``nonfinite``).
    """
    if type(value) is float:
        f = value
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise wrong_type(f"{what} must be a finite number{' of ' + unit if unit else ''}, "
                         f"got {describe(value)} {value!r}")
    elif isinstance(value, float):
        f = float.__float__(value)
    else:
        try:
            f = float(operator.index(value))
        except OverflowError:
            f = math.inf if value > 0 else -math.inf
    if not math.isfinite(f):
        raise nonfinite(f"{what} must be a finite number{' of ' + unit if unit else ''}, got {f!r}")
    if f < lo or (lo_open and f == lo) or f > hi:
        bound = f"> {_num(lo)}" if lo_open else f">= {_num(lo)}"
        if math.isfinite(hi):
            bound += f" and <= {_num(hi)}"
        if unit:
            bound += f" {unit}"
        if hi == MAX_DELAY_SECONDS:
            bound += " (MAX_DELAY_SECONDS)"
        raise ValueError(f"{what} must be {bound}, got {_num(f)}")
    return f


def as_seconds(value: Any, what: str, *, lo_open: bool = False, hi: float = MAX_DELAY_SECONDS,
               wrong_type: type[Exception] = TypeError, nonfinite: type[Exception] = ValueError) -> float:
    """A duration in seconds (a number or a ``timedelta``) as a float in ``0..hi``; see :func:`as_float`."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return as_float(value, what, lo=0.0, hi=hi, lo_open=lo_open, wrong_type=wrong_type, nonfinite=nonfinite,
                    unit="seconds")


def as_wait_timeout(value: Any, what: str = "timeout") -> float | None:
    """A ``wait`` timeout: None (no limit) or finite seconds >= 0.

    Raises:
        TypeError: not None, a number or a ``timedelta``.
        ValueError: negative, nan or infinite (use None to wait without a limit).
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    try:
        return as_float(value, what, unit="seconds")
    except ValueError as e:
        raise ValueError(f"{e}; use timeout=None to wait without a limit") from None


#: Where a CPU quota of this process's cgroup may be (v2, then v1).
CGROUP_CPU = ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us")


def read_text(path: str) -> str | None:
    """A small file's text, or None if it cannot be read."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cgroup_cpus(v2: str | None, v1_quota: str | None, v1_period: str | None) -> float | None:
    """Cores a cgroup's CPU quota allows (``cpu.max`` of v2, or v1's quota and period), None without one."""
    try:
        if v2 is not None:
            quota, period = (v2.split() + ["100000"])[:2]
            return None if quota == "max" else int(quota) / int(period)
        if v1_quota is not None and v1_period is not None and int(v1_quota) > 0:
            return int(v1_quota) / int(v1_period)
    except ValueError:
        return None
    return None


def usable_cpus() -> float:
    """The cores this process may use: its CPU affinity, lowered by a cgroup CPU quota; at least 1."""
    try:
        cores = float(len(os.sched_getaffinity(0)) or 1)
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        cores = float(os.cpu_count() or 1)
    quota = cgroup_cpus(read_text(CGROUP_CPU[0]), read_text(CGROUP_CPU[1]),
                        read_text(CGROUP_CPU[1].replace("quota", "period")))
    return max(1.0, min(cores, quota)) if quota is not None else cores


# --------------------------------------------------------------------------- payloads (JSON)


def _path(parts: Any) -> str:
    """Render a linked path ``(parent, key)`` built by the walks as ``payload['a'][2]``; long ones elided."""
    keys: list[Any] = []
    while isinstance(parts, tuple):
        parts, key = parts
        keys.append(key)
    steps = [f"[{k!r}]" for k in reversed(keys)]
    if len(steps) > 12:
        steps = steps[:5] + [f"…({len(steps) - 10} more)…"] + steps[-5:]
    return str(parts) + "".join(steps)


def check_json(value: Any, what: str = "payload") -> None:
    """Check that ``value`` becomes JSON faithfully; name the first offending place.

    Accepted: str/int/float/bool/None (subclasses too: JSON writes their plain
    value, so ``StrEnum``/``IntEnum`` members are fine), finite floats, lists,
    tuples and dicts with str keys, nested at most ``MAX_PAYLOAD_DEPTH`` deep.

    Raises:
        InvalidPayload: e.g. ``payload['a'][2]['b']: float nan is not allowed (JSON has no NaN/Infinity)``.
    """
    _walk_json(value, what, 0, set())


def _walk_json(v: Any, path: Any, depth: int, active: set[int]) -> None:
    t = type(v)
    if t in _JSON_LEAVES:
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidPayload(f"{_path(path)}: float {float.__repr__(v)} is not allowed (JSON has no NaN/Infinity)")
        return
    if isinstance(v, (str, int)):  # subclasses; bool is an int
        return
    if not isinstance(v, (dict, list, tuple)):
        raise InvalidPayload(f"{_path(path)}: {describe(v)} is not JSON-serializable")
    if depth >= MAX_PAYLOAD_DEPTH:
        raise InvalidPayload(f"{_path(path)}: nested deeper than {MAX_PAYLOAD_DEPTH} levels (MAX_PAYLOAD_DEPTH)")
    if id(v) in active:
        raise InvalidPayload(f"{_path(path)}: circular reference (a container that contains itself)")
    if isinstance(v, dict):
        if not {str}.issuperset(map(type, v)):
            for k in v:
                if not isinstance(k, str):
                    raise InvalidPayload(f"{_path(path)}: key {k!r} ({describe(k)}) is not a str; "
                                         f"JSON object keys must be str")
        values: Iterable[Any] = v.values()
        items: Iterable[tuple[Any, Any]] = v.items()
    else:
        values = v
        items = enumerate(v)
    kinds = set(map(type, values))
    if kinds <= _JSON_LEAVES:
        return  # the common case: a flat container of plain values
    if kinds <= _JSON_SCALARS and all(map(math.isfinite, (x for x in values if type(x) is float))):
        return
    active.add(id(v))
    for k, x in items:
        _walk_json(x, (path, k), depth + 1, active)
    active.discard(id(v))


# --------------------------------------------------------------------------- sql() parameters


def sql_params(params: Any) -> list[Any] | tuple[Any, ...] | dict[str, Any] | None:
    """Normalise ``sql()`` parameters to plain stdlib values the coordinator can always unpickle.

    Args:
        params: None, a list/tuple (positional ``?``/``$1``) or a dict with str keys (``$name``).

    Returns:
        The same shape with every value of an exact stdlib type: subclasses of
        str/int/float/bytes/datetime/date/time/timedelta/Decimal/UUID converted,
        timezones turned into fixed ``timezone`` offsets.

    Raises:
        TypeError: an unsupported value, named by its index or key (``params[0]``).
        ValueError: an int outside what DuckDB binds, or nesting deeper than ``MAX_PAYLOAD_DEPTH``.
    """
    if params is None:
        return None
    if isinstance(params, (list, tuple, dict)):
        plain: list[Any] | tuple[Any, ...] | dict[str, Any] = _sql_value(params, "params", 0)
        return plain
    raise TypeError(f"sql() params must be None, a list or tuple (positional) or a dict with str keys (named), "
                    f"got {describe(params)}")


def _plain_tz(value: datetime | time) -> timezone | None:
    """The value's tzinfo as a stdlib fixed-offset ``timezone`` (``timezone`` cannot be subclassed)."""
    tz = value.tzinfo
    if tz is None or isinstance(tz, timezone):
        return tz
    offset = value.utcoffset()
    return None if offset is None else timezone(offset)


def _sql_value(v: Any, path: Any, depth: int) -> Any:
    t = type(v)
    if t in _SQL_EXACT:
        if t is int and not SQL_INT_MIN <= v <= SQL_INT_MAX:
            raise ValueError(f"sql() {_path(path)}: int {v} is outside {SQL_INT_MIN}..{SQL_INT_MAX}")
        if (t is datetime or t is time) and v.tzinfo is not None and not isinstance(v.tzinfo, timezone):
            return v.replace(tzinfo=_plain_tz(v))
        return v
    if isinstance(v, (list, tuple, dict)):
        if depth >= MAX_PAYLOAD_DEPTH:
            raise ValueError(f"sql() {_path(path)}: nested deeper than {MAX_PAYLOAD_DEPTH} levels")
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise TypeError(f"sql() {_path(path)}: key {k!r} ({describe(k)}) is not a str; keys must be str")
                out[str.__str__(k)] = _sql_value(x, (path, k), depth + 1)
            return out
        items = [_sql_value(x, (path, i), depth + 1) for i, x in enumerate(v)]
        return items if isinstance(v, list) else tuple(items)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, int):  # bool cannot be subclassed, so this is a real int subclass (IntEnum …)
        return _sql_value(operator.index(v), path, depth)
    if isinstance(v, float):
        return float.__float__(v)
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, datetime):  # before date: a datetime is a date
        return datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, tzinfo=_plain_tz(v),
                        fold=v.fold)
    if isinstance(v, date):
        return date(v.year, v.month, v.day)
    if isinstance(v, time):
        return time(v.hour, v.minute, v.second, v.microsecond, tzinfo=_plain_tz(v), fold=v.fold)
    if isinstance(v, timedelta):
        return timedelta(days=v.days, seconds=v.seconds, microseconds=v.microseconds)
    if isinstance(v, Decimal):
        return Decimal(v)
    if isinstance(v, uuid.UUID):
        return uuid.UUID(int=v.int)
    raise TypeError(f"sql() {_path(path)}: {describe(v)} is not a supported SQL parameter (use {_SQL_TYPES_HINT})")
