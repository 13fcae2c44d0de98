"""Host side of the channel: launch the coordinator and talk to it, every call bounded.

Embedded mode: a fresh interpreter (``python -m taskmill.coordinator``) in its
own session, config (with the cloudpickled registry) on stdin, a result on a
dedicated handshake pipe; the coordinator watches a pidfd of this process (and
stdin) to know when the host is gone. Calls go over an authenticated AF_UNIX
``multiprocessing.connection``, one connection per host thread while the
thread lives (then it is reused or closed), so calls are thread-safe and a long
``wait`` blocks only its thread. Every call has a deadline: a coordinator that
does not answer in time gives ``SchedulerBroken`` (``WaitTimeout`` for waits)
and ``close()`` then kills it. Imports only leaves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from multiprocessing import connection as mpc
from multiprocessing.connection import Connection
from typing import Any

from taskmill import protocol
from taskmill.config import CoordinatorConfig, Launch
from taskmill.errors import SchedulerBroken, SchedulerClosed, StartupError, TaskmillError, WaitTimeout

__all__ = ["CoordinatorProcess"]

#: Seconds the host waits for the coordinator to report that it started.
START_TIMEOUT = 60.0
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
#: Seconds ``close()`` allows beyond the graceful-shutdown timeout before it kills the coordinator.
STOP_GRACE = 15.0
#: Connections of ended threads kept for reuse by new threads (the rest are closed).
SPARE_CONNECTIONS = 4


class _Lease:
    """A thread's hold on one connection; when the thread ends, the lease is collected
    and its finalizer gives the connection back (see ``CoordinatorProcess._give_back``)."""

    __slots__ = ("box", "__weakref__")

    def __init__(self, conn: Connection) -> None:
        self.box: list[Any] = [conn, os.getpid()]


class CoordinatorProcess:
    """A running embedded coordinator and the host's connections to it."""

    def __init__(self, config: CoordinatorConfig, launch: Launch) -> None:
        self.runtime_dir = tempfile.mkdtemp(prefix="taskmill-")
        os.chmod(self.runtime_dir, 0o700)
        self.socket_path = os.path.join(self.runtime_dir, "control.sock")
        self.authkey = os.urandom(32)
        self.store_path = config.store_path
        self.stop_timeout = config.shutdown.timeout + STOP_GRACE
        self._owner_pid = os.getpid()  # a forked child of the host must not stop our coordinator
        self._local = threading.local()
        self._conns: set[Connection] = set()
        self._spare: list[tuple[Connection, int]] = []
        self._lock = threading.Lock()
        self.closed = False
        self.unresponsive = False  # a call went unanswered: close() kills instead of asking
        self.info: dict[str, Any] = {}
        launch = dataclasses.replace(launch, socket_path=self.socket_path, authkey=self.authkey,
                                     runtime_dir=self.runtime_dir, host_pid=os.getpid())
        hs_r, hs_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskmill.coordinator", "--handshake-fd", str(hs_w)],
                stdin=subprocess.PIPE, pass_fds=(hs_w,), start_new_session=True, close_fds=True)
        except BaseException:
            os.close(hs_r)
            os.close(hs_w)
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            raise
        os.close(hs_w)
        try:
            blob = pickle.dumps((config, launch))
            assert self.proc.stdin is not None
            self.proc.stdin.write(struct.pack("<Q", len(blob)) + blob)
            self.proc.stdin.flush()
            status, value = self._handshake(hs_r)
        except BaseException:
            self._kill()
            raise
        finally:
            os.close(hs_r)
        if status != "ok":
            try:  # it is cleaning up (segment, fork server, tracker); killing it now would leak them
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            self._kill()
            raise value.exception() from None
        self.info = value
        self.pid: int = value["pid"]

    def _handshake(self, fd: int) -> tuple[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartupError(f"the coordinator did not start within {START_TIMEOUT:g}s")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.append(data)
        if not chunks:
            code = self.proc.wait(timeout=5)
            raise StartupError(f"the coordinator exited during start-up (exit code {code}); see its stderr")
        return pickle.loads(b"".join(chunks))

    # ------------------------------------------------------------------ connections

    def _connect(self) -> Connection:
        """A new authenticated connection, within ``CONNECT_TIMEOUT`` (and the call timeout).

        A full listen backlog, or a coordinator that closes the connection before its
        challenge (too many handshakes in flight), is retried until the deadline.
        """
        limit = min(CONNECT_TIMEOUT, CALL_TIMEOUT)
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
            conn = Connection(s.detach())
            try:
                protocol.set_io_timeout(conn, left)
                mpc.answer_challenge(conn, self.authkey)
                mpc.deliver_challenge(conn, self.authkey)
                protocol.set_io_timeout(conn, CALL_TIMEOUT)
            except EOFError:  # refused before any challenge: try again while time is left
                conn.close()
                if time.monotonic() >= deadline:
                    raise TimeoutError("the coordinator kept refusing new connections") from None
                time.sleep(0.05)
                continue
            except BaseException:
                conn.close()
                raise
            with self._lock:
                self._conns.add(conn)
            return conn

    def _conn(self) -> tuple[Connection, _Lease]:
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
                conn = self._connect()
            except (BlockingIOError, TimeoutError) as e:  # it accepted nothing, or never answered the challenge
                self.unresponsive = self.proc.poll() is None
                limit = min(CONNECT_TIMEOUT, CALL_TIMEOUT)
                raise self._broken(e, f"did not answer within {limit:g}s while connecting (out of file "
                                      "descriptors, stopped or stuck?); close() will kill it") from e
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
        code = self.proc.poll()
        state = f"exited with code {code}" if code is not None else (what or "is not answering")
        return SchedulerBroken(f"the coordinator (pid {self.proc.pid}) {state}: {cause}")

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
        conn, lease = self._conn()
        deadline = None if limit is None else time.monotonic() + limit
        try:
            reply = self._converse(conn, lease, msg, limit, deadline, is_wait)
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

    def _converse(self, conn: Connection, lease: _Lease, msg: Any, limit: float | None, deadline: float | None,
                  is_wait: bool) -> Any:
        conn.send(msg)
        while True:
            step = LIVENESS_INTERVAL
            if deadline is not None:
                step = min(step, max(deadline - time.monotonic(), 0.0))
            if conn.poll(step):
                return conn.recv()
            if self.proc.poll() is not None:
                raise EOFError("the coordinator process is gone")
            if deadline is not None and time.monotonic() >= deadline:
                if is_wait:
                    raise WaitTimeout("the wait ran out of time (the coordinator did not answer)")
                self.unresponsive = True
                raise SchedulerBroken(
                    f"the coordinator (pid {self.proc.pid}) did not answer within {limit:g}s; close() will kill it")

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
                raise SchedulerBroken(f"the coordinator (pid {self.proc.pid}) did not answer a subscription "
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

    # ------------------------------------------------------------------ shutdown

    def stop(self) -> None:
        """Ask the coordinator to shut down per its mode, then wait for it to exit; bounded.

        A coordinator that does not answer (or that already missed a call's deadline)
        is killed. Does nothing in a forked child of the host: the coordinator belongs
        to the parent.
        """
        if self.closed or os.getpid() != self._owner_pid:
            return
        try:
            answered = False
            if not self.unresponsive and self.alive():
                try:
                    self.request(protocol.Stop(), timeout=self.stop_timeout)
                    answered = True
                except Exception:  # noqa: BLE001 - a broken or stuck coordinator is killed below
                    pass
            self.closed = True
            try:
                self.proc.wait(timeout=STOP_GRACE if answered else 0.5)
            except subprocess.TimeoutExpired:
                self._kill()
        finally:
            self.closed = True
            self._cleanup()

    def _kill(self) -> None:
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._remove_state_file()
        self._cleanup()

    def _remove_state_file(self) -> None:
        """A killed coordinator cannot remove its state file; do it if it still names that process."""
        path = protocol.state_file_for(self.store_path)
        if path is None:
            return
        try:
            with open(path) as f:
                pid = json.load(f).get("pid")
            if pid == self.proc.pid and self.proc.poll() is not None:
                os.unlink(path)
        except (OSError, ValueError, AttributeError):
            pass

    def _cleanup(self) -> None:
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
            self._spare.clear()
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def alive(self) -> bool:
        return self.proc.poll() is None
