"""``taskmill serve`` and ``taskmill.connect``: a scheduler served by one process, used by others.

Every test runs ``python -m taskmill serve MODULE:FACTORY`` as a real
background process on a real store, and talks to it from this process or from
producer subprocesses through ``connect``. Faults are real too: clients and
coordinators are SIGKILLed or SIGSTOPped, peers of another user are forked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import taskmill as tm
from taskmill import auth, events
from taskmill.connect import read_state
from taskmill.coordinator.acceptor import HANDSHAKE_TIMEOUT
from taskmill.protocol import state_file_for
from tests.polling import DEADLINE, poll_until
from tests.serving import Served, module_of, reap, run_script

pytestmark = pytest.mark.timeout(300)

# --------------------------------------------------------------------------- the basics


def test_a_served_scheduler_is_used_from_another_process_and_stops_on_sigterm(served: Served) -> None:
    state_file = state_file_for(served.store)
    assert state_file is not None
    assert stat.S_IMODE(os.stat(state_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(read_state(served.store)["socket"]).st_mode) & 0o077 == 0
    with tm.connect(served.store) as c:
        jobs = module_of(served)
        assert c.coordinator_pid == served.coordinator_pid and c.max_concurrency == 2
        h = c.domain("media")
        with c.subscribe() as stream:
            out = h.submit(jobs.double, n=21)
            assert c.wait(out.id, timeout=DEADLINE).result == 42
            got = poll_until(lambda: stream.get(timeout=1.0), what="an event")
            assert isinstance(got, events.Dispatched) and got.header.task_id == out.id, got
            got = poll_until(lambda: stream.get(timeout=1.0), what="an event")
            assert isinstance(got, events.Completed) and got.header.task_id == out.id, got
        assert c.store.history(10)[0].result == 42
        assert c.sql("SELECT count(*) AS n FROM task_history") == [{"n": 1}]
        assert c.snapshot().running_count == 0
        with pytest.raises(tm.StoreLocked, match=r"taskmill\.connect"):  # a second owner is refused, told how
            tm.Scheduler(served.store, [jobs.media]).start()
    assert served.proc is not None and served.proc.poll() is None  # closing a connection stops nothing
    with tm.connect(served.store) as again:
        assert again.store.history(10)[0].id == out.id
    served.signal(signal.SIGTERM)
    assert served.wait() == 0
    logged = [e["event"] for e in served.log_events()]
    assert logged[0] == "serving" and logged[-2:] == ["shutting down", "stopped"], served.log()
    assert not os.path.exists(state_file)
    assert not psutil.pid_exists(served.coordinator_pid) or \
        psutil.Process(served.coordinator_pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(tm.ConnectError, match="taskmill serve"):
        tm.connect(served.store)


def test_connect_says_what_to_run_when_nothing_serves_the_store(tmp_path: Path) -> None:
    store = str(tmp_path / "none.duckdb")
    with pytest.raises(tm.ConnectError, match=r"no coordinator serves .*taskmill serve MODULE:SCHEDULER"):
        tm.connect(store)
    state_file = state_file_for(os.path.abspath(store))
    assert state_file is not None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    Path(state_file).write_text(json.dumps({"pid": int(dead.stdout), "socket": "x", "authkey": "00",
                                            "session": "x"}))
    with pytest.raises(tm.ConnectError, match="which is gone"):
        tm.connect(store)
    with pytest.raises(tm.ConnectError, match="in-memory"):
        tm.connect(":memory:")


def test_serve_refuses_a_bad_target_in_one_line(jobs_dir: tuple[Path, str]) -> None:
    directory, module = jobs_dir
    for target, code, says in ((module, 2, "is not MODULE:SCHEDULER"), ("nosuchmodule:make", 2, "no module named"),
                               (f"{module}:nope", 2, "has no attribute"),
                               (f"{module}:not_a_scheduler", 2, "not a taskmill.Scheduler")):
        done = subprocess.run([sys.executable, "-m", "taskmill", "serve", target], cwd=directory,
                              capture_output=True, text=True, timeout=DEADLINE)
        assert done.returncode == code, done.stderr
        assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# --------------------------------------------------------------------------- several producers

PRODUCER = """
import json, sys
import taskmill as tm
me, store = int(sys.argv[1]), sys.argv[2]
c = tm.connect(store)
import {module} as jobs
h = c.domain("media")
task_of = lambda o: o.existing_id if isinstance(o, tm.Duplicate) else o.id
ids = {{}}
for j in range(100):  # the same 100 keys in every producer, then 50 of its own, singly and in a batch
    ids[f"shared-{{j}}"] = task_of(h.submit(jobs.double.options(key=f"shared-{{j}}"), n=j))
