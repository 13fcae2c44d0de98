"""The lifecycle options of a submission (F5, F13–F16), resolved on the host.

``ttl``/``ttl_from``, ``run_after``/``run_at``, ``depends_on``,
``on_dependency_failure``, ``parent``, ``fail_fast`` and ``recurring`` become
the plain fields of ``protocol.SubmitItem``: points in time as absolute
epoch seconds, durations as seconds, ids as ints. Every mistake is a
``TypeError``/``ValueError`` naming the option, raised before anything is
sent. Leaf-level: imports ``errors``, ``records``, ``validation`` only.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any, Mapping

from taskmill.outcomes import SubmitOutcome
from taskmill.records import Recurring
from taskmill.validation import INT64_MAX, MAX_DELAY_SECONDS, as_int, as_seconds, as_str, describe

__all__ = ["LIFECYCLE_OPTIONS", "TTL_FROM", "DEPENDENCY_POLICIES", "lifecycle_fields", "check_ttl_from"]

#: The per-submission options this module resolves.
LIFECYCLE_OPTIONS = frozenset({"ttl", "ttl_from", "run_after", "run_at", "depends_on", "on_dependency_failure",
                               "parent", "fail_fast", "recurring"})
TTL_FROM = ("submission", "first_attempt")
DEPENDENCY_POLICIES = ("cancel", "fail", "ignore")
#: Most prerequisites one task may name (the coordinator refuses more too).
MAX_DEPENDENCIES = 10_000


def check_ttl_from(value: Any, what: str = "ttl_from") -> str:
    v = as_str(value, what)
    if v not in TTL_FROM:
        raise ValueError(f"{what} must be one of {list(TTL_FROM)}, got {v!r}")
    return v


def _point_in_time(value: Any, what: str) -> float:
    """A datetime (timezone-aware; a naive one is read as UTC) or epoch seconds, as epoch seconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{what} must be a timezone-aware datetime (or epoch seconds), got a naive one")
        ts = value.timestamp()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        ts = float(value)
    else:
        raise TypeError(f"{what} must be a datetime or epoch seconds, got {describe(value)}")
    if not math.isfinite(ts) or ts < 0:
        raise ValueError(f"{what} must be a finite point in time, got {value!r}")
    if ts > time.time() + MAX_DELAY_SECONDS:
        raise ValueError(f"{what} is more than {MAX_DELAY_SECONDS:g}s (a year) away")
    return ts


def _task_ids(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"depends_on must be a list of task ids, got {describe(value)}")
    ids: list[int] = []
    for i, v in enumerate(value):
        if isinstance(v, SubmitOutcome):  # depends_on=[h.submit(...)] reads naturally
            if v.id is None:
                raise ValueError(f"depends_on[{i}]: that submission was rejected, so it has no task id")
            v = v.id
        ids.append(as_int(v, f"depends_on[{i}] (a task id)", lo=1, hi=INT64_MAX))
    if len(ids) > MAX_DEPENDENCIES:
        raise ValueError(f"depends_on: at most {MAX_DEPENDENCIES} task ids, got {len(ids)}")
    unique = tuple(dict.fromkeys(ids))
    return unique or None


def lifecycle_fields(o: Mapping[str, Any], type_ttl: float | None, type_ttl_from: str, domain_ttl: float | None,
                     default_ttl: float | None, now: float | None = None) -> dict[str, Any]:
    """The ``SubmitItem`` fields of the lifecycle options in ``o`` (per-submission overrides),
    with the TTL resolved per-submission > type > domain > scheduler default."""
    ttl = o.get("ttl", type_ttl if type_ttl is not None else domain_ttl if domain_ttl is not None else default_ttl)
    if ttl is not None:
        ttl = as_seconds(ttl, "ttl", lo_open=True)
    ttl_from = check_ttl_from(o.get("ttl_from", type_ttl_from))
    run_after = None
    if "run_after" in o and "run_at" in o and o["run_after"] is not None and o["run_at"] is not None:
        raise ValueError("give run_after or run_at, not both")
    if o.get("run_at") is not None:
        run_after = _point_in_time(o["run_at"], "run_at")
    elif o.get("run_after") is not None:
        ra = o["run_after"]
        if isinstance(ra, datetime):
            run_after = _point_in_time(ra, "run_after")
        else:
            delay = as_seconds(ra, "run_after (seconds, a timedelta or a datetime)")
            run_after = (now if now is not None else time.time()) + delay
    depends_on = _task_ids(o.get("depends_on"))
    policy = as_str(o.get("on_dependency_failure", "cancel"), "on_dependency_failure")
    if policy not in DEPENDENCY_POLICIES:
        raise ValueError(f"on_dependency_failure must be one of {list(DEPENDENCY_POLICIES)}, got {policy!r}")
    parent = o.get("parent")
    if parent is not None:
        parent = as_int(parent, "parent (a task id)", lo=1, hi=INT64_MAX)
    fail_fast = o.get("fail_fast", True)
    if type(fail_fast) is not bool:
        raise TypeError(f"fail_fast must be a bool, got {describe(fail_fast)}")
    recurring = o.get("recurring")
    if recurring is not None:
        if not isinstance(recurring, Recurring):
            raise TypeError(f"recurring must be a taskmill.Recurring(...), got {describe(recurring)}")
        if parent is not None:
            raise ValueError("a recurring task cannot have a parent")
        recurring = (recurring.interval, recurring.max_executions, recurring.initial_delay)
    return {"ttl": ttl, "ttl_from": ttl_from, "run_after": run_after, "depends_on": depends_on,
            "on_dependency_failure": policy, "parent": parent, "fail_fast": fail_fast, "recurring": recurring}

