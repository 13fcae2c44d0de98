"""What a task sees of itself: ``ctx.record`` inside the worker is the task's record (API.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import taskmill as tm

DEADLINE = 60.0

me = tm.Domain("me")


@me.task
def introspect(ctx: tm.TaskContext, out: str, n: int) -> None:
    r = ctx.record
    Path(out).write_text(json.dumps({
        "id": r.id, "task_type": r.task_type, "domain": r.domain, "key": r.key, "label": r.label,
        "priority": r.priority, "status": r.status, "payload": r.payload, "group": r.group, "tags": r.tags,
        "retry_count": r.retry_count, "parent_id": r.parent_id, "task_id": ctx.task_id}))


def test_ctx_record_is_the_tasks_record(store_path: str, tmp_path: Path) -> None:
    out = str(tmp_path / "record.json")
    with tm.Scheduler(store_path, [me], max_concurrency=1) as s:
        opts = introspect.options(key="k-1", label="look at me", group="g", tags={"team": "a", "tier": "gold"},
                                  priority=tm.Priority.HIGH)
        tid = s.domain(me).submit(opts, out=out, n=3).id
        assert s.wait(tid, timeout=DEADLINE).status == "completed"
    got: dict[str, Any] = json.loads(Path(out).read_text())
    assert got == {
        "id": tid, "task_id": tid, "task_type": "me::introspect", "domain": "me", "key": got["key"],
        "label": "look at me", "priority": 64, "status": "running", "payload": {"out": out, "n": 3},
        "group": "g", "tags": {"team": "a", "tier": "gold"}, "retry_count": 0, "parent_id": None}
    assert got["key"] and got["key"] != "k-1"  # the stored dedup key is the hash of type and explicit key