batch = h.submit_batch([jobs.double.options(key=f"own-{{me}}-{{j}}").call(n=1000 * me + j) for j in range(50)])
ids.update({{f"own-{{me}}-{{j}}": task_of(o) for j, o in enumerate(batch.outcomes)}})
print(json.dumps(ids), flush=True)
sys.stdin.readline()  # the test resumes the domain, then says go
results = {{k: c.wait(i, timeout=120).result for k, i in ids.items()}}
print(json.dumps(results), flush=True)
c.close()
"""


def test_four_producers_lose_nothing_share_keys_and_each_get_their_outcomes(served: Served) -> None:
    with tm.connect(served.store) as c:
        c.domain("media").pause()  # nothing runs until every producer has submitted: the keys stay active
        producers = [run_script(served.dir, PRODUCER.format(module=served.module), str(i), served.store)
                     for i in range(4)]
        try:
            ids = [json.loads(p.stdout.readline() or "null") for p in producers]  # type: ignore[union-attr]
            assert all(ids), [p.stderr.read() for p in producers if p.poll() is not None]  # type: ignore[union-attr]
            for j in range(100):  # one task per shared key, whoever submitted first
                assert len({got[f"shared-{j}"] for got in ids}) == 1
            assert c.store.pending_count() + c.store.paused_count() == 100 + 4 * 50
            c.domain("media").resume()
            for p in producers:
                p.stdin.write("go\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            results = [json.loads(p.stdout.readline() or "null") for p in producers]  # type: ignore[union-attr]
            for me, got in enumerate(results):
                assert got is not None
                assert {k: v for k, v in got.items() if k.startswith("shared-")} == \
                    {f"shared-{j}": 2 * j for j in range(100)}
                assert {k: v for k, v in got.items() if k.startswith("own-")} == \
                    {f"own-{me}-{j}": 2 * (1000 * me + j) for j in range(50)}
            for p in producers:
                assert p.wait(DEADLINE) == 0, p.stderr.read()  # type: ignore[union-attr]
        finally:
            for p in producers:
                reap(p)
        assert c.sql("SELECT count(*) AS n, count(DISTINCT key) AS k FROM task_history "
                     "WHERE status = 'completed'") == [{"n": 300, "k": 300}]


# --------------------------------------------------------------------------- who may connect


def _as_nobody(action: Any) -> str:
    """Run ``action()`` in a forked child as user nobody; what it returned (or raised), as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, try, report, leave without running any of pytest's teardown
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                said = f"ok: {action()}"
            except BaseException as e:  # noqa: BLE001 - whatever happened is the answer
                said = f"{type(e).__name__}: {e}"
            os.write(w, said.encode()[:4000])
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    return said


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_and_a_wrong_key_are_refused(served: Served) -> None:
    state = read_state(served.store)
    # another user cannot read the state file, nor reach the socket
    said = _as_nobody(lambda: tm.connect(served.store))
    assert said.startswith("ConnectError") and ("owner" in said or "no coordinator" in said), said

    def reach_socket() -> str:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(state["socket"])
        return "connected"

    assert _as_nobody(reach_socket).startswith("PermissionError"), "the socket's directory lets others in"
    # even where another user can reach the socket (its directory opened up), the coordinator refuses
    # its process before any challenge, key or no key
    runtime = os.path.dirname(state["socket"])
    os.chmod(runtime, 0o711)
    os.chmod(state["socket"], 0o777)
    try:
        key = bytes.fromhex(state["authkey"])

        def with_the_key() -> str:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(state["socket"])
            auth.client_handshake(s, key, time.monotonic() + DEADLINE)
            return "authenticated"

        said = _as_nobody(with_the_key)
        assert said.startswith("EOFError"), said
    finally:
        os.chmod(runtime, 0o700)
        os.chmod(state["socket"], 0o600)
    # the owner without the key: refused, and told so
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(state["socket"])
    with pytest.raises(auth.AuthError, match="refused this key"):
        auth.client_handshake(s, b"not the key", time.monotonic() + DEADLINE)
    s.close()
    # a state file with a wrong key (stale, or tampered with): connect() says it cannot connect
    state_file = state_file_for(served.store)
    assert state_file is not None
    original = Path(state_file).read_text()
    Path(state_file).write_text(json.dumps({**json.loads(original), "authkey": os.urandom(32).hex()}))
    try:
        with pytest.raises(tm.ConnectError, match="cannot connect"):
            tm.connect(served.store)
    finally:
        Path(state_file).write_text(original)
    with tm.connect(served.store) as c:  # and the owner with the key still gets in
        assert c.snapshot().running_count == 0


