"""Process lifetimes (F10, F11): close, hard and graceful shutdown, SIGKILL of the host
or of the coordinator. Nothing may be left: processes, socket, shm segment, state file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pytest
from polling import poll_until

import taskmill as tm

DEADLINE = 60.0
GONE_DEADLINE = 15.0  # the fork server and resource tracker exit a moment after the coordinator

life = tm.Domain("life")


@life.task
def hold(ctx: tm.TaskContext, flag: str, started: str | None = None) -> str:
    if started:
        Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + DEADLINE
    while not os.path.exists(flag):
        if time.monotonic() > deadline:
            raise tm.Permanent("flag never appeared")
        time.sleep(0.01)
    return f"released (attempt {ctx.record.retry_count})"


@life.task
def nap(ctx: tm.TaskContext, seconds: float, started: str | None = None) -> str:
    if started:
        Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "rested"


@life.task
def quick(ctx: tm.TaskContext, x: int) -> int:
    return x


@life.task
def spawn_child(ctx: tm.TaskContext, marker: str) -> str:
    """Like a transcoding task: the real work happens in a child process (ffmpeg, …)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(marker).write_text(str(child.pid))
    child.wait()
    return "child ended"


def sched(store: str, **kw: Any) -> tm.Scheduler:
    kw.setdefault("max_concurrency", 2)
    return tm.Scheduler(store_path=store, domains=[life], **kw)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def family(coordinator_pid: int) -> list[int]:
    """The coordinator and everything below it (resource tracker, fork server, workers)."""
    p = psutil.Process(coordinator_pid)
    return [coordinator_pid] + [c.pid for c in p.children(recursive=True)]


def wait_running(s: tm.Scheduler, task_id: int) -> None:
    poll_until(lambda: any(r.id == task_id for r in s.active_tasks()), what=f"task {task_id} running")


def assert_all_gone(pids: list[int], shm: str, paths: list[str], timeout: float = GONE_DEADLINE) -> None:
    poll_until(lambda: not [p for p in pids if alive(p)], timeout,
               what=f"processes {[p for p in pids if alive(p)]} to exit")
    poll_until(lambda: not os.path.exists(f"/dev/shm/{shm}"), timeout, what=f"/dev/shm/{shm} to be unlinked")
    poll_until(lambda: not [p for p in paths if os.path.exists(p)], timeout,
               what=f"{[p for p in paths if os.path.exists(p)]} to be removed")


