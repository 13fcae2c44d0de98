"""End-to-end behaviour of a real scheduler: results, submission outcomes,
ordering, concurrency caps, retries, timeouts, cancellation, queries.

Every test starts a real coordinator with forked workers. Tasks that must stay
put block on a flag file (``_hold``), so nothing here depends on timing except
generous deadlines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from polling import poll_until, slots_as_cores
from taskfiles import append as _append
from taskfiles import wait_flag as _wait_flag

import taskmill as tm

DEADLINE = 60.0  # seconds any single wait may take on a loaded 2-core machine

NO_RETRY = tm.RetryPolicy.none()
FAST_RETRY = tm.RetryPolicy.constant(max_retries=2, delay=0.0)


# --------------------------------------------------------------------------- task functions (module level)

basic = tm.Domain("basic", state={"name": "basic-state", "only_domain": 7})
solo = tm.Domain("solo", max_concurrency=1)
other = tm.Domain("other")


def _bump(path: str) -> int:
    n = int(Path(path).read_text()) if os.path.exists(path) else 0
    Path(path).write_text(str(n + 1))
    return n + 1


@basic.task
def add(ctx: tm.TaskContext, a: int, b: int) -> dict:
    return {"sum": a + b, "task_id": ctx.task_id}


@basic.task
def hold(ctx: tm.TaskContext, flag: str, progress: float | None = None, log: str | None = None) -> str:
    """Run until ``flag`` exists (or the task is cancelled)."""
    if progress is not None:
        ctx.progress(progress, "holding")
    if log:
        _append(log, f"start {ctx.task_id}")
    out = _wait_flag(ctx, flag)
    if log:
        _append(log, f"end {ctx.task_id} {out}")
    return out


@basic.task
def work(ctx: tm.TaskContext, x: int, log: str | None = None) -> int:
    if log:
        _append(log, str(x))
    return x * 10


@basic.task(retry=FAST_RETRY)
def flaky(ctx: tm.TaskContext, counter: str, fails: int, exc: str = "retryable") -> dict:
    n = _bump(counter)
    if n <= fails:
        if exc == "value":
            raise ValueError(f"attempt {n} failed")
        raise tm.Retryable(f"attempt {n} failed")
    return {"attempts": n, "retry_count": ctx.record.retry_count}


@basic.task(retry=tm.RetryPolicy.constant(max_retries=3, delay=0.0))
def permanent(ctx: tm.TaskContext, counter: str) -> None:
    _bump(counter)
    raise tm.Permanent("bad input, never retry")


@basic.task
def sleeper(ctx: tm.TaskContext, seconds: float, marker: str | None = None) -> str:
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


@basic.task
def obey_cancel(ctx: tm.TaskContext, started: str, saw_cancel: str) -> str:
    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + DEADLINE
    while not ctx.cancelled:
        if time.monotonic() > deadline:
            raise tm.Permanent("never cancelled")
        time.sleep(0.01)
    Path(saw_cancel).write_text("yes")
    return "stopped"


@basic.task
def io_task(ctx: tm.TaskContext, n: int, read: int, write: int) -> int:
    ctx.record_read_bytes(read)
    ctx.record_write_bytes(write)
    time.sleep(0.02)  # a measurable duration for throughput
    return n


@basic.task
def state_task(ctx: tm.TaskContext) -> dict:
    try:
        ctx.state("missing")
        missing = "no KeyError"
    except KeyError:
        missing = "KeyError"
    return {
        "name": ctx.state("name"),  # domain shadows global
        "only_domain": ctx.state("only_domain"),
        "only_global": ctx.state("only_global"),
        "default": ctx.state("missing", "dflt"),
        "missing": missing,
    }


def _square(x: int) -> int:
    return x * x


@basic.task(retry=NO_RETRY)
def uses_processes(ctx: tm.TaskContext, how: str, n: int) -> int:
    """CPU-heavy tasks often fan out to processes of their own."""
    if how == "subprocess":
        out = subprocess.run([sys.executable, "-c", f"print(sum(x * x for x in range({n})))"],
                             check=False, capture_output=True, text=True, timeout=DEADLINE)
        return int(out.stdout)
    if how == "pool":
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(2) as pool:
            return sum(pool.map(_square, range(n)))
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as ex:
        return sum(ex.map(_square, range(n)))


@basic.task
def pid_task(ctx: tm.TaskContext) -> int:
    return os.getpid()


@solo.task
def solo_hold(ctx: tm.TaskContext, flag: str, log: str | None = None) -> str:
    if log:
        _append(log, "start")
    return _wait_flag(ctx, flag)


@solo.task
def solo_work(ctx: tm.TaskContext, x: int, log: str | None = None) -> int:
    if log:
        _append(log, f"{x}")
    return x


@solo.task
def interval(ctx: tm.TaskContext, n: int, log: str, flag: str) -> int:
    start = time.monotonic()
    _wait_flag(ctx, flag)
    time.sleep(0.02)
    _append(log, json.dumps([n, start, time.monotonic()]))
    return n


@other.task
def other_work(ctx: tm.TaskContext, x: int, log: str | None = None) -> int:
    if log:
        _append(log, str(x))
    return x + 1


ALL = [basic, solo, other]


def sched(store: str, domains: list[tm.Domain] | None = None, **kw: Any) -> tm.Scheduler:
    kw.setdefault("max_concurrency", 2)
    kw.setdefault("capacity", slots_as_cores(kw["max_concurrency"]))
    return tm.Scheduler(store_path=store, domains=domains if domains is not None else ALL, **kw)


def wait_running(s: tm.Scheduler, task_id: int, timeout: float = DEADLINE) -> None:
    poll_until(lambda: any(r.id == task_id for r in s.active_tasks()), timeout, what=f"task {task_id} running")


def history_rows(s: tm.Scheduler, task_id: int) -> list[dict]:
    return s.sql("SELECT status, retry_count, result, last_error FROM task_history WHERE id = ? ORDER BY completed_at",
                 [task_id])


# --------------------------------------------------------------------------- results


def test_result_is_stored_and_returned_by_wait(store_path: str) -> None:
    with sched(store_path) as s:
        h = s.domain(basic)
        out = h.submit(add, a=2, b=3)
        assert isinstance(out, tm.Inserted) and out.id == out.task_id and out.kind == "inserted"
        rec = s.wait(out.id, timeout=DEADLINE)
        assert isinstance(rec, tm.TaskHistoryRecord)
        assert rec.status == tm.HistoryStatus.COMPLETED
        assert rec.id == out.id and rec.task_type == "basic::add" and rec.domain == "basic"
        assert rec.result == {"sum": 5, "task_id": out.id}
        assert rec.payload == {"a": 2, "b": 3}
        assert rec.last_error is None and rec.retry_count == 0
        assert rec.label == "basic::add" and rec.priority == tm.Priority.NORMAL
        assert rec.started_at is not None and rec.completed_at >= rec.started_at
        # a second wait on a finished task answers from history at once
        assert s.wait(out.id, timeout=DEADLINE) == rec
        assert rec.to_dict()["status"] == "completed"
        # the history row is in the store
        rows = history_rows(s, out.id)
        assert [r["status"] for r in rows] == ["completed"]
        assert rows[0]["result"] == {"sum": 5, "task_id": out.id}  # (JSON columns come back decoded)
        assert s.sql("SELECT count(*) AS n FROM tasks") == [{"n": 0}]


def test_wait_errors(store_path: str, tmp_path: Path) -> None:
    with sched(store_path) as s:
        h = s.domain(basic)
        with pytest.raises(tm.TaskNotFound):
            s.wait(424242, timeout=5)
        out = h.submit(hold, flag=str(tmp_path / "flag"))
        t0 = time.monotonic()
        with pytest.raises(tm.WaitTimeout):
            s.wait(out.id, timeout=0.3)
        with pytest.raises(tm.WaitTimeout):
            s.wait_idle(timeout=0.3)
        assert time.monotonic() - t0 < 30
        (tmp_path / "flag").touch()
        assert s.wait(out.id, timeout=DEADLINE).result == "released"
        s.wait_idle(timeout=DEADLINE)


def test_wait_idle_with_progress_bar(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path) as s:
        h = s.domain(basic)
        h.submit_batch([work.call(x=i) for i in range(20)])
        s.wait_idle(timeout=DEADLINE, progress=True)
        assert s.snapshot().pending_count == 0
        out = h.submit(hold, flag=flag)
        t0 = time.monotonic()
        with pytest.raises(tm.WaitTimeout):
            s.wait_idle(timeout=0.5, progress=True)
        assert time.monotonic() - t0 < 30
        Path(flag).touch()
        s.wait_idle(timeout=DEADLINE, progress=True)
        assert s.wait(out.id, timeout=5).status == "completed"
        assert s.sql("SELECT count(*) AS n FROM task_history") == [{"n": 21}]


# --------------------------------------------------------------------------- submission outcomes (F4)


def test_duplicate_and_upgrade_while_pending(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path) as s:
        h = s.domain(solo)
        blocker = h.submit(solo_hold, flag=flag)
        wait_running(s, blocker.id)
        first = h.submit(solo_work, x=1)
        assert isinstance(first, tm.Inserted)
        again = h.submit(solo_work, x=1)
        assert again == tm.Duplicate(existing_id=first.id) and again.id is None
        # same or lower urgency: still a plain duplicate
        assert h.submit(solo_work.options(priority=tm.Priority.IDLE), x=1) == tm.Duplicate(existing_id=first.id)
        up = h.submit(solo_work.options(priority=tm.Priority.HIGH), x=1)
        assert up == tm.Upgraded(task_id=first.id) and up.id == first.id
        rec = s.store.task_by_id(first.id)
        assert rec is not None and rec.priority == tm.Priority.HIGH and rec.status == tm.TaskStatus.PENDING
        assert s.store.pending_count() == 1
        # a different payload is a different key
        assert isinstance(h.submit(solo_work, x=2), tm.Inserted)
        Path(flag).touch()
        assert s.wait(first.id, timeout=DEADLINE).status == "completed"
        s.wait_idle(timeout=DEADLINE)
        # one execution only, with the upgraded priority
        rows = s.sql("SELECT priority FROM task_history WHERE id = ?", [first.id])
        assert rows == [{"priority": tm.Priority.HIGH}]
        # the key is free again: a new submission inserts
        assert isinstance(h.submit(solo_work, x=1), tm.Inserted)
        s.wait_idle(timeout=DEADLINE)


def test_requeued_when_duplicate_is_running(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    log = str(tmp_path / "log")
    with sched(store_path) as s:
        h = s.domain(basic)
        out = h.submit(hold, flag=flag, log=log)
        wait_running(s, out.id)
        again = h.submit(hold, flag=flag, log=log)
        assert again == tm.Requeued(task_id=out.id)
        # a third submission while the re-run is already marked changes nothing
        assert h.submit(hold, flag=flag, log=log) == tm.Duplicate(existing_id=out.id)
        rec = s.store.task_by_id(out.id)
        assert rec is not None and rec.requeue
        Path(flag).touch()
        final = s.wait(out.id, timeout=DEADLINE)
        assert final.status == "completed"
        s.wait_idle(timeout=DEADLINE)
        rows = history_rows(s, out.id)
        assert [r["status"] for r in rows] == ["completed", "completed"]
        starts = [ln for ln in Path(log).read_text().splitlines() if ln.startswith("start")]
        assert starts == [f"start {out.id}"] * 2
        assert s.store.task_by_id(out.id) is None
        assert len(s.store.history_by_key(final.key)) == 2


def test_supersede_pending_and_running(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path) as s:
        h = s.domain(solo)
        blocker = h.submit(solo_hold, flag=flag)
        wait_running(s, blocker.id)
        old = h.submit(solo_work, x=5)
        new = h.submit(solo_work.options(duplicate="supersede"), x=5)
        assert isinstance(new, tm.Superseded)
        assert new.replaced_id == old.id and new.new_id != old.id and new.id == new.new_id
        rec = s.wait(old.id, timeout=DEADLINE)
        assert rec.status == tm.HistoryStatus.SUPERSEDED
        assert s.store.task_by_id(new.new_id) is not None
        # superseding the *running* blocker: it sees ctx.cancelled and its row is superseded
        new_blocker = h.submit(solo_hold.options(duplicate=tm.DuplicateStrategy.SUPERSEDE), flag=flag)
        assert isinstance(new_blocker, tm.Superseded) and new_blocker.replaced_id == blocker.id
        assert s.wait(blocker.id, timeout=DEADLINE).status == "superseded"
        Path(flag).touch()
        assert s.wait(new.new_id, timeout=DEADLINE).status == "completed"
        assert s.wait(new_blocker.new_id, timeout=DEADLINE).status == "completed"
        s.wait_idle(timeout=DEADLINE)
        assert [r["status"] for r in history_rows(s, old.id)] == ["superseded"]
        assert [r["status"] for r in history_rows(s, blocker.id)] == ["superseded"]


def test_reject_strategy(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path) as s:
        h = s.domain(solo)
        blocker = h.submit(solo_hold, flag=flag)
        wait_running(s, blocker.id)
        first = h.submit(solo_work, x=9)
        before = s.sql("SELECT count(*) AS n FROM tasks")
        rej = h.submit(solo_work.options(duplicate="reject", priority=0), x=9)
        assert rej == tm.Rejected(existing_id=first.id) and rej.id is None
        assert s.sql("SELECT count(*) AS n FROM tasks") == before
        assert s.store.task_by_id(first.id).priority == tm.Priority.NORMAL  # not upgraded either
        # rejecting against a running task too
        assert isinstance(h.submit(solo_hold.options(duplicate="reject"), flag=flag), tm.Rejected)
        Path(flag).touch()
        s.wait_idle(timeout=DEADLINE)
        assert [r["status"] for r in history_rows(s, first.id)] == ["completed"]
        assert [r["status"] for r in history_rows(s, blocker.id)] == ["completed"]


def test_submit_batch_dedups_inside_the_batch(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path) as s:
        h = s.domain(solo)
        blocker = h.submit(solo_hold, flag=flag)
        wait_running(s, blocker.id)
        batch = h.submit_batch([
            solo_work.call(x=1),
            solo_work.call(x=2),
            solo_work.call(x=1),
            solo_work.options(priority=tm.Priority.HIGH).call(x=2),
            solo_work.options(duplicate="reject").call(x=1),
            solo_work.options(duplicate="supersede").call(x=3),
            solo_work.call(x=3),
        ])
        assert isinstance(batch, tm.BatchOutcome) and len(batch) == 7
        o = list(batch)
        id1, id2 = o[0].id, o[1].id
        assert isinstance(o[0], tm.Inserted) and isinstance(o[1], tm.Inserted) and id1 != id2
        assert o[2] == tm.Duplicate(existing_id=id1)
        assert o[3] == tm.Upgraded(task_id=id2)
        assert o[4] == tm.Rejected(existing_id=id1)
        assert isinstance(o[5], tm.Inserted)  # nothing to supersede: plain insert
        assert o[6] == tm.Duplicate(existing_id=o[5].id)
        assert batch.inserted == [id1, id2, o[5].id]
        assert batch.upgraded == [id2]
        assert batch.duplicates == [2, 6]
        assert batch.rejected == [4]
        assert batch.ids == [id1, id2, None, id2, None, o[5].id, None]
        assert s.store.pending_count() == 3
        assert h.submit_batch([]).outcomes == ()
        Path(flag).touch()
        s.wait_idle(timeout=DEADLINE)
        assert s.sql("SELECT count(*) AS n FROM task_history WHERE task_type = 'solo::solo_work'") == [{"n": 3}]


def test_concurrent_submitters_dedup_across_threads(store_path: str, tmp_path: Path) -> None:
    """Each host thread has its own connection; dedup still yields exactly one insert per key."""
    import threading

    flag = str(tmp_path / "flag")
    with sched(store_path) as s:
        h = s.domain(solo)
        blocker = h.submit(solo_hold, flag=flag)
        wait_running(s, blocker.id)
        results: list[list[tuple[int, Any]]] = [[] for _ in range(4)]
        errors: list[BaseException] = []

        def run(k: int) -> None:
            try:
                for i in range(40):
                    results[k].append((i, h.submit(solo_work, x=i)))  # the same 40 keys in every thread
                    results[k].append((1000 + 100 * k + i, h.submit(solo_work, x=1000 + 100 * k + i)))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        assert not errors and all(not t.is_alive() for t in threads)
        by_x: dict[int, list[Any]] = {}
        for lst in results:
            for x, outcome in lst:
                by_x.setdefault(x, []).append(outcome)
        for x in range(40):
            ins = [o for o in by_x[x] if isinstance(o, tm.Inserted)]
            assert len(ins) == 1, by_x[x]
            assert all(o == tm.Duplicate(existing_id=ins[0].id) for o in by_x[x] if o is not ins[0])
        distinct = [o for x, outs in by_x.items() if x >= 1000 for o in outs]
        assert len(distinct) == 160 and all(isinstance(o, tm.Inserted) for o in distinct)
        all_ids = [o.id for outs in by_x.values() for o in outs if isinstance(o, tm.Inserted)]
        assert len(all_ids) == len(set(all_ids)) == 200
        Path(flag).touch()
        s.wait_idle(timeout=DEADLINE)
        assert s.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM task_history WHERE status = 'completed'") == [
            {"n": 201, "d": 201}]


def test_dispatch_order_priority_then_fifo(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    log = str(tmp_path / "order")
    # REALTIME tasks below would preempt the blocker (F12, tests/e2e/test_preemption.py): not this test's subject
    with sched(store_path, max_concurrency=1, preempt_priority=None) as s:
        h = s.domain(basic)
        blocker = h.submit(hold, flag=flag)
        wait_running(s, blocker.id)
        plan = [(1, 128), (2, 64), (3, 128), (4, 0), (5, 64), (6, 255), (7, 0), (8, 128)]
        for x, prio in plan[:4]:
            h.submit(work.options(priority=prio), x=x, log=log)
        h.submit_batch([work.options(priority=prio).call(x=x, log=log) for x, prio in plan[4:]])
        # another domain's tasks take their place in the same global order
        ho = s.domain(other)
        cross = [(9, 64), (10, 128), (11, 0)]
        for x, prio in cross:
            ho.submit(other_work.options(priority=prio), x=x, log=log)
        Path(flag).touch()
        s.wait_idle(timeout=DEADLINE)
        order = [int(v) for v in Path(log).read_text().split()]
        expected = [x for x, _ in sorted(plan + cross, key=lambda p: p[1])]  # stable sort: FIFO within a level
        assert order == expected == [4, 7, 11, 2, 5, 9, 1, 3, 8, 10, 6]


def test_domain_cap_is_respected_and_does_not_block_other_domains(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    log = str(tmp_path / "intervals")
    capped = tm.Domain("capped", max_concurrency=2)
    capped.task(name="interval")(interval.fn)
    with sched(store_path, domains=[capped, other], max_concurrency=4) as s:
        h = s.domain(capped)
        ids = [h.submit(capped.tasks["interval"], n=n, log=log, flag=flag).id for n in range(6)]
        poll_until(lambda: len(h.active_tasks()) == 2, DEADLINE, what="two capped tasks running")
        # the free workers still serve another domain: its task completes while the cap holds
        o = s.domain(other).submit(other_work, x=1)
        assert s.wait(o.id, timeout=DEADLINE).result == 2
        # that dispatch pass would have started a third capped task if the cap leaked
        snap = h.snapshot()
        assert len(snap.running) == 2 and snap.pending_count == 4
        assert s.snapshot().running_count == 2
        Path(flag).touch()
        s.wait_idle(timeout=DEADLINE)
        spans = [json.loads(ln) for ln in Path(log).read_text().splitlines()]
        assert sorted(n for n, _, _ in spans) == list(range(6))
        events = sorted([(t0, 1) for _, t0, _ in spans] + [(t1, -1) for _, _, t1 in spans], key=lambda e: (e[0], e[1]))
        live = peak = 0
        for _, d in events:
            live += d
            peak = max(peak, live)
        assert peak <= 2, f"{peak} capped tasks overlapped"
        assert all(r["status"] == "completed" for i in ids for r in history_rows(s, i))


# --------------------------------------------------------------------------- retries, failures, timeouts (F9)


@pytest.mark.parametrize("exc", ["retryable", "value"])
def test_retries_then_success(store_path: str, tmp_path: Path, exc: str) -> None:
    counter = str(tmp_path / "count")
    with sched(store_path) as s:
        out = s.domain(basic).submit(flaky, counter=counter, fails=2, exc=exc)
        rec = s.wait(out.id, timeout=DEADLINE)
        assert rec.status == "completed", rec.last_error
        assert rec.retry_count == 2
        assert rec.result == {"attempts": 3, "retry_count": 2}
        assert Path(counter).read_text() == "3"
        assert len(history_rows(s, out.id)) == 1  # retries write no history rows


def test_exhausted_retries_dead_letter_and_retry_dead_letter(store_path: str, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    with sched(store_path) as s:
        h = s.domain(basic)
        out = h.submit(flaky, counter=counter, fails=5)
        rec = s.wait(out.id, timeout=DEADLINE)
        assert rec.status == tm.HistoryStatus.DEAD_LETTER
        assert rec.retry_count == 2
        assert "attempt 3 failed" in rec.last_error and "Retryable" in rec.last_error
        assert Path(counter).read_text() == "3"
        assert [r.id for r in h.dead_letter_tasks()] == [out.id]
        assert out.id in [r.id for r in s.store.failed_tasks()]
        # the key is free: resubmitting from the dead letter inserts a fresh task
        Path(counter).write_text("10")  # the next attempt succeeds
        again = s.retry_dead_letter(out.id)
        assert isinstance(again, tm.Inserted) and again.id != out.id
        rec2 = s.wait(again.id, timeout=DEADLINE)
        assert rec2.status == "completed" and rec2.retry_count == 0
        assert rec2.key == rec.key and rec2.payload == rec.payload
        assert [r["status"] for r in history_rows(s, out.id)] == ["dead_letter"]
        with pytest.raises(tm.TaskNotFound):
            s.retry_dead_letter(again.id)  # completed, not dead-lettered
        with pytest.raises(tm.TaskNotFound):
            s.domain(other).retry_dead_letter(out.id)  # wrong domain
        assert isinstance(h.retry_dead_letter(out.id), tm.Inserted)
        s.wait_idle(timeout=DEADLINE)


def test_permanent_fails_without_retry(store_path: str, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    with sched(store_path) as s:
        out = s.domain(basic).submit(permanent, counter=counter)
        rec = s.wait(out.id, timeout=DEADLINE)
        assert rec.status == tm.HistoryStatus.FAILED
        assert rec.retry_count == 0
        assert "Permanent: bad input, never retry" in rec.last_error
        assert Path(counter).read_text() == "1"
        assert s.domain(basic).dead_letter_tasks() == []


def test_timeout_kills_and_retries_then_dead_letters(store_path: str, tmp_path: Path) -> None:
    marker = str(tmp_path / "pid")
    with sched(store_path, max_concurrency=1) as s:
        h = s.domain(basic)
        t0 = time.monotonic()
        out = h.submit(sleeper.options(timeout=0.5, retry=tm.RetryPolicy.constant(1, 0.0)), seconds=60, marker=marker)
        rec = s.wait(out.id, timeout=DEADLINE)
        assert time.monotonic() - t0 < 50  # nobody waited for the 60 s sleep
        assert rec.status == tm.HistoryStatus.DEAD_LETTER
        assert rec.retry_count == 1
        assert "timed out after 0.5s" in rec.last_error
        killed = int(Path(marker).read_text())
        poll_until(lambda: not _alive(killed), 10, what="the timed-out worker gone")
        # the pool replaced the worker
        ok = h.submit(pid_task)
        done = s.wait(ok.id, timeout=DEADLINE)
        assert done.status == "completed" and done.result != killed


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_configuration_precedence(store_path: str) -> None:
    """submission > task type > domain > scheduler default, for priority, timeout and retry."""
    plain = tm.Domain("plain")
    tuned = tm.Domain("tuned", default_priority=200, timeout=0.5, retry=tm.RetryPolicy.constant(1, 0.0))
    for dom in (plain, tuned):
        dom.task(name="nap")(sleeper.fn)
        dom.task(name="typed", priority=30, timeout=30.0, retry=tm.RetryPolicy.none())(sleeper.fn)
    with sched(store_path, domains=[plain, tuned], default_priority=tm.Priority.HIGH, default_timeout=0.5,
               default_retry=tm.RetryPolicy.none()) as s:
        hp, ht = s.domain(plain), s.domain(tuned)
        cases = {
            "scheduler": hp.submit(plain.tasks["nap"], seconds=30),
            "domain": ht.submit(tuned.tasks["nap"], seconds=30),
            "type": ht.submit(tuned.tasks["typed"], seconds=0.8),
            "submission": ht.submit(tuned.tasks["typed"].options(priority=7, timeout=0.5,
                                                                 retry=tm.RetryPolicy.constant(2, 0.0)), seconds=30),
        }
        got = {k: s.wait(o.id, timeout=DEADLINE) for k, o in cases.items()}
        assert (got["scheduler"].priority, got["scheduler"].status, got["scheduler"].retry_count) == (
            tm.Priority.HIGH, "dead_letter", 0)
        assert "timed out after 0.5s" in got["scheduler"].last_error
        assert (got["domain"].priority, got["domain"].status, got["domain"].retry_count) == (200, "dead_letter", 1)
        assert "timed out after 0.5s" in got["domain"].last_error
        assert (got["type"].priority, got["type"].status, got["type"].retry_count) == (30, "completed", 0)
        assert (got["submission"].priority, got["submission"].status, got["submission"].retry_count) == (
            7, "dead_letter", 2)
        assert "timed out after 0.5s" in got["submission"].last_error


def test_two_schedulers_in_one_host(tmp_path: Path) -> None:
    with sched(str(tmp_path / "a.duckdb")) as a, sched(str(tmp_path / "b.duckdb")) as b:
        assert a.coordinator_pid != b.coordinator_pid and a.shm_name != b.shm_name
        ra = a.domain(basic).submit(add, a=1, b=2)
        rb = b.domain(basic).submit(add, a=1, b=2)
        assert ra.id == rb.id == 1  # separate stores, separate id spaces
        assert a.wait(ra.id, timeout=DEADLINE).result["sum"] == 3
        assert b.wait(rb.id, timeout=DEADLINE).result["sum"] == 3
        assert a.sql("SELECT count(*) AS n FROM task_history") == b.sql("SELECT count(*) AS n FROM task_history")


# --------------------------------------------------------------------------- cancellation (F23 subset)


def test_cancel_pending(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    log = str(tmp_path / "log")
    with sched(store_path) as s:
        h = s.domain(solo)
        blocker = h.submit(solo_hold, flag=flag)
        wait_running(s, blocker.id)
        out = h.submit(solo_work, x=1, log=log)
        assert h.cancel(out.id) is True
        assert h.cancel(out.id) is False  # already gone
        assert h.cancel(987654) is False
        assert s.domain(other).cancel(blocker.id) is False  # not that domain's task
        rec = s.wait(out.id, timeout=DEADLINE)
        assert rec.status == tm.HistoryStatus.CANCELLED
        assert s.store.task_by_id(out.id) is None
        # the key is free again
        assert isinstance(h.submit(solo_work, x=1, log=log), tm.Inserted)
        Path(flag).touch()
        s.wait_idle(timeout=DEADLINE)
        assert Path(log).read_text().split() == ["1"]  # the cancelled one never ran
        assert [r["status"] for r in history_rows(s, out.id)] == ["cancelled"]


def test_cancel_running_cooperative(store_path: str, tmp_path: Path) -> None:
    started, saw = str(tmp_path / "started"), str(tmp_path / "saw")
    with sched(store_path, max_concurrency=1) as s:
        h = s.domain(basic)
        out = h.submit(obey_cancel, started=started, saw_cancel=saw)
        poll_until(lambda: os.path.exists(started), DEADLINE, what="task started")
        wait_running(s, out.id)
        worker = int(Path(started).read_text())
        assert h.cancel(out.id) is True
        rec = s.wait(out.id, timeout=DEADLINE)
        assert rec.status == tm.HistoryStatus.CANCELLED
        poll_until(lambda: os.path.exists(saw), DEADLINE, what="ctx.cancelled seen by the task")
        # the task returned on its own: the worker survives and runs the next task
        nxt = h.submit(pid_task)
        assert s.wait(nxt.id, timeout=DEADLINE).result == worker
        s.wait_idle(timeout=DEADLINE)
        assert [r["status"] for r in history_rows(s, out.id)] == ["cancelled"]


def test_cancel_running_that_ignores_it_is_killed(store_path: str, tmp_path: Path) -> None:
    marker = str(tmp_path / "pid")
    with sched(store_path, max_concurrency=1) as s:
        h = s.domain(basic)
        out = h.submit(sleeper, seconds=90, marker=marker)
        poll_until(lambda: os.path.exists(marker) and Path(marker).read_text(), DEADLINE, what="task started")
        wait_running(s, out.id)
        worker = int(Path(marker).read_text())
        assert h.cancel(out.id) is True
        assert s.wait(out.id, timeout=DEADLINE).status == "cancelled"
        assert out.id not in [r.id for r in s.active_tasks()]
        poll_until(lambda: not _alive(worker), 30, what="the worker killed after the cancel grace period")
        nxt = h.submit(pid_task)
        rec = s.wait(nxt.id, timeout=DEADLINE)
        assert rec.status == "completed" and rec.result != worker
        assert [r["status"] for r in history_rows(s, out.id)] == ["cancelled"]


# --------------------------------------------------------------------------- functions: closures, lambdas, __main__


def test_closures_and_lambdas(store_path: str) -> None:
    offset = 1000
    dyn = tm.Domain("dyn")

    @dyn.task
    def closure(ctx: tm.TaskContext, x: int) -> int:
        return x + offset

    lam = dyn.task(name="lam")(lambda ctx, x: x * 2)

    def make(k: int) -> Any:
        def inner(ctx: tm.TaskContext, x: int) -> list:
            return [k, x]
        return inner

    made = dyn.task(name="made")(make(7))
    with sched(store_path, domains=[dyn]) as s:
        h = s.domain("dyn")
        a = h.submit(closure, x=1)
        b = h.submit(lam, x=21)
        c = h.submit(made, x=3)
        assert s.wait(a.id, timeout=DEADLINE).result == 1001
        assert s.wait(b.id, timeout=DEADLINE).result == 42
        assert s.wait(c.id, timeout=DEADLINE).result == [7, 3]
        assert s.wait(b.id, timeout=DEADLINE).task_type == "dyn::lam"


MAIN_SCRIPT = """
import json, sys
import taskmill as tm