# --------------------------------------------------------------------------- faults

WAITER = """
import sys
import taskmill as tm
c = tm.connect(sys.argv[1])
import {module} as jobs
out = c.domain("media").submit(jobs.hold, flag=sys.argv[2])
print(out.id, flush=True)
c.wait(out.id, timeout=600)  # killed while it waits
"""

SUBSCRIBER = """
import sys, time
import taskmill as tm
c = tm.connect(sys.argv[1])
stream = c.subscribe(buffer=10)
print("subscribed", flush=True)
time.sleep(600)  # never reads: killed while events pile up for it
"""

BATCH = """
import sys
import taskmill as tm
c = tm.connect(sys.argv[1])
import {module} as jobs
items = [jobs.double.options(tags={{"run": sys.argv[2]}}).call(n=i) for i in range(8_000)]
print("submitting", flush=True)
c.domain("media").submit_batch(items)
print("submitted", flush=True)
"""


def _coordinator_load(pid: int) -> tuple[int, int]:
    p = psutil.Process(pid)
    return p.num_fds(), p.num_threads()


def test_clients_killed_mid_call_and_mid_subscription_cost_the_coordinator_nothing(served: Served) -> None:
    flag = served.dir / "release"
    with tm.connect(served.store) as c:
        jobs = module_of(served)
        c.snapshot()
        fds, threads = _coordinator_load(served.coordinator_pid)
        waiter = run_script(served.dir, WAITER.format(module=served.module), served.store, str(flag))
        subscriber = run_script(served.dir, SUBSCRIBER, served.store)
        try:
            held = int(waiter.stdout.readline())  # type: ignore[union-attr]
            assert subscriber.stdout.readline().strip() == "subscribed"  # type: ignore[union-attr]
            poll_until(lambda: c.store.task_by_id(held) is not None and c.store.task_by_id(held).status == "running",
                       what="the held task running")
            waiter.send_signal(signal.SIGKILL)
            done = c.domain("media").submit_batch([jobs.double.call(n=i) for i in range(500)])  # events pile up
            subscriber.send_signal(signal.SIGKILL)
            for o in done.outcomes:
                assert c.wait(o.id, timeout=DEADLINE).result is not None
        finally:
            reap(waiter)
            reap(subscriber)
        flag.touch()
        assert c.wait(held, timeout=DEADLINE).result == "released"  # the dead waiter's task ran on
        poll_until(lambda: _coordinator_load(served.coordinator_pid)[0] <= fds, what="the dead clients' fds closed")
        assert _coordinator_load(served.coordinator_pid)[1] <= threads
        # killed in the middle of sending a large batch: all of it or none of it
        for delay in (0.0, 0.05, 0.2):
            batch = run_script(served.dir, BATCH.format(module=served.module), served.store, str(delay))
            try:
                assert batch.stdout.readline().strip() == "submitting"  # type: ignore[union-attr]
                time.sleep(delay)
                batch.send_signal(signal.SIGKILL)
            finally:
                reap(batch)
            c.wait_idle(timeout=DEADLINE * 2)
            n = c.sql("SELECT count(*) AS n FROM task_history WHERE json_extract_string(tags, '$.run') = ?",
                      [str(delay)])[0]["n"]
            assert n in (0, 8_000), n
        assert c.snapshot().running_count == 0


