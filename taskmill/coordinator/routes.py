"""Which call runs where: the routing table of the coordinator's calls.

Every ``protocol.Call`` name maps to a ``Route``: what kind of work it is and
the function that does it. The loop looks the name up and schedules by kind:

    MEMORY  answered at once from the loop's memory         fn(control, *args)
    CHANGE  changes tasks; answered after the next commit   fn(control, *args)
    READ    a read-only query on a reader thread's cursor,  fn(queries, *args)
            after the loop has flushed what it must see
    WRITE   touches the store on the loop thread, after a   fn(control, *args)
            flush (pruning, a dead-letter resubmission)

The functions check their arguments (every value a client sends is suspect)
and then use ``control.Control``, the narrow face of the coordinator; none
reaches into the lifecycle or the loop. Imports the store's read queries,
``control`` (for types) and leaves.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from taskmill.coordinator.control import Control
from taskmill.coordinator.core.entry import Entry
from taskmill.coordinator.core.settings import SETTINGS
from taskmill.payload import dedup_key
from taskmill.store import Queries, select

__all__ = ["QUIET", "ROUTES", "Kind", "Route", "route"]


class Kind(enum.Enum):
    MEMORY = "memory"
    CHANGE = "change"
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class Route:
    kind: Kind
    fn: Callable[..., Any]
    min_args: int
    max_args: int


def _read(method: str, n: int, most: int | None = None) -> Route:
    return Route(Kind.READ, getattr(Queries, method), n, n if most is None else most)


def _task_lookup(q: Queries, task_type: str, key: str) -> Any:
    if type(task_type) is not str or type(key) is not str:
        raise TypeError("task_lookup takes a task type and a key, both str")
    return q.task_lookup_by_dedup_key(dedup_key(task_type, key))


def _sql(q: Queries, query: str, params: Any) -> Any:
    return select(q.con, query, params)


def _export_history(q: Queries, since: Any) -> Any:
    if since is not None and type(since) is not datetime:
        raise TypeError("export_history takes since as a datetime or None")
    return q.export_history(since)


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise TypeError(f"{what} must be a str")
    return v


def _opt_str(v: Any, what: str) -> str | None:
    return None if v is None else _str(v, what)


def _int(v: Any, what: str) -> int:
    if type(v) is not int:
        raise TypeError(f"{what} must be an int")
    return v


def _tag_dict(e: Entry) -> dict[str, str]:
    return json.loads(e.tags) if e.tags else {}


Match = Callable[[Entry], bool]


def _cancel_where(matcher: Callable[..., Match]) -> Callable[..., list[int]]:
    """A CHANGE route cancelling every active task ``matcher(*args)`` accepts."""
    def run(c: Control, *args: Any) -> list[int]:
        return c.cancel_matching(matcher(*args))
    return run


def _in(domain: str | None) -> Match:
    d = _opt_str(domain, "domain")
    return lambda e: d is None or e.domain == d


def _of_group(group: str) -> Match:
    g = _str(group, "group")
    return lambda e: e.group == g


def _of_type(task_type: str) -> Match:
    t = _str(task_type, "task_type")
    return lambda e: e.task_type == t


def _tagged(key: str, value: str, domain: str | None = None) -> Match:
    k, v, inside = _str(key, "key"), _str(value, "value"), _in(domain)
    return lambda e: inside(e) and _tag_dict(e).get(k) == v


def _tag_key_prefix(prefix: str, domain: str | None = None) -> Match:
    p, inside = _str(prefix, "prefix"), _in(domain)
    return lambda e: inside(e) and any(k.startswith(p) for k in _tag_dict(e))


def _cancel(c: Control, task_id: Any, domain: Any = None) -> bool:
    if type(task_id) is not int or not (domain is None or type(domain) is str):
        raise TypeError("cancel takes an int task id (and a domain name)")
    return c.cancel(task_id, domain)


def _cancel_ids(c: Control, ids: Any, domain: str | None = None) -> list[int]:
    if type(ids) is not list or not all(type(i) is int for i in ids):
        raise TypeError("cancel_ids takes a list of int task ids")
    wanted, inside = set(ids), _in(domain)  # cancel_matching also names what a parent's cascade took
    return c.cancel_matching(lambda e: e.id in wanted and inside(e))


_KINDS = ("global", "domain", "group")


def _pause(c: Control, kind: str, scope: str, resume_at: float | None = None) -> int:
    if kind not in _KINDS or type(scope) is not str:
        raise ValueError("pause takes a kind (global, domain, group) and a scope name")
    if resume_at is not None and (type(resume_at) not in (int, float) or not math.isfinite(resume_at)):
        raise TypeError("resume_at must be a point in time (epoch seconds)")
    return c.pause(kind, scope, resume_at)


def _resume(c: Control, kind: str, scope: str) -> int:
    if kind not in _KINDS or type(scope) is not str:
        raise ValueError("resume takes a kind (global, domain, group) and a scope name")
    return c.resume(kind, scope)


def _recurring(c: Control, op: str, task_id: int, domain: str | None = None) -> bool:
    if type(task_id) is not int:
        raise TypeError("a recurring schedule is named by its int task id")
    if op not in ("pause", "resume", "cancel"):
        raise ValueError(f"unknown recurring operation {op!r}")
    return c.recurring(op, task_id, _opt_str(domain, "domain"))


def _cap(v: Any, what: str) -> int | None:
    if v is not None and (type(v) is not int or not 1 <= v <= 2**31 - 1):
        raise ValueError(f"{what} must be an int >= 1 or None")
    return v


def _rate(v: Any) -> tuple[int, float, int] | None:
    if v is None:
        return None
    if (type(v) is not tuple or len(v) != 3 or type(v[0]) is not int or type(v[2]) is not int
            or type(v[1]) is not float or not (v[0] >= 1 and v[2] >= 1 and math.isfinite(v[1]) and v[1] > 0)):
        raise ValueError("a rate limit travels as (permits, interval, burst)")
    return v


def _admission(c: Control, what: str, scope: Any, value: Any) -> None:
    """Check one runtime admission change (F17, F20, F21) and hand it on."""
    if what == "max_concurrency":
        n = _cap(value, "max_concurrency")
        if n is None:
            raise ValueError("max_concurrency must be an int >= 1")
        c.admission(what, "", n)
        return
    if what not in SETTINGS:
        raise ValueError(f"unknown admission setting {what!r}")
    name = _str(scope, "scope")
    if what in ("domain_cap", "group_cap", "default_group_cap"):
        value = _cap(value, what)
    elif what in ("type_rate", "group_rate"):
        value = _rate(value)
    elif what == "group_weight":
        if value is not None and not (type(value) is float and math.isfinite(value) and value > 0):
            raise ValueError("a group weight must be a positive float")
    elif what == "group_min_slots":
        if type(value) is not int or not 0 <= value <= 2**31 - 1:
            raise ValueError("minimum slots must be an int >= 0")
    c.admission(what, name, value)


def _observe(c: Control, rates: Any, cpu: Any, pressure: Any, breakdown: Any) -> None:
    """The host's resource monitor reports: smoothed IO rates, CPU load, pressure (F18, F19)."""
    numbers = [*rates, cpu, pressure] if type(rates) is tuple and len(rates) == 4 else None
    if numbers is None or not all(type(v) is float and math.isfinite(v) and v >= 0.0 for v in numbers):
        raise ValueError("observe takes four IO rates, a CPU load and a pressure, as floats")
    if type(breakdown) is not list or not all(
            type(p) is tuple and len(p) == 2 and type(p[0]) is str and type(p[1]) is float for p in breakdown):
        raise ValueError("observe takes the pressure breakdown as a list of (name, value)")
    c.observe(rates, cpu, pressure, breakdown)


