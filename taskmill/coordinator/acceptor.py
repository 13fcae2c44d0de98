"""Accepting and authenticating clients, off the loop thread.

One thread accepts; each new peer gets a short-lived thread for the HMAC
challenge, bounded in time (``HANDSHAKE_TIMEOUT``) and in number
(``MAX_HANDSHAKES``), so silent or hostile peers delay nobody and hold nothing
for long. Running out of file descriptors makes the acceptor back off instead
of spinning. Only authenticated connections reach the loop, through
``deliver``. Imports the protocol leaf only.
"""

from __future__ import annotations

import errno
import threading
import time
from multiprocessing import connection as mpc
from multiprocessing.connection import Connection, Listener
from typing import Callable

import structlog

from taskmill import protocol

__all__ = ["Acceptor"]

log = structlog.get_logger("taskmill.coordinator")

#: Seconds a new peer has to pass the authkey challenge before it is dropped.
HANDSHAKE_TIMEOUT = 5.0
#: Most handshakes in flight; further peers are closed at once until one ends.
MAX_HANDSHAKES = 32
#: Seconds an authenticated peer may stall in the middle of a message (either
#: direction) before the loop drops it; a whole message normally moves at once.
CLIENT_STALL_TIMEOUT = 5.0
#: First and longest pause after ``accept`` fails for want of resources (EMFILE …).
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0
#: Seconds between two log lines about the same accept problem.
ACCEPT_LOG_INTERVAL = 10.0

_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Acceptor:
    """Accepts peers on ``listener`` and hands authenticated ones to ``deliver``."""

    def __init__(self, listener: Listener, authkey: bytes, deliver: Callable[[Connection], None]) -> None:
        self._listener = listener
        self._authkey = authkey
        self._deliver = deliver
        self._slots = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._closed = False
        self._last_log: dict[str, float] = {}
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="taskmill-accept")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting (the thread leaves once the listener is closed)."""
        self._closed = True
        self._listener.close()

    def _log_rarely(self, what: str, **kw: object) -> None:
        now = time.monotonic()
        if now - self._last_log.get(what, -ACCEPT_LOG_INTERVAL) >= ACCEPT_LOG_INTERVAL:
            self._last_log[what] = now
            log.warning(what, **kw)

    def _accept_loop(self) -> None:
        backoff = ACCEPT_BACKOFF_MIN
        while not self._closed:
            try:
                conn = self._listener.accept()
            except OSError as e:
                if self._closed or getattr(self._listener, "_listener", None) is None:
                    return
                if e.errno in _RESOURCE_ERRORS:
                    self._log_rarely("accept failed; backing off", error=str(e))
                    time.sleep(backoff)
                    backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
                else:
                    self._log_rarely("accept failed", error=str(e))
                    time.sleep(ACCEPT_BACKOFF_MIN)
                continue
            backoff = ACCEPT_BACKOFF_MIN
            if not self._slots.acquire(blocking=False):
                self._log_rarely("too many clients handshaking at once; refusing a peer")
                conn.close()
                continue
            try:
                threading.Thread(target=self._handshake, args=(conn,), daemon=True, name="taskmill-auth").start()
            except RuntimeError as e:  # cannot start a thread: out of resources too
                self._slots.release()
                conn.close()
                self._log_rarely("cannot start a handshake thread", error=str(e))

    def _handshake(self, conn: Connection) -> None:
        try:
            protocol.set_io_timeout(conn, HANDSHAKE_TIMEOUT)
            mpc.deliver_challenge(conn, self._authkey)
            mpc.answer_challenge(conn, self._authkey)
            protocol.set_io_timeout(conn, CLIENT_STALL_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - AuthenticationError, timeout, EOF, reset: drop that peer
            self._log_rarely("client refused", error=f"{type(e).__name__}: {e}")
            conn.close()
            return
        finally:
            self._slots.release()
        self._deliver(conn)
