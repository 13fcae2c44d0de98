"""``taskmill.connect(store_path)``: the Scheduler API, attached to a coordinator another process runs.

A running coordinator publishes, in the state file beside its store (mode
0600, the owner's only), its pid, socket, shared-memory name and the key of
its socket's handshake (``taskmill.auth``). ``connect`` reads it, loads the
scheduler's domain names, task type names and defaults from the session file
the serving process wrote (in the coordinator's private runtime directory;
taskmill's own types only, so it loads anywhere), and returns a ``Connected``
scheduler: every call of ``Scheduler`` goes to that coordinator. To submit, a
process imports the task modules itself, as any producer does. Closing it
closes this process's connections only; the coordinator goes on. Usually the
coordinator was started by ``taskmill serve``; a script's own ``Scheduler``
can be attached to the same way while it runs. Imports the host API.
"""

from __future__ import annotations

import json
import os
import pickle
import weakref
from typing import Any, Sequence

import psutil

from taskmill.channel import Channel
from taskmill.domain import Domain
from taskmill.errors import ConnectError, SchedulerBroken, SchedulerClosed
from taskmill.handles import DomainHandle
from taskmill.protocol import is_coordinator, state_file_for
from taskmill.records import Shutdown
from taskmill.scheduler import DEFAULT_STORE, Scheduler, _stop
from taskmill.session import Session
from taskmill.taskstore import TaskStore
from taskmill.validation import as_str

__all__ = ["Attached", "Connected", "connect", "read_state", "served_state"]

#: What to run to serve a store, said in every "nothing serves it" error.
SERVE_HINT = "start one with `taskmill serve MODULE:SCHEDULER --store {store}`"


def _store(path: Any) -> str:
    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    path = as_str(path, "store_path")
    if path == ":memory:":
        raise ConnectError("an in-memory store (':memory:') belongs to its own process: nothing can connect to it")
    return os.path.abspath(path)


def served_state(store: str) -> dict[str, Any] | None:
    """The state file of the live coordinator that serves ``store`` (an absolute path), or None if
    no coordinator serves it; ``ConnectError`` when there is one this process may not use."""
    try:
        return read_state(store)
    except ConnectError as e:
        if getattr(e, "nothing_serves", False):
            return None
        raise


def _nothing_serves(message: str) -> ConnectError:
    error = ConnectError(message)
    error.nothing_serves = True  # type: ignore[attr-defined]
    return error


def read_state(store: str) -> dict[str, Any]:
    """The state file of ``store``'s coordinator, checked to name a live one; ``ConnectError`` if none."""
    path = state_file_for(store)
    assert path is not None
    hint = SERVE_HINT.format(store=store)
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        raise _nothing_serves(f"no coordinator serves {store}: {hint}") from None
    except PermissionError:
        raise ConnectError(f"the state file {path} is not readable by this user: only the store's owner "
                           "may connect to its coordinator") from None
    except (OSError, ValueError) as e:
        raise ConnectError(f"the state file {path} cannot be read ({e}): {hint}") from None
    if not isinstance(state, dict) or not all(k in state for k in ("pid", "socket", "authkey", "session")):
        raise ConnectError(f"the state file {path} does not name a coordinator this taskmill can attach to; {hint}")
    if not is_coordinator(state["pid"], unreadable=False):  # (our state file: another user's pid is a reuse)
        raise _nothing_serves(f"no coordinator serves {store} (the state file names process {state['pid']}, "
                              f"which is gone): {hint}")
    return state


class Attached(Channel):
    """A channel to a coordinator this process did not start: letting go closes connections only."""

    def __init__(self, state: dict[str, Any], store: str) -> None:
        super().__init__(state["socket"], bytes.fromhex(state["authkey"]), store)
        self.pid = int(state["pid"])
        self.info = {"pid": self.pid, "shm": state.get("shm", "")}
        try:
            self._process: psutil.Process | None = psutil.Process(self.pid)
        except psutil.Error:
            self._process = None

    def exit_code(self) -> int | None:
        p = self._process
        try:
            if p is not None and p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            pass
        return -1

    def stop(self) -> None:
        """Close this process's connections; the coordinator goes on."""
        self.closed = True
        self.close_connections()


def _load_session(state: dict[str, Any]) -> dict[str, Any]:
    """What the serving scheduler tells a connecting process: domain names and caps, task type
    names, defaults. Standard pickle of taskmill's own types: it loads in any directory."""
    try:
        with open(state["session"], "rb") as f:
            session = pickle.load(f)
    except PermissionError:
        raise ConnectError("the coordinator's runtime directory is not readable by this user: only the "
                           "store's owner may connect to its coordinator") from None
    except FileNotFoundError:
        raise ConnectError("the coordinator is shutting down (its runtime directory is gone); connect again "
                           "once a coordinator serves the store") from None
    except Exception as e:  # noqa: BLE001 - a file of another taskmill version: say so
        raise ConnectError(f"the coordinator's session file cannot be read ({type(e).__name__}: {e}); is it "
                           "the same taskmill version as this process?") from e
    return session