d = tm.Domain("script")
FACTOR = 3

@d.task
def triple(ctx, x):
    return x * FACTOR

def helper(v):
    return v + 1

@d.task(retry=tm.RetryPolicy.constant(1, 0.0))
def uses_helper(ctx, x):
    if ctx.record.retry_count == 0:
        raise RuntimeError("first attempt fails")
    return helper(x)

square = d.task(name="square")(lambda ctx, x: x * x)

if __name__ == "__main__":
    with tm.Scheduler(store_path=sys.argv[1], domains=[d], max_concurrency=2) as s:
        h = s.domain(d)
        ids = [h.submit(triple, x=4).id, h.submit(uses_helper, x=9).id, h.submit(square, x=5).id]
        out = [s.wait(i, timeout=60) for i in ids]
        print(json.dumps([[r.status.value, r.result, r.retry_count] for r in out]))
"""


def test_functions_defined_in_main(tmp_path: Path) -> None:
    script = tmp_path / "main_script.py"
    script.write_text(textwrap.dedent(MAIN_SCRIPT))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "s.duckdb")], cwd=tmp_path,
                          check=False, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    assert json.loads(lines[-1]) == [["completed", 12, 0], ["completed", 10, 1], ["completed", 25, 0]]


@pytest.mark.parametrize("how", [
    "subprocess",
    "pool",
    "executor",
])
def test_task_can_start_processes(store_path: str, how: str) -> None:
    with sched(store_path, max_concurrency=1) as s:
        rec = s.wait(s.domain(basic).submit(uses_processes, how=how, n=10).id, timeout=DEADLINE)
        assert rec.status == "completed", rec.last_error
        assert rec.result == sum(x * x for x in range(10))


# --------------------------------------------------------------------------- queries (F24, F25 read side)


def test_query_api(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path, max_concurrency=1) as s:
        h = s.domain(basic)
        st = s.store
        io_ids = [h.submit(io_task, n=n, read=1000 * (n + 1), write=100).id for n in range(3)]
        failed = h.submit(permanent, counter=str(tmp_path / "c"))
        s.wait_idle(timeout=DEADLINE)
        blocker = h.submit(hold, flag=flag)
        wait_running(s, blocker.id)
        p1 = h.submit(work.options(priority=tm.Priority.BACKGROUND), x=5)
        p2 = h.submit(work.options(priority=tm.Priority.HIGH, key="explicit-key"), x=6)
        p3 = h.submit(add, a=1, b=1)

        running = st.running_tasks()
        assert [r.id for r in running] == [blocker.id] and running[0].status == tm.TaskStatus.RUNNING
        assert st.running_count() == 1
        assert [r.id for r in st.pending_tasks(10)] == [p2.id, p3.id, p1.id]  # by priority, then age
        assert [r.id for r in st.pending_tasks(1)] == [p2.id]
        assert st.pending_count() == 3
        assert [r.id for r in st.pending_by_type("basic::work")] == [p2.id, p1.id]
        assert st.pending_by_type("basic::nope") == []

        rec = st.task_by_id(p1.id)
        assert rec.status == tm.TaskStatus.PENDING and rec.payload == {"x": 5} and rec.task_type == "basic::work"
        assert rec.priority == tm.Priority.BACKGROUND and rec.domain == "basic"
        assert st.task_by_id(10**9) is None
        assert s.task(p1.id) == rec
        assert st.task_by_key(rec.key).id == p1.id
        assert st.task_by_key("0" * 64) is None
        assert st.task_by_id(p2.id).label == "explicit-key"

        hist = st.history(10)
        assert {r.id for r in hist} == set(io_ids) | {failed.id}
        assert [r.completed_at for r in hist] == sorted((r.completed_at for r in hist), reverse=True)
        assert st.history(2, 1) == hist[1:3]
        assert st.history(0) == []
        by_type = st.history_by_type("basic::io_task")
        assert sorted(r.id for r in by_type) == sorted(io_ids)
        assert len(st.history_by_type("basic::io_task", 2)) == 2
        first = s.wait(io_ids[0], timeout=5)
        assert [r.id for r in st.history_by_key(first.key)] == [io_ids[0]]
        assert [(r.id, r.status) for r in st.failed_tasks()] == [(failed.id, "failed")]
        assert "never retry" in st.failed_tasks(1)[0].last_error

        stats = st.history_stats("basic::io_task")
        assert isinstance(stats, tm.TypeStats)
        assert stats.count == 3 and stats.failure_rate == 0.0
        assert stats.avg_read_bytes == pytest.approx(2000.0) and stats.avg_write_bytes == pytest.approx(100.0)
        assert stats.avg_duration_ms > 0
        assert st.history_stats("basic::permanent").failure_rate == 1.0
        assert st.history_stats("basic::nothing").count == 0
        r_tp, w_tp = st.avg_throughput("basic::io_task")
        exp_r = sum(r.actual_io.disk_read * 1000.0 / r.duration_ms for r in by_type) / 3
        exp_w = sum(r.actual_io.disk_write * 1000.0 / r.duration_ms for r in by_type) / 3
        assert r_tp == pytest.approx(exp_r) and w_tp == pytest.approx(exp_w) and r_tp > w_tp > 0
        assert all(r.actual_io.disk_read == 1000 * (r.result + 1) for r in by_type)

        # unified lookup: explicit key, canonical payload JSON, typed
        look = st.task_lookup("basic::work", "explicit-key")
        assert look.active is not None and look.active.id == p2.id and not look.not_found
        look = st.task_lookup("basic::work", '{"x":5}')
        assert look.active is not None and look.active.id == p1.id
        look = st.task_lookup("basic::io_task", json.dumps({"n": 1, "read": 2000, "write": 100}, sort_keys=True,
                                                           separators=(",", ":")))
        assert look.active is None and look.history is not None and look.history.id == io_ids[1]
        assert st.task_lookup("basic::work", '{"x":999}').not_found
        assert st.lookup_typed(work.call(x=5)).active.id == p1.id
        assert st.lookup_typed(add.call(a=1, b=1)).active.id == p3.id

        # read-only SQL with parameters and JSON access
        rows = s.sql("SELECT id, payload->>'x' AS x FROM tasks WHERE task_type = ? ORDER BY id", ["basic::work"])
        assert rows == [{"id": p1.id, "x": "5"}, {"id": p2.id, "x": "6"}]
        rows = s.sql("SELECT status, count(*) AS n FROM task_history GROUP BY 1 ORDER BY 1")
        assert rows == [{"status": "completed", "n": 3}, {"status": "failed", "n": 1}]

        # pruning
        assert st.prune_history_by_age(1) == 0
        assert st.prune_history_by_count(2) == 2
        assert len(st.history(100)) == 2
        assert st.prune_history_by_age(0) == 2
        assert st.history(100) == []

        Path(flag).touch()
        s.wait_idle(timeout=DEADLINE)
        assert st.pending_count() == 0 and st.running_tasks() == []


def test_snapshot_and_active_tasks(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path, max_concurrency=2) as s:
        h = s.domain(basic)
        blocker = h.submit(hold, flag=flag, progress=0.5)
        wait_running(s, blocker.id)
        # a task blocked by its domain cap stays pending
        so = s.domain(solo)
        solo_blocker = so.submit(solo_hold, flag=flag)
        wait_running(s, solo_blocker.id)
        queued = so.submit(solo_work, x=1)

        def progress_published() -> tm.ModuleSnapshot | None:
            sn = h.snapshot()
            return sn if sn.progress and sn.progress[0].reported_percent == 0.5 else None

        snap = poll_until(progress_published, DEADLINE, what="progress published")
        assert isinstance(snap, tm.ModuleSnapshot) and snap.domain == "basic"
        assert [r.id for r in snap.running] == [blocker.id] and snap.pending_count == 0
        assert snap.progress[0].header.task_id == blocker.id and snap.progress[0].header.task_type == "basic::hold"
        assert snap.progress[0].percent == 0.5 and snap.progress[0].header.domain == "basic"

        g = s.snapshot()
        assert isinstance(g, tm.SchedulerSnapshot)
        assert g.running_count == 2 and sorted(r.id for r in g.running) == sorted([blocker.id, solo_blocker.id])
        assert g.pending_count == 1 and g.max_concurrency == 2 and g.workers == 2
        assert g.paused_count == 0 and g.blocked_count == 0
        assert sorted(r.id for r in s.active_tasks()) == sorted([blocker.id, solo_blocker.id])
        assert [r.id for r in so.active_tasks()] == [solo_blocker.id]
        assert so.snapshot().pending_count == 1
        assert s.domain(other).snapshot().running == []
        assert g.to_dict()["running_count"] == 2

        Path(flag).touch()
        assert s.wait(queued.id, timeout=DEADLINE).status == "completed"
        s.wait_idle(timeout=DEADLINE)
        end = s.snapshot()
        assert end.running_count == 0 and end.pending_count == 0 and s.active_tasks() == []


def test_ctx_state_domain_shadows_global(store_path: str) -> None:
    with sched(store_path, state={"name": "global-state", "only_global": [1, 2]}) as s:
        out = s.domain(basic).submit(state_task)
        rec = s.wait(out.id, timeout=DEADLINE)
        assert rec.status == "completed", rec.last_error
        assert rec.result == {"name": "basic-state", "only_domain": 7, "only_global": [1, 2], "default": "dflt",
                              "missing": "KeyError"}
