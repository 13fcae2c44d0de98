"""Accepting and authenticating clients, off the loop thread.

One thread runs every handshake (``taskmill.auth``) on non-blocking sockets
under a selector: a new peer costs a socket and a few dozen bytes, never a
thread. A peer must be of this user (``SO_PEERCRED``) and answer the challenge
within ``HANDSHAKE_TIMEOUT``; at most ``MAX_PENDING`` peers wait at once, and a
newcomer beyond that (or a want of descriptors) drops the *oldest* waiting
peer, so a crowd of silent peers delays an honest client by nothing. With no
waiting peer to drop, running out of descriptors makes the acceptor pause
accepting instead of spinning. Only authenticated connections reach the loop,
through ``deliver``. Imports the protocol and auth leaves only.
"""

from __future__ import annotations

import collections
import errno
import os
import selectors
import socket
import struct
import threading
import time
from multiprocessing.connection import Connection
from typing import Callable

import structlog

from taskmill import auth, protocol

__all__ = ["Acceptor"]

log = structlog.get_logger("taskmill.coordinator")

#: Seconds a new peer has to pass the key's challenge before it is dropped.
HANDSHAKE_TIMEOUT = 5.0
#: Most peers in the middle of their handshake; a newcomer beyond it drops the oldest.
MAX_PENDING = 256
#: Seconds an authenticated peer may stall in the middle of a message (either
#: direction) before the loop drops it; a whole message normally moves at once.
CLIENT_STALL_TIMEOUT = 5.0
#: First and longest pause after ``accept`` fails for want of resources (EMFILE …).
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0
#: Seconds between two log lines about the same accept problem.
ACCEPT_LOG_INTERVAL = 10.0
#: Most peers accepted in one round before the waiting ones are served.
ACCEPT_BURST = 64

_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_UCRED = struct.Struct("3i")


class _Peer:
    """A peer in the middle of its handshake."""

    __slots__ = ("sock", "deadline", "challenge", "got")

    def __init__(self, sock: socket.socket, deadline: float, challenge: bytes) -> None:
        self.sock = sock
        self.deadline = deadline
        self.challenge = challenge
        self.got = b""


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket (None if unknown)."""
    try:
        _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except (OSError, AttributeError, struct.error):
        return None
    return uid


class Acceptor:
    """Accepts peers on ``listener`` and hands authenticated ones to ``deliver``."""

    def __init__(self, listener: socket.socket, authkey: bytes, deliver: Callable[[Connection], None]) -> None:
        self._listener = listener
        self._authkey = authkey
        self._deliver = deliver
        self._uid = os.getuid()
        self._pending: collections.OrderedDict[int, _Peer] = collections.OrderedDict()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._paused_until = 0.0  # accepting paused for want of descriptors until then
        self._backoff = ACCEPT_BACKOFF_MIN
        self._last_log: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True, name="taskmill-accept")

    def start(self) -> None:
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, drop the waiting peers and close the listener."""
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        for peer in list(self._pending.values()):
            self._drop(peer)
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def pending(self) -> int:
        """Peers in the middle of their handshake now."""
        return len(self._pending)

    def _log_rarely(self, what: str, **kw: object) -> None:
        now = time.monotonic()
        if now - self._last_log.get(what, -ACCEPT_LOG_INTERVAL) >= ACCEPT_LOG_INTERVAL:
            self._last_log[what] = now
            log.warning(what, **kw)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        listening = True
        while not self._closed:
            now = time.monotonic()
            if not listening and now >= self._paused_until:
                self._selector.register(self._listener, selectors.EVENT_READ, None)
                listening = True
            wake_at = [next(iter(self._pending.values())).deadline] if self._pending else []  # oldest: earliest
            if not listening:
                wake_at.append(self._paused_until)
            timeout = max(min(wake_at) - now, 0.0) if wake_at else None
            try:
                ready = self._selector.select(timeout)
            except OSError as e:  # (EINTR is retried by select itself)
                self._log_rarely("select failed", error=str(e))
                time.sleep(ACCEPT_BACKOFF_MIN)
                continue
            for key, _mask in ready:
                if self._closed:
                    return
                if key.fileobj is self._listener:
                    if not self._accept_some():
                        self._selector.unregister(self._listener)
                        listening = False
                elif key.fileobj == self._wake_r:
                    try:
                        os.read(self._wake_r, 64)
                    except OSError:
                        pass
                else:
                    self._read(key.data)
            self._expire(time.monotonic())

    def _accept_some(self) -> bool:
        """Accept what is queued (up to a burst); False to pause accepting for a while."""
        for _ in range(ACCEPT_BURST):
            try:
                sock, _addr = self._listener.accept()
            except BlockingIOError:
                break
            except OSError as e:
                if self._closed:
                    return True
                if e.errno in _RESOURCE_ERRORS:
                    if self._pending:  # a waiting peer's descriptor is worth less than a new peer's
                        self._drop(next(iter(self._pending.values())))
                        continue
                    self._log_rarely("accept failed; backing off", error=str(e))
                    self._paused_until = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF_MAX)
                    return False
                self._log_rarely("accept failed", error=str(e))
                break
            self._backoff = ACCEPT_BACKOFF_MIN
            self._greet(sock)
        return True

    def _greet(self, sock: socket.socket) -> None:
        uid = peer_uid(sock)
        if uid != self._uid:
            self._log_rarely("client refused: another user's process", uid=uid)
            sock.close()
            return
        if len(self._pending) >= MAX_PENDING:
            self._log_rarely("too many peers handshaking at once; dropping the oldest", waiting=len(self._pending))
            self._drop(next(iter(self._pending.values())))
        sock.setblocking(False)
        peer = _Peer(sock, time.monotonic() + HANDSHAKE_TIMEOUT, auth.challenge())
        try:
            sent = sock.send(peer.challenge)  # a fresh socket's buffer is empty: it goes at once
        except OSError:
            sent = -1
        if sent != len(peer.challenge):
            sock.close()
            return
        self._pending[sock.fileno()] = peer
        self._selector.register(sock, selectors.EVENT_READ, peer)

    def _read(self, peer: _Peer) -> None:
        try:
            chunk = peer.sock.recv(auth.ANSWER_SIZE - len(peer.got))
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(peer)
            return
        peer.got += chunk
        if len(peer.got) < auth.ANSWER_SIZE:
            return
        ok = auth.check_answer(self._authkey, peer.challenge, peer.got)
        try:
            peer.sock.send(auth.verdict(self._authkey, peer.got) if ok else auth.REFUSED)
        except OSError:
            ok = False
        if not ok:
            self._log_rarely("client refused: wrong key")
            self._drop(peer)
            return
        self._forget(peer)
        peer.sock.setblocking(True)
        conn = Connection(peer.sock.detach())
        protocol.set_io_timeout(conn, CLIENT_STALL_TIMEOUT)
        self._deliver(conn)

    def _expire(self, now: float) -> None:
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                return
            self._drop(oldest)

    def _forget(self, peer: _Peer) -> None:
        self._pending.pop(peer.sock.fileno(), None)
        try:
            self._selector.unregister(peer.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, peer: _Peer) -> None:
        self._forget(peer)
        peer.sock.close()