def _count(status: str) -> Route:
    return Route(Kind.MEMORY, lambda c: c.count(status), 0, 0)


def _domain_arg(method: Callable[[Control, str | None], Any]) -> Callable[..., Any]:
    """A MEMORY route taking an optional domain name."""
    return lambda c, domain=None: method(c, _opt_str(domain, "domain"))


def _memory(fn: Callable[..., Any], n: int, most: int | None = None) -> Route:
    return Route(Kind.MEMORY, fn, n, n if most is None else most)


def _change(fn: Callable[..., Any], n: int, most: int | None = None) -> Route:
    return Route(Kind.CHANGE, fn, n, n if most is None else most)


def _write(fn: Callable[..., Any], n: int, most: int | None = None) -> Route:
    return Route(Kind.WRITE, fn, n, n if most is None else most)


ROUTES: dict[str, Route] = {
    # active-task queries (seed); counts come from memory, which the store matches after a flush
    "running_tasks": _read("running_tasks", 0),
    "running_count": _memory(Control.running_count, 0),
    "pending_tasks": _read("pending_tasks", 1),
    "pending_count": _count("pending"),
    "pending_by_type": _read("pending_by_type", 1),
    "paused_tasks": _read("paused_tasks", 0),
    "paused_count": _count("paused"),
    "blocked_tasks": _read("blocked_tasks", 0),
    "blocked_count": _count("blocked"),
    "waiting_tasks": _read("waiting_tasks", 0),
    "waiting_count": _count("waiting"),
    "task_by_id": _read("task_by_id", 1),
    "task": _read("task_by_id", 1),
    "task_by_key": _read("task_by_key", 1),
    "running_io_totals": _read("running_io_totals", 0),
    "active_tasks_in": _read("active_tasks_in", 1),
    "task_dependencies": _read("task_dependencies", 1),
    "task_dependents": _read("task_dependents", 1),
    # history and aggregates (seed)
    "history": _read("history", 1, 2),
    "history_by_type": _read("history_by_type", 2),
    "history_by_key": _read("history_by_key", 1),
    "failed_tasks": _read("failed_tasks", 1),
    "dead_letter_tasks": _read("dead_letter_tasks", 2, 3),
    "history_stats": _read("history_stats", 1),
    "avg_throughput": _read("avg_throughput", 2),
    "next_run_after": _read("next_run_after", 0),
    "task_lookup": Route(Kind.READ, _task_lookup, 2, 2),
    "lookup_key": _read("task_lookup_by_dedup_key", 1),
    "sql": Route(Kind.READ, _sql, 2, 2),
    "export_history": Route(Kind.READ, _export_history, 1, 1),
    # tags (domain first: None = every domain)
    "task_ids_by_tags": _read("task_ids_by_tags", 2, 3),
    "count_by_tag": _read("count_by_tag", 2, 3),
    "tag_values": _read("tag_values", 2),
    "tag_keys_by_prefix": _read("tag_keys_by_prefix", 2),
    "task_ids_by_tag_key_prefix": _read("task_ids_by_tag_key_prefix", 2, 3),
    "count_by_tag_key_prefix": _read("count_by_tag_key_prefix", 2, 3),
    # writes on the loop thread
    "prune_history_by_count": _write(lambda c, keep: c.prune_history_by_count(_int(keep, "keep")), 1),
    "prune_history_by_age": _write(lambda c, days: c.prune_history_by_age(days), 1),
    "retry_dead_letter": _write(lambda c, task_id, domain=None: c.retry_dead_letter(
        _int(task_id, "task_id"), _opt_str(domain, "domain")), 1, 2),
    # changes, acknowledged once committed
    "cancel": _change(_cancel, 1, 2),
    "cancel_ids": _change(_cancel_ids, 1, 2),
    "cancel_all": _change(_cancel_where(_in), 1),
    "cancel_group": _change(_cancel_where(_of_group), 1),
    "cancel_type": _change(_cancel_where(_of_type), 1),
    "cancel_by_tag": _change(_cancel_where(_tagged), 2, 3),
    "cancel_by_tag_key_prefix": _change(_cancel_where(_tag_key_prefix), 1, 2),
    "pause": _change(_pause, 2, 3),
    "resume": _change(_resume, 2),
    "recurring": _change(_recurring, 2, 3),
    # from memory
    "snapshot": _memory(_domain_arg(Control.snapshot), 0, 1),
    "active_tasks": _memory(_domain_arg(Control.active_tasks), 0, 1),
    "estimated_progress": _memory(_domain_arg(Control.estimated_progress), 0, 1),
    "byte_progress": _memory(_domain_arg(Control.byte_progress), 0, 1),
    "recurring_schedules": _memory(Control.recurring_schedules, 0),
    "is_paused": _memory(lambda c, kind, scope="": c.is_paused(_str(kind, "kind"), _str(scope, "scope")), 1, 2),
    "paused_groups": _memory(Control.paused_groups, 0),
    "ping": _memory(Control.ping, 0),
    "admission": _memory(_admission, 3),
    "observe": _memory(_observe, 4),
}


#: Calls that change neither tasks nor settings: runs queued on busy workers stay queued.
QUIET = frozenset(name for name, r in ROUTES.items()
                  if r.kind is Kind.READ or (r.kind is Kind.MEMORY and name not in ("admission", "observe")))


def route(name: str, args: tuple) -> Route:
    """The route of a call, its arity checked; ``ValueError``/``TypeError`` for a bad call."""
    r = ROUTES.get(name)
    if r is None:
        raise ValueError(f"unknown call {name!r}")
    if not r.min_args <= len(args) <= r.max_args:
        raise TypeError(f"{name}() takes {r.min_args}..{r.max_args} arguments, got {len(args)}")
    return r
