"""The claim/revoke protocol of queued runs (``shm.py``): exactly one side wins each race.

A worker claims ticket after ticket in order; the coordinator revokes a queued
ticket while the worker is busy with the one before it. The race runs between
two real processes on a shared segment and a process-shared lock: for every
raced ticket, either the revoke succeeded and the worker skipped it, or the
worker claimed it and the revoke reported it started — never both, never neither.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from typing import Any

from taskmill.shm import SharedState, WorkerSlot

PAIRS = 1500
DEADLINE = 60.0


def _worker(name: str, lock: Any, out: Any) -> None:
    slot = WorkerSlot(name, 0)
    rng = random.Random(7)
    results = []
    try:
        for ticket in range(1, 2 * PAIRS + 1):
            if rng.random() < 0.5:
                time.sleep(rng.random() * 20e-6)  # the run before: a little work, sometimes
            results.append(slot.claim(ticket, lock))
    finally:
        slot.close()
    out.send(results)


def test_a_queued_ticket_is_either_revoked_or_claimed_never_both() -> None:
    ctx = multiprocessing.get_context("fork")
    shm = SharedState(1)
    lock = ctx.Lock()
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_worker, args=(shm.name, lock, send))
    child.start()
    try:
        rng = random.Random(11)
        revoked: dict[int, bool | None] = {}
        deadline = time.monotonic() + DEADLINE
        for k in range(1, PAIRS + 1):
            running, queued = 2 * k - 1, 2 * k
            while shm.claimed(0) < running:  # the worker is busy with the run the queued one is behind
                assert time.monotonic() < deadline, "the worker stopped claiming"
            if rng.random() < 0.5:
                time.sleep(rng.random() * 20e-6)
            revoked[queued] = shm.revoke(0, queued, lock)
        assert recv.poll(DEADLINE)
        claimed = recv.recv()
        child.join(DEADLINE)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        shm.close()
    assert all(claimed[t - 1] for t in range(1, 2 * PAIRS + 1, 2))  # nothing revoked them
    for ticket, won in revoked.items():
        assert won is not None
        assert won != claimed[ticket - 1], (ticket, won)  # exactly one side won
    outcomes = {won for won in revoked.values()}
    assert outcomes == {True, False}, "the race never went both ways: the test proves nothing"


def test_a_revoked_ticket_stays_revoked_while_an_earlier_one_waits_unread() -> None:
    """Two revoked tickets can be unread at once (the one behind the previous run and the
    newest); the worker skips both and claims what lies between and after."""
    ctx = multiprocessing.get_context("fork")
    shm = SharedState(1)
    lock = ctx.Lock()
    slot = WorkerSlot(shm.name, 0)
    try:
        assert slot.claim(1, lock)  # runs
        assert shm.revoke(0, 2, lock) is True  # queued behind 1, taken back
        # the worker has not read 2 yet; 3 goes to it (idle), 4 is queued behind 3 and taken back
        assert shm.revoke(0, 4, lock) is True
        assert slot.claim(2, lock) is False
        assert slot.claim(3, lock) is True
        assert shm.revoke(0, 5, lock) is True
        assert slot.claim(4, lock) is False and slot.claim(5, lock) is False
        assert slot.claim(6, lock) is True
        assert shm.revoke(0, 6, lock) is False  # claimed already: it runs
        assert shm.claimed(0) == 6
        shm.reset_slot(0)  # a new worker in the slot starts its tickets over
        assert shm.claimed(0) == 0 and slot.claim(2, lock) is True
    finally:
        slot.close()
        shm.close()