class Connected(Scheduler):
    """A ``Scheduler`` attached to a coordinator another process runs (see ``taskmill.connect``).

    Every call of ``Scheduler`` works the same; ``start()`` does nothing (it is
    attached already) and ``close()`` lets go of the coordinator without
    stopping it. Domains are matched by name.
    """

    def __init__(self, store_path: str | os.PathLike[str] = DEFAULT_STORE,
                 domains: Sequence[Domain] | None = None) -> None:  # noqa: D107 - see taskmill.connect
        store = _store(store_path)
        state = read_state(store)
        about = _load_session(state)
        names = {name: Domain(name, max_concurrency=cap) for name, cap in about["domains"].items()}
        for d in domains or ():
            if not isinstance(d, Domain):
                raise TypeError(f"domains must be Domain objects, got {type(d).__name__}")
            if d.name not in names:
                raise ConnectError(f"the scheduler that serves {store} has no domain {d.name!r}; "
                                   f"it has {sorted(names)}")
            names[d.name] = d  # the caller's own objects, for its handles
        channel = Attached(state, store)
        progress = state.get("progress_interval")
        session = Session(about["defaults"], int(state.get("event_buffer") or 1),
                          None if progress is None else float(progress))
        session.registered = frozenset(about["tasks"])
        session.process = channel
        self._session = session
        self._domains = names
        self._handles: dict[str, DomainHandle] = {}
        self._defaults = about["defaults"]
        self._monitor = None
        self._exporter = None  # (the serving process exports the metrics)
        self._progress_interval = session.progress_interval
        self.store_path = store
        self.store = TaskStore(session)
        self.shutdown_mode = Shutdown.hard()  # (not this process's to use: close() lets go only)
        self.resource_monitoring = False
        self._finalizer = weakref.finalize(self, _stop, None, channel)  # (lets go only: Attached.stop)
        try:
            self.max_concurrency = self.snapshot().max_concurrency
        except SchedulerBroken as e:  # the first call is the first connection: say what failed
            self._finalizer()
            raise ConnectError(f"cannot connect to the coordinator that serves {store} (pid {channel.pid}): "
                               f"{e}") from e
        except BaseException:
            self._finalizer()
            raise

    def start(self) -> Connected:
        """Attached already: returns self (``SchedulerClosed`` once closed: connect again)."""
        if self._session.process is None:
            raise SchedulerClosed("this connection is closed; call taskmill.connect() again")
        return self

    def close(self) -> None:
        """Close this process's connections to the coordinator; it goes on serving. Idempotent."""
        self._session.process = None
        self._session.closed = True
        self._finalizer()

    def __enter__(self) -> Connected:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()  # (whatever happened here, the served job goes on)

    def try_domain(self, domain: Domain | str) -> DomainHandle | None:
        """The handle of the served scheduler's domain of that name (a ``Domain`` is matched by
        its name: the serving process has its own objects), None if it has none."""
        name = domain.name if isinstance(domain, Domain) else as_str(domain, "domain (a Domain or its name)")
        d = self._domains.get(name)
        if d is None:
            return None
        h = self._handles.get(name)
        if h is None:
            h = self._handles[name] = DomainHandle(self._session, d)
        return h


def connect(store_path: str | os.PathLike[str] = DEFAULT_STORE, *,
            domains: Sequence[Domain] | None = None) -> Connected:
    """Attach to the coordinator that serves ``store_path`` (started by ``taskmill serve``, or a
    running script's ``Scheduler``) and return a scheduler with the whole ``Scheduler`` API.

    Only the store's owner can: the coordinator's address and key are in a 0600 state file
    beside the store. Any number of processes may be connected at once; each gets its own
    outcomes, and dedup works across them (the coordinator owns the keys).

    Args:
        store_path: The store the coordinator serves (default ``./taskmill.duckdb``).
        domains: Your own ``Domain`` objects for the handles (matched by name); by default
            each domain of the served scheduler is known by its name and cap.

    Raises:
        ConnectError: no coordinator serves the store (the message says how to start one), the
            state file belongs to another user, or the coordinator refuses this process.

    Example:
        >>> with taskmill.connect("jobs.duckdb") as sched:                  # doctest: +SKIP
        ...     sched.domain("media").submit(thumbnail, path="/a.jpg", size=256)
    """
    return Connected(store_path, domains)
