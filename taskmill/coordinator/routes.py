"""Which call runs where: the routing table of the coordinator's calls.

Every ``protocol.Call`` name maps to a ``Route``: what kind of work it is and
the function that does it. The loop looks the name up and schedules by kind:

    MEMORY  answered at once from the loop's memory         fn(coord, *args)
    CHANGE  changes tasks; answered after the next commit   fn(coord, *args)
    READ    a read-only query on a reader thread's cursor,  fn(queries, *args)
            after the loop has flushed what it must see
    WRITE   touches the store on the loop thread, after a   fn(coord, *args)
            flush (pruning, a dead-letter resubmission)

Imports the store's read queries and leaves; the coordinator only for types.
"""

from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from taskmill.config import DEFAULT_GROUP_WEIGHT
from taskmill.coordinator.core import snapshots
from taskmill.coordinator.core.entry import Entry
from taskmill.domain import dedup_key
from taskmill.errors import TaskNotFound
from taskmill.store import Queries, select

if TYPE_CHECKING:
    from taskmill.coordinator.loop import Coordinator

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


def _retry_dead_letter(coord: Coordinator, task_id: int, domain: str | None = None) -> tuple:
    row = coord.store.dead_letter_row(task_id)
    if row is None:
        raise TaskNotFound(f"no dead-letter task with id {task_id}")
    if domain is not None and row[1] != domain:
        raise TaskNotFound(f"dead-letter task {task_id} belongs to domain {row[1]!r}, not {domain!r}")
    return coord.resubmit_dead_letter(row)


def _str(v: Any, what: str) -> str:
    if type(v) is not str:
        raise TypeError(f"{what} must be a str")
    return v


def _opt_str(v: Any, what: str) -> str | None:
    return None if v is None else _str(v, what)


def _tag_dict(e: Entry) -> dict[str, str]:
    return json.loads(e.tags) if e.tags else {}


Match = Callable[[Entry], bool]


def _cancel_where(matcher: Callable[..., Match]) -> Callable[..., list[int]]:
    """A CHANGE route cancelling every active task ``matcher(*args)`` accepts."""
    def run(coord: Coordinator, *args: Any) -> list[int]:
        return coord.lc.cancel_matching(matcher(*args), coord.mono(), coord.clock())
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


def _cancel_ids(coord: Coordinator, ids: Any, domain: str | None = None) -> list[int]:
    if type(ids) is not list or not all(type(i) is int for i in ids):
        raise TypeError("cancel_ids takes a list of int task ids")
    wanted, inside = set(ids), _in(domain)  # cancel_matching also names what a parent's cascade took
    return coord.lc.cancel_matching(lambda e: e.id in wanted and inside(e), coord.mono(), coord.clock())


def _pause(coord: Coordinator, kind: str, scope: str, resume_at: float | None = None) -> int:
    if kind not in ("global", "domain", "group") or type(scope) is not str:
        raise ValueError("pause takes a kind (global, domain, group) and a scope name")
    if resume_at is not None and (type(resume_at) not in (int, float) or not math.isfinite(resume_at)):
        raise TypeError("resume_at must be a point in time (epoch seconds)")
    return coord.lc.pause_scope(kind, scope, coord.mono(), coord.clock(), resume_at)


def _resume(coord: Coordinator, kind: str, scope: str) -> int:
    if kind not in ("global", "domain", "group") or type(scope) is not str:
        raise ValueError("resume takes a kind (global, domain, group) and a scope name")
    return coord.lc.resume_scope(kind, scope, coord.mono())


def _recurring(coord: Coordinator, op: str, task_id: int, domain: str | None = None) -> bool:
    if type(task_id) is not int:
        raise TypeError("a recurring schedule is named by its int task id")
    e = coord.lc.tasks.get(task_id)
    if e is None or (domain is not None and e.domain != domain):
        return False
    if op == "cancel":
        return coord.lc.cancel_recurring(task_id, coord.mono(), coord.clock())
    if op in ("pause", "resume"):
        return coord.lc.set_recurring_paused(task_id, op == "pause", coord.mono())
    raise ValueError(f"unknown recurring operation {op!r}")


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


