"""Read-only queries run off the loop thread, and a query past its time limit is interrupted."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import pytest
from polling import poll_until

from taskmill import protocol
from taskmill.coordinator.reader import QueryRunner
from taskmill.store import Store, select

SLOW = "SELECT count(*) AS n FROM range(10000000000) t(i) WHERE i % 7 = 3"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(tmp_path: Any) -> Any:
    s = Store(str(tmp_path / "store.duckdb"))
    yield s
    s.close()


def drive(runner: QueryRunner, conn: Any, timeout: float = 20.0) -> Any:
    """What the loop does: interrupt overdue queries until the reply arrives."""

    def replied() -> bool:
        runner.expire(time.monotonic())
        return conn.poll(0.02)

    poll_until(replied, timeout, what="the reader's reply")
    return conn.recv()


def test_a_query_past_its_limit_is_interrupted_and_the_reader_goes_on(store: Store) -> None:
    woke = threading.Event()
    runner = QueryRunner(store, woke.set, threads=1)
    ours, theirs = multiprocessing.Pipe()
    try:
        started = time.monotonic()
        runner.run(theirs, lambda cur: select(cur, SLOW), 0.5, time.monotonic())
        reply = drive(runner, ours)
        assert isinstance(reply, protocol.ErrorReply) and reply.kind == "QueryTimeout", reply
        assert "longer than 0.5s" in reply.message
        assert time.monotonic() - started < 10
        assert woke.wait(10) and runner.returned() == [(theirs, True)]  # the reply is sent just before the wake-up
        runner.run(theirs, lambda cur: select(cur, "SELECT 41 + 1 AS answer"), 5.0, time.monotonic())
        assert drive(runner, ours) == protocol.Reply((["answer"], [(42,)], []))
    finally:
        runner.close()


def test_a_query_that_waited_past_its_limit_is_answered_without_running(store: Store) -> None:
    runner = QueryRunner(store, lambda: None, threads=1)
    slow_a, slow_b = multiprocessing.Pipe()
    late_a, late_b = multiprocessing.Pipe()
    ran: list[bool] = []
    try:
        now = time.monotonic()
        runner.run(slow_b, lambda cur: select(cur, SLOW), 1.0, now)
        runner.run(late_b, lambda cur: ran.append(True), 0.2, now)  # queued behind the slow one
        assert drive(runner, slow_a).kind == "QueryTimeout"
        reply = drive(runner, late_a)
        assert reply.kind == "QueryTimeout" and "was not run" in reply.message
        assert ran == []
    finally:
        runner.close()


def test_close_interrupts_what_runs(store: Store) -> None:
    runner = QueryRunner(store, lambda: None, threads=2)
    a, b = multiprocessing.Pipe()
    runner.run(b, lambda cur: select(cur, SLOW), 600.0, time.monotonic())
    poll_until(lambda: runner.busy and runner.next_deadline() is not None, 10, what="the query to start")
    started = time.monotonic()
    runner.close()
    assert time.monotonic() - started < 10
