"""End-to-end task graphs: dependencies (F13) and parent/child/sibling tasks (F14).

Real scheduler, real store file, forked workers. Covers:

- chains and fan-out/fan-in: dependents stay ``blocked`` (store queries
  ``blocked_tasks``/``blocked_count``/``task_dependencies``/``task_dependents``)
  until their prerequisites complete; the order the workers log respects every
  edge; depending on an already completed task is satisfied at once;
- the three failure policies when a prerequisite fails permanently or is
  cancelled (SPEC §8), cascades through a chain and across domains;
- refusals at submit (unknown, failed, self or forward ids; a batch with one bad
  dependency; an unknown parent), each writing nothing;
- parents: ``waiting`` while children run, ``finalize`` with the memo after all
  children end, one history row; inheritance of tags, TTL and priority;
  ``fail_fast`` on and off; ``spawn_sibling``; children in another domain and
  the cancel cascade; ``ctx.domain(...)`` submitting ordinary work.

Tasks that must stay put block on flag files; waits poll with generous deadlines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from polling import poll_until, slots_as_cores
from taskfiles import append as _append
from taskfiles import lines
from taskfiles import wait_flag as _wait_flag

import taskmill as tm

DEADLINE = 60.0  # seconds any single wait may take on a loaded 2-core machine

NO_RETRY = tm.RetryPolicy.none()

graph = tm.Domain("graph")
ingest = tm.Domain("ingest")
process = tm.Domain("process")
bg = tm.Domain("bg", default_priority=tm.Priority.BACKGROUND)
solo = tm.Domain("gsolo", max_concurrency=1)


# --------------------------------------------------------------------------- helpers used by tasks


# --------------------------------------------------------------------------- task functions (module level)


@graph.task
def step(ctx: tm.TaskContext, name: str, log: str, flag: str | None = None) -> str:
    _append(log, f"start {name}")
    if flag:
        _wait_flag(ctx, flag)
    _append(log, f"end {name}")
    return name


@ingest.task(retry=NO_RETRY)
def ingest_fail(ctx: tm.TaskContext, name: str, flag: str) -> None:
    _wait_flag(ctx, flag)
    raise tm.Permanent(f"{name} fails on purpose")


@ingest.task
def ingest_hold(ctx: tm.TaskContext, name: str, log: str, flag: str) -> str:
    _append(log, f"start {name}")
    out = _wait_flag(ctx, flag)
    _append(log, f"end {name} {out}")
    return out


@process.task
def process_step(ctx: tm.TaskContext, name: str, log: str) -> str:
    _append(log, f"start {name}")
    _append(log, f"end {name}")
    return name


@solo.task
def solo_hold(ctx: tm.TaskContext, flag: str) -> str:
    return _wait_flag(ctx, flag)


@solo.task
def solo_work(ctx: tm.TaskContext, x: int) -> int:
    return x


@graph.task(retry=NO_RETRY)
def child(ctx: tm.TaskContext, i: int, log: str, flag: str, fail: str | None = None) -> int:
    """A child: logs, blocks on ``flag``; fails permanently once ``fail`` (a flag) exists."""
    _append(log, f"child-start {i}")
    if fail is not None:
        _wait_flag(ctx, fail)
        raise tm.Permanent(f"child {i} fails on purpose")
    out = _wait_flag(ctx, flag)
    _append(log, f"child-end {i} {out}")
    return i


@graph.task
def spawner(ctx: tm.TaskContext, log: str, flag: str, plan: list, fail: str | None = None) -> dict:
    """Spawns one child per item of ``plan``: [domain, options] with domain "graph" or "ingest"."""
    ids = []
    for i, (dom, opts) in enumerate(plan):
        if dom == "ingest":
            out = ctx.spawn_child(ingest_hold.options(**opts), name=f"ingest-child-{i}", log=log, flag=flag)
        else:
            fails = fail if opts.pop("fails", False) else None
            out = ctx.spawn_child(child.options(**opts), i=i, log=log, flag=flag, fail=fails)
        assert isinstance(out, tm.Inserted), out
        ids.append(out.id)
    _append(log, f"parent-returned {ctx.task_id}")
    return {"children": ids, "parent": ctx.task_id}


@spawner.finalize
def spawner_finalize(ctx: tm.TaskContext, memo: Any, log: str, **_: Any) -> dict:
    _append(log, "finalize " + json.dumps({"task": ctx.task_id, "memo": memo}, sort_keys=True))
    return {"finalized": memo["children"]}


@graph.task
def sib_maker(ctx: tm.TaskContext, log: str, flag: str) -> int:
    """A child that adds a sibling (another child of its own parent), then returns its id."""
    out = ctx.spawn_sibling(child, i=99, log=log, flag=flag)
    _append(log, f"sibling-spawned {out.id}")
    return out.id


@graph.task
def family(ctx: tm.TaskContext, log: str, flag: str) -> dict:
    out = ctx.spawn_child(sib_maker, log=log, flag=flag)
    return {"first": out.id}


@family.finalize
def family_finalize(ctx: tm.TaskContext, memo: Any, log: str, **_: Any) -> str:
    _append(log, "finalize " + json.dumps(memo, sort_keys=True))
    return "family done"


@graph.task(retry=NO_RETRY)
def lonely(ctx: tm.TaskContext) -> str:
    """A root task trying to spawn a sibling."""
    try:
        ctx.spawn_sibling(child, i=0, log="/dev/null", flag="/nonexistent")
    except Exception as e:  # noqa: BLE001 - the error is the result
        return f"{type(e).__name__}: {e}"
    return "no error"


@bg.task
def bg_hold(ctx: tm.TaskContext, flag: str) -> str:
    return _wait_flag(ctx, flag)


@graph.task
def submit_plain(ctx: tm.TaskContext, flag: str) -> dict:
    """Submits ordinary work to another domain from inside a task."""
    out = ctx.domain("bg").submit(bg_hold, flag=flag)
    try:
        ctx.domain("no-such-domain").submit(bg_hold, flag=flag)
        unknown = "no error"
    except tm.UnknownDomain as e:
        unknown = f"UnknownDomain: {e}"
    return {"id": out.id, "inserted": isinstance(out, tm.Inserted), "try_none": ctx.try_domain("nope") is None,
            "try_bg": ctx.try_domain(bg) is not None, "unknown": unknown}


ALL = [graph, ingest, process, bg, solo]


# --------------------------------------------------------------------------- test helpers


def sched(store: str, **kw: Any) -> tm.Scheduler:
    kw.setdefault("max_concurrency", 2)
    kw.setdefault("capacity", slots_as_cores(kw["max_concurrency"]))
    return tm.Scheduler(store_path=store, domains=ALL, **kw)


def history(s: tm.Scheduler, task_id: int) -> list[dict]:
    return s.sql("SELECT status, last_error, result, parent_id FROM task_history WHERE id = ? ORDER BY completed_at",
                 [task_id])


def status_of(s: tm.Scheduler, task_id: int) -> str | None:
    return None if (rec := s.task(task_id)) is None else rec.status.value


def wait_status(s: tm.Scheduler, task_id: int, status: str) -> tm.TaskRecord:
    return poll_until(lambda: (r := s.task(task_id)) is not None and r.status.value == status and r,
                      DEADLINE, what=f"task {task_id} {status}")


def final(s: tm.Scheduler, task_id: int) -> tm.TaskHistoryRecord:
    return s.wait(task_id, timeout=DEADLINE)


def assert_edges(log_lines: list[str], edges: list[tuple[str, str]]) -> None:
    pos = {ln: i for i, ln in enumerate(log_lines)}
    for p, d in edges:
        assert pos[f"end {p}"] < pos[f"start {d}"], (p, d, log_lines)


def counts(s: tm.Scheduler) -> tuple[int, int]:
    return (s.sql("SELECT count(*) AS n FROM tasks")[0]["n"], s.sql("SELECT count(*) AS n FROM task_history")[0]["n"])


# --------------------------------------------------------------------------- F13: dependencies


def test_chain_and_fan_out_fan_in(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    flag_a, flag_root, flag_m4 = (str(tmp_path / n) for n in ("fa", "froot", "fm4"))
    with sched(store_path, max_concurrency=3) as s:
        h = s.domain(graph)
        st = s.store
        # chain a -> b -> c
        a = h.submit(step, name="a", log=log, flag=flag_a)
        b = h.submit(step.options(depends_on=[a.id]), name="b", log=log)
        c = h.submit(step.options(depends_on=[b]), name="c", log=log)  # an outcome works as an id too
        assert isinstance(b, tm.Inserted) and isinstance(c, tm.Inserted)
        # fan-out / fan-in: root -> m0..m4 -> sink
        root = h.submit(step, name="root", log=log, flag=flag_root)
        mids = [h.submit(step.options(depends_on=[root.id]), name=f"m{i}", log=log,
                         flag=flag_m4 if i == 4 else None).id for i in range(5)]
        sink = h.submit(step.options(depends_on=mids), name="sink", log=log)

        rb, rc, rs = s.task(b.id), s.task(c.id), s.task(sink.id)
        assert rb.status == tm.TaskStatus.BLOCKED and rb.dependencies == [a.id]
        assert rc.status == tm.TaskStatus.BLOCKED and rc.dependencies == [b.id]
        assert rs.status == tm.TaskStatus.BLOCKED and rs.dependencies == mids
        assert st.task_dependencies(c.id) == [b.id] and st.task_dependents(a.id) == [b.id]
        assert st.task_dependents(root.id) == mids and st.task_dependencies(sink.id) == mids
        assert st.task_dependencies(a.id) == [] and st.task_dependents(sink.id) == []
        assert st.blocked_count() == 8
        assert sorted(r.id for r in st.blocked_tasks()) == sorted([b.id, c.id, *mids, sink.id])
        sn = s.snapshot()  # one call: a and root may move from pending to running meanwhile
        assert sn.blocked_count == 8 and h.snapshot().blocked_count == 8
        assert sn.pending_count + sn.running_count == 2  # only a and root can run

        # a and root run; nothing downstream starts while they hold
        poll_until(lambda: {"start a", "start root"} <= set(lines(log)), DEADLINE, what="a and root started")
        assert sorted(lines(log)) == ["start a", "start root"]
        assert status_of(s, b.id) == "blocked" and status_of(s, mids[0]) == "blocked"

        # release the chain: b then c run, the fan stays blocked behind root
        Path(flag_a).touch()
        assert final(s, c.id).status == tm.HistoryStatus.COMPLETED
        assert [final(s, t).status for t in (a.id, b.id)] == ["completed", "completed"]
        assert_edges(lines(log), [("a", "b"), ("b", "c")])
        assert st.blocked_count() == 6 and st.task_dependents(a.id) == []
        assert not any(ln.startswith("start m") for ln in lines(log))

        # release root: m0..m3 complete, sink still waits on m4 alone
        Path(flag_root).touch()
        for t in mids[:4]:
            assert final(s, t).status == "completed"
        wait_status(s, mids[4], "running")
        rs = s.task(sink.id)
        assert rs.status == tm.TaskStatus.BLOCKED and rs.dependencies == [mids[4]]
        assert st.task_dependencies(sink.id) == [mids[4]] and st.blocked_count() == 1
        assert "start sink" not in lines(log)
        Path(flag_m4).touch()
        assert final(s, sink.id).status == "completed"
        s.wait_idle(timeout=DEADLINE)
        got = lines(log)
        assert_edges(got, [("root", f"m{i}") for i in range(5)] + [(f"m{i}", "sink") for i in range(5)])
        assert got[-2:] == ["start sink", "end sink"]
        assert st.blocked_count() == 0 and st.blocked_tasks() == []

        # depending on a task that already completed is satisfied at once
        flag_late = str(tmp_path / "flate")
        late = h.submit(step.options(depends_on=[a.id, root.id]), name="late", log=log, flag=flag_late)
        assert isinstance(late, tm.Inserted)
        rl = s.task(late.id)
        assert rl.status in (tm.TaskStatus.PENDING, tm.TaskStatus.RUNNING) and rl.dependencies == []
        assert st.blocked_count() == 0 and st.task_dependents(a.id) == []
        Path(flag_late).touch()
        assert final(s, late.id).status == "completed"
        assert s.sql("SELECT count(*) AS n FROM task_history WHERE status <> 'completed'") == [{"n": 0}]


def test_failure_policies_when_prerequisite_fails(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    go = str(tmp_path / "go")
    with sched(store_path, max_concurrency=2) as s:
        h = s.domain(graph)
        p = s.domain(ingest).submit(ingest_fail, name="p", flag=go)
        d_cancel = h.submit(step.options(depends_on=[p.id]), name="d_cancel", log=log)
        d_fail = h.submit(step.options(depends_on=[p.id], on_dependency_failure="fail"), name="d_fail", log=log)
        d_ignore = h.submit(step.options(depends_on=[p.id], on_dependency_failure="ignore"), name="d_ignore", log=log)
        # below "cancel" everything downstream goes, whatever its own policy
        e_under_cancel = h.submit(step.options(depends_on=[d_cancel.id], on_dependency_failure="ignore"),
                                  name="e_under_cancel", log=log)
        # below "fail" each dependent applies its own policy
        e_ignore_under_fail = h.submit(step.options(depends_on=[d_fail.id], on_dependency_failure="ignore"),
                                       name="e_ignore_under_fail", log=log)
        e_cancel_under_fail = h.submit(step.options(depends_on=[d_fail.id]), name="e_cancel_under_fail", log=log)
        # a chain of default policies cascades all the way: p -> c1 -> c2 -> c3
        c1 = h.submit(step.options(depends_on=[p.id]), name="c1", log=log)
        c2 = h.submit(step.options(depends_on=[c1.id]), name="c2", log=log)
        c3 = h.submit(step.options(depends_on=[c2.id]), name="c3", log=log)
        # across domains: process depends on ingest
        src = s.domain(ingest).submit(ingest_fail, name="src", flag=go)
        x_cancel = s.domain(process).submit(process_step.options(depends_on=[src.id]), name="x_cancel", log=log)
        x_ignore = s.domain(process).submit(process_step.options(depends_on=[src.id], on_dependency_failure="ignore"),
                                            name="x_ignore", log=log)
        x_next = h.submit(step.options(depends_on=[x_cancel.id]), name="x_next", log=log)
        assert s.store.blocked_count() == 12
        assert s.task(d_fail.id).on_dependency_failure == "fail"
        assert s.task(d_ignore.id).on_dependency_failure == "ignore"
        assert s.task(d_cancel.id).on_dependency_failure == "cancel"

        Path(go).touch()
        assert final(s, p.id).status == tm.HistoryStatus.FAILED
        assert final(s, src.id).status == tm.HistoryStatus.FAILED
        want = {
            d_cancel.id: "dependency_failed", d_fail.id: "dependency_failed", d_ignore.id: "completed",
            e_under_cancel.id: "dependency_failed", e_ignore_under_fail.id: "completed",
            e_cancel_under_fail.id: "dependency_failed",
            c1.id: "dependency_failed", c2.id: "dependency_failed", c3.id: "dependency_failed",
            x_cancel.id: "dependency_failed", x_ignore.id: "completed", x_next.id: "dependency_failed",
        }
        got = {t: final(s, t).status.value for t in want}
        assert got == want
        s.wait_idle(timeout=DEADLINE)
        # the ones that failed never ran; the ignoring ones did
        started = {ln.split()[1] for ln in lines(log) if ln.startswith("start")}
        assert started == {"d_ignore", "e_ignore_under_fail", "x_ignore"}
        # one history row each, naming the failed prerequisite
        for t, status in want.items():
            rows = history(s, t)
            assert [r["status"] for r in rows] == [status], (t, rows)
        assert str(p.id) in history(s, d_cancel.id)[0]["last_error"]
        assert str(p.id) in history(s, d_fail.id)[0]["last_error"]
        assert str(src.id) in history(s, x_cancel.id)[0]["last_error"]
        assert final(s, x_cancel.id).domain == "process"
        assert s.store.blocked_count() == 0 and counts(s)[0] == 0


def test_failure_policies_when_prerequisite_is_cancelled(store_path: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    never = str(tmp_path / "never")
    with sched(store_path, max_concurrency=2) as s:
        # a running prerequisite in ingest, dependents in process and graph
        running = s.domain(ingest).submit(ingest_hold, name="running", log=log, flag=never)
        poll_until(lambda: "start running" in lines(log), DEADLINE, what="prerequisite running")
        q_cancel = s.domain(process).submit(process_step.options(depends_on=[running.id]), name="q_cancel", log=log)
        q_fail = s.domain(process).submit(process_step.options(depends_on=[running.id], on_dependency_failure="fail"),
                                          name="q_fail", log=log)
        q_ignore = s.domain(process).submit(
            process_step.options(depends_on=[running.id], on_dependency_failure="ignore"), name="q_ignore", log=log)
        q_down = s.domain(graph).submit(step.options(depends_on=[q_cancel.id]), name="q_down", log=log)
        # a pending prerequisite (delayed), cancelled before it ever runs
        pending = s.domain(graph).submit(step.options(run_after=3600), name="pending", log=log)
        r_cancel = s.domain(graph).submit(step.options(depends_on=[pending.id]), name="r_cancel", log=log)
        r_ignore = s.domain(graph).submit(step.options(depends_on=[pending.id], on_dependency_failure="ignore"),
                                          name="r_ignore", log=log)
        assert status_of(s, pending.id) == "pending"
        assert s.store.blocked_count() == 6

        assert s.cancel(running.id) is True
        assert s.domain(graph).cancel(pending.id) is True
        assert final(s, running.id).status == tm.HistoryStatus.CANCELLED
        assert final(s, pending.id).status == tm.HistoryStatus.CANCELLED
        want = {q_cancel.id: "dependency_failed", q_fail.id: "dependency_failed", q_ignore.id: "completed",
                q_down.id: "dependency_failed", r_cancel.id: "dependency_failed", r_ignore.id: "completed"}
        assert {t: final(s, t).status.value for t in want} == want
        s.wait_idle(timeout=DEADLINE)
        poll_until(lambda: "end running cancelled" in lines(log), DEADLINE, what="the prerequisite saw the cancel")
        started = {ln.split()[1] for ln in lines(log) if ln.startswith("start")}
        assert started == {"running", "q_ignore", "r_ignore"}
        assert "cancelled" in history(s, q_cancel.id)[0]["last_error"]
        for t, status in want.items():
            assert [r["status"] for r in history(s, t)] == [status]


def test_superseded_prerequisite_hands_over_its_dependents(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path, max_concurrency=2) as s:
        so = s.domain(solo)
        blocker = so.submit(solo_hold, flag=flag)
        old = so.submit(solo_work, x=1)  # pending behind the blocker
        dep = s.domain(graph).submit(step.options(depends_on=[old.id]), name="dep", log=str(tmp_path / "log"))
        new = so.submit(solo_work.options(duplicate="supersede"), x=1)
        assert isinstance(new, tm.Superseded) and new.replaced_id == old.id
        assert final(s, old.id).status == "superseded"
        rec = s.task(dep.id)
        assert rec.status == tm.TaskStatus.BLOCKED and rec.dependencies == [new.new_id]
        assert s.store.task_dependents(new.new_id) == [dep.id] and s.store.task_dependents(old.id) == []
        Path(flag).touch()
        assert final(s, dep.id).status == "completed"
        assert final(s, blocker.id).status == "completed"
        s.wait_idle(timeout=DEADLINE)


# --------------------------------------------------------------------------- F13: refusals at submit


def test_bad_dependencies_are_refused_and_write_nothing(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path, max_concurrency=2) as s:
        so = s.domain(solo)
        blocker = so.submit(solo_hold, flag=flag)
        poll_until(lambda: status_of(s, blocker.id) == "running", DEADLINE, what="blocker running")
        failed = s.domain(ingest).submit(ingest_fail, name="failed", flag=flag + ".go")
        Path(flag + ".go").touch()
        assert final(s, failed.id).status == "failed"
        cancelled = so.submit(solo_work, x=-1)
        assert so.cancel(cancelled.id) is True
        assert final(s, cancelled.id).status == "cancelled"
        queued = so.submit(solo_work, x=0)  # pending behind the blocker: a valid prerequisite
        before = counts(s)
        pending_before = s.store.pending_count()
        next_id = queued.id + 1  # ids are handed out in order: the id the next insert would get

        def refused(sub: Any, *words: str) -> tm.InvalidSubmission:
            with pytest.raises(tm.InvalidSubmission) as ei:
                so.submit(sub, x=1)
            msg = str(ei.value)
            for w in words:
                assert w in msg, (w, msg)
            assert counts(s) == before and s.store.pending_count() == pending_before
            return ei.value

        refused(solo_work.options(depends_on=[987654]), "depends_on", "987654")
        refused(solo_work.options(depends_on=[queued.id, 987654]), "depends_on", "987654")
        refused(solo_work.options(depends_on=[failed.id]), "depends_on", str(failed.id), "failed")
        refused(solo_work.options(depends_on=[failed.id], on_dependency_failure="fail"), "depends_on", str(failed.id))
        refused(solo_work.options(depends_on=[cancelled.id]), "depends_on", str(cancelled.id))
        # cycles cannot form: a task cannot name itself or a later task
        refused(solo_work.options(depends_on=[next_id]), "depends_on", str(next_id))
        refused(solo_work.options(depends_on=[next_id + 3]), "depends_on", str(next_id + 3))
        refused(solo_work.options(parent=987654), "parent", "987654")
        # the host refuses malformed values before sending anything
        with pytest.raises((TypeError, ValueError), match="depends_on"):
            so.submit(solo_work.options(depends_on=[0]), x=1)
        with pytest.raises(TypeError, match="depends_on"):
            so.submit(solo_work.options(depends_on="12"), x=1)
        with pytest.raises(ValueError, match="on_dependency_failure"):
            so.submit(solo_work.options(depends_on=[queued.id], on_dependency_failure="retry"), x=1)

        # SPEC §8: a prerequisite that already failed is refused whatever the policy, "ignore" too
        refused(solo_work.options(depends_on=[failed.id], on_dependency_failure="ignore"), "depends_on",
                str(failed.id), "failed")
        # a single submission's error has no batch item number
        err = refused(solo_work.options(depends_on=[987654]), "depends_on")
        assert not str(err).startswith("item ")

        # a batch with one bad dependency writes nothing and names the item
        items = [solo_work.call(x=10), solo_work.options(depends_on=[queued.id]).call(x=11),
                 solo_work.options(depends_on=[987654]).call(x=12), solo_work.call(x=13)]
        with pytest.raises(tm.InvalidSubmission) as ei:
            so.submit_batch(items)
        assert ei.value.index == 2 and "depends_on" in str(ei.value) and "987654" in str(ei.value)
        assert counts(s) == before and s.store.pending_count() == pending_before
        # an item naming the id an earlier item of the same batch would get is a forward reference
        with pytest.raises(tm.InvalidSubmission) as ei:
            so.submit_batch([solo_work.call(x=20), solo_work.options(depends_on=[next_id]).call(x=21)])
        assert ei.value.index == 1 and "depends_on" in str(ei.value)
        assert counts(s) == before and s.store.pending_count() == pending_before
        assert s.sql("SELECT count(*) AS n FROM task_deps") == [{"n": 0}]

        # after all those refusals a good dependent goes in, blocked on the queued task
        ok = so.submit(solo_work.options(depends_on=[queued.id]), x=1)
        assert isinstance(ok, tm.Inserted) and status_of(s, ok.id) == "blocked"
        Path(flag).touch()
        assert final(s, ok.id).status == "completed"
        s.wait_idle(timeout=DEADLINE)


# --------------------------------------------------------------------------- F14: parents and children


def test_parent_waits_finalizes_with_memo_and_children_inherit(store_path: str, tmp_path: Path) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "flag")
    plan = [["graph", {"tags": {"shared": "child", "own": "c0"}}],
            ["graph", {"priority": 20, "ttl": 7200}],
            ["graph", {"priority": tm.Priority.BACKGROUND}]]
    with sched(store_path, max_concurrency=4) as s:
        h = s.domain(graph)
        parent = h.submit(spawner.options(priority=tm.Priority.HIGH, tags={"team": "a", "shared": "parent"}, ttl=600),
                          log=log, flag=flag, plan=plan)
        rec = wait_status(s, parent.id, "waiting")
        kids = rec.memo["children"]
        assert rec.memo == {"children": kids, "parent": parent.id}
        assert len(kids) == 3 and len(set(kids)) == 3
        poll_until(lambda: sum(ln.startswith("child-start") for ln in lines(log)) == 3, DEADLINE,
                   what="children running")
        assert s.snapshot().waiting_count == 1 and h.snapshot().waiting_count == 1
        assert history(s, parent.id) == []  # no row while it waits

        recs = [s.task(k) for k in kids]
        assert all(r is not None and r.parent_id == parent.id for r in recs)
        # tags: the parent's under the child's own
        assert recs[0].tags == {"team": "a", "shared": "child", "own": "c0"}
        assert recs[1].tags == {"team": "a", "shared": "parent"}
        # priority: the more urgent of the two
        assert [r.priority for r in recs] == [tm.Priority.HIGH, 20, tm.Priority.HIGH]
        # TTL: what is left of the parent's (never extended by a longer own TTL)
        assert rec.expires_at is not None
        for r in recs:
            assert r.expires_at is not None and abs((r.expires_at - rec.expires_at).total_seconds()) < 0.01, r

        # the parent keeps waiting until every child has ended
        Path(flag).touch()
        done = final(s, parent.id)
        assert done.status == tm.HistoryStatus.COMPLETED, done.last_error
        assert done.result == {"finalized": kids}
        assert [final(s, k).status for k in kids] == ["completed"] * 3
        assert [final(s, k).parent_id for k in kids] == [parent.id] * 3
        got = lines(log)
        fin = [i for i, ln in enumerate(got) if ln.startswith("finalize")]
        assert len(fin) == 1 and fin[0] == len(got) - 1
        assert sum(ln.startswith("child-end") for ln in got[:fin[0]]) == 3
        assert got.index(f"parent-returned {parent.id}") < fin[0]
        assert json.loads(got[fin[0]].split(" ", 1)[1]) == {"task": parent.id,
                                                            "memo": {"children": kids, "parent": parent.id}}
        # one history row for the parent, written at the end
        rows = history(s, parent.id)
        assert [r["status"] for r in rows] == ["completed"]
        s.wait_idle(timeout=DEADLINE)
        assert s.snapshot().waiting_count == 0


def test_fail_fast_cancels_siblings_and_fails_parent(store_path: str, tmp_path: Path) -> None:
    log, flag, boom = str(tmp_path / "log"), str(tmp_path / "flag"), str(tmp_path / "boom")
    plan = [["graph", {"fails": True}], ["graph", {}], ["graph", {}]]
    with sched(store_path, max_concurrency=4) as s:
        parent = s.domain(graph).submit(spawner, log=log, flag=flag, plan=plan, fail=boom)
        rec = wait_status(s, parent.id, "waiting")
        assert rec.fail_fast is True
        kids = rec.memo["children"]
        poll_until(lambda: sum(ln.startswith("child-start") for ln in lines(log)) == 3, DEADLINE,
                   what="children running")
        Path(boom).touch()
        done = final(s, parent.id)
        assert done.status == tm.HistoryStatus.FAILED
        assert str(kids[0]) in done.last_error
        assert final(s, kids[0]).status == tm.HistoryStatus.FAILED
        assert [final(s, k).status for k in kids[1:]] == ["cancelled", "cancelled"]
        # the running siblings were told to stop
        poll_until(lambda: {f"child-end {i} cancelled" for i in (1, 2)} <= set(lines(log)), DEADLINE,
                   what="siblings saw ctx.cancelled")
        s.wait_idle(timeout=DEADLINE)
        assert not any(ln.startswith("finalize") for ln in lines(log))
        assert [r["status"] for r in history(s, parent.id)] == ["failed"]


def test_without_fail_fast_siblings_finish_and_parent_finalizes(store_path: str, tmp_path: Path) -> None:
    log, flag, boom = str(tmp_path / "log"), str(tmp_path / "flag"), str(tmp_path / "boom")
    plan = [["graph", {"fails": True}], ["graph", {}], ["graph", {}]]
    with sched(store_path, max_concurrency=4) as s:
        parent = s.domain(graph).submit(spawner.options(fail_fast=False), log=log, flag=flag, plan=plan, fail=boom)
        rec = wait_status(s, parent.id, "waiting")
        assert rec.fail_fast is False
        kids = rec.memo["children"]
        poll_until(lambda: sum(ln.startswith("child-start") for ln in lines(log)) == 3, DEADLINE,
                   what="children running")
        Path(boom).touch()
        assert final(s, kids[0]).status == tm.HistoryStatus.FAILED
        # the failure cancels nothing: the siblings run on, the parent keeps waiting
        assert status_of(s, kids[1]) == "running" and status_of(s, kids[2]) == "running"
        assert status_of(s, parent.id) == "waiting"
        Path(flag).touch()
        assert [final(s, k).status for k in kids[1:]] == ["completed", "completed"]
        done = final(s, parent.id)
        s.wait_idle(timeout=DEADLINE)
        assert len(history(s, parent.id)) == 1
        # SPEC F14: "when all children finished, its finalize step runs" — fail_fast off lets it run
        fin = [ln for ln in lines(log) if ln.startswith("finalize")]
        assert len(fin) == 1, (done.status, done.last_error)
        assert json.loads(fin[0].split(" ", 1)[1])["memo"] == {"children": kids, "parent": parent.id}
        assert done.status == "completed", done.last_error  # the finalize step decided: it returned normally


def test_spawn_sibling(store_path: str, tmp_path: Path) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "flag")
    with sched(store_path, max_concurrency=3) as s:
        h = s.domain(graph)
        parent = h.submit(family, log=log, flag=flag)
        first = wait_status(s, parent.id, "waiting").memo["first"]
        assert final(s, first).status == "completed"
        sib = final(s, first).result
        assert f"sibling-spawned {sib}" in lines(log)
        rec = s.task(sib)
        assert rec is not None and rec.parent_id == parent.id and rec.task_type == "graph::child"
        # the first child is gone, the sibling keeps the parent waiting
        assert status_of(s, parent.id) == "waiting"
        assert not any(ln.startswith("finalize") for ln in lines(log))
        Path(flag).touch()
        done = final(s, parent.id)
        assert done.status == "completed" and done.result == "family done"
        assert final(s, sib).parent_id == parent.id and final(s, sib).status == "completed"
        got = lines(log)
        assert got[-1] == "finalize " + json.dumps({"first": first}) and "child-end 99 released" in got
        # from a root task it is a clear error
        out = h.submit(lonely)
        r = final(s, out.id)
        assert r.status == "completed" and r.result.startswith("ValueError") and "no parent" in r.result
        assert s.sql("SELECT count(*) AS n FROM task_history WHERE task_type = 'graph::child'") == [{"n": 1}]


def test_cancel_waiting_parent_cancels_children_across_domains(store_path: str, tmp_path: Path) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "flag")
    plan = [["graph", {}], ["ingest", {}], ["ingest", {"run_after": 3600}]]
    with sched(store_path, max_concurrency=4) as s:
        parent = s.domain(graph).submit(spawner, log=log, flag=flag, plan=plan)
        kids = wait_status(s, parent.id, "waiting").memo["children"]
        poll_until(lambda: {"child-start 0", "start ingest-child-1"} <= set(lines(log)), DEADLINE,
                   what="two children running")
        poll_until(lambda: [status_of(s, k) for k in kids] == ["running", "running", "pending"], DEADLINE,
                   what="two children running, one delayed")
        recs = [s.task(k) for k in kids]
        assert [r.domain for r in recs] == ["graph", "ingest", "ingest"]
        assert all(r.parent_id == parent.id for r in recs)
        # a domain handle does not reach another domain's parent
        assert s.domain(ingest).cancel(parent.id) is False
        assert s.domain(graph).cancel(parent.id) is True
        assert final(s, parent.id).status == tm.HistoryStatus.CANCELLED
        assert [final(s, k).status for k in kids] == ["cancelled"] * 3
        poll_until(lambda: {"child-end 0 cancelled", "end ingest-child-1 cancelled"} <= set(lines(log)), DEADLINE,
                   what="running children saw ctx.cancelled")
        s.wait_idle(timeout=DEADLINE)
        assert counts(s)[0] == 0
        assert not any(ln.startswith("finalize") for ln in lines(log))
        assert "start ingest-child-2" not in lines(log)
        for t in [parent.id, *kids]:
            assert [r["status"] for r in history(s, t)] == ["cancelled"]


def test_ctx_domain_submits_ordinary_work(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path, max_concurrency=2) as s:
        out = s.domain(graph).submit(submit_plain.options(priority=tm.Priority.HIGH, tags={"team": "a"}), flag=flag)
        r = final(s, out.id)  # completes at once: no child to wait for
        assert r.status == "completed", r.last_error
        res = r.result
        assert res["inserted"] and res["try_none"] and res["try_bg"]
        assert res["unknown"].startswith("UnknownDomain") and "no-such-domain" in res["unknown"]
        rec = s.task(res["id"])
        assert rec is not None and rec.status.value in ("pending", "running")
        assert rec.domain == "bg" and rec.parent_id is None
        assert rec.priority == tm.Priority.BACKGROUND  # that domain's default, not the submitter's
        assert rec.tags == {}
        Path(flag).touch()
        plain = final(s, res["id"])
        assert plain.status == "completed" and plain.parent_id is None
        s.wait_idle(timeout=DEADLINE)