def _admission(coord: Coordinator, what: str, scope: Any, value: Any) -> None:
    """Change an admission setting at runtime (F17, F20); the next dispatch round obeys it."""
    gate = coord.lc.gate
    if what == "max_concurrency":
        n = _cap(value, "max_concurrency")
        if n is None:
            raise ValueError("max_concurrency must be an int >= 1")
        coord.set_max_concurrency(n)
        return
    name = _str(scope, "scope")
    if what in ("domain_cap", "group_cap"):
        caps = gate.domain_caps if what == "domain_cap" else gate.group_caps
        n = _cap(value, what)
        if n is None:
            caps.pop(name, None)
        else:
            caps[name] = n
    elif what == "default_group_cap":
        gate.default_group_cap = _cap(value, what)
    elif what in ("type_rate", "group_rate"):
        gate.set_rate_limit("type" if what == "type_rate" else "group", name, _rate(value), coord.mono())
    elif what == "group_weight":
        if value is None:
            coord.lc.fair.weights.pop(name, None)
        elif type(value) is float and math.isfinite(value) and value > 0:
            coord.lc.fair.weights[name] = value
        else:
            raise ValueError("a group weight must be a positive float")
    elif what == "reset_weights":
        coord.lc.fair.weights.clear()
        coord.lc.fair.default_weight = DEFAULT_GROUP_WEIGHT
    elif what == "group_min_slots":
        if type(value) is not int or not 0 <= value <= 2**31 - 1:
            raise ValueError("minimum slots must be an int >= 0")
        if value:
            coord.lc.fair.min_slots[name] = value
        else:
            coord.lc.fair.min_slots.pop(name, None)
    else:
        raise ValueError(f"unknown admission setting {what!r}")


def _observe(coord: Coordinator, rates: Any, cpu: Any, pressure: Any, breakdown: Any) -> None:
    """The host's resource monitor reports: smoothed IO rates, CPU load, pressure (F18, F19)."""
    numbers = [*rates, cpu, pressure] if type(rates) is tuple and len(rates) == 4 else None
    if numbers is None or not all(type(v) is float and math.isfinite(v) and v >= 0.0 for v in numbers):
        raise ValueError("observe takes four IO rates, a CPU load and a pressure, as floats")
    if type(breakdown) is not list or not all(
            type(p) is tuple and len(p) == 2 and type(p[0]) is str and type(p[1]) is float for p in breakdown):
        raise ValueError("observe takes the pressure breakdown as a list of (name, value)")
    gate = coord.lc.gate
    gate.observe(rates)
    gate.cpu_usage = min(1.0, cpu)
    gate.set_pressure(pressure, breakdown)


def _running_count(coord: Coordinator) -> int:
    return sum(1 for e in coord.lc.running.values() if not e.cancelled)


def _count(status: str) -> Route:
    if status == "pending":  # a cold tail's tasks are pending too (see cold.py)
        return Route(Kind.MEMORY, lambda c: c.lc.counts[status] + c.lc.cold_count(), 0, 0)
    return Route(Kind.MEMORY, lambda c: c.lc.counts[status], 0, 0)


def _memory(fn: Callable[..., Any], n: int, most: int | None = None) -> Route:
    return Route(Kind.MEMORY, fn, n, n if most is None else most)


def _change(fn: Callable[..., Any], n: int, most: int | None = None) -> Route:
    return Route(Kind.CHANGE, fn, n, n if most is None else most)


ROUTES: dict[str, Route] = {
    # active-task queries (seed); counts come from memory, which the store matches after a flush
    "running_tasks": _read("running_tasks", 0),
    "running_count": _memory(_running_count, 0),
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
    # tags (domain first: None = every domain)
    "task_ids_by_tags": _read("task_ids_by_tags", 2, 3),
    "count_by_tag": _read("count_by_tag", 2, 3),
    "tag_values": _read("tag_values", 2),
    "tag_keys_by_prefix": _read("tag_keys_by_prefix", 2),
    "task_ids_by_tag_key_prefix": _read("task_ids_by_tag_key_prefix", 2, 3),
    "count_by_tag_key_prefix": _read("count_by_tag_key_prefix", 2, 3),
    # writes on the loop thread
    "prune_history_by_count": Route(Kind.WRITE, lambda c, keep: c.store.prune_history_by_count(keep), 1, 1),
    "prune_history_by_age": Route(Kind.WRITE, lambda c, days: c.store.prune_history_by_age(days), 1, 1),
    "retry_dead_letter": Route(Kind.WRITE, _retry_dead_letter, 1, 2),
    # changes, acknowledged once committed
    "cancel": _change(lambda c, task_id, domain=None: c.cancel(task_id, domain), 1, 2),
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
    "snapshot": _memory(lambda c, domain=None: c.snapshot(domain), 0, 1),
    "active_tasks": _memory(lambda c, domain=None: c.active_tasks(domain), 0, 1),
    "estimated_progress": _memory(lambda c, domain=None: snapshots.estimated_progress(
        c.lc, c.tracker, c._slot_of, c.mono(), domain), 0, 1),
    "byte_progress": _memory(lambda c, domain=None: snapshots.byte_progress(
        c.lc, c.tracker, c._slot_of, c.mono(), domain), 0, 1),
    "recurring_schedules": _memory(lambda c: snapshots.recurring_schedules(c.lc), 0),
    "is_paused": _memory(lambda c, kind, scope="": c.lc.is_paused(kind, scope), 1, 2),
    "paused_groups": _memory(lambda c: snapshots.paused_groups(c.lc), 0),
    "ping": _memory(lambda c: {"pid": os.getpid(), "shm": c.shm.name}, 0),
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
