"""``EventStream``: a subscription, read on its own connection by a thread of its own.

The coordinator writes events to the stream's connection after each commit
(``coordinator/fanout.py``); a reader thread here takes them off the socket
as they come, so the coordinator's side drains at once, and keeps them in a
bounded buffer until the program iterates. A program that stops reading loses
the oldest events, never the newest, and sees how many in ``missed``: it never
slows the scheduler down. A loss is always of the oldest: when the coordinator
had to drop events, the ones held here from before that gap go too, so what
the program reads next is a gap-free run of the newest. Decoding into event classes happens on the reading
side, one event at a time. Imports leaves, ``events`` and the client channel.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from collections import deque
from multiprocessing.connection import Connection
from typing import Any, Callable, Generic, Iterator, TypeVar

from taskmill.errors import SchedulerBroken

__all__ = ["EventStream"]

_COUNT = struct.Struct("!I")  # each frame opens with the count of events in it (``coordinator/fanout.py``)

T = TypeVar("T")


class EventStream(Generic[T]):
    """An iterator of what one subscription receives; a context manager; ``close()`` ends it.

    ``missed`` counts the events dropped because this stream's buffer was full (the
    program read too slowly), here and at the coordinator. Iteration blocks until the
    next event; it ends when the stream is closed or the scheduler shut down, and raises
    ``SchedulerBroken`` when the coordinator went away without ending it. ``get(timeout)``
    waits at most ``timeout`` seconds and returns None when nothing came.

    Example:
        >>> with sched.subscribe() as events:                        # doctest: +SKIP
        ...     for ev in events:
        ...         if isinstance(ev, tm.events.Failed) and not ev.will_retry:
        ...             print(ev.header.task_id, ev.error)
    """

    def __init__(self, conn: Connection, buffer: int, decode: Callable[[Any], T], what: str) -> None:
        self._conn = conn
        self._buffer = buffer
        self._decode = decode
        self._frames: deque[tuple[bytes, int]] = deque()  # (frame, its event count), by the reader thread
        self._held = 0  # events in ``_frames`` (under ``_ready``)
        self._taken: deque[Any] = deque()  # the frame the program reads now, unpickled: read without the lock
        self._ready = threading.Condition()
        self._dropped = 0  # dropped here: the program did not keep up
        self._missed_upstream = 0  # dropped at the coordinator (told in the stream)
        self._ended = False  # the coordinator ended the stream, or it was closed
        self._broken: str | None = None  # why the stream broke off
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True, name=f"taskmill-{what}")
        self._thread.start()

    # ------------------------------------------------------------------ the reader thread

    def _read(self) -> None:
        conn = self._conn
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError) as e:
                with self._ready:
                    if not self._ended and not self._closed:
                        self._broken = f"the coordinator went away ({type(e).__name__})"
                    self._ended = True
                    self._ready.notify_all()
                return
            (count,) = _COUNT.unpack_from(data)
            control = pickle.loads(memoryview(data)[_COUNT.size:]) if count == 0 else 0
            with self._ready:
                frames = self._frames
                if control is None:  # the scheduler shut down: the stream ends here
                    self._ended = True
                elif count == 0 and type(control) is int:  # the coordinator dropped that many: what we hold
                    # is older than the gap
                    self._missed_upstream += control
                    self._dropped += self._held
                    frames.clear()  # (lost oldest first: what the program reads next has no gap)
                    self._held = 0
                elif count:  # kept as it came (unpickled when read); the oldest go first past the buffer
                    frames.append((data, count))
                    self._held += count
                    while self._held > self._buffer and len(frames) > 1:
                        gone = frames.popleft()[1]
                        self._held -= gone
                        self._dropped += gone
                self._ready.notify_all()
            if control is None:
                return

    # ------------------------------------------------------------------ reading

    @property
    def missed(self) -> int:
        """Events this stream did not get because its buffer was full."""
        return self._dropped + self._missed_upstream

    def get(self, timeout: float | None = None) -> T | None:
        """The next event, waiting at most ``timeout`` seconds (None: for ever); None if none came
        in time or the stream ended."""
        taken = self._taken
        if not taken:
            with self._ready:
                if not self._frames and not self._ended:
                    self._ready.wait_for(lambda: self._frames or self._ended, timeout)
                if not self._frames:
                    if self._broken is not None and not self._closed:
                        raise SchedulerBroken(self._broken)
                    return None
                data, count = self._frames.popleft()
                self._held -= count
            taken = self._taken = deque(pickle.loads(memoryview(data)[_COUNT.size:]))
        return self._decode(taken.popleft())

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        item = self.get()
        if item is None:
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop receiving (the coordinator forgets the subscription). Idempotent."""
        with self._ready:
            if self._closed:
                return
            self._closed = True
            self._ended = True
            self._ready.notify_all()
        try:  # wake the reader thread (a close alone does not end a blocked recv) and tell the coordinator
            sock = socket.socket(fileno=self._conn.fileno())
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.detach()
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        try:
            self._conn.close()
        except OSError:
            pass

    def __enter__(self) -> EventStream[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit anything may be half gone
            pass
