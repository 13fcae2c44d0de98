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
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from taskmill.domain import dedup_key
from taskmill.errors import TaskNotFound
from taskmill.store import Queries, select

if TYPE_CHECKING:
    from taskmill.coordinator.loop import Coordinator

__all__ = ["ROUTES", "Kind", "Route", "route"]


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


ROUTES: dict[str, Route] = {
    # active-task queries (seed)
    "running_tasks": _read("running_tasks", 0),
    "running_count": _read("running_count", 0),
    "pending_tasks": _read("pending_tasks", 1),
    "pending_count": _read("pending_count", 0),
    "pending_by_type": _read("pending_by_type", 1),
    "paused_tasks": _read("paused_tasks", 0),
    "paused_count": _read("paused_count", 0),
    "task_by_id": _read("task_by_id", 1),
    "task": _read("task_by_id", 1),
    "task_by_key": _read("task_by_key", 1),
    "running_io_totals": _read("running_io_totals", 0),
    # history and aggregates (seed)
    "history": _read("history", 1, 2),
    "history_by_type": _read("history_by_type", 2),
    "history_by_key": _read("history_by_key", 1),
    "failed_tasks": _read("failed_tasks", 1),
    "dead_letter_tasks": _read("dead_letter_tasks", 2, 3),
    "history_stats": _read("history_stats", 1),
    "avg_throughput": _read("avg_throughput", 2),
    "task_lookup": Route(Kind.READ, _task_lookup, 2, 2),
    "lookup_key": _read("task_lookup_by_dedup_key", 1),
    "sql": Route(Kind.READ, _sql, 2, 2),
    # writes on the loop thread
    "prune_history_by_count": Route(Kind.WRITE, lambda c, keep: c.store.prune_history_by_count(keep), 1, 1),
    "prune_history_by_age": Route(Kind.WRITE, lambda c, days: c.store.prune_history_by_age(days), 1, 1),
    "retry_dead_letter": Route(Kind.WRITE, _retry_dead_letter, 1, 2),
    # changes, acknowledged once committed
    "cancel": Route(Kind.CHANGE, lambda c, task_id, domain=None: c.cancel(task_id, domain), 1, 2),
    # from memory
    "snapshot": Route(Kind.MEMORY, lambda c, domain=None: c.snapshot(domain), 0, 1),
    "active_tasks": Route(Kind.MEMORY, lambda c, domain=None: c.active_tasks(domain), 0, 1),
    "ping": Route(Kind.MEMORY, lambda c: {"pid": os.getpid(), "shm": c.shm.name}, 0, 0),
}


def route(name: str, args: tuple) -> Route:
    """The route of a call, its arity checked; ``ValueError``/``TypeError`` for a bad call."""
    r = ROUTES.get(name)
    if r is None:
        raise ValueError(f"unknown call {name!r}")
    if not r.min_args <= len(args) <= r.max_args:
        raise TypeError(f"{name}() takes {r.min_args}..{r.max_args} arguments, got {len(args)}")
    return r
