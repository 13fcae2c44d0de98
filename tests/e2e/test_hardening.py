"""Nothing a user or a task sends stops the coordinator; every call is bounded; nothing leaks.

Each test drives a real coordinator process, asserts the exact outcome, and
then shows the scheduler still works: a following task completes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pytest
from polling import poll_until

import taskmill as tm
import taskmill.channel
import taskmill.client

DEADLINE = 60.0

hard = tm.Domain("hard")


@hard.task
def ok(ctx: tm.TaskContext, x: int = 0) -> int:
    return x


@hard.task
def raise_retryable(ctx: tm.TaskContext, after: str) -> None:
    raise tm.Retryable("try later", retry_after=float(after))


class SneakyRetryable(tm.Retryable):
    """A subclass that sets ``retry_after`` after the checks of ``Retryable.__init__``."""

    def __init__(self, after: float) -> None:
        super().__init__("sneaky")
        self.retry_after = after

    def __reduce__(self) -> Any:
        return (SneakyRetryable, (self.retry_after,))


@hard.task
def raise_sneaky(ctx: tm.TaskContext, after: str) -> None:
    raise SneakyRetryable(float(after))


@hard.task
def return_value(ctx: tm.TaskContext, kind: str) -> Any:
    if kind == "surrogate":
        return {"name": "a\udcffb"}
    if kind == "deep":
        value: Any = []
        for _ in range(100_000):
            value = [value]
        return value
    if kind == "nan":
        return float("nan")
    raise AssertionError(kind)


@hard.task
def raise_text(ctx: tm.TaskContext) -> None:
    raise tm.Permanent("bad bytes: \udcff and a NUL \x00 here")


@hard.task
def touch(ctx: tm.TaskContext, path: str) -> int:
    Path(path).write_text("x")
    return stat.S_IMODE(os.stat(path).st_mode)


@hard.task
def start_sleeper(ctx: tm.TaskContext, marker: str) -> str:
    child = subprocess.Popen(["sleep", "300"], start_new_session=False)
    Path(marker).write_text(str(child.pid))
    return "returned, leaving its child running"


def sched(store: str, **kw: Any) -> tm.Scheduler:
    kw.setdefault("max_concurrency", 1)
    return tm.Scheduler(store_path=store, domains=[hard], **kw)


def still_works(s: tm.Scheduler, x: int = 7) -> None:
    rec = s.wait(s.domain(hard).submit(ok, x=x).id, timeout=DEADLINE)
    assert rec.status == tm.HistoryStatus.COMPLETED and rec.result == x


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --------------------------------------------------------------------------- 1. poison tasks


def test_a_non_finite_retry_after_is_refused_at_its_source_and_the_store_survives_a_restart(store_path: str) -> None:
    with sched(store_path) as s:
        h = s.domain(hard)
        infinite = h.submit(raise_retryable.options(retry=tm.RetryPolicy.constant(1, 0.0)), after="inf")
        rec = s.wait(infinite.id, timeout=DEADLINE)
        # Retryable(retry_after=inf) raises ValueError inside the task: an ordinary retryable failure
        assert rec.status == tm.HistoryStatus.DEAD_LETTER
        assert "retry_after" in (rec.last_error or "") and "ValueError" in (rec.last_error or "")
        still_works(s)
    with sched(store_path) as s:  # a restart does not die on it
        still_works(s, 8)


def test_a_retry_after_that_slipped_past_the_checks_fails_that_task_only(store_path: str) -> None:
    with sched(store_path) as s:
        h = s.domain(hard)
        ids = [h.submit(raise_sneaky, after=v).id for v in ("inf", "1e15", "nan", "-5")]
        for tid in ids:
            rec = s.wait(tid, timeout=DEADLINE)
            assert rec.status == tm.HistoryStatus.FAILED, rec
            assert "retry_after" in (rec.last_error or "") and "not retried" in (rec.last_error or "")
        still_works(s)
    with sched(store_path) as s:
        assert s.store.pending_count() == 0
        still_works(s)


def test_an_absurd_backoff_is_refused_when_the_policy_is_built() -> None:
    with pytest.raises(ValueError, match="initial|max_delay"):
        tm.RetryPolicy.constant(3, 1e15)


@pytest.mark.parametrize("kind,fragment", [("surrogate", "UTF-8"), ("deep", "RecursionError"), ("nan", "JSON")])
def test_a_result_that_cannot_be_stored_fails_the_task(store_path: str, kind: str, fragment: str) -> None:
    with sched(store_path) as s:
        rec = s.wait(s.domain(hard).submit(return_value, kind=kind).id, timeout=DEADLINE)
        assert rec.status == tm.HistoryStatus.FAILED, rec  # failed (never retried), not dead_letter
        assert rec.retry_count == 0
        assert fragment in (rec.last_error or "")
        still_works(s)


def test_error_text_with_lone_surrogates_and_nul_is_stored_escaped(store_path: str) -> None:
    with sched(store_path) as s:
        rec = s.wait(s.domain(hard).submit(raise_text).id, timeout=DEADLINE)
        assert rec.status == tm.HistoryStatus.FAILED
        assert "\\udcff" in (rec.last_error or "") and "\x00" in (rec.last_error or "")
        still_works(s)


TASK_ROW = {
    "id": 0, "task_type": "'hard::ok'", "domain": "'hard'", "key": "'k'", "label": "'hard::ok'", "priority": 128,
    "status": "'pending'", "payload": "'{\"x\":1}'", "tags": "NULL", "group_key": "NULL",
    "created_at": "now()::TIMESTAMP", "run_after": "NULL", "started_at": "NULL", "retry_count": 0, "max_retries": 3,
    "retry_policy": "NULL", "last_error": "NULL", "timeout_s": "NULL", "cpus": 1.0, "memory": 0,
    "expected_read_bytes": 0, "expected_write_bytes": 0, "expected_net_rx_bytes": 0, "expected_net_tx_bytes": 0,
    "requeue": "false", "requeue_priority": "NULL", "parent_id": "NULL",
}


def insert_task_row(con: Any, **changes: Any) -> None:
    row = {**TASK_ROW, **changes}
    con.execute(f"INSERT INTO tasks ({', '.join(row)}) VALUES ({', '.join(str(v) for v in row.values())})")


def test_recovery_quarantines_a_row_it_cannot_interpret(store_path: str) -> None:
    with sched(store_path) as s:
        s.wait(s.domain(hard).submit(ok, x=1).id, timeout=DEADLINE)
    con = duckdb.connect(store_path)
    try:
        insert_task_row(con, id=101, key="'k101'", status="'bogus'")
        insert_task_row(con, id=102, key="'k102'", priority=999)
        insert_task_row(con, id=103, key="'k103'", retry_policy="'{\"kind\": \"nope\"}'")
        insert_task_row(con, id=104, key="'k104'", timeout_s="'NaN'::DOUBLE")
        insert_task_row(con, id=105, key="'k105'")
    finally:
        con.close()
    with sched(store_path) as s:
        failed = {r.id: r for r in s.store.failed_tasks(10)}
        for tid in (101, 102, 103, 104):
            assert tid in failed, sorted(failed)
            assert failed[tid].status == tm.HistoryStatus.FAILED
            assert "quarantined at recovery" in (failed[tid].last_error or "")
        assert s.wait(105, timeout=DEADLINE).result == 1  # the sound row beside them runs as usual
        assert s.store.pending_count() == 0
        still_works(s)


# --------------------------------------------------------------------------- 2. requests it cannot decode


class Color:
    """Defined in the test module: a value the coordinator must never build."""

    def __init__(self, name: str) -> None:
        self.name = name


def raw_client(s: tm.Scheduler) -> Any:
    return s._process._connect()  # an authenticated connection of its own, outside the per-thread pool


def test_a_request_with_a_foreign_object_is_answered_with_an_error(store_path: str) -> None:
    with sched(store_path) as s:
        from taskmill import protocol

        conn = raw_client(s)
        for msg in (protocol.Call("task_by_id", (Color("red"),)), protocol.Submit([("short",)]), Color("x"),
                    protocol.Call("history", ("x", None)), protocol.Wait("abc", "x")):
            conn.send(msg)
            assert conn.poll(DEADLINE)
            reply = conn.recv()
            assert isinstance(reply, protocol.ErrorReply), reply
        conn.send_bytes(b"\x80\x05garbage")
        assert conn.poll(DEADLINE)
        assert "cannot decode" in conn.recv().message
        conn.close()
        still_works(s)


# --------------------------------------------------------------------------- 4. sql() is safe by construction


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_text('/proc/self/environ')",
    "SELECT * FROM read_text('/dev/stdin')",
    "SELECT * FROM glob('/root/*')",
    "SELECT * FROM read_csv('/etc/hostname')",
])
def test_sql_has_no_access_to_files(store_path: str, query: str) -> None:
    with sched(store_path) as s:
        started = time.monotonic()
        with pytest.raises(tm.StoreError, match="(?i)disabled|permission"):
            s.sql(query)
        assert time.monotonic() - started < 10  # /dev/stdin would block forever if it were read
        still_works(s)


def test_sql_writes_are_refused_by_the_engine_even_inside_a_select(store_path: str) -> None:
    with sched(store_path) as s:
        s.wait(s.domain(hard).submit(ok, x=3).id, timeout=DEADLINE)
        with pytest.raises(tm.QueryRefused, match="read-only"):
            s.sql("WITH d AS (DELETE FROM task_history RETURNING *) SELECT * FROM d")
        assert s.sql("SELECT count(*) AS n FROM task_history")[0]["n"] == 1
        still_works(s)


def test_sql_results_are_capped_with_a_clear_error(store_path: str) -> None:
    from taskmill.store.queries import SQL_MAX_ROWS

    with sched(store_path) as s:
        with pytest.raises(tm.QueryRefused, match="LIMIT"):
            s.sql(f"SELECT range AS i FROM range({SQL_MAX_ROWS + 1})")
        with pytest.raises(tm.QueryRefused, match="MiB"):
            s.sql("SELECT repeat('x', 100000) AS big FROM range(1000)")
        rss = psutil.Process(s.coordinator_pid).memory_info().rss
        assert rss < 1024 * 1024 * 1024
        assert len(s.sql(f"SELECT range AS i FROM range({SQL_MAX_ROWS})")) == SQL_MAX_ROWS
        still_works(s)


def test_a_long_query_does_not_stall_submissions_or_dispatch(store_path: str) -> None:
    with sched(store_path) as s:
        h = s.domain(hard)
        done: list[Any] = []

        def long_query() -> None:
            try:
                done.append(s.sql("SELECT count(*) AS n FROM range(3000000000) t(i) WHERE i % 7 = 3"))
            except tm.TaskmillError as e:  # interrupted at the time limit is fine too
                done.append(e)

        t = threading.Thread(target=long_query)
        t.start()
        try:
            time.sleep(0.3)  # let the query start (nothing depends on it having started)
            started = time.monotonic()
            rec = s.wait(h.submit(ok, x=11).id, timeout=DEADLINE)
            took = time.monotonic() - started
            assert rec.result == 11
            assert took < 3.0, f"a submission and its run took {took:.1f}s behind a long query"
        finally:
            t.join(DEADLINE)
        assert done


# --------------------------------------------------------------------------- 6. every host call has a deadline


def test_a_stopped_coordinator_gives_bounded_calls_and_close_kills_it(store_path: str, no_leaks: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taskmill.channel, "CALL_TIMEOUT", 2.0)
    monkeypatch.setattr(taskmill.client, "STOP_GRACE", 3.0)
    s = sched(store_path)
    s.start()
    pid = s.coordinator_pid
    try:
        tid = s.domain(hard).submit(ok, x=1).id
        s.wait(tid, timeout=DEADLINE)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(tm.WaitTimeout):
            s.wait(tid + 1000, timeout=2)
        assert time.monotonic() - started < 5
        started = time.monotonic()
        with pytest.raises(tm.SchedulerBroken, match="did not answer"):
            s.store.pending_count()
        assert time.monotonic() - started < 5
    finally:
        started = time.monotonic()
        s.close()
        took = time.monotonic() - started
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert took < 15, f"close() took {took:.1f}s"
    poll_until(lambda: not alive(pid), 15, what="the coordinator to be killed")
    assert not os.path.exists(store_path + ".taskmill.json")


# --------------------------------------------------------------------------- 8. orphans


def test_a_child_left_running_by_a_finished_task_ends_at_close(store_path: str, tmp_path: Path) -> None:
    marker = tmp_path / "sleeper.pid"
    with sched(store_path) as s:
        rec = s.wait(s.domain(hard).submit(start_sleeper, marker=str(marker)).id, timeout=DEADLINE)
        assert rec.status == tm.HistoryStatus.COMPLETED
        child = int(marker.read_text())
        assert alive(child)
        still_works(s)
    try:
        poll_until(lambda: not alive(child), 10, what=f"the task's `sleep 300` (pid {child}) to end")
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


FORKING_HOST = """
import json, os, sys, time
import taskmill as tm
d = tm.Domain("forky")

