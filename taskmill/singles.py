"""Single submissions from several threads of one process, sent to the coordinator together.

A thread that calls ``submit()`` while fewer than ``ROUNDS`` rounds are being
sent becomes a leader: it sends every single submission waiting at that moment
in one request (``Submit(each=True)``: each item is checked and applied on its
own, as if sent alone, in arrival order) and hands each caller its own outcome
or error. Threads that call while ``ROUNDS`` rounds are out wait; when a reply
is in, the first of them leads the next round with everything that arrived by
then. One thread alone pays a lock and
nothing else; sixteen threads pay one round trip, one request to decode and one
journal record for as many submissions as arrived together (group commit from
the caller's side: the coordinator does the same for requests from several
processes). Imports the protocol, the errors and the standard library only.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from taskmill import protocol
from taskmill.errors import SchedulerBroken

__all__ = ["Singles"]

#: Rounds sent at once. Two (one answered while the next is on its way) measured no faster here
#: than one: the callers' own Python, not the wait, bounds the rate on two cores.
ROUNDS = 1

Send = Callable[[list[tuple[Any, ...]]], list[Any]]  # items -> one outcome (or ErrorReply) per item


class _Slot:
    __slots__ = ("item", "value", "error", "lead", "done")

    def __init__(self, item: tuple[Any, ...]) -> None:
        self.item = item
        self.value: Any = None
        self.error: BaseException | None = None
        self.lead = False  # woken to lead the next round, not with an answer
        self.done = threading.Event()


class Singles:
    """Single submissions of several threads in one request (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._rounds = 0  # rounds being sent

    def submit(self, item: tuple[Any, ...], send: Send) -> Any:
        """``item``'s outcome in the wire form (``outcomes.outcomes_from_wire``); raises its error."""
        slot = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            lead = self._rounds < ROUNDS
            if lead:
                self._rounds += 1
        if not lead:
            slot.done.wait()
            if slot.lead:  # the round before ours is over and we are first in line
                slot.lead = False
                slot.done.clear()
                lead = True
        if lead:
            self._round(send)
        if slot.error is not None:
            raise slot.error
        if isinstance(slot.value, protocol.ErrorReply):
            raise slot.value.exception()
        return slot.value

    def _round(self, send: Send) -> None:
        with self._lock:
            taken, self._waiting = self._waiting, []
        try:
            values = send([s.item for s in taken])
            if len(values) != len(taken):
                raise SchedulerBroken(f"the coordinator answered {len(values)} of {len(taken)} submissions")
            for s, v in zip(taken, values):
                s.value = v
        except BaseException as e:  # noqa: BLE001 - every caller of the round gets it
            for s in taken:
                s.error = e
        finally:
            with self._lock:
                if self._waiting:
                    nxt = self._waiting[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._rounds -= 1
            for s in taken:
                s.done.set()
