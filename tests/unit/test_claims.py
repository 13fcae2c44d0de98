"""The claim/revoke protocol of queued runs (``shm.py``): exactly one side wins each race.

A worker claims ticket after ticket in order; the coordinator takes back the
runs queued behind the one the worker is busy with. The race runs between two
real processes on a shared segment and a process-shared lock: for every raced
ticket, either the take-back revoked it and the worker skipped it, or the
worker claimed it and the take-back reported it started — never both, never
neither.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from typing import Any

from taskmill.shm import SharedState, WorkerSlot

PAIRS = 1500
DEADLINE = 60.0


#: Runs queued behind each run the worker is busy with.
DEPTH = 3


def _worker(name: str, lock: Any, out: Any, sent: Any) -> None:
    slot = WorkerSlot(name, 0)
    rng = random.Random(7)
    results = []
    try:
        for ticket in range(1, (1 + DEPTH) * PAIRS + 1):
            if (ticket - 1) % (1 + DEPTH) == 0:
                sent.recv()  # the next dispatched run (and what is queued behind it) is in the pipe
            if rng.random() < 0.5:
                time.sleep(rng.random() * 20e-6)  # the run before: a little work, sometimes
            results.append(slot.claim(ticket, lock, queued=(ticket - 1) % (1 + DEPTH) != 0))
    finally:
        slot.close()
    out.send(results)


def test_a_queued_ticket_is_either_revoked_or_claimed_never_both() -> None:
    ctx = multiprocessing.get_context("fork")
    shm = SharedState(1)
    lock = ctx.Lock()
    recv, send = ctx.Pipe(duplex=False)
    runs_in, runs_out = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_worker, args=(shm.name, lock, send, runs_in))
    child.start()
    try:
        rng = random.Random(11)
        started: dict[int, bool] = {}  # queued ticket -> the take-back said it started
        deadline = time.monotonic() + DEADLINE
        for k in range(PAIRS):
            running = (1 + DEPTH) * k + 1  # dispatched; DEPTH runs queued behind it
            runs_out.send(k)
            while shm.claimed(0) < running:  # the worker is busy with the run the queued ones are behind
                assert time.monotonic() < deadline, "the worker stopped claiming"
            if rng.random() < 0.5:
                time.sleep(rng.random() * 40e-6)
            claimed = shm.revoke(0, running + 1, running + DEPTH, lock)
            assert claimed is not None and running <= claimed <= running + DEPTH
            for t in range(running + 1, running + DEPTH + 1):
                started[t] = t <= claimed
        assert recv.poll(DEADLINE)
        claims = recv.recv()
        child.join(DEADLINE)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        shm.close()
    assert all(claims[t - 1] for t in range(1, len(claims) + 1, 1 + DEPTH))  # dispatched runs always start
    for ticket, ran in started.items():
        assert ran == claims[ticket - 1], (ticket, ran)  # exactly one side won
    partly = sum(1 for k in range(PAIRS) if 0 < sum(started[(1 + DEPTH) * k + 1 + j] for j in range(1, DEPTH + 1)) < DEPTH)
    assert set(started.values()) == {True, False} and partly, "the race never went every way: the test proves nothing"


def test_revoked_runs_stay_revoked_while_they_wait_unread_and_other_runs_start() -> None:
    """Runs taken back wait in the pipe until the worker comes to them; a run dispatched to the
    worker meanwhile starts, and so does a queued run that started (in the coordinator's eyes)
    before the worker claimed it: only the tickets named are revoked."""
    ctx = multiprocessing.get_context("fork")
    shm = SharedState(1)
    lock = ctx.Lock()
    slot = WorkerSlot(shm.name, 0)
    try:
        assert slot.claim(1, lock, queued=False)  # runs; 2, 3, 4 are queued behind it
        # 1 ended: the coordinator starts 2 (the worker has not claimed it yet), then takes back 3 and 4
        assert shm.revoke(0, 3, 4, lock) == 1
        # 5 and 6 are queued behind 2 and taken back before the worker reads anything
        assert shm.revoke(0, 5, 6, lock) == 1
        assert slot.claim(2, lock) is True  # not named: it starts
        assert [slot.claim(t, lock) for t in (3, 4, 5, 6)] == [False] * 4
        assert slot.claim(7, lock, queued=False) is True  # dispatched
        assert slot.claim(8, lock) is True  # queued behind 7: started before any take-back
        assert shm.revoke(0, 9, 10, lock) == 8  # 8 runs; 9 and 10 are taken back
        assert slot.claim(9, lock) is False and slot.claim(10, lock) is False
        assert all(slot.claim(t, lock) for t in range(11, 11 + 64))  # every bit was cleared on the way
        assert shm.revoke(0, 70, 74, lock) == 74  # all claimed: nothing to take back
        assert shm.claimed(0) == 74
        shm.reset_slot(0)  # a new worker in the slot starts its tickets over
        assert shm.claimed(0) == 0 and slot.claim(2, lock) is True
    finally:
        slot.close()
        shm.close()