@d.task
def nap(ctx, s: float) -> str:
    time.sleep(s)
    return "ok"

s = tm.Scheduler(store_path=sys.argv[1], domains=[d], max_concurrency=1).start()
s.domain(d).submit(nap, s=60.0)
child = os.fork()
if child == 0:          # a child of the host that outlives it, holding every fd the host had
    time.sleep(120)
    os._exit(0)
print(json.dumps({"coordinator": s.coordinator_pid, "shm": s.shm_name, "socket": s._process.socket_path,
                  "child": child}), flush=True)
time.sleep(600)
"""


def test_host_sigkill_with_a_forked_child_alive_still_ends_everything(store_path: str, tmp_path: Path,
                                                                      no_leaks: Any) -> None:
    script = tmp_path / "host.py"
    script.write_text(FORKING_HOST)
    proc = subprocess.Popen([sys.executable, str(script), store_path], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the host script did not report"
        info = json.loads(line)
        child = info["child"]
        no_leaks.note(info["coordinator"], info["shm"])
        family = [info["coordinator"]] + [c.pid for c in psutil.Process(info["coordinator"]).children(recursive=True)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
        assert alive(child)  # the forked child still holds the host's pipes
        poll_until(lambda: not [p for p in family if alive(p)], 20,
                   what=f"the coordinator's processes {[p for p in family if alive(p)]} to exit")
        poll_until(lambda: not os.path.exists(f"/dev/shm/{info['shm']}"), 20, what="the segment to go")
        poll_until(lambda: not os.path.exists(os.path.dirname(info["socket"])), 20, what="the socket dir to go")
        poll_until(lambda: not os.path.exists(store_path + ".taskmill.json"), 20, what="the state file to go")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)
            try:
                os.waitpid(child, 0)
            except ChildProcessError:
                pass


# --------------------------------------------------------------------------- 10. the store is the owner's only


def test_the_store_and_its_wal_are_readable_by_the_owner_only(store_path: str) -> None:
    """Files the coordinator makes are 0600; a task's files follow the host's umask."""
    old = os.umask(0o022)
    try:
        with sched(store_path) as s:
            for i in range(5):
                s.domain(hard).submit(ok, x=i)
            s.wait_idle(timeout=DEADLINE)
            made = [p for p in (store_path, store_path + ".wal", store_path + ".taskmill.json") if os.path.exists(p)]
            assert store_path in made
            for p in made:
                assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, (p, oct(os.stat(p).st_mode))
            # tasks keep the host's umask: only the coordinator's own files are private
            made_by_task = s.wait(s.domain(hard).submit(touch, path=store_path + ".out").id, timeout=DEADLINE)
            assert made_by_task.result == 0o644
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(store_path).st_mode) == 0o600


PLAIN_HOST = """
import sys
import taskmill as tm
d = tm.Domain("plain")