def test_a_dead_coordinator_breaks_clients_in_time_and_a_restarted_one_takes_them_back(
        served: Served, monkeypatch: pytest.MonkeyPatch, no_leaks: Any) -> None:
    monkeypatch.setattr("taskmill.channel.CONNECT_TIMEOUT", 2.0)
    flag = served.dir / "release"
    c = tm.connect(served.store)
    try:
        jobs = module_of(served)
        held = c.domain("media").submit(jobs.hold, flag=str(flag)).id
        poll_until(lambda: c.store.task_by_id(held).status == "running", what="the held task running")
        # a coordinator that does not answer: wait() keeps its own deadline, connect() says it cannot connect
        os.kill(served.coordinator_pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(tm.WaitTimeout):
                c.wait(held, timeout=1.0)
            assert time.monotonic() - t0 < 1.0 + 10.0
            with pytest.raises(tm.ConnectError, match="cannot connect"):
                tm.connect(served.store)
        finally:
            os.kill(served.coordinator_pid, signal.SIGCONT)
        assert c.snapshot().running_count == 1
        # the coordinator dies: a waiting client and the next call learn it at once
        os.kill(served.coordinator_pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(tm.SchedulerBroken):
            c.wait(held, timeout=120)
        with pytest.raises(tm.SchedulerBroken):
            c.snapshot()
        assert time.monotonic() - t0 < 10.0
        assert served.wait() == 1  # serve notices and exits
        assert "the coordinator exited" in served.log()
    finally:
        c.close()
    _runs_once_served_again(served, no_leaks, flag, held)  # (the held task was back in the queue)


def test_a_crowd_of_silent_peers_does_not_lock_clients_out(served: Served) -> None:
    state = read_state(served.store)
    with tm.connect(served.store) as c:
        c.snapshot()
        threads = _coordinator_load(served.coordinator_pid)[1]
        peers = []
        first = time.monotonic()
        try:
            for _ in range(300):  # connect and say nothing
                p = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                p.connect(state["socket"])
                peers.append(p)
            t0 = time.monotonic()
            with tm.connect(served.store) as fresh:  # an honest client gets through at once
                assert fresh.snapshot().running_count == 0
            took = time.monotonic() - t0
            assert took < 5.0, took
            assert _coordinator_load(served.coordinator_pid)[1] <= threads  # no thread per peer
            # at most MAX_PENDING (256) wait at once: the oldest were dropped after their challenge,
            # before their handshake deadline; the others are dropped at theirs
            for p in peers[:40]:
                p.settimeout(DEADLINE)
                got = b""
                while chunk := p.recv(4096):
                    got += chunk
                assert got.startswith(auth.MAGIC)
            assert time.monotonic() - first < HANDSHAKE_TIMEOUT
        finally:
            for p in peers:
                p.close()


def _runs_once_served_again(served: Served, no_leaks: Any, flag: Path, held: int) -> None:
    """Serve the store again: a new connection finds ``held`` queued, and it runs once released."""
    again = Served(served.dir, served.module, no_leaks).start()
    try:
        flag.touch()
        with tm.connect(again.store) as c:
            assert c.wait(held, timeout=DEADLINE).result == "released"
    finally:
        again.stop()


# --------------------------------------------------------------------------- signals


def test_sigint_shuts_down_gracefully_and_a_second_sigint_stops_at_once(jobs_dir: tuple[Path, str],
                                                                         no_leaks: Any) -> None:
    directory, module = jobs_dir
    flag = directory / "release"
    served = Served(directory, module, no_leaks, factory="graceful").start()
    try:
        with tm.connect(served.store) as c:
            jobs = module_of(served)
            held = c.domain("media").submit(jobs.hold, flag=str(flag)).id
            poll_until(lambda: c.store.task_by_id(held).status == "running", what="the held task running")
        served.signal(signal.SIGINT)
        poll_until(lambda: "shutting down" in served.log(), what="serve shutting down")
        with pytest.raises(subprocess.TimeoutExpired):
            served.wait(1.0)  # graceful: the running task has its grace (120 s)
        served.signal(signal.SIGINT)
        assert served.wait() == 0
        said = served.log_events()
        assert any(e["event"] == "stopping at once: what still runs is re-queued" for e in said), said
        assert said[-1]["event"] == "stopped" and said[-1]["queued"] == 1, said
        assert all(e["level"] in ("info", "warning") for e in said), said
    finally:
        served.stop()
    _runs_once_served_again(served, no_leaks, flag, held)
