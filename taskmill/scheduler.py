"""The host API: ``Scheduler``, ``DomainHandle`` and the unscoped ``TaskStore``.

Everything here is a thin, synchronous proxy: submissions are resolved and
validated on the host (nothing reaches the coordinator half-checked), then
sent as one request; queries are forwarded by name once every argument is a
plain builtin in range (``taskmill.validation``). Imports only leaves and the
client channel — never the coordinator or the store.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from typing import Any, Iterable, Mapping, Sequence

import cloudpickle

from taskmill import protocol
from taskmill.client import CoordinatorProcess
from taskmill.domain import Defaults, Domain, Submission, TaskOptions, TaskType, check_timeout, resolve
from taskmill.errors import (
    ConfigError,
    InvalidSubmission,
    SchedulerClosed,
    UnknownDomain,
    UnknownTaskType,
    WaitTimeout,
)
from taskmill.records import (
    BatchOutcome,
    ModuleSnapshot,
    Priority,
    RetryPolicy,
    SchedulerSnapshot,
    Shutdown,
    SubmitOutcome,
    TaskHistoryRecord,
    TaskLookup,
    TaskRecord,
    TypeStats,
    outcomes_from_wire,
)
from taskmill.validation import (
    INT32_MAX,
    MAX_POLL_INTERVAL,
    MAX_PRUNE_DAYS,
    as_float,
    as_int,
    as_str,
    as_wait_timeout,
    describe,
    sql_params,
    usable_cpus,
)

__all__ = ["DEFAULT_STORE", "DomainHandle", "Scheduler", "TaskStore"]

#: The embedded default store: a DuckDB file in the current directory.
DEFAULT_STORE = "taskmill.duckdb"
#: Seconds between progress-bar refreshes in ``wait_idle(progress=True)``.
PROGRESS_REFRESH = 0.2


class TaskStore:
    """Unscoped queries over all tasks (the seed's ``TaskStore``); ``sched.store``.

    Store-level calls take qualified task types (``"media::thumbnail"``).

    Every method checks its arguments on the host first: ids, limits and offsets
    are ints in 0..``INT64_MAX`` (int subclasses such as ``IntEnum`` converted),
    task types and keys are str (subclasses converted); anything else is a
    ``TypeError``/``ValueError`` naming the argument, and nothing is sent.
    """

    def __init__(self, sched: Scheduler) -> None:
        self._s = sched

    def _call(self, name: str, *args: Any) -> Any:
        return self._s._proc().call(name, *args)

    def running_tasks(self) -> list[TaskRecord]:
        """All running tasks, ordered by priority."""
        return self._call("running_tasks")

    def running_count(self) -> int:
        """Count of running tasks."""
        return self._call("running_count")

    def pending_tasks(self, limit: int) -> list[TaskRecord]:
        """Pending tasks, ordered by priority then age, at most ``limit``."""
        self._s._check_open()
        return self._call("pending_tasks", as_int(limit, "limit"))

    def pending_count(self) -> int:
        """Count of pending tasks."""
        return self._call("pending_count")

    def pending_by_type(self, task_type: str) -> list[TaskRecord]:
        """Pending tasks of one qualified task type."""
        self._s._check_open()
        return self._call("pending_by_type", as_str(task_type, "task_type"))

    def paused_tasks(self) -> list[TaskRecord]:
        """All paused (preempted) tasks."""
        return self._call("paused_tasks")

    def paused_count(self) -> int:
        """Count of paused tasks."""
        return self._call("paused_count")

    def task_by_id(self, task_id: int) -> TaskRecord | None:
        """An active task by id, or None."""
        self._s._check_open()
        return self._call("task_by_id", as_int(task_id, "task_id"))

    def task_by_key(self, key: str) -> TaskRecord | None:
        """An active task by dedup key (the SHA-256 hex), or None."""
        self._s._check_open()
        return self._call("task_by_key", as_str(key, "key"))

    def running_io_totals(self) -> tuple[int, int]:
        """Sum of expected disk (read, write) bytes across running tasks."""
        r, w = self._call("running_io_totals")
        return int(r), int(w)

    def history(self, limit: int, offset: int = 0) -> list[TaskHistoryRecord]:
        """Finished executions, newest first, paginated."""
        self._s._check_open()
        return self._call("history", as_int(limit, "limit"), as_int(offset, "offset"))

    def history_by_type(self, task_type: str, limit: int = 100) -> list[TaskHistoryRecord]:
        """History of one qualified task type, newest first."""
        self._s._check_open()
        return self._call("history_by_type", as_str(task_type, "task_type"), as_int(limit, "limit"))

    def history_by_key(self, key: str) -> list[TaskHistoryRecord]:
        """All past executions with this dedup key."""
        self._s._check_open()
        return self._call("history_by_key", as_str(key, "key"))

    def failed_tasks(self, limit: int = 100) -> list[TaskHistoryRecord]:
        """Recent failures (``failed`` and ``dead_letter``) with their errors."""
        self._s._check_open()
        return self._call("failed_tasks", as_int(limit, "limit"))

    def history_stats(self, task_type: str) -> TypeStats:
        """Aggregates for one qualified task type."""
        self._s._check_open()
        return self._call("history_stats", as_str(task_type, "task_type"))

    def avg_throughput(self, task_type: str, limit: int = 100) -> tuple[float, float]:
        """Average (read, write) bytes per second over the ``limit`` most recent completions."""
        self._s._check_open()
        r, w = self._call("avg_throughput", as_str(task_type, "task_type"), as_int(limit, "limit"))
        return float(r), float(w)

    def task_lookup(self, task_type: str, key: str) -> TaskLookup:
        """Find a task by qualified type and explicit key (or canonical payload JSON):
        the active task, else its newest history row, else ``not_found``."""
        self._s._check_open()
        return self._call("task_lookup", as_str(task_type, "task_type"), as_str(key, "key"))

    def lookup_typed(self, submission: Submission) -> TaskLookup:
        """Like :meth:`task_lookup`, with the key computed from a ``task.call(...)`` submission.

        Raises:
            TypeError: ``submission`` is not a ``task.call(...)`` (or ``task.options(...).call(...)``).
        """
        self._s._check_open()
        if not isinstance(submission, Submission):
            raise TypeError(f"lookup_typed() takes task.call(...) (a Submission), got {describe(submission)}")
        item = resolve(submission, self._s._defaults)
        return self._call("lookup_key", item.key)

    def prune_history_by_count(self, keep: int) -> int:
        """Delete all but the ``keep`` most recent history rows; returns how many went."""
        self._s._check_open()
        return self._call("prune_history_by_count", as_int(keep, "keep"))

    def prune_history_by_age(self, days: float) -> int:
        """Delete history rows older than ``days`` (0..``MAX_PRUNE_DAYS``); returns how many went."""
        self._s._check_open()
        return self._call("prune_history_by_age", as_float(days, "days", hi=MAX_PRUNE_DAYS))


class DomainHandle:
    """Submit to and query one domain (``sched.domain(media)``)."""

    def __init__(self, sched: Scheduler, domain: Domain) -> None:
        self._s = sched
        self.domain = domain
        self.name = domain.name

    def __repr__(self) -> str:
        return f"<DomainHandle {self.name}>"

    def _submission(self, task: TaskType | TaskOptions | Submission, payload: dict[str, Any]) -> Submission:
        if isinstance(task, Submission):
            if payload:
                raise TypeError("pass the payload either to .call(...) or to submit(), not both")
            sub = task
        elif isinstance(task, TaskOptions):
            sub = task.call(**payload)
        elif isinstance(task, TaskType):
            sub = task.call(**payload)
        else:
            raise TypeError(f"submit() takes a task (decorated function), task.options(...) or task.call(...), "
                            f"got {type(task).__name__}")
        t = sub.task
        if t.domain is not self.domain and t.domain.name != self.name:
            raise UnknownTaskType(f"task {t.qualified} belongs to domain {t.domain.name!r}, not {self.name!r}")
        if t.qualified not in self._s._registered:
            raise UnknownTaskType(f"task {t.qualified} was not registered when the scheduler started")
        return sub

    def submit(self, task: TaskType | TaskOptions | Submission, /, **payload: Any) -> SubmitOutcome:
        """Submit one task; returns once it is durable.

        Example:
            >>> h.submit(thumbnail, path="/a.jpg", size=256)          # doctest: +SKIP
            Inserted(task_id=1, group_paused=False)

        Raises:
            InvalidPayload: payload not JSON-serializable or over 1 MiB.
            UnknownTaskType: the task is not this domain's.
            ValueError, TypeError: an option breaks its rule, or the payload does
                not fit the task function's signature (named in the message).
            SchedulerClosed: the scheduler is closed or not started.
        """
        self._s._check_open()
        item = resolve(self._submission(task, payload), self._s._defaults)
        wire = self._s._proc().request(protocol.Submit([tuple(item)]))
        return outcomes_from_wire(wire)[0]

    def submit_batch(self, submissions: Iterable[Submission | TaskType | TaskOptions]) -> BatchOutcome:
        """Submit many tasks in one transaction; dedup applies inside the batch too.

        A batch with one invalid item writes nothing; ``InvalidSubmission.index`` names it.

        Raises:
            InvalidSubmission: an item is invalid (``index`` names it).
            TypeError: ``submissions`` is not an iterable of submissions (e.g. a single one).
        """
        self._s._check_open()
        if isinstance(submissions, (Submission, TaskType, TaskOptions, str, bytes, Mapping)) or not isinstance(
                submissions, Iterable):
            raise TypeError(f"submit_batch() takes a list of submissions (task.call(...)), got {describe(submissions)}")
        items = []
        for i, sub in enumerate(submissions):
            try:
                items.append(resolve(self._submission(sub, {}), self._s._defaults))
            except (ValueError, TypeError, LookupError) as e:
                raise InvalidSubmission(f"batch item {i} is invalid: {e}", index=i) from e
        if not items:
            return BatchOutcome(())
        wire = self._s._proc().request(protocol.Submit([tuple(it) for it in items]))
        return BatchOutcome(outcomes_from_wire(wire))

    def cancel(self, task_id: int) -> bool:
        """Cancel one of this domain's tasks; True if it was found and cancelled."""
        self._s._check_open()
        task_id = as_int(task_id, "task_id")
        return bool(self._s._proc().call("cancel", task_id, self.name))

    def snapshot(self) -> ModuleSnapshot:
        """Running tasks, counts and progress for this domain."""
        return self._s._proc().call("snapshot", self.name)

    def active_tasks(self) -> list[TaskRecord]:
        """This domain's running tasks, from the coordinator's memory."""
        return self._s._proc().call("active_tasks", self.name)

    def dead_letter_tasks(self, limit: int = 100, offset: int = 0) -> list[TaskHistoryRecord]:
        """This domain's dead-letter executions, newest first."""
        self._s._check_open()
        limit, offset = as_int(limit, "limit"), as_int(offset, "offset")
        return self._s._proc().call("dead_letter_tasks", self.name, limit, offset)

    def retry_dead_letter(self, task_id: int) -> SubmitOutcome:
        """Resubmit a dead-letter task of this domain with a fresh retry budget."""
        self._s._check_open()
        task_id = as_int(task_id, "task_id")
        return outcomes_from_wire([self._s._proc().call("retry_dead_letter", task_id, self.name)])[0]


class Scheduler:
    """A persistent scheduler: starts a coordinator process that owns the store.

    Args:
        store_path: DuckDB file of the store (created if missing), or ``":memory:"``.
        domains: The domains whose task types may be submitted.
        max_concurrency: Most tasks running at once (= worker processes); default CPU count.
        shutdown: ``Shutdown.hard()`` (default) or ``Shutdown.graceful(seconds)``.
        default_priority: Priority of tasks whose type and domain set none.
        default_retry: Retry policy of task types and domains that set none.
        default_timeout: Per-task timeout in seconds where nothing else sets one.
        state: Objects for ``ctx.state(name)`` in every domain.
        poll_interval: Longest the coordinator sleeps without an event (seconds,
            in (0, ``MAX_POLL_INTERVAL``]).
        resource_monitoring: Accepted for API compatibility; resource admission
            (F18) is not built yet, see the README.

    Every argument is checked here, on the host: a bad one is a ``TypeError`` or
    ``ValueError`` naming it (``ConfigError`` for two domains of one name). A task
    asking for more ``cpus`` than this process may use (its CPU affinity) is
    refused at submit.

    Example:
        >>> with Scheduler(store_path="tasks.duckdb", domains=[media]) as sched:   # doctest: +SKIP
        ...     sched.domain(media).submit(thumbnail, path="/a.jpg", size=256)
        ...     sched.wait_idle(timeout=60)
    """

    def __init__(
        self,
        store_path: str | os.PathLike[str] = DEFAULT_STORE,
        domains: Sequence[Domain] = (),
        *,
        max_concurrency: int | None = None,
        shutdown: Shutdown | None = None,
        default_priority: int = Priority.NORMAL,
        default_retry: RetryPolicy | None = None,
        default_timeout: float | None = None,
        state: dict[str, Any] | None = None,
        poll_interval: float = 0.5,
        resource_monitoring: bool = False,
    ) -> None:
        path = os.fspath(store_path) if isinstance(store_path, os.PathLike) else store_path
        if not isinstance(path, str):
            raise TypeError(f"store_path must be a str or os.PathLike, got {describe(store_path)}")
        path = str.__str__(path)
        if not path or "\0" in path:
            raise ValueError(f"store_path must be a non-empty path without NUL characters, got {path!r}")
        if isinstance(domains, Domain):
            raise TypeError(f"domains must be a list of Domain objects, got a single Domain; "
                            f"write domains=[{domains.name}]")
        if isinstance(domains, (str, bytes, Mapping)) or not isinstance(domains, Iterable):
            raise TypeError(f"domains must be a list (or other sequence) of Domain objects, got {describe(domains)}")
        names: dict[str, Domain] = {}
        for d in domains:
            if not isinstance(d, Domain):
                raise TypeError(f"domains must be Domain objects, got {type(d).__name__}")
            if d.name in names:
                raise ConfigError(f"two domains are named {d.name!r}")
            names[d.name] = d
        if max_concurrency is None:
            max_concurrency = os.cpu_count() or 1
        max_concurrency = as_int(max_concurrency, "max_concurrency", lo=1, hi=INT32_MAX, wrong_type=ValueError)
        if shutdown is not None and not isinstance(shutdown, Shutdown):
            raise TypeError(f"shutdown must be a Shutdown, got {type(shutdown).__name__}")
        poll = as_float(poll_interval, "poll_interval", lo=0.0, lo_open=True, hi=MAX_POLL_INTERVAL,
                        unit="seconds")
        try:
            priority = int(Priority(default_priority))
        except (TypeError, ValueError) as e:
            raise type(e)(f"default_priority: {e}") from None
        if default_retry is not None and not isinstance(default_retry, RetryPolicy):
            raise TypeError(f"default_retry must be a RetryPolicy or None, got {describe(default_retry)}")
        timeout = None if default_timeout is None else check_timeout(default_timeout, "default_timeout")
        if state is not None and not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict of names to objects or None, got {describe(state)}")
        if not isinstance(resource_monitoring, bool):
            raise TypeError(f"resource_monitoring must be a bool, got {describe(resource_monitoring)}")
        self.store_path = path if path == ":memory:" else os.path.abspath(path)
        self._domains = names
        self.max_concurrency = max_concurrency
        self.shutdown_mode = shutdown or Shutdown.hard()
        self._defaults = Defaults(priority=priority, retry=default_retry or RetryPolicy(), timeout=timeout,
                                  cpu_capacity=usable_cpus())
        self._state = {as_str(k, "state key"): v for k, v in (state or {}).items()}
        self._poll = poll
        self.resource_monitoring = resource_monitoring
        self._registered: frozenset[str] = frozenset()
        self._process: CoordinatorProcess | None = None
        self._closed = False  # close() was called: calls say "closed", not "not started"
        self._handles: dict[str, DomainHandle] = {}
        self.store = TaskStore(self)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Scheduler:
        """Launch the coordinator (and its workers); returns self. Idempotent."""
        if self._process is not None:
            return self
        self._closed = False
        tasks = {t.qualified: t.fn for d in self._domains.values() for t in d.tasks.values()}
        registry = cloudpickle.dumps({
            "tasks": tasks,
            "domain_state": {d.name: d.state for d in self._domains.values()},
            "global_state": self._state,
        })
        config = {
            "sys_path": list(sys.path),
            "cwd": os.getcwd(),
            "store_path": self.store_path,
            "registry": registry,
            "max_concurrency": self.max_concurrency,
            "domain_caps": {d.name: d.max_concurrency for d in self._domains.values()},
            "type_retry": {t.qualified: t.effective_retry(self._defaults.retry)
                           for d in self._domains.values() for t in d.tasks.values()},
            "default_retry": self._defaults.retry,
            "shutdown": self.shutdown_mode,
            "poll_interval": self._poll,
            "embedded": True,
        }
        self._process = CoordinatorProcess(config)
        # A scheduler that is never closed still stops its processes: when it is collected, or at
        # interpreter exit (before module teardown, unlike __del__).
        self._finalizer = weakref.finalize(self, self._process.stop)
        self._registered = frozenset(tasks)
        return self

    def close(self) -> None:
        """Shut down per the shutdown mode; no process, socket or segment is left. Idempotent."""
        proc, self._process = self._process, None
        self._closed = True
        if proc is not None:
            self._finalizer()  # runs proc.stop() once

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _proc(self) -> CoordinatorProcess:
        if self._process is None:
            if self._closed:
                raise SchedulerClosed("the scheduler is closed")
            raise SchedulerClosed("the scheduler is not started (use it as a context manager or call start())")
        return self._process

    def _check_open(self) -> None:
        """Raise ``SchedulerClosed`` unless started and not closed; before any argument check."""
        if self._process is None:
            self._proc()

    @property
    def coordinator_pid(self) -> int:
        """Process id of the coordinator."""
        return self._proc().pid

    @property
    def shm_name(self) -> str:
        """Name of the shared-memory segment with live counters (see ``taskmill.shm``)."""
        return self._proc().info["shm"]

    # ------------------------------------------------------------------ domains

    def domain(self, domain: Domain | str) -> DomainHandle:
        """The handle of a registered domain.

        Raises:
            UnknownDomain: no domain of that name (or that object) was given to the scheduler.
        """
        h = self.try_domain(domain)
        if h is None:
            name = domain.name if isinstance(domain, Domain) else domain
            raise UnknownDomain(f"no domain named {name!r}; registered: {sorted(self._domains)}")
        return h

    def try_domain(self, domain: Domain | str) -> DomainHandle | None:
        """Like :meth:`domain`, returning None for an unknown domain.

        Raises:
            TypeError: ``domain`` is neither a ``Domain`` nor a str.
        """
        name = domain.name if isinstance(domain, Domain) else as_str(domain, "domain (a Domain or its name)")
        d = self._domains.get(name)
        if d is None or (isinstance(domain, Domain) and domain is not d):
            return None
        h = self._handles.get(name)
        if h is None:
            h = self._handles[name] = DomainHandle(self, d)
        return h

    # ------------------------------------------------------------------ cross-domain queries

    def task(self, task_id: int) -> TaskRecord | None:
        """Any active task by id, whatever its domain."""
        self._check_open()
        task_id = as_int(task_id, "task_id")
        return self._proc().call("task", task_id)

    def active_tasks(self) -> list[TaskRecord]:
        """Running tasks of all domains (from the coordinator's memory)."""
        return self._proc().call("active_tasks")

    def snapshot(self) -> SchedulerSnapshot:
        """Global aggregates: running tasks, counts, progress."""
        return self._proc().call("snapshot")

    def retry_dead_letter(self, task_id: int) -> SubmitOutcome:
        """Resubmit a dead-letter task (any domain) with a fresh retry budget."""
        self._check_open()
        task_id = as_int(task_id, "task_id")
        return outcomes_from_wire([self._proc().call("retry_dead_letter", task_id)])[0]

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one read-only SQL statement on the store; rows as dicts by column name.

        Tables: ``tasks`` (active) and ``task_history`` (finished); payloads,
        tags and results are JSON columns.

        Args:
            query: One SELECT statement.
            params: None, a list/tuple for positional (``?``) or a dict for named
                (``$name``) parameters; values are str, int, float, bool, None,
                bytes, datetime/date/time/timedelta, Decimal, UUID, or lists and
                dicts of them (subclasses are converted to the plain type).

        Raises:
            QueryRefused: a write, or more than one statement.
            StoreError: malformed SQL or a failing query.
            TypeError: ``query`` is not a str, or a parameter of another type (named by index or key).
        """
        self._check_open()
        query, params = as_str(query, "query"), sql_params(params)
        names, rows = self._proc().call("sql", query, params)
        return [dict(zip(names, r)) for r in rows]

    # ------------------------------------------------------------------ waiting

    def wait(self, task_id: int, timeout: float | None = None) -> TaskHistoryRecord:
        """Block until a task is finished; returns its history record.

        Raises:
            WaitTimeout: not finished within ``timeout`` seconds.
            TaskNotFound: no task with that id, active or finished.
            TypeError, ValueError: a bad ``task_id`` or ``timeout`` (None or finite seconds >= 0).
        """
        self._check_open()
        task_id, timeout = as_int(task_id, "task_id"), as_wait_timeout(timeout)
        return self._proc().request(protocol.Wait(task_id, timeout))

    def wait_idle(self, timeout: float | None = None, progress: bool = False) -> None:
        """Block until no task is active. With ``progress=True``, draw a progress bar.

        Raises:
            WaitTimeout: still busy after ``timeout`` seconds.
            TypeError, ValueError: a bad ``timeout`` (None or finite seconds >= 0) or ``progress``.
        """
        self._check_open()
        timeout = as_wait_timeout(timeout)
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be a bool, got {describe(progress)}")
        if not progress:
            self._proc().request(protocol.WaitIdle(timeout))
            return
        self._wait_idle_with_bar(timeout)

    def _wait_idle_with_bar(self, timeout: float | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from taskmill.shm import SegmentReader

        deadline = None if timeout is None else time.monotonic() + timeout
        reader = SegmentReader(self.shm_name)  # mapped once for the whole bar
        try:
            first = self.snapshot()
            start_done = _finished_count(reader)
            total = first.pending_count + first.running_count
            with Progress(TextColumn("[bold]tasks"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.description}"), TimeElapsedColumn(), transient=False) as bar:
                tid = bar.add_task("", total=max(total, 1))
                while True:
                    step = PROGRESS_REFRESH
                    if deadline is not None:
                        step = min(step, max(deadline - time.monotonic(), 0.0))
                    try:
                        self._proc().request(protocol.WaitIdle(step))
                        done = True
                    except WaitTimeout:
                        done = False
                    snap = self.snapshot()
                    finished = _finished_count(reader) - start_done
                    total = max(total, finished + snap.pending_count + snap.running_count)
                    bar.update(tid, total=max(total, 1), completed=finished,
                               description=f"running {snap.running_count}, pending {snap.pending_count}")
                    if done:
                        bar.update(tid, completed=max(total, 1), total=max(total, 1), description="done")
                        return
                    if deadline is not None and time.monotonic() >= deadline:
                        raise WaitTimeout("the scheduler did not become idle in time")
        finally:
            reader.close()


def _finished_count(reader: Any) -> int:
    """Tasks that reached a terminal state, from the shared-memory counters."""
    c = reader.counters()
    return c["completed"] + c["failed"] + c["dead_lettered"] + c["cancelled"] + c["superseded"]