@d.task
def f(ctx, x: int) -> int:
    return x

with tm.Scheduler(sys.argv[1], [d], max_concurrency=1) as s:
    assert s.wait(s.domain(d).submit(f, x=1).id, timeout=60).result == 1
    s.sql("SELECT count(*) FROM task_history")
"""


def test_a_run_leaves_nothing_in_the_temp_dir(store_path: str, tmp_path: Path) -> None:
    private = tmp_path / "tmp"
    private.mkdir()
    script = tmp_path / "host.py"
    script.write_text(PLAIN_HOST)
    proc = subprocess.run([sys.executable, str(script), store_path], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TMPDIR": str(private)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(private)) == []  # no pymp-* dir, no runtime dir


def test_a_client_that_leaves_before_its_answer_costs_the_coordinator_nothing(store_path: str) -> None:
    """A change whose answer finds its client gone (the connection dropped on EOF first): the change
    stands, the answer is dropped, the loop goes on (it once died sending to the closed handle)."""
    from taskmill import protocol
    from taskmill.domain import Defaults, resolve

    with sched(store_path, start_paused=True) as s:
        defaults = Defaults()
        for i in range(60):
            conn = raw_client(s)
            conn.send(protocol.Submit([tuple(resolve(ok.call(x=i), defaults))]))
            conn.close()  # gone before the commit that would answer it
            if i % 20 == 19:
                assert s.snapshot().paused_count >= 0  # the coordinator still answers
        poll_until(lambda: s.store.paused_count() + s.store.pending_count() == 60, what="every change standing")
        s.resume_all()
        still_works(s, x=1000)  # (x=7 would be a duplicate of a task of the 60 that may not have run yet)


def test_a_stopped_coordinator_holds_no_call_past_its_own_deadline(store_path: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Deadlines are the caller's: from a new thread (which must first connect), wait(timeout=2)
    ends in WaitTimeout near 2 s and a query near CALL_TIMEOUT, not after CONNECT_TIMEOUT on top."""
    monkeypatch.setattr(taskmill.channel, "CALL_TIMEOUT", 3.0)
    monkeypatch.setattr(taskmill.channel, "CONNECT_TIMEOUT", 30.0)
    with sched(store_path) as s:
        tid = s.domain(hard).submit(ok, x=1).id
        s.wait(tid, timeout=DEADLINE)
        os.kill(s.coordinator_pid, signal.SIGSTOP)
        try:
            took: dict[str, tuple[float, str]] = {}

            def timed(name: str, call: Any) -> None:
                t0 = time.monotonic()
                try:
                    call()
                    took[name] = (time.monotonic() - t0, "returned")
                except Exception as e:  # noqa: BLE001 - the kind is what the test checks
                    took[name] = (time.monotonic() - t0, type(e).__name__)

            threads = [threading.Thread(target=timed, args=("wait", lambda: s.wait(tid + 1000, timeout=2))),
                       threading.Thread(target=timed, args=("query", lambda: s.store.pending_count()))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(DEADLINE)
        finally:
            os.kill(s.coordinator_pid, signal.SIGCONT)
        assert took["wait"][1] == "WaitTimeout" and took["wait"][0] < 2 + 1 + 2, took
        assert took["query"][1] == "SchedulerBroken" and took["query"][0] < 3 + 2, took
