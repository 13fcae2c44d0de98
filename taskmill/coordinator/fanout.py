"""Event fan-out: what subscribers are sent, and how a slow one is kept from stalling anything.

A subscriber is a client connection that sent ``protocol.Subscribe``; from then
on it only receives. Events come here after the commit that makes them true
(``Replies``); each batch is pickled once per distinct filter and the bytes are
shared by every subscriber with that filter. Writes are non-blocking: what a
subscriber's socket does not take waits in its queue, and the queue holds at
most ``buffer`` events (and ``MAX_QUEUED_BYTES``): beyond that the oldest
frames are dropped and counted, and the subscriber is told how many it missed
before its next events. A subscriber that goes away (its end closes, its
process dies) is dropped at once. The loop never waits for one.

Frames (``multiprocessing.connection`` framing: a 4-byte big-endian length),
each a 4-byte count of the events in it and a pickle: a list of event tuples
(``taskmill.events``), or of ``TaskProgress`` records for progress
subscribers; with a count of 0, an int (events missed) or None (the scheduler
shut down, the stream ends). The count lets the reading side keep and drop
whole frames without unpickling them. Imports leaves only.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections import deque
from multiprocessing.connection import Connection
from typing import Any, Callable

import structlog

__all__ = ["MAX_QUEUED_BYTES", "Fanout", "Subscriber"]

log = structlog.get_logger("taskmill.coordinator")

#: Bytes of frames a subscriber's queue may hold, whatever its event count (results can be large).
MAX_QUEUED_BYTES = 64 * 1024 * 1024
#: Events pickled into one frame at most (a frame is the unit a slow subscriber loses).
FRAME_EVENTS = 2048
_GLOBAL = frozenset({"Paused", "Resumed"})  # domain streams see these too
_HEADER = struct.Struct("!i")
_COUNT = struct.Struct("!I")


class Subscriber:
    """One subscription: its connection, its filter and what waits to be written to it."""

    __slots__ = ("conn", "fd", "kind", "domain", "task_type", "buffer", "queue", "queued", "queued_bytes",
                 "missed", "current", "offset", "writing")

    def __init__(self, conn: Connection, kind: str, domain: str | None, task_type: str | None, buffer: int) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        self.kind = kind  # "events" | "progress"
        self.domain = domain
        self.task_type = task_type
        self.buffer = buffer
        self.queue: deque[tuple[bytes, int]] = deque()  # (frame with its header, events in it)
        self.queued = 0  # events in the queue
        self.queued_bytes = 0
        self.missed = 0  # events dropped and not yet told
        self.current: bytes | None = None  # the frame being written (never dropped: the stream stays whole)
        self.offset = 0
        self.writing = False  # the loop watches it for POLLOUT

    @property
    def key(self) -> tuple[str, str | None, str | None, int]:
        """Subscribers with the same key share the frames of a batch."""
        return (self.kind, self.domain, self.task_type, min(FRAME_EVENTS, self.buffer))

    def wants(self, ev: tuple) -> bool:
        """Does this (events) subscription take event ``ev`` ``(kind, domain, task_type, …)``?"""
        if self.task_type is not None:
            return ev[2] == self.task_type
        if self.domain is not None:
            return ev[1] == self.domain or (ev[1] is None and ev[0] in _GLOBAL)
        return True


def frame(obj: Any, count: int = 0) -> bytes:
    """``obj`` (``count`` events, or a control value with 0) as one frame on the wire."""
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data) + _COUNT.size) + _COUNT.pack(count) + data


class Fanout:
    """The subscribers and their queues (see the module docstring)."""

    def __init__(self, watch: Callable[[Subscriber, bool], None], forget: Callable[[Subscriber], None]) -> None:
        self._watch = watch  # (subscriber, also writable?): the loop polls its fd
        self._forget = forget  # the loop stops polling it and closes the connection
        self.subscribers: dict[int, Subscriber] = {}  # fd -> subscriber

    @property
    def listening(self) -> bool:
        """Anyone wants events (the core records them only then)."""
        return any(s.kind == "events" for s in self.subscribers.values())

    @property
    def progress_domains(self) -> set[str | None]:
        """The domains progress subscribers want (None: every domain)."""
        return {s.domain for s in self.subscribers.values() if s.kind == "progress"}

    def add(self, conn: Connection, kind: str, domain: str | None, task_type: str | None, buffer: int) -> None:
        os.set_blocking(conn.fileno(), False)
        sub = Subscriber(conn, kind, domain, task_type, buffer)
        self.subscribers[sub.fd] = sub
        self._watch(sub, False)

    def drop(self, sub: Subscriber) -> None:
        if self.subscribers.pop(sub.fd, None) is not None:
            self._forget(sub)

    # ------------------------------------------------------------------ sending

    def publish(self, events: list[tuple]) -> None:
        """Events whose commit is done, to every events subscriber that wants them."""
        frames: dict[tuple[str, str | None, str | None, int], list[tuple[bytes, int]]] = {}
        for sub in list(self.subscribers.values()):
            if sub.kind != "events":
                continue
            key = sub.key
            mine = frames.get(key)
            if mine is None:
                wanted = events if sub.domain is None and sub.task_type is None else [
                    ev for ev in events if sub.wants(ev)]
                step = key[3]
                mine = frames[key] = [(frame(part, len(part)), len(part))
                                      for part in (wanted[i:i + step] for i in range(0, len(wanted), step))]
            self._enqueue(sub, mine)

    def publish_progress(self, domain: str | None, records: list[Any]) -> None:
        """One progress tick (``TaskProgress`` records of ``domain``, or of all) to its subscribers."""
        if not records:
            return  # nothing reports bytes now: no frame (a count of 0 is a control frame)
        frames = [(frame(records, len(records)), len(records))]
        for sub in list(self.subscribers.values()):
            if sub.kind == "progress" and sub.domain == domain:
                self._enqueue(sub, frames)

    def end(self) -> None:
        """The scheduler stops: every stream gets its end, as far as its socket takes it now."""
        for sub in list(self.subscribers.values()):
            self._enqueue(sub, [(frame(None), 0)], force=True)

    def _enqueue(self, sub: Subscriber, frames: list[tuple[bytes, int]], force: bool = False) -> None:
        for data, n in frames:
            sub.queue.append((data, n))
            sub.queued += n
            sub.queued_bytes += len(data)
        while not force and sub.queue and (sub.queued > sub.buffer or sub.queued_bytes > MAX_QUEUED_BYTES):
            data, n = sub.queue.popleft()  # the oldest go first; the subscriber is told how many
            sub.queued -= n
            sub.queued_bytes -= len(data)
            sub.missed += n
        self.write(sub)

    def write(self, sub: Subscriber) -> None:
        """Write what the socket takes now; watch for room when it is full."""
        try:
            while True:
                if sub.current is None:
                    if sub.missed:
                        sub.current, sub.missed = frame(sub.missed), 0
                    elif sub.queue:
                        data, n = sub.queue.popleft()
                        sub.queued -= n
                        sub.queued_bytes -= len(data)
                        sub.current = data
                    else:
                        break
                    sub.offset = 0
                written = os.write(sub.fd, memoryview(sub.current)[sub.offset:])
                sub.offset += written
                if sub.offset < len(sub.current):
                    break  # the socket is full
                sub.current = None
        except BlockingIOError:
            pass
        except OSError:  # its end is gone (EPIPE, ECONNRESET …)
            self.drop(sub)
            return
        pending = sub.current is not None or bool(sub.queue) or sub.missed > 0
        if pending != sub.writing:
            sub.writing = pending
            self._watch(sub, pending)

    def on_ready(self, sub: Subscriber, readable: bool) -> None:
        """Its fd polled ready: writable (write more) or readable (a subscriber never sends: it hung up)."""
        if readable:
            self.drop(sub)
        else:
            self.write(sub)
