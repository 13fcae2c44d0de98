"""Entry point of the coordinator process: ``python -m taskmill.coordinator``.

Start-up order is the safety argument: read the config from stdin, create the
shared-memory segment, start the fork server (registry preloaded) and only
then open DuckDB. The result goes back on the handshake fd as one pickled
tuple. Two lifelines tie this process to its host: a pidfd of the host process
(readable once it exits, whoever else holds our pipes) and stdin (EOF).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing.process
import os
import pickle
import shutil
import signal
import socket
import struct
import sys
import time
from typing import Any

import structlog

from taskmill import protocol
from taskmill.config import CoordinatorConfig, Launch
from taskmill.errors import StartupError, StoreLocked, TaskmillError
from taskmill.protocol import is_coordinator, state_file_for

#: Connections the kernel queues before the acceptor takes them (bursts of new host threads).
LISTEN_BACKLOG = 128
#: Set to a file path to profile the coordinator loop with cProfile (see docs/architecture.md).
PROFILE_ENV = "TASKMILL_PROFILE"


def _read_config() -> tuple[CoordinatorConfig, Launch]:
    head = sys.stdin.buffer.read(8)
    (n,) = struct.unpack("<Q", head)
    config, launch = pickle.loads(sys.stdin.buffer.read(n))
    if not isinstance(config, CoordinatorConfig) or not isinstance(launch, Launch):
        raise StartupError("the coordinator was started without its configuration")
    return config, launch


def _check_state_file(path: str | None) -> None:
    if path is None or not os.path.exists(path):
        return
    try:
        with open(path) as f:
            pid = int(json.load(f).get("pid", 0))
    except (OSError, ValueError):
        return
    if pid and pid != os.getpid() and is_coordinator(pid, unreadable=True):  # (unreadable: be safe)
        raise StoreLocked(f"a coordinator (pid {pid}) is already running on this store (state file {path}); "
                          "to use it from this process, attach with taskmill.connect(store_path)")


def _open_host_pidfd(host_pid: int | None) -> int | None:
    """A pidfd of the host (our parent), or None without one; StartupError if it is already gone."""
    if host_pid is None:
        return None
    if os.getppid() != host_pid:
        raise StartupError(f"the host process {host_pid} exited before the coordinator started")
    try:
        return os.pidfd_open(host_pid)
    except (AttributeError, OSError):  # an old kernel: stdin EOF remains the lifeline
        return None


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m taskmill.coordinator")
    parser.add_argument("--handshake-fd", type=int, required=True)
    args = parser.parse_args()
    handshake = os.fdopen(args.handshake_fd, "wb")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host decides; Ctrl-C reaches it, not us

    config, launch = _read_config()
    # multiprocessing's temp dir (the fork server's socket) inside our runtime dir: the host
    # removes that dir even when this process was killed and could not clean up
    mp_tmp = os.path.join(launch.runtime_dir, "mp")
    os.makedirs(mp_tmp, mode=0o700, exist_ok=True)
    multiprocessing.process.current_process()._config["tempdir"] = mp_tmp  # type: ignore[attr-defined]
    sys.path[:] = launch.sys_path
    os.chdir(launch.cwd)
    logging.basicConfig(level=launch.log_level, stream=sys.stderr,
                        format="%(message)s" if launch.log_format == "json" else "taskmill coordinator: %(message)s")
    # This process is ours, so it may configure structlog: key=value lines into stdlib logging (stderr).
    renderer: Any = (structlog.processors.JSONRenderer() if launch.log_format == "json" else
                     structlog.dev.ConsoleRenderer(colors=False) if launch.log_format == "console" else
                     structlog.processors.KeyValueRenderer(key_order=["event"]))
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.processors.TimeStamper(fmt="iso"), renderer]
        if launch.log_format != "keyvalue" else [structlog.stdlib.add_log_level, renderer],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    from taskmill.coordinator.backends import make_backend
    from taskmill.coordinator.loop import Coordinator
    from taskmill.shm import SharedState, worker_slots
    from taskmill.store import Store
    from taskmill.workers.pool import WorkerPool

    store_path = config.store_path
    state_file = state_file_for(store_path)
    shm = backend = store = listener = coord = None
    wrote_state = False
    registry_path = os.path.join(launch.runtime_dir, "registry.pkl")
    session_path = os.path.join(launch.runtime_dir, "session.pkl")

    def cleanup() -> None:
        """Release everything this process made; each step runs even if another fails."""

        def quietly(step: Any, *args: Any) -> None:
            try:
                step(*args)
            except BaseException as e:  # noqa: BLE001 - keep going: the remaining steps matter more
                logging.getLogger("taskmill").warning("cleanup step %s failed: %s", getattr(step, "__name__", step), e)

        if coord is not None:
            quietly(coord.readers.close)
            quietly(coord.writer.close)
            quietly(coord.close_journal)
            if coord.acceptor is not None:
                quietly(coord.acceptor.close)
        if listener is not None:
            quietly(listener.close)
        if store is not None:
            quietly(store.close)
        if backend is not None:
            quietly(backend.close)  # what is left of the executors (the local backend: its fork server)
        if shm is not None:
            quietly(shm.close)
        if state_file and wrote_state:
            quietly(os.unlink, state_file)
        quietly(shutil.rmtree, launch.runtime_dir, True)  # the host removes it too, unless it was killed
        quietly(WorkerPool.stop_resource_tracker)
        # multiprocessing's own temp dir (the fork server's socket): its finalizer never runs, as
        # this process leaves with os._exit
        tempdir = multiprocessing.process.current_process()._config.get("tempdir")  # type: ignore[attr-defined]
        if tempdir:
            quietly(shutil.rmtree, tempdir, True)

    try:
        _check_state_file(state_file)
        with open(registry_path, "wb") as reg:
            reg.write(launch.registry)
        with open(session_path, "wb") as ses:
            ses.write(launch.session)
        host_pidfd = _open_host_pidfd(launch.host_pid)
        WorkerPool.start_resource_tracker()  # (before the segment: it registers there)
        shm = SharedState(worker_slots(config.max_concurrency))
        backend = make_backend(config.backend, config, shm, registry_path)  # (forks start here, before DuckDB)
        # Everything this process creates from here on (the store, its WAL, the state file, the
        # socket) is the owner's only. Workers keep the host's umask: the fork server already runs.
        os.umask(0o077)
        export_dir = os.path.join(launch.runtime_dir, "export")  # export_history's files, moved out by the host
        os.makedirs(export_dir, exist_ok=True)
        store = Store(store_path, export_dir=export_dir)
        coord = Coordinator(config, store=store, shm=shm, backend=backend,
                            host_lifeline=sys.stdin.fileno() if launch.embedded else None, host_pidfd=host_pidfd)
        try:
            coord.start_workers()
        except RuntimeError as e:
            raise StartupError(f"workers cannot start: {e}") from e
        recovered = coord.recover()
        # authenticated per peer in serve(); the default backlog (1) refuses bursts of new threads
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(launch.socket_path)  # (mode 0600: the umask above)
        listener.listen(LISTEN_BACKLOG)
        if state_file:
            tmp = state_file + ".tmp"
            with open(tmp, "w") as f:  # the owner's only (umask above): it holds the key
                json.dump({"pid": os.getpid(), "socket": launch.socket_path, "shm": shm.name,
                           "started_at": time.time(), "authkey": launch.authkey.hex(),
                           "session": session_path, "cwd": launch.cwd, "store": store_path,
                           "progress_interval": config.progress_interval,
                           "event_buffer": config.event_buffer}, f)
            os.replace(tmp, state_file)
            wrote_state = True
        coord.serve(listener, launch.authkey)
        signal.signal(signal.SIGTERM, lambda *_: coord.request_stop())
        handshake.write(pickle.dumps(("ok", {"pid": os.getpid(), "shm": shm.name, "recovered": recovered})))
        handshake.close()
    except BaseException as e:  # noqa: BLE001 - every start-up failure goes back to the host
        if not isinstance(e, TaskmillError):
            e = StartupError(f"{type(e).__name__}: {e}")
        try:
            handshake.write(pickle.dumps(("error", protocol.ErrorReply.of(e))))
            handshake.close()
        except OSError:
            pass
        cleanup()
        return 1

    try:
        profile_to = os.environ.get(PROFILE_ENV)
        if profile_to:  # a developer's tool: cProfile stats of the loop, written at exit
            import cProfile

            cProfile.runctx("coord.run()", globals(), locals(), profile_to)
        else:
            coord.run()
    except BaseException:
        logging.getLogger("taskmill").exception("coordinator loop failed")
        cleanup()
        return 1
    cleanup()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is closed explicitly above; skipping interpreter teardown avoids
    # DuckDB's extension-module finalizers printing leak reports at exit.
    os._exit(code)
