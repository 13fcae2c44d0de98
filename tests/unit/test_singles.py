"""Single submissions of several threads go to the coordinator together (``taskmill.singles``):
callers that arrive while a round is sent make the next round, each gets its own outcome or
error, and a round that fails fails its callers only."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from taskmill import protocol
from taskmill.errors import InvalidSubmission, SchedulerBroken
from taskmill.singles import ROUNDS, Singles
from tests.polling import poll_until

DEADLINE = 30.0


class Coordinator:
    """A ``send`` that records its rounds; every round waits until ``release`` is set."""

    def __init__(self) -> None:
        self.rounds: list[list[Any]] = []
        self.release = threading.Event()
        self.fail_round: int | None = None
        self._lock = threading.Lock()

    def send(self, items: list[tuple[Any, ...]]) -> list[Any]:
        with self._lock:
            self.rounds.append([it[0] for it in items])
            n = len(self.rounds)
        assert self.release.wait(DEADLINE)
        if self.fail_round == n:
            raise SchedulerBroken("the coordinator is gone")
        return [protocol.ErrorReply.of(InvalidSubmission("item 0: bad")) if it[0] < 0 else ("i", it[0], False)
                for it in items]


def run_threads(singles: Singles, coord: Coordinator, values: list[int]) -> dict[int, Any]:
    got: dict[int, Any] = {}

    def one(v: int) -> None:
        try:
            got[v] = singles.submit((v,), coord.send)
        except Exception as e:  # noqa: BLE001 - what the test checks
            got[v] = e

    threads = [threading.Thread(target=one, args=(v,)) for v in values]
    for t in threads:
        t.start()
    return _join(threads, got)


def _join(threads: list[threading.Thread], got: dict[int, Any]) -> dict[int, Any]:
    for t in threads:
        t.join(DEADLINE)
        assert not t.is_alive(), "a caller was left waiting"
    return got


def test_one_caller_sends_its_own_submission_at_once() -> None:
    coord = Coordinator()
    coord.release.set()
    singles = Singles()
    assert singles.submit((1,), coord.send) == ("i", 1, False)
    assert singles.submit((2,), coord.send) == ("i", 2, False)
    assert coord.rounds == [[1], [2]]


def test_callers_that_arrive_while_rounds_are_out_go_together_in_the_next_and_each_gets_its_own() -> None:
    coord = Coordinator()
    singles = Singles()
    first: dict[int, Any] = {}
    leaders = [threading.Thread(target=lambda v=v: first.update({v: singles.submit((v,), coord.send)}))
               for v in range(100, 100 + ROUNDS)]
    for n, t in enumerate(leaders, 1):
        t.start()
        poll_until(lambda n=n: len(coord.rounds) == n, DEADLINE, what=f"round {n} under way")
    waiting: dict[int, Any] = {}
    threads = [threading.Thread(target=lambda v=v: waiting.update({v: _outcome(singles, v, coord)}))
               for v in (1, 2, -3, 4)]
    for t in threads:
        t.start()
    poll_until(lambda: len(singles._waiting) == 4, DEADLINE, what="all four queued behind the rounds out")
    coord.release.set()
    _join(leaders + threads, waiting)
    assert first == {v: ("i", v, False) for v in range(100, 100 + ROUNDS)}
    assert coord.rounds[:ROUNDS] == [[v] for v in range(100, 100 + ROUNDS)]
    assert sorted(coord.rounds[ROUNDS]) == [-3, 1, 2, 4] and len(coord.rounds) == ROUNDS + 1
    assert waiting[1] == ("i", 1, False) and waiting[4] == ("i", 4, False)
    assert isinstance(waiting[-3], InvalidSubmission)  # its own error, the others unharmed


def _outcome(singles: Singles, v: int, coord: Coordinator) -> Any:
    try:
        return singles.submit((v,), coord.send)
    except Exception as e:  # noqa: BLE001 - what the test checks
        return e


def test_a_round_that_fails_fails_its_callers_and_the_next_round_goes_on() -> None:
    coord = Coordinator()
    coord.release.set()
    coord.fail_round = 1
    singles = Singles()
    with pytest.raises(SchedulerBroken):
        singles.submit((1,), coord.send)
    assert singles.submit((2,), coord.send) == ("i", 2, False)


@pytest.mark.parametrize("callers", [2, 16])
def test_many_threads_each_get_their_own_outcome(callers: int) -> None:
    coord = Coordinator()
    coord.release.set()
    singles = Singles()
    got = run_threads(singles, coord, list(range(1, callers * 20 + 1)))
    assert got == {v: ("i", v, False) for v in range(1, callers * 20 + 1)}
    sent = [v for r in coord.rounds for v in r]
    assert sorted(sent) == list(range(1, callers * 20 + 1))  # each once
