"""Seed table "Domain-scoped queries (DomainHandle)": one test per row.

One scheduler for the module (``max_concurrency=5``). Domain ``media`` (cap 3)
holds: three running tasks (one reports byte progress, one a fraction, one
nothing), three pending behind the cap, one paused (its group is paused), one
blocked, one waiting parent (its child runs in ``other``), and three
dead-letter rows. Domain ``other`` holds look-alikes (same tag keys, a
dead-letter row, byte progress) that no ``media`` query may return.

Tags of the ``media`` tasks::

    run1   {"billing.customer": "acme", "billing.plan": "pro", "env": "prod"}   running
    run2   {"billing.customer": "globex", "env": "prod"}                        running
    run3   {}                                                                   running
    pend1  {"billing.customer": "acme", "env": "dev"}                           pending
    pend2  {"env": "prod"}                                                      pending
    pend3  {}                                                                   pending
    froz   {"billing.customer": "acme", "billing.region": "eu"}                 paused
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from polling import poll_until

import taskmill as tm

from .helpers import DEADLINE, NO_RETRY, module_world, wait_flag, wait_running, wait_status

media = tm.Domain("media", max_concurrency=3)
other = tm.Domain("other")
idle = tm.Domain("idle")


@media.task
def hold(ctx: tm.TaskContext, flag: str, n: int, fraction: float | None = None, total: int | None = None,
         done: int = 0) -> str:
    if fraction is not None:
        ctx.progress(fraction, "working")
    if total is not None:
        ctx.set_bytes_total(total)
        ctx.add_bytes(done)
    return wait_flag(ctx, flag)


@media.task
def work(ctx: tm.TaskContext, x: int) -> int:
    return x


@media.task(retry=NO_RETRY)
def doomed(ctx: tm.TaskContext, n: int) -> None:
    raise tm.Retryable(f"media doomed {n}")


@media.task
def spawner(ctx: tm.TaskContext, flag: str) -> str:
    ctx.spawn_child(o_hold, flag=flag, n=100)
    return "spawned"


@other.task
def o_hold(ctx: tm.TaskContext, flag: str, n: int, total: int | None = None) -> str:
    if total is not None:
        ctx.set_bytes_total(total)
        ctx.add_bytes(5)
    return wait_flag(ctx, flag)


@other.task
def o_work(ctx: tm.TaskContext, x: int) -> int:
    return x


@other.task(retry=NO_RETRY)
def o_doomed(ctx: tm.TaskContext) -> None:
    raise tm.Retryable("other doomed")


@idle.task
def nothing(ctx: tm.TaskContext) -> None:
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("domain")
    flag = str(tmp / "flag")
    with module_world(str(tmp / "store.duckdb"), [media, other, idle], flags=[flag], max_concurrency=5) as s:
        h, o = s.domain(media), s.domain(other)
        dead = []
        for n in range(3):
            dead.append(h.submit(doomed, n=n).id)
            assert s.wait(dead[-1], timeout=DEADLINE).status == tm.HistoryStatus.DEAD_LETTER
        o_dead = o.submit(o_doomed).id
        assert s.wait(o_dead, timeout=DEADLINE).status == tm.HistoryStatus.DEAD_LETTER
        # a waiting parent: its child runs in `other`
        parent = h.submit(spawner, flag=flag)
        wait_status(s, parent.id, "waiting")
        o_child = [r["id"] for r in s.sql("SELECT id FROM tasks WHERE parent_id = ?", [parent.id])]
        assert len(o_child) == 1
        wait_running(s, *o_child)
        # running (media is capped at 3)
        run1 = h.submit(hold.options(tags={"billing.customer": "acme", "billing.plan": "pro", "env": "prod"}),
                        flag=flag, n=1, total=1000, done=400)
        run2 = h.submit(hold.options(tags={"billing.customer": "globex", "env": "prod"}), flag=flag, n=2,
                        fraction=0.25)
        run3 = h.submit(hold, flag=flag, n=3)
        wait_running(s, run1.id, run2.id, run3.id)
        # look-alikes in `other`
        o_run = o.submit(o_hold.options(tags={"billing.customer": "acme", "billing.other": "x", "env": "prod"}),
                         flag=flag, n=1, total=50)
        wait_running(s, o_run.id)
        # pending behind the cap, paused by its group, blocked on a pending task
        pend1 = h.submit(work.options(tags={"billing.customer": "acme", "env": "dev"}), x=1)
        pend2 = h.submit(work.options(tags={"env": "prod"}), x=2)
        pend3 = h.submit(work, x=3)
        s.pause_group("frozen")
        froz = h.submit(work.options(group="frozen", tags={"billing.customer": "acme", "billing.region": "eu"}), x=4)
        o_froz = o.submit(o_work.options(group="frozen", tags={"billing.customer": "acme", "billing.zone": "z"}), x=4)
        blocked = h.submit(work.options(depends_on=[pend3.id]), x=5)
        yield {
            "s": s, "flag": flag, "dead": dead, "o_dead": o_dead, "parent": parent.id, "o_child": o_child,
            "run1": run1.id, "run2": run2.id, "run3": run3.id, "o_run": o_run.id,
            "pend1": pend1.id, "pend2": pend2.id, "pend3": pend3.id, "froz": froz.id, "o_froz": o_froz.id,
            "blocked": blocked.id,
        }


def test_handle_snapshot_is_the_domains_dashboard(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    h = s.domain(media)

    def with_progress() -> tm.ModuleSnapshot | None:
        sn = h.snapshot()
        got = {p.header.task_id: p.reported_percent for p in sn.progress}
        return sn if got.get(w["run1"]) == pytest.approx(0.4) and got.get(w["run2"]) == 0.25 else None

    snap = poll_until(with_progress, DEADLINE, what="progress of media tasks published")
    assert isinstance(snap, tm.ModuleSnapshot) and snap.domain == "media"
    assert sorted(r.id for r in snap.running) == sorted([w["run1"], w["run2"], w["run3"]])
    assert all(isinstance(r, tm.TaskRecord) and r.domain == "media" for r in snap.running)
    assert (snap.pending_count, snap.paused_count, snap.blocked_count, snap.waiting_count) == (3, 1, 1, 1)
    assert sorted(p.header.task_id for p in snap.progress) == sorted([w["run1"], w["run2"], w["run3"]])
    assert [b.task_id for b in snap.byte_progress] == [w["run1"]]
    assert (snap.byte_progress[0].bytes_completed, snap.byte_progress[0].bytes_total) == (400, 1000)
    assert snap.is_paused is False
    # the pause state of the domain
    i = s.domain(idle)
    assert i.snapshot().is_paused is False
    i.pause()
    try:
        isnap = i.snapshot()
        assert isnap.is_paused is True and isnap.domain == "idle" and isnap.running == []
        assert (isnap.pending_count, isnap.paused_count, isnap.blocked_count, isnap.waiting_count) == (0, 0, 0, 0)
    finally:
        i.resume()
    assert i.snapshot().is_paused is False


def test_handle_active_tasks_lists_the_domains_running_tasks(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    active = s.domain(media).active_tasks()
    assert all(isinstance(r, tm.TaskRecord) for r in active)
    assert sorted(r.id for r in active) == sorted([w["run1"], w["run2"], w["run3"]])
    assert all(r.status == tm.TaskStatus.RUNNING and r.domain == "media" for r in active)
    assert sorted(r.id for r in s.domain(other).active_tasks()) == sorted(w["o_child"] + [w["o_run"]])
    assert s.domain(idle).active_tasks() == []


def test_handle_estimated_progress_for_each_running_task(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    h = s.domain(media)

    def published() -> list[tm.EstimatedProgress] | None:
        est = h.estimated_progress()
        got = {p.header.task_id: p for p in est}
        ok = w["run1"] in got and got[w["run1"]].reported_percent is not None and w["run2"] in got \
            and got[w["run2"]].reported_percent is not None
        return est if ok else None

    est = poll_until(published, DEADLINE, what="reported progress published")
    assert all(isinstance(p, tm.EstimatedProgress) for p in est)
    by_id = {p.header.task_id: p for p in est}
    assert sorted(by_id) == sorted([w["run1"], w["run2"], w["run3"]])  # running media tasks only
    assert by_id[w["run2"]].reported_percent == 0.25 and by_id[w["run2"]].percent == 0.25
    assert by_id[w["run1"]].reported_percent == pytest.approx(0.4) and by_id[w["run1"]].percent == pytest.approx(0.4)
    silent = by_id[w["run3"]]  # reports nothing: extrapolated, never beyond 99 %
    assert silent.reported_percent is None and 0.0 <= silent.percent <= 0.99
    assert all(p.header.domain == "media" and p.header.task_type == "media::hold" for p in est)


def test_handle_byte_progress_for_running_tasks(world: dict[str, Any]) -> None:
    s, w = world["s"], world

    def published() -> list[tm.TaskProgress] | None:
        bp = s.domain(media).byte_progress()
        return bp if any(b.task_id == w["run1"] and b.bytes_completed == 400 for b in bp) else None

    bp = poll_until(published, DEADLINE, what="byte progress published")
    assert all(isinstance(b, tm.TaskProgress) for b in bp)
    assert [b.task_id for b in bp] == [w["run1"]]  # not the other domain's task with bytes
    b = bp[0]
    assert (b.task_type, b.bytes_completed, b.bytes_total) == ("media::hold", 400, 1000)
    assert b.elapsed >= 0.0 and b.throughput_bps >= 0.0
    others = poll_until(lambda: s.domain(other).byte_progress(), DEADLINE, what="other's byte progress")
    assert [x.task_id for x in others] == [w["o_run"]]


def test_handle_dead_letter_tasks_paginated_for_the_domain(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    h = s.domain(media)
    all_ = h.dead_letter_tasks(10, 0)
    assert all(isinstance(r, tm.TaskHistoryRecord) for r in all_)
    assert sorted(r.id for r in all_) == sorted(w["dead"])  # not the other domain's dead letter
    assert all(r.status == tm.HistoryStatus.DEAD_LETTER and r.domain == "media" for r in all_)
    by_id = {r.id: r for r in all_}
    assert all(f"media doomed {n}" in by_id[i].last_error for n, i in enumerate(w["dead"]))
    # newest first, and pages partition the list
    assert [r.id for r in all_] == sorted(w["dead"], reverse=True)
    page1, page2 = h.dead_letter_tasks(2, 0), h.dead_letter_tasks(2, 2)
    assert [r.id for r in page1] + [r.id for r in page2] == [r.id for r in all_]
    assert len(page1) == 2 and len(page2) == 1
    assert h.dead_letter_tasks(10, 3) == []
    assert [r.id for r in s.domain(other).dead_letter_tasks(10)] == [w["o_dead"]]


def test_handle_task_ids_by_tags_matches_all_filters(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    h = s.domain(media)
    acme = h.task_ids_by_tags({"billing.customer": "acme"})
    assert all(type(i) is int for i in acme)
    assert sorted(acme) == sorted([w["run1"], w["pend1"], w["froz"]])  # not other's acme tasks
    assert h.task_ids_by_tags({"billing.customer": "acme", "env": "prod"}) == [w["run1"]]  # every filter
    assert h.task_ids_by_tags({"billing.customer": "acme"}, status="pending") == [w["pend1"]]
    assert h.task_ids_by_tags({"billing.customer": "acme"}, status="running") == [w["run1"]]
    assert h.task_ids_by_tags({"billing.customer": "acme"}, status=tm.TaskStatus.PAUSED) == [w["froz"]]
    assert sorted(h.task_ids_by_tags({"env": "prod"})) == sorted([w["run1"], w["run2"], w["pend2"]])
    assert h.task_ids_by_tags({"billing.customer": "initech"}) == []
    # ids resolve to full records via task_by_id
    assert s.store.task_by_id(w["pend1"]).tags == {"billing.customer": "acme", "env": "dev"}


def test_handle_count_by_tag_counts_values_of_a_key(world: dict[str, Any]) -> None:
    s = world["s"]
    h = s.domain(media)
    counts = h.count_by_tag("billing.customer")
    assert all(isinstance(v, str) and type(n) is int for v, n in counts)
    assert sorted(counts) == [("acme", 3), ("globex", 1)]  # other's acme tasks not counted
    assert sorted(h.count_by_tag("billing.customer", status="running")) == [("acme", 1), ("globex", 1)]
    assert h.count_by_tag("billing.customer", status="blocked") == []
    assert sorted(h.count_by_tag("env", "pending")) == [("dev", 1), ("prod", 1)]
    assert h.count_by_tag("nope") == []


def test_handle_tag_values_lists_distinct_values_of_a_key(world: dict[str, Any]) -> None:
    s = world["s"]
    h = s.domain(media)
    vals = h.tag_values("env")
    assert sorted(vals) == [("dev", 1), ("prod", 3)]  # other's prod task not counted
    assert sorted(h.tag_values("billing.region")) == [("eu", 1)]
    assert h.tag_values("billing.other") == []  # only in `other`


def test_handle_tag_keys_by_prefix_discovers_keys_in_domain(world: dict[str, Any]) -> None:
    s = world["s"]
    h = s.domain(media)
    keys = h.tag_keys_by_prefix("billing.")
    assert sorted(keys) == ["billing.customer", "billing.plan", "billing.region"]  # not other's billing.*
    assert len(keys) == len(set(keys))
    assert h.tag_keys_by_prefix("env") == ["env"]
    assert h.tag_keys_by_prefix("nope.") == []
    assert sorted(s.domain(other).tag_keys_by_prefix("billing.")) == ["billing.customer", "billing.other",
                                                                      "billing.zone"]


def test_handle_task_ids_by_tag_key_prefix_with_optional_status(world: dict[str, Any]) -> None:
    s, w = world["s"], world
    h = s.domain(media)
    ids = h.task_ids_by_tag_key_prefix("billing.")
    assert sorted(ids) == sorted([w["run1"], w["run2"], w["pend1"], w["froz"]])
    assert sorted(h.task_ids_by_tag_key_prefix("billing.", status="running")) == sorted([w["run1"], w["run2"]])
    assert h.task_ids_by_tag_key_prefix("billing.", status="paused") == [w["froz"]]
    assert h.task_ids_by_tag_key_prefix("billing.plan") == [w["run1"]]
    assert h.task_ids_by_tag_key_prefix("nope.") == []
    assert s.domain(other).task_ids_by_tag_key_prefix("billing.zone") == [w["o_froz"]]


def test_handle_count_by_tag_key_prefix_with_optional_status(world: dict[str, Any]) -> None:
    s = world["s"]
    h = s.domain(media)
    n = h.count_by_tag_key_prefix("billing.")
    assert type(n) is int and n == 4  # other's billing.* tasks not counted
    assert h.count_by_tag_key_prefix("billing.", status="running") == 2
    assert h.count_by_tag_key_prefix("billing.", status="pending") == 1
    assert h.count_by_tag_key_prefix("billing.region") == 1
    assert h.count_by_tag_key_prefix("env", status="pending") == 2
    assert h.count_by_tag_key_prefix("nope.") == 0