def store_rows(store: str, sql: str) -> list[tuple]:
    con = duckdb.connect(store, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


# --------------------------------------------------------------------------- close


def test_close_leaves_no_process_socket_or_segment(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    s = sched(store_path)
    s.start()
    try:
        h = s.domain(life)
        running = h.submit(hold, flag=flag)
        h.submit(quick, x=1)
        wait_running(s, running.id)
        pids = family(s.coordinator_pid)
        assert len(pids) >= 4, pids  # coordinator, tracker, fork server, workers
        shm = s.shm_name
        assert os.path.exists(f"/dev/shm/{shm}")
        sock = s._process.socket_path
        runtime = os.path.dirname(sock)
        state = store_path + ".taskmill.json"
        assert os.path.exists(sock) and os.path.exists(state)
        assert json.loads(Path(state).read_text())["pid"] == s.coordinator_pid
    except BaseException:
        s.close()
        raise
    t0 = time.monotonic()
    s.close()
    assert time.monotonic() - t0 < 30
    assert_all_gone(pids, shm, [sock, runtime, state])
    s.close()  # idempotent
    with pytest.raises(tm.SchedulerClosed):
        s.snapshot()
    with pytest.raises(tm.SchedulerClosed):
        s.domain(life).submit(quick, x=2)


def test_context_manager_closes_on_error(store_path: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), sched(store_path) as s:
        pids = family(s.coordinator_pid)
        shm = s.shm_name
        raise RuntimeError("boom")
    assert_all_gone(pids, shm, [store_path + ".taskmill.json"])


def test_forgotten_scheduler_is_stopped_when_collected(store_path: str) -> None:
    import gc

    s = sched(store_path).start()
    assert s.wait(s.domain(life).submit(quick, x=1).id, timeout=DEADLINE).result == 1
    pids, shm = family(s.coordinator_pid), s.shm_name
    del s
    gc.collect()
    assert_all_gone(pids, shm, [store_path + ".taskmill.json"])


def test_close_releases_blocked_waiters(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    s = sched(store_path)
    s.start()
    box: dict[str, Any] = {}
    try:
        running = s.domain(life).submit(hold, flag=flag)
        wait_running(s, running.id)

        def call(name: str, fn: Any) -> None:
            try:
                box[name] = fn()
            except BaseException as e:  # noqa: BLE001
                box[name] = e

        coord = psutil.Process(s.coordinator_pid)
        conns = len(coord.net_connections(kind="unix"))
        threads = [threading.Thread(target=call, args=("wait", lambda: s.wait(running.id, timeout=DEADLINE))),
                   threading.Thread(target=call, args=("idle", lambda: s.wait_idle(timeout=DEADLINE)))]
        for t in threads:
            t.daemon = True
            t.start()
        # both threads have their own connection (their requests follow at once)
        poll_until(lambda: len(coord.net_connections(kind="unix")) >= conns + 2, 30, what="the waiters' connections")
    finally:
        t0 = time.monotonic()
        s.close()
        assert time.monotonic() - t0 < 30
    for t in threads:
        t.join(30)
    assert set(box) == {"wait", "idle"}, box
    for v in box.values():
        assert isinstance(v, (tm.SchedulerBroken, tm.SchedulerClosed)), box


def test_restart_after_close_and_ids_are_never_reused(store_path: str) -> None:
    s = sched(store_path)
    s.start()
    try:
        h = s.domain(life)
        first = [h.submit(quick, x=i).id for i in range(3)]
        s.wait_idle(timeout=DEADLINE)
        assert s.store.prune_history_by_count(0) == 3  # nothing left that shows the old ids
    finally:
        s.close()
    s.start()  # the same object starts a fresh coordinator on the same store
    try:
        again = s.domain(life).submit(quick, x=0)  # same payload as before: its key is free
        assert isinstance(again, tm.Inserted) and again.id > max(first)
        assert s.wait(again.id, timeout=DEADLINE).result == 0
    finally:
        s.close()


# --------------------------------------------------------------------------- shutdown modes (F11)


def test_hard_shutdown_requeues_running_and_restart_runs_it(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    started = str(tmp_path / "started")
    with sched(store_path, max_concurrency=1) as s:
        h = s.domain(life)
        running = h.submit(hold, flag=flag, started=started)
        queued = h.submit(quick.options(priority=tm.Priority.BACKGROUND), x=7)
        wait_running(s, running.id)
        worker = int(poll_until(lambda: os.path.exists(started) and Path(started).read_text(), what="start"))
    assert not alive(worker)
    rows = store_rows(store_path, "SELECT id, status, retry_count, started_at FROM tasks ORDER BY id")
    assert rows == [(running.id, "pending", 0, None), (queued.id, "pending", 0, None)]
    assert store_rows(store_path, "SELECT count(*) FROM task_history") == [(0,)]
    Path(flag).touch()
    with sched(store_path, max_concurrency=1) as s:
        rec = s.wait(running.id, timeout=DEADLINE)
        assert rec.status == "completed" and rec.retry_count == 0 and rec.result == "released (attempt 0)"
        assert s.wait(queued.id, timeout=DEADLINE).result == 7
        s.wait_idle(timeout=DEADLINE)
        assert s.sql("SELECT count(*) AS n FROM task_history") == [{"n": 2}]


def test_graceful_shutdown_waits_for_running_tasks(store_path: str, tmp_path: Path) -> None:
    started = str(tmp_path / "started")
    with sched(store_path, max_concurrency=1, shutdown=tm.Shutdown.graceful(DEADLINE)) as s:
        h = s.domain(life)
        running = h.submit(nap, seconds=1.0, started=started)
        queued = h.submit(quick, x=1)
        poll_until(lambda: os.path.exists(started), what="nap started")
        t0 = time.monotonic()
    assert time.monotonic() - t0 < DEADLINE
    rows = store_rows(store_path, "SELECT id, status, result FROM task_history")
    assert rows == [(running.id, "completed", '"rested"')]
    # graceful stops dispatching: the queued task was not started
    assert store_rows(store_path, "SELECT id, status, retry_count FROM tasks") == [(queued.id, "pending", 0)]


def test_graceful_shutdown_timeout_requeues(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    with sched(store_path, max_concurrency=1, shutdown=tm.Shutdown.graceful(0.5)) as s:
        running = s.domain(life).submit(hold, flag=flag)
        wait_running(s, running.id)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 30
    assert store_rows(store_path, "SELECT id, status, retry_count FROM tasks") == [(running.id, "pending", 0)]
    assert store_rows(store_path, "SELECT count(*) FROM task_history") == [(0,)]
    Path(flag).touch()
    with sched(store_path) as s:
        rec = s.wait(running.id, timeout=DEADLINE)
        assert rec.status == "completed" and rec.retry_count == 0


# --------------------------------------------------------------------------- host death


HOST_SCRIPT = """
import json, os, sys, time
sys.path[:0] = [{test_dir!r}, os.path.dirname({test_dir!r})]  # tests/e2e and tests/ (polling)
import taskmill as tm
from test_lifetimes import life, hold

store, flag, mode = sys.argv[1], sys.argv[2], sys.argv[3]
s = tm.Scheduler(store_path=store, domains=[life], max_concurrency=2).start()
out = s.domain(life).submit(hold, flag=flag)
deadline = time.monotonic() + 60
while not any(r.id == out.id for r in s.active_tasks()):
    assert time.monotonic() < deadline, "task never ran"
    time.sleep(0.02)
print(json.dumps({{"coordinator": s.coordinator_pid, "shm": s.shm_name, "socket": s._process.socket_path,
                  "task": out.id}}), flush=True)
if mode == "block":
    time.sleep(600)
sys.stdin.readline()     # the test counts the process family first, then lets us go
if mode == "exit":
    sys.exit(0)          # forgets to close the scheduler
elif mode == "os_exit":
    os._exit(0)          # no interpreter teardown at all
"""


def start_host(tmp_path: Path, store: str, flag: str, mode: str) -> tuple[subprocess.Popen, dict]:
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST_SCRIPT.format(test_dir=os.path.dirname(os.path.abspath(__file__)))))
    proc = subprocess.Popen([sys.executable, str(script), store, flag, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(DEADLINE)
    if not box or not box[0].strip():
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"the host script did not report: {err[-3000:]}")
    return proc, json.loads(box[0])


@pytest.mark.parametrize("mode", ["block", "exit", "os_exit"])
def test_host_death_stops_coordinator_and_workers(store_path: str, tmp_path: Path, no_leaks: Any, mode: str) -> None:
    """SIGKILL of the host, or a host that exits without closing: everything below it goes away."""
    flag = str(tmp_path / "flag")
    proc, info = start_host(tmp_path, store_path, flag, mode)
    no_leaks.note(info["coordinator"], info["shm"])
    try:
        pids = family(info["coordinator"])
        assert len(pids) >= 4, pids
        if mode == "block":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        proc.wait(timeout=DEADLINE)
        if mode == "block":
            assert proc.returncode == -signal.SIGKILL
        assert_all_gone(pids, info["shm"], [info["socket"], store_path + ".taskmill.json"])
        err = proc.stderr.read()
        assert "Traceback" not in err and "leaked" not in err, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
    # the running task was re-queued (no retry counted) and a new scheduler runs it
    Path(flag).touch()
    with sched(store_path) as s:
        rec = s.wait(info["task"], timeout=DEADLINE)
        assert rec.status == "completed" and rec.retry_count == 0


# --------------------------------------------------------------------------- coordinator death


def test_sigterm_of_the_coordinator_shuts_down_cleanly(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    s = sched(store_path)
    s.start()
    try:
        running = s.domain(life).submit(hold, flag=flag)
        wait_running(s, running.id)
        coord = s.coordinator_pid
        pids = family(coord)
        shm = s.shm_name
        os.kill(coord, signal.SIGTERM)
        assert_all_gone(pids, shm, [store_path + ".taskmill.json"])
        with pytest.raises(tm.SchedulerBroken):
            s.snapshot()
        code = s._process.proc.wait(timeout=30)
        assert code == 0, f"the coordinator exited with {code} after SIGTERM"
    finally:
        t0 = time.monotonic()
        s.close()
        assert time.monotonic() - t0 < 30
    # hard shutdown re-queued the running task
    assert store_rows(store_path, "SELECT id, status, retry_count FROM tasks") == [(running.id, "pending", 0)]


def test_sigkill_of_the_coordinator(store_path: str, tmp_path: Path) -> None:
    flag = str(tmp_path / "flag")
    s = sched(store_path)
    s.start()
    try:
        h = s.domain(life)
        running = h.submit(hold, flag=flag)
        wait_running(s, running.id)
        coord = s.coordinator_pid
        pids = family(coord)
        shm = s.shm_name
        assert len(pids) >= 4, pids

        # a waiter blocked in another thread must not hang when the coordinator dies
        box: list[BaseException | Any] = []

        def waiter() -> None:
            try:
                box.append(s.wait(running.id, timeout=DEADLINE))
            except BaseException as e:  # noqa: BLE001
                box.append(e)

        conns = len(psutil.Process(coord).net_connections(kind="unix"))
        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        poll_until(lambda: len(psutil.Process(coord).net_connections(kind="unix")) > conns, 30,
                   what="the waiter's connection")

        os.kill(coord, signal.SIGKILL)
        t.join(30)
        assert box and isinstance(box[0], tm.SchedulerBroken), box
        with pytest.raises(tm.SchedulerBroken):
            s.snapshot()
        with pytest.raises(tm.SchedulerBroken):
            h.submit(quick, x=1)
        with pytest.raises(tm.SchedulerBroken):
            s.wait(running.id, timeout=5)
        # the workers and fork server follow; the resource tracker unlinks the segment
        assert_all_gone(pids[1:], shm, [])
    finally:
        t0 = time.monotonic()
        s.close()
        assert time.monotonic() - t0 < 30, "close() of a broken scheduler hung"
    s.close()
    with pytest.raises(tm.SchedulerClosed):
        s.snapshot()
    # the store is usable again; the task that was running is re-queued without a retry counted
    Path(flag).touch()
    with sched(store_path) as s2:
        rec = s2.wait(running.id, timeout=DEADLINE)
        assert rec.status == "completed" and rec.retry_count == 0
        assert s2.sql("SELECT count(*) AS n FROM task_history") == [{"n": 1}]


def test_host_sigkill_leaves_no_runtime_dir(store_path: str, tmp_path: Path, no_leaks: Any) -> None:
    proc, info = start_host(tmp_path, store_path, str(tmp_path / "flag"), "block")
    no_leaks.note(info["coordinator"], info["shm"])
    runtime = os.path.dirname(info["socket"])
    try:
        pids = family(info["coordinator"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
        assert_all_gone(pids, info["shm"], [info["socket"]])
        gone = not os.path.exists(runtime)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
        if os.path.isdir(runtime) and not os.listdir(runtime):
            os.rmdir(runtime)  # do not litter /tmp ourselves
    assert gone, f"{runtime} was left behind"


FORK_SCRIPT = """
import json, os, sys
sys.path[:0] = [{test_dir!r}, os.path.dirname({test_dir!r})]  # tests/e2e and tests/ (polling)
import taskmill as tm
from test_lifetimes import life, quick

s = tm.Scheduler(store_path=sys.argv[1], domains=[life], max_concurrency=1).start()
h = s.domain(life)
first = s.wait(h.submit(quick, x=1).id, timeout=60).result
pid = os.fork()
if pid == 0:
    sys.exit(0)   # a forked child of the host that never touches the scheduler and exits normally
os.waitpid(pid, 0)
try:
    second = s.wait(h.submit(quick, x=2).id, timeout=60).result
except Exception as e:
    second = f"{{type(e).__name__}}: {{e}}"
s.close()
print(json.dumps([first, second]), flush=True)
"""


def test_forked_child_of_the_host_does_not_stop_the_scheduler(store_path: str, tmp_path: Path) -> None:
    script = tmp_path / "forking_host.py"
    script.write_text(textwrap.dedent(FORK_SCRIPT.format(test_dir=os.path.dirname(os.path.abspath(__file__)))))
    proc = subprocess.run([sys.executable, str(script), store_path], cwd=tmp_path, check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [1, 2], proc.stderr[-3000:]


def test_task_child_processes_do_not_outlive_the_task(store_path: str, tmp_path: Path) -> None:
    children: list[int] = []
    s = sched(store_path, max_concurrency=1)
    s.start()
    try:
        h = s.domain(life)
        once = tm.RetryPolicy.none()
        # 1. killed by its timeout
        marker = tmp_path / "timeout.pid"
        out = h.submit(spawn_child.options(timeout=1.0, retry=once), marker=str(marker))
        children.append(int(poll_until(lambda: marker.exists() and marker.read_text(), what="child started")))
        rec = s.wait(out.id, timeout=DEADLINE)
        assert rec.status == "dead_letter" and "timed out" in rec.last_error
        # 2. still running when the scheduler closes (hard shutdown)
        marker = tmp_path / "close.pid"
        h.submit(spawn_child.options(retry=once), marker=str(marker))
        children.append(int(poll_until(lambda: marker.exists() and marker.read_text(), what="child started")))
    finally:
        s.close()
    try:
        poll_until(lambda: not [c for c in children if alive(c)], 10,
                   what=f"the tasks' child processes {[c for c in children if alive(c)]} to go")
    finally:
        for c in children:  # never leave them behind ourselves
            if alive(c):
                os.kill(c, signal.SIGKILL)


def test_stale_state_file_with_reused_pid_does_not_lock_the_store(store_path: str) -> None:
    s = sched(store_path)
    s.start()
    try:
        coord = s.coordinator_pid
        os.kill(coord, signal.SIGKILL)
        poll_until(lambda: not alive(coord), 30, what="the coordinator to die")
    finally:
        s.close()
    state = Path(store_path + ".taskmill.json")
    assert state.exists()  # left behind by the crash
    info = json.loads(state.read_text())
    info["pid"] = os.getpid()  # the dead coordinator's pid now belongs to another live process
    state.write_text(json.dumps(info))
    with sched(store_path) as s2:
        assert s2.wait(s2.domain(life).submit(quick, x=5).id, timeout=DEADLINE).result == 5
    assert not state.exists()
