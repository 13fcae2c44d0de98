"""Shared helpers of the conformance tests: holding tasks on flag files, polling, one world per module.

``module_world`` starts one real ``Scheduler`` for a whole module (the state the
queries run against is built once) and registers it in ``ALIVE_WORLDS`` so the
leak guard of ``conftest.py`` checks at module teardown instead of per test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polling import poll_until, slots_as_cores
from taskfiles import append, lines, wait_flag  # noqa: F401 - re-exported for the test modules

import taskmill as tm

DEADLINE = 60.0  # seconds any single wait may take on a loaded 2-core machine
NO_RETRY = tm.RetryPolicy.none()

#: Ids of module-scoped schedulers that are alive right now (see ``conftest._leak_guard``).
ALIVE_WORLDS: set[int] = set()


@contextlib.contextmanager
def module_world(store_path: str, domains: list[tm.Domain], flags: list[str] | None = None,
                 **config: Any) -> Iterator[tm.Scheduler]:
    """One scheduler for a whole module; on exit every flag in ``flags`` is created, then it closes."""
    if "max_concurrency" in config:  # the tests count slots, not cores
        config.setdefault("capacity", slots_as_cores(config["max_concurrency"]))
    s = tm.Scheduler(store_path=store_path, domains=domains, **config)
    ALIVE_WORLDS.add(id(s))
    try:
        with s:
            try:
                yield s
            finally:
                for f in flags or ():
                    Path(f).touch()
    finally:
        ALIVE_WORLDS.discard(id(s))


def wait_running(s: tm.Scheduler, *task_ids: int, timeout: float = DEADLINE) -> None:
    want = set(task_ids)
    poll_until(lambda: want <= {r.id for r in s.active_tasks()}, timeout, what=f"tasks {sorted(want)} running")


def wait_status(s: tm.Scheduler, task_id: int, status: str, timeout: float = DEADLINE) -> tm.TaskRecord:
    def check() -> tm.TaskRecord | None:
        r = s.store.task_by_id(task_id)
        return r if r is not None and r.status == status else None
    return poll_until(check, timeout, what=f"task {task_id} {status}")


def history_statuses(s: tm.Scheduler, task_id: int) -> list[str]:
    """Statuses of every history row of ``task_id``, oldest first."""
    rows = s.sql("SELECT status FROM task_history WHERE id = ? ORDER BY completed_at", [task_id])
    return [r["status"] for r in rows]


def wait_history(s: tm.Scheduler, task_id: int, timeout: float = DEADLINE) -> list[str]:
    """Poll until ``task_id`` has left the active table and has a history row; its history statuses."""
    return poll_until(lambda: s.store.task_by_id(task_id) is None and history_statuses(s, task_id), timeout,
                      what=f"task {task_id} in history")
