"""Host side of the embedded mode: launch the coordinator, stop it, clean up after it.

A fresh interpreter (``python -m taskmill.coordinator``) in its own session,
config (with the cloudpickled registry) on stdin, a result on a dedicated
handshake pipe; the coordinator watches a pidfd of this process (and stdin) to
know when the host is gone. Calls go through the ``channel.Channel`` this class
extends. ``close()`` asks the coordinator to stop and kills one that does not
answer. Imports only leaves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from taskmill import protocol
from taskmill.channel import Channel
from taskmill.config import CoordinatorConfig, Launch
from taskmill.errors import StartupError
from taskmill.relay import OutputRelay

__all__ = ["CoordinatorProcess"]

#: Seconds the host waits for the coordinator to report that it started.
START_TIMEOUT = 60.0
#: Seconds ``close()`` allows beyond the graceful-shutdown timeout before it kills the coordinator.
STOP_GRACE = 15.0


class CoordinatorProcess(Channel):
    """A running embedded coordinator (launched here) and the host's channel to it."""

    def __init__(self, config: CoordinatorConfig, launch: Launch) -> None:
        self.runtime_dir = tempfile.mkdtemp(prefix="taskmill-")
        os.chmod(self.runtime_dir, 0o700)
        super().__init__(os.path.join(self.runtime_dir, "control.sock"), os.urandom(32), config.store_path)
        self.unresponsive_hint = "; close() will kill it"
        self.stop_timeout = config.shutdown.timeout + STOP_GRACE
        self._owner_pid = os.getpid()  # a forked child of the host must not stop our coordinator
        launch = dataclasses.replace(launch, socket_path=self.socket_path, authkey=self.authkey,
                                     runtime_dir=self.runtime_dir, host_pid=os.getpid())
        hs_r, hs_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskmill.coordinator", "--handshake-fd", str(hs_w)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(hs_w,),
                start_new_session=True, close_fds=True)
        except BaseException:
            os.close(hs_r)
            os.close(hs_w)
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            raise
        os.close(hs_w)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.relay = OutputRelay(self.proc.stdout, self.proc.stderr)  # (see taskmill.relay)
        self.pid = self.proc.pid
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
        self.pid = value["pid"]

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

    def hurry(self) -> None:
        """Make a shutdown under way (``stop`` in another thread) a hard one now: what still
        runs is stopped and re-queued. A coordinator that does not take it is killed."""
        if os.getpid() != self._owner_pid or not self.alive():
            return
        try:
            self.request(protocol.Stop(hard=True), timeout=STOP_GRACE)
        except Exception:  # noqa: BLE001 - not answering: killed (the store is crash-safe)
            self._kill()

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
        self.close_connections()
        if self.proc.poll() is not None:
            self.relay.join(2.0)  # the last lines it and its workers wrote
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def exit_code(self) -> int | None:
        return self.proc.poll()
