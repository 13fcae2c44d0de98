"""Subscribers never hold the scheduler up: stalled readers, stopped and killed subscriber processes.

Given a scheduler with subscribers that read nothing (in this process) or whose
whole process is stopped (SIGSTOP) or killed (SIGKILL), when 10,000 tasks run,
then every task still finishes, the coordinator's memory stays bounded, and a
subscriber that reads afterwards gets the newest events with ``missed`` counting
exactly what it lost. A stream ends when the scheduler shuts down, and says
``SchedulerBroken`` when the coordinator died.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest
from polling import DEADLINE, poll_until

import taskmill as tm
from taskmill import events as ev

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

d = tm.Domain("st")


@d.task
def noop(ctx: tm.TaskContext, i: int) -> None:
    return None


TASKS = 10_000
#: Events 10,000 no-op tasks submitted in batches of 5,000 make: Dispatched and Completed each, two batches.
EVENTS = 2 * TASKS + 2


def _run(s: tm.Scheduler) -> None:
    h = s.domain(d)
    for start in range(0, TASKS, 5000):
        h.submit_batch([noop.call(i=i) for i in range(start, start + 5000)])
    s.wait_idle(timeout=DEADLINE * 3)


def _drain(stream: tm.EventStream) -> list[Any]:
    return list(iter(lambda: stream.get(timeout=1.0), None))


def _settle(stream: tm.EventStream, total: int) -> list[Any]:
    """Read ``stream`` until every one of ``total`` events is either read or counted as missed."""
    got: list[Any] = []

    def settled() -> bool:
        got.extend(iter(lambda: stream.get(timeout=0.2), None))
        return len(got) + stream.missed >= total

    poll_until(settled, DEADLINE, what=f"{total} events read or missed")
    return got


def test_a_subscriber_that_reads_nothing_loses_the_oldest_and_counts_them(store_path: str) -> None:
    with tm.Scheduler(store_path, [d], max_concurrency=2) as s:
        with s.subscribe(buffer=500) as stream:
            _run(s)
            got = _settle(stream, EVENTS)
            assert len(got) <= 2 * 500  # what the reading side took, and what came in meanwhile
            assert len(got) + stream.missed == EVENTS
            assert max(e.header.task_id for e in got if isinstance(e, ev.TaskEvent)) == TASKS  # the newest are kept
        assert s.metrics_snapshot().completed == TASKS


def _subscriber_script(tmp_path: Path) -> Path:
    """A separate process that subscribes through the running scheduler's socket and key."""
    script = tmp_path / "subscriber.py"
    script.write_text(textwrap.dedent("""
        import json, os, pickle, signal, socket, sys, time
        from multiprocessing.connection import Connection
        from taskmill import auth, protocol
        from taskmill.stream import EventStream
        from taskmill import events
        address, key, buffer = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
        auth.client_handshake(sock, key, time.monotonic() + 60)
        conn = Connection(sock.detach())
        conn.send(protocol.Subscribe("events", None, None, buffer))
        assert isinstance(conn.recv(), protocol.Reply)
        stream = EventStream(conn, 10_000_000, events.decode, "sub")
        print("subscribed", flush=True)
        sys.stdin.readline()  # the test says when to read
        got = list(iter(lambda: stream.get(timeout=2.0), None))
        ids = [e.header.task_id for e in got if isinstance(e, events.TaskEvent)]
        print(json.dumps({"got": len(got), "missed": stream.missed, "newest": max(ids, default=None)}), flush=True)
    """))
    return script


def _start_subscriber(s: tm.Scheduler, tmp_path: Path, buffer: int) -> subprocess.Popen:
    proc = s._process
    assert proc is not None
    sub = subprocess.Popen([sys.executable, str(_subscriber_script(tmp_path)), proc.socket_path, proc.authkey.hex(),
                            str(buffer)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert sub.stdout is not None
    assert sub.stdout.readline().strip() == "subscribed"
    return sub


def _end(sub: subprocess.Popen) -> None:
    """Kill the subscriber process (woken first, if it was stopped) and close its pipes."""
    try:
        os.kill(sub.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    sub.kill()
    sub.wait(timeout=DEADLINE)
    for pipe in (sub.stdin, sub.stdout):
        if pipe is not None:
            pipe.close()


def test_a_stopped_subscriber_process_costs_bounded_memory_and_learns_what_it_missed(store_path: str,
                                                                                       tmp_path: Path) -> None:
    with tm.Scheduler(store_path, [d], max_concurrency=2) as s:
        coordinator = psutil.Process(s.coordinator_pid)
        sub = _start_subscriber(s, tmp_path, buffer=1000)
        try:
            os.kill(sub.pid, signal.SIGSTOP)  # its reader thread stops too: the socket fills up
            _run(s)  # (warm-up and the run itself)
            rss_after_first = coordinator.memory_info().rss
            _run(s)
            growth = coordinator.memory_info().rss - rss_after_first
            assert growth < 64 * 1024 * 1024, f"the coordinator grew by {growth} bytes for a stopped subscriber"
            os.kill(sub.pid, signal.SIGCONT)
            assert sub.stdin is not None and sub.stdout is not None
            sub.stdin.write("go\n")
            sub.stdin.flush()
            report = json.loads(sub.stdout.readline())
            assert report["missed"] > 0
            assert report["got"] + report["missed"] == 2 * EVENTS
            assert report["newest"] == 2 * TASKS  # it kept the newest
        finally:
            _end(sub)


def test_a_killed_subscriber_costs_nothing(store_path: str, tmp_path: Path) -> None:
    with tm.Scheduler(store_path, [d], max_concurrency=2) as s:
        sub = _start_subscriber(s, tmp_path, buffer=1000)
        _end(sub)
        h = s.domain(d)
        h.submit_batch([noop.call(i=i) for i in range(200)])
        s.wait_idle(timeout=DEADLINE)
        with s.subscribe() as stream:  # a new subscriber is served as before
            tid = h.submit(noop, i=-1).id
            got = poll_until(lambda: [e for e in _drain(stream) if isinstance(e, ev.Completed)], DEADLINE,
                             what="a Completed")
            assert got[-1].header.task_id == tid


def test_a_stream_ends_when_the_scheduler_shuts_down(store_path: str) -> None:
    s = tm.Scheduler(store_path, [d], max_concurrency=1).start()
    stream = s.subscribe()
    tid = s.domain(d).submit(noop, i=1).id
    s.wait(tid, timeout=DEADLINE)
    s.close()
    got = list(stream)  # the events, then the end: no error
    assert [type(e) for e in got if isinstance(e, ev.TaskEvent)] == [ev.Dispatched, ev.Completed]
    stream.close()


def test_a_stream_of_a_coordinator_that_died_says_so(store_path: str) -> None:
    with tm.Scheduler(store_path, [d], max_concurrency=1) as s, s.subscribe() as stream:
        os.kill(s.coordinator_pid, signal.SIGKILL)
        with pytest.raises(tm.SchedulerBroken, match="went away"):
            for _ in stream:
                pass
