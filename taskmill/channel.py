"""The host's channel to a coordinator: authenticated connections and bounded calls.

Calls go over an authenticated AF_UNIX ``multiprocessing.connection``, one
connection per host thread while the thread lives (then it is reused or
closed), so calls are thread-safe and a long ``wait`` blocks only its thread.
Every call has a deadline: a coordinator that does not answer in time gives
``SchedulerBroken`` (``WaitTimeout`` for waits). ``Channel`` does not know how
its coordinator came to be: ``client.CoordinatorProcess`` launched it (and
stops it), ``connect.Attached`` found it through the store's state file (and
only lets go of it). Imports only leaves.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any

from taskmill import auth, protocol
from taskmill.errors import SchedulerBroken, SchedulerClosed, TaskmillError, WaitTimeout

__all__ = ["CALL_TIMEOUT", "CONNECT_TIMEOUT", "Channel"]

#: Seconds a call may go unanswered before the host gives up on the coordinator
#: (``SchedulerBroken``). Queries have a shorter limit inside the coordinator
#: (30 s), so only a coordinator that is stuck or stopped reaches this one.
CALL_TIMEOUT = 60.0
#: Seconds a wait with a timeout gives the coordinator, beyond that timeout, to answer itself.
WAIT_GRACE = 1.0
#: Seconds between checks that the coordinator process still lives, while a call waits.
LIVENESS_INTERVAL = 1.0
#: Seconds to connect and pass the authkey challenge.
CONNECT_TIMEOUT = 10.0
#: Connections of ended threads kept for reuse by new threads (the rest are closed).
SPARE_CONNECTIONS = 4


class _Lease:
    """A thread's hold on one connection; when the thread ends, the lease is collected
    and its finalizer gives the connection back (see ``Channel._give_back``)."""

    __slots__ = ("box", "__weakref__")

    def __init__(self, conn: Connection) -> None:
        self.box: list[Any] = [conn, os.getpid()]


class Channel:
    """Connections to one coordinator (``socket_path``, ``authkey``, process ``pid``) and calls over them.

    Subclasses say whether the coordinator still lives (``exit_code``).
    """

    def __init__(self, socket_path: str, authkey: bytes, store_path: str) -> None:
        self.socket_path = socket_path
        self.authkey = authkey
        self.store_path = store_path
        self.pid: int = 0
        self._local = threading.local()
        self._conns: set[Connection] = set()
        self._spare: list[tuple[Connection, int]] = []
        self._lock = threading.Lock()
        self.closed = False
        self.unresponsive = False  # a call went unanswered: a launcher kills instead of asking
        self.info: dict[str, Any] = {}
        self.unresponsive_hint = ""  # what becomes of a coordinator that does not answer (said in errors)

    # ------------------------------------------------------------------ the coordinator's life (subclasses)

    def exit_code(self) -> int | None:
        """None while the coordinator lives; else its exit code (or -1 when it is not ours to know)."""
        raise NotImplementedError

    def alive(self) -> bool:
        return self.exit_code() is None

    # ------------------------------------------------------------------ connections

    def _connect(self, within: float | None = None) -> Connection:
        """A new authenticated connection, within ``CONNECT_TIMEOUT`` (and the call timeout, and
        ``within``: what is left of the call that needs it).

        A full listen backlog, or a coordinator that closes the connection before its
        challenge (too many handshakes in flight), is retried until the deadline.
        """
        limit = min(CONNECT_TIMEOUT, CALL_TIMEOUT, CONNECT_TIMEOUT if within is None else within)
        deadline = time.monotonic() + limit
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(left)
                s.connect(self.socket_path)
                s.settimeout(None)
            except BlockingIOError:  # the listen backlog is full: the acceptor is busy (or out of fds)
                s.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
                continue
            except BaseException:
                s.close()
                raise
            try:
                auth.client_handshake(s, self.authkey, deadline)
            except EOFError:  # dropped before any challenge (too many peers at once): try again while time is left
                s.close()
                if time.monotonic() >= deadline:
                    raise TimeoutError("the coordinator kept refusing new connections") from None
                time.sleep(0.05)
                continue
            except BaseException:
                s.close()
                raise
            conn = Connection(s.detach())
            protocol.set_io_timeout(conn, CALL_TIMEOUT)
            with self._lock:
                self._conns.add(conn)
            return conn

    def _conn(self, within: float | None = None, is_wait: bool = False) -> tuple[Connection, _Lease]:
        lease: _Lease | None = getattr(self._local, "lease", None)
        if lease is not None and lease.box[1] == os.getpid() and lease.box[0] is not None:
            return lease.box[0], lease
        if self.closed:
            raise SchedulerClosed("the scheduler is closed")
        conn = None
        with self._lock:
            while self._spare:
                spare, pid = self._spare.pop()
                if pid == os.getpid():
                    conn = spare
                    break
        if conn is None:
            try:
                conn = self._connect(within)
            except (BlockingIOError, TimeoutError) as e:  # it accepted nothing, or never answered the challenge
                limit = min(CONNECT_TIMEOUT, CALL_TIMEOUT)
                if is_wait and within is not None and within <= limit:  # the wait's own deadline came first
                    raise WaitTimeout(f"no answer within {within:g}s (the coordinator did not even take the "
                                      "connection)") from e
                if within is not None and within < limit:
                    raise self._broken(e, f"did not answer within {within:g}s while connecting") from e
                self.unresponsive = self.alive()
                raise self._broken(e, f"did not answer within {limit:g}s while connecting (out of file "
                                      f"descriptors, stopped or stuck?){self.unresponsive_hint}") from e
            except (OSError, EOFError) as e:
                raise self._broken(e, "cannot be connected to") from e
        lease = _Lease(conn)
        weakref.finalize(lease, self._give_back, lease.box)
        self._local.lease = lease
        return conn, lease

    def _give_back(self, box: list[Any]) -> None:
        """A thread ended: keep its connection for the next thread, or close it."""
        conn, pid = box
        box[0] = None
        if conn is None or pid != os.getpid():
            return  # nothing left, or inherited through fork: the parent's, never ours to use
        with self._lock:
            if not self.closed and len(self._spare) < SPARE_CONNECTIONS:
                self._spare.append((conn, pid))
                return
            self._conns.discard(conn)
        conn.close()

    def _discard(self, lease: _Lease) -> None:
        """Close a connection whose conversation went wrong (a reply may still be on its way)."""
        conn = lease.box[0]
        lease.box[0] = None
        self._local.lease = None
        if conn is not None:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _broken(self, cause: BaseException | str, what: str = "") -> TaskmillError:
        if self.closed:
            return SchedulerClosed("the scheduler is closed")
        code = self.exit_code()
        if code is None and isinstance(cause, (EOFError, ConnectionError)):
            # the connection closed as the coordinator died: give its exit a moment to show
            deadline = time.monotonic() + 0.5
            while code is None and time.monotonic() < deadline:
                time.sleep(0.02)
                code = self.exit_code()
        state = (what or "is not answering") if code is None else \
            "has exited" if code == -1 else f"exited with code {code}"
        text = str(cause) if str(cause) else "it closed the connection" if isinstance(cause, EOFError) \
            else type(cause).__name__
        return SchedulerBroken(f"the coordinator (pid {self.pid}) {state}: {text}")

    def close_connections(self) -> None:
        """Close every connection this channel opened (streams included)."""
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
            self._spare.clear()
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    # ------------------------------------------------------------------ calls

    @staticmethod
    def _deadline_of(msg: Any) -> tuple[float | None, bool]:
        """(seconds the host waits for the reply or None, whether running out is a WaitTimeout)."""
        if isinstance(msg, (protocol.Wait, protocol.WaitIdle)):
            if msg.timeout is None:
                return None, True
            return float(msg.timeout) + WAIT_GRACE, True
        return CALL_TIMEOUT, False

    def request(self, msg: Any, timeout: float | None = None) -> Any:
        """Send one request and return the reply's value (raising a returned error).

        The reply must come within the request's deadline (``timeout``, else one derived
        from the message); a coordinator that misses it is treated as broken.
        """
        if self.closed:
            raise SchedulerClosed("the scheduler is closed")
        limit, is_wait = self._deadline_of(msg)
        if timeout is not None:
            limit, is_wait = timeout, False
        deadline = None if limit is None else time.monotonic() + limit
        conn, lease = self._conn(limit, is_wait)  # (connecting counts against the call's deadline)
        try:
            reply = self._converse(conn, msg, limit, deadline, is_wait)
        except TaskmillError:  # WaitTimeout is an OSError too (TimeoutError): not a broken channel
            self._discard(lease)
            raise
        except (OSError, EOFError) as e:
            self._discard(lease)
            raise self._broken(e) from e
        except BaseException:  # Ctrl-C, a timeout …: the reply may still come, so this connection is done
            self._discard(lease)
            raise
        if isinstance(reply, protocol.ErrorReply):
            raise reply.exception()
        return reply.value

    def _converse(self, conn: Connection, msg: Any, limit: float | None, deadline: float | None,
                  is_wait: bool) -> Any:
        protocol.send(conn, msg)
        ready = select.poll()  # (conn.poll builds a selector per call; select.select stops at fd 1024)
        ready.register(conn.fileno(), select.POLLIN)
        while True:
            step = LIVENESS_INTERVAL
            if deadline is not None:
                step = min(step, max(deadline - time.monotonic(), 0.0))
            if ready.poll(step * 1000.0):  # readable, or hung up: recv says which
                return conn.recv()
            if not self.alive():
                raise EOFError("the coordinator process is gone")
            if deadline is not None and time.monotonic() >= deadline:
                if is_wait:
                    raise WaitTimeout("the wait ran out of time (the coordinator did not answer)")
                self.unresponsive = True
                raise SchedulerBroken(f"the coordinator (pid {self.pid}) did not answer within {limit:g}s"
                                      f"{self.unresponsive_hint}")

    def call(self, name: str, *args: Any) -> Any:
        return self.request(protocol.Call(name, args))

    def open_stream(self, msg: protocol.Subscribe) -> Connection:
        """A new connection of its own, turned into a stream by ``msg`` (answered within the call
        deadline); the caller reads it (``stream.EventStream``) and closes it."""
        if self.closed:
            raise SchedulerClosed("the scheduler is closed")
        try:
            conn = self._connect()
        except (BlockingIOError, TimeoutError, OSError, EOFError) as e:
            raise self._broken(e, "cannot be connected to") from e
        try:
            conn.send(msg)
            if not conn.poll(CALL_TIMEOUT):
                raise SchedulerBroken(f"the coordinator (pid {self.pid}) did not answer a subscription "
                                      f"within {CALL_TIMEOUT:g}s")
            reply = conn.recv()
            if isinstance(reply, protocol.ErrorReply):
                raise reply.exception()
            protocol.set_io_timeout(conn, 0)  # a stream waits for events as long as they take
        except BaseException as e:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            if isinstance(e, (OSError, EOFError)) and not isinstance(e, TaskmillError):
                raise self._broken(e) from e
            raise
        return conn

    def stop(self) -> None:
        """Let go of the coordinator (a launcher also stops it)."""
        raise NotImplementedError
