"""Host side of the channel: launch the coordinator and talk to it.

Embedded mode: a fresh interpreter (``python -m taskmill.coordinator``) in its
own session, config (with the cloudpickled registry) on stdin, a result on a
dedicated handshake pipe, stdin kept open as its lifeline. Calls go over an
authenticated AF_UNIX ``multiprocessing.connection``, one connection per host
thread, so calls are thread-safe and a long ``wait`` blocks only its thread.
Imports only leaves.
"""

from __future__ import annotations

import os
import pickle
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Client, Connection
from typing import Any

from taskmill import protocol
from taskmill.errors import SchedulerBroken, SchedulerClosed, StartupError, TaskmillError

__all__ = ["CoordinatorProcess"]

#: Seconds the host waits for the coordinator to report that it started.
START_TIMEOUT = 60.0
#: Seconds the host waits for the coordinator to exit after a stop request.
STOP_TIMEOUT = 60.0


class CoordinatorProcess:
    """A running embedded coordinator and the host's connections to it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.runtime_dir = tempfile.mkdtemp(prefix="taskmill-")
        os.chmod(self.runtime_dir, 0o700)
        self.socket_path = os.path.join(self.runtime_dir, "control.sock")
        self.authkey = os.urandom(32)
        self._owner_pid = os.getpid()  # a forked child of the host must not stop our coordinator
        self._local = threading.local()
        self._conns: list[Connection] = []
        self._lock = threading.Lock()
        self.closed = False
        self.info: dict[str, Any] = {}
        config = dict(config, socket_path=self.socket_path, authkey=self.authkey, runtime_dir=self.runtime_dir)
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
            blob = pickle.dumps(config)
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

    # ------------------------------------------------------------------ calls

    def _conn(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid != os.getpid():
            conn = None  # inherited through fork: the parent's stream, never ours to use
        if conn is None:
            if self.closed:
                raise SchedulerClosed("the scheduler is closed")
            try:
                conn = Client(self.socket_path, family="AF_UNIX", authkey=self.authkey)
            except (OSError, EOFError) as e:
                raise self._broken(e) from e
            self._local.conn = conn
            self._local.pid = os.getpid()
            with self._lock:
                self._conns.append(conn)
        return conn

    def _broken(self, cause: BaseException) -> TaskmillError:
        if self.closed:
            return SchedulerClosed("the scheduler is closed")
        code = self.proc.poll()
        state = f"exited with code {code}" if code is not None else "is not answering"
        return SchedulerBroken(f"the coordinator (pid {self.proc.pid}) {state}: {cause}")

    def request(self, msg: Any) -> Any:
        """Send one request and return the reply's value (raising a returned error)."""
        if self.closed:
            raise SchedulerClosed("the scheduler is closed")
        conn = self._conn()
        try:
            conn.send(msg)
            reply = conn.recv()
        except (OSError, EOFError) as e:
            self._local.conn = None
            raise self._broken(e) from e
        if isinstance(reply, protocol.ErrorReply):
            raise reply.exception()
        return reply.value

    def call(self, name: str, *args: Any) -> Any:
        return self.request(protocol.Call(name, args))

    # ------------------------------------------------------------------ shutdown

    def stop(self) -> None:
        """Ask the coordinator to shut down per its mode, then wait for it to exit.

        Does nothing in a forked child of the host: the coordinator belongs to the parent.
        """
        if self.closed or os.getpid() != self._owner_pid:
            return
        try:
            try:
                self.request(protocol.Stop())
            except Exception:  # noqa: BLE001 - a broken coordinator is killed below
                pass
            self.closed = True
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
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
        self._cleanup()

    def _cleanup(self) -> None:
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except OSError:
                    pass
            self._conns.clear()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def alive(self) -> bool:
        return self.proc.poll() is None
