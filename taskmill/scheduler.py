"""The host API's entry point: ``Scheduler`` (``DomainHandle`` and ``TaskStore`` live beside it).

Everything here is a thin, synchronous proxy: submissions are resolved and
validated on the host (nothing reaches the coordinator half-checked), then
sent as one request; queries are forwarded by name once every argument is a
plain builtin in range (``taskmill.validation``). Imports only leaves and the
client channel — never the coordinator or the store.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import sys
import weakref
from typing import Any, Callable, Iterable, Mapping, Sequence

import cloudpickle

from taskmill import events
from taskmill.admission import (
    AgingConfig,
    Capacity,
    PressureSource,
    RateLimit,
    SamplerConfig,
    ThrottlePolicy,
    admission_settings,
    concurrency_warning,
    fairness_settings,
    preemption_settings,
)
from taskmill.channel import Channel
from taskmill.client import CoordinatorProcess
from taskmill.config import (
    CANCEL_HOOK_TIMEOUT,
    DEFAULT_GROUP_WEIGHT,
    DEFAULT_PRIORITY,
    DURABILITY,
    EVENT_BUFFER,
    EXPIRY_SWEEP_INTERVAL,
    MAX_EVENT_BUFFER,
    POLL_INTERVAL,
    PREEMPT_PRIORITY,
    PREEMPTION,
    RETENTION_EVERY,
    AdmissionConfig,
    CoordinatorConfig,
    Launch,
)
from taskmill.controls import AdmissionControls
from taskmill.domain import Defaults, Domain, Submission, check_timeout
from taskmill.errors import ConfigError, UnknownDomain
from taskmill.handles import DomainHandle
from taskmill.metrics import MetricsSnapshot, active_count
from taskmill.monitor import ResourceMonitor, monitoring_settings
from taskmill.outcomes import SubmitOutcome, outcomes_from_wire
from taskmill.prometheus import Exporter, metrics_settings, read_metrics
from taskmill.records import (
    MaxAgeDays,
    MaxCount,
    Priority,
    RetryPolicy,
    SchedulerSnapshot,
    Shutdown,
    TaskLookup,
    TaskProgress,
    TaskRecord,
)
from taskmill.retrieval import Retrieval
from taskmill.session import Session
from taskmill.stream import EventStream
from taskmill.taskstore import TaskStore
from taskmill.validation import (
    INT32_MAX,
    MAX_POLL_INTERVAL,
    as_float,
    as_int,
    as_seconds,
    as_str,
    describe,
)

__all__ = ["DEFAULT_STORE", "DomainHandle", "Scheduler", "TaskStore"]

#: The embedded default store: a DuckDB file in the current directory.
DEFAULT_STORE = "taskmill.duckdb"

log = logging.getLogger("taskmill")


def _stop(monitor: ResourceMonitor | None, proc: Channel, exporter: Exporter | None = None) -> None:
    if exporter is not None:
        exporter.close()  # (first: a scrape reads the segment the coordinator removes)
    if monitor is not None:
        monitor.stop()
    proc.stop()


def quiet_interrupt() -> None:
    """Let the KeyboardInterrupt on its way out end the program without its traceback (the
    scheduler said what happened); the exit status stays the one of a Ctrl-C."""
    previous = sys.excepthook
    if getattr(previous, "taskmill_quiet", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            return
        previous(kind, value, tb)

    hook.taskmill_quiet = True  # type: ignore[attr-defined]
    sys.excepthook = hook


class Scheduler(Retrieval, AdmissionControls):
    """A persistent scheduler: starts a coordinator process that owns the store.

    Args:
        store_path: DuckDB file of the store (created if missing), or ``":memory:"``.
        domains: The domains whose task types may be submitted.
        max_concurrency: Most tasks running at once (= worker processes); default CPU count.
            Each running task also holds its type's ``cpus`` (default 1) of ``capacity``,
            so on 2 cores at most 2 default tasks run whatever this says; ``start`` logs a
            warning then (the fixes: ``cpus=`` below 1 on IO-bound task types, or a larger
            ``capacity=Capacity(cpus=…)``).
        shutdown: ``Shutdown.hard()`` (default) or ``Shutdown.graceful(seconds)``.
        default_priority: Priority of tasks whose type and domain set none.
        default_retry: Retry policy of task types and domains that set none.
        default_timeout: Per-task timeout in seconds where nothing else sets one.
        state: Objects for ``ctx.state(name)`` in every domain.
        poll_interval: Longest the coordinator sleeps without an event (seconds,
            in (0, ``MAX_POLL_INTERVAL``]).
        resource_monitoring: Sample the machine with psutil (disk and network
            throughput, other processes' CPU load) for the IO window and the
            ``cpu`` pressure source (F18, F19). Off by default.
        max_retries: Retries of task types and domains that set no retry policy
            (shorthand for ``default_retry``'s ``max_retries``; default 3).
        default_ttl: Time to live in seconds where nothing else sets one (F16).
        expiry_sweep_interval: Seconds between two TTL sweeps (tasks are also
            checked when they would be dispatched).
        start_paused: Nothing dispatches until ``resume_all()``.
        retention: ``MaxCount(n)`` or ``MaxAgeDays(d)``: history is pruned to it
            every ``retention_every`` finished executions (F26).
        cancel_hook_timeout: Seconds an ``on_cancel`` hook may run.
        capacity: ``Capacity(cpus=…, memory=…)``: what running tasks may hold
            together (default: the cores this process may use and the memory
            available at construction). A task asking for more is refused at submit.
        group_concurrency: ``{group: n}``: most running tasks of each group.
        default_group_concurrency: Cap of every other group (None: no cap).
        rate_limits: ``{qualified task type: RateLimit}`` token buckets.
        group_rate_limits: ``{group: RateLimit}`` token buckets.
        resource_sampler: An object with ``sample() -> ResourceSample`` used instead
            of psutil (turns monitoring on); called in this process.
        sampler_config: ``SamplerConfig``: interval, EWMA alpha, IO window, its usable share.
        pressure_sources: ``PressureSource`` objects, called in this process every
            interval within a time budget; the pressure is the largest value.
        throttle_policy: ``ThrottlePolicy``: which priorities wait at which pressure.
        bandwidth_limit: Bytes/s: the built-in ``network`` source reports observed
            rx + tx against it (turns monitoring on).
        group_weights: ``{group: weight}``: fair share of dispatches between groups
            (F21); setting any weight or minimum turns fair share on.
        default_group_weight: Weight of other groups and of ungrouped tasks.
        group_minimum_slots: ``{group: n}``: running slots a group gets before any weighing.
        priority_aging: ``AgingConfig``: waiting tasks gain priority over time.
        preempt_priority: A task submitted at this priority or more urgent pauses
            running work of lower priority until no such task is left (F12;
            default REALTIME, None: never).
        preemption: ``"cancel"`` (the victims see ``ctx.cancelled`` and run again
            later) or ``"suspend"`` (their workers are stopped with SIGSTOP and
            continue where they were).
        progress_interval: Seconds between two ``TaskProgress`` ticks for
            ``subscribe_progress()`` (None: no ticker, and no progress subscriptions).
        event_buffer: Events kept for each subscriber (``subscribe()`` …) that has
            not read them yet; beyond that the oldest are dropped and counted in
            ``EventStream.missed``. A subscriber never slows the scheduler down.
        metrics_port: Serve ``metrics_snapshot()`` to Prometheus on this port of
            127.0.0.1 while the scheduler runs (0: any free one, see ``metrics_port``
            after start; extra ``taskmill[prometheus]``). None: no exporter.
        metrics_prefix, metrics_labels: The exported names' prefix (``"taskmill"``)
            and constant labels on every series ({} by default).
        durability: ``"fsync"`` (default): a submission (any change) returns once it
            is on the disk (journaled with ``fdatasync``), so it survives a kill of
            any process and a crash of the machine. ``"os"``: once the operating
            system holds it (journaled without ``fdatasync``): it survives a kill of
            any process, not a power cut or kernel crash, and a single submit
            costs less. DuckDB's own commits are unchanged.

    Every argument is checked here, on the host: a bad one is a ``TypeError`` or
    ``ValueError`` naming it (``ConfigError`` for two domains of one name).

    What survives a restart on the same store: the tasks, and every pause (global,
    per domain, per group with its ``until``, of recurring schedules). Runtime changes
    of admission settings (``set_max_concurrency``, ``set_group_limit``,
    ``set_rate_limit``, group weights and minimum slots …) last until ``close``: the
    next scheduler starts from its own arguments, which stay the one configuration.

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
        default_priority: int = DEFAULT_PRIORITY,
        default_retry: RetryPolicy | None = None,
        default_timeout: float | None = None,
        state: dict[str, Any] | None = None,
        poll_interval: float = POLL_INTERVAL,
        resource_monitoring: bool = False,
        max_retries: int | None = None,
        default_ttl: float | None = None,
        expiry_sweep_interval: float = EXPIRY_SWEEP_INTERVAL,
        start_paused: bool = False,
        retention: MaxCount | MaxAgeDays | None = None,
        retention_every: int = RETENTION_EVERY,
        cancel_hook_timeout: float = CANCEL_HOOK_TIMEOUT,
        capacity: Capacity | None = None,
        group_concurrency: dict[str, int] | None = None,
        default_group_concurrency: int | None = None,
        rate_limits: dict[str, RateLimit] | None = None,
        group_rate_limits: dict[str, RateLimit] | None = None,
        resource_sampler: Any = None,
        sampler_config: SamplerConfig | None = None,
        pressure_sources: Sequence[PressureSource] = (),
        throttle_policy: ThrottlePolicy | None = None,
        bandwidth_limit: float | None = None,
        group_weights: dict[str, float] | None = None,
        default_group_weight: float = DEFAULT_GROUP_WEIGHT,
        group_minimum_slots: dict[str, int] | None = None,
        priority_aging: AgingConfig | None = None,
        preempt_priority: int | None = PREEMPT_PRIORITY,
        preemption: str = PREEMPTION,
        progress_interval: float | None = None,
        event_buffer: int = EVENT_BUFFER,
        metrics_port: int | None = None,
        metrics_prefix: str = "taskmill",
        metrics_labels: dict[str, str] | None = None,
        durability: str = "fsync",
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
        self._concurrency_given = max_concurrency is not None  # (a default is not worth a warning)
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
        if max_retries is not None:
            base = default_retry or RetryPolicy()
            default_retry = RetryPolicy.from_dict({**base.to_dict(), "max_retries": as_int(
                max_retries, "max_retries", hi=INT32_MAX)})
        self._ttl = None if default_ttl is None else as_seconds(default_ttl, "default_ttl", lo_open=True)
        self._sweep = as_seconds(expiry_sweep_interval, "expiry_sweep_interval", lo_open=True)
        if not isinstance(start_paused, bool):
            raise TypeError(f"start_paused must be a bool, got {describe(start_paused)}")
        self._start_paused = start_paused
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(map(repr, DURABILITY))}, got {describe(durability)}")
        self._durability = durability
        if retention is not None and not isinstance(retention, (MaxCount, MaxAgeDays)):
            raise TypeError(f"retention must be MaxCount(n), MaxAgeDays(d) or None, got {describe(retention)}")
        self._retention = (None if retention is None else ("count", retention.n) if isinstance(retention, MaxCount)
                           else ("age_days", retention.days))
        self._retention_every = as_int(retention_every, "retention_every", lo=1, hi=INT32_MAX)
        self._hook_timeout = as_seconds(cancel_hook_timeout, "cancel_hook_timeout", lo_open=True)
        self.store_path = path if path == ":memory:" else os.path.abspath(path)
        self._domains = names
        self.max_concurrency = max_concurrency
        self.shutdown_mode = shutdown or Shutdown.hard()
        self._monitoring = monitoring_settings(resource_monitoring, resource_sampler, sampler_config,
                                               pressure_sources, throttle_policy, bandwidth_limit)
        self._admission = AdmissionConfig(
            **admission_settings(capacity, group_concurrency, default_group_concurrency, rate_limits,
                                 group_rate_limits),
            **self._monitoring.wire(),
            **fairness_settings(group_weights, default_group_weight, group_minimum_slots, priority_aging),
            **preemption_settings(preempt_priority, preemption))
        self._monitor: ResourceMonitor | None = None
        self._defaults = Defaults(priority=priority, retry=default_retry or RetryPolicy(), timeout=timeout,
                                  cpu_capacity=self._admission.cpus, memory_capacity=self._admission.memory,
                                  ttl=self._ttl)
        self._state = {as_str(k, "state key"): v for k, v in (state or {}).items()}
        self._poll = poll
        self.resource_monitoring = self._monitoring.sampler is not None
        self._progress_interval = None if progress_interval is None else as_float(
            progress_interval, "progress_interval", lo=0.01, hi=3600.0, unit="seconds")
        self._log_level, self._log_format = logging.WARNING, "keyvalue"  # (taskmill serve sets them)
        self._session = Session(self._defaults, as_int(event_buffer, "event_buffer", lo=1, hi=MAX_EVENT_BUFFER),
                                self._progress_interval)
        self._handles: dict[str, DomainHandle] = {}
        self.store = TaskStore(self._session)
        self._metrics = metrics_settings(metrics_prefix, metrics_labels, metrics_port)
        self._exporter: Exporter | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Scheduler:
        """Launch the coordinator (and its workers); returns self. Idempotent."""
        if self._session.process is not None:
            return self
        self._session.closed = False
        types = [t for d in self._domains.values() for t in d.tasks.values()]
        tasks = {t.qualified: t.fn for t in types}
        unknown = sorted(set(self._admission.rate_limits) - set(tasks))
        if unknown:
            raise ValueError(f"rate_limits names task types no domain registers: {unknown} "
                             f"(qualified names, such as 'media::thumbnail')")
        if self._concurrency_given:
            warning = concurrency_warning(self.max_concurrency, self._admission.cpus,
                                          min((t.cpus for t in types), default=1.0))
            if warning is not None:
                log.warning(warning)
        finalizers = {t.qualified: t.finalizer for t in types if t.finalizer is not None}
        hooks = {t.qualified: t.cancel_hook for t in types if t.cancel_hook is not None}
        registry = cloudpickle.dumps({
            "tasks": tasks,
            "finalizers": finalizers,
            "on_cancel": hooks,
            "domain_state": {d.name: d.state for d in self._domains.values()},
            "global_state": self._state,
            "domains": dict(self._domains),  # for submissions from inside tasks (ctx.spawn_child …)
            "defaults": self._defaults,
        })
        config = CoordinatorConfig(
            store_path=self.store_path,
            max_concurrency=self.max_concurrency,
            domain_caps={d.name: d.max_concurrency for d in self._domains.values()},
            type_retry={t.qualified: t.effective_retry(self._defaults.retry)
                        for d in self._domains.values() for t in d.tasks.values()},
            default_retry=self._defaults.retry,
            shutdown=self.shutdown_mode,
            poll_interval=self._poll,
            finalizers=frozenset(finalizers),
            cancel_hooks=frozenset(hooks),
            cancel_hook_timeout=self._hook_timeout,
            expiry_sweep_interval=self._sweep,
            retention=self._retention,
            retention_every=self._retention_every,
            start_paused=self._start_paused,
            admission=self._admission,
            progress_interval=self._progress_interval,
            event_buffer=self._session.event_buffer,
            durability=self._durability,
        )
        session = pickle.dumps({"domains": {d.name: d.max_concurrency for d in self._domains.values()},
                                "tasks": sorted(tasks), "defaults": self._defaults})
        launch = Launch(registry=registry, session=session, sys_path=tuple(sys.path), cwd=os.getcwd(),
                        log_level=self._log_level, log_format=self._log_format)
        self._session.process = proc = CoordinatorProcess(config, launch)
        self._monitor = self._monitoring.monitor(proc.call, proc.pid)
        try:
            self._exporter = None if self._metrics.port is None else \
                Exporter(functools.partial(read_metrics, proc.info["shm"]), self._metrics)
        except BaseException:
            _stop(self._monitor, proc)
            self._session.process = None
            raise
        # A scheduler that is never closed still stops its processes: when it is collected, or at
        # interpreter exit (before module teardown, unlike __del__).
        self._finalizer = weakref.finalize(self, _stop, self._monitor, proc, self._exporter)
        self._session.registered = frozenset(tasks)
        return self

    def close(self) -> None:
        """Shut down per the shutdown mode; no process, socket or segment is left. Idempotent."""
        proc, self._session.process = self._session.process, None
        self._session.closed = True
        if proc is not None:
            self._finalizer()  # runs proc.stop() once

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not KeyboardInterrupt or self._session.process is None:
            self.close()
            return
        # Ctrl-C: say what stays and how to go on, instead of a traceback through multiprocessing
        try:
            queued: int | None = active_count(self.metrics_snapshot())
        except Exception:  # noqa: BLE001 - the message goes without the count
            queued = None
        self.close()
        where = "in memory (lost with it)" if self.store_path == ":memory:" else f"in {self.store_path}"
        said = ("no task is left" if queued == 0 else
                f"{'some' if queued is None else queued} task{'' if queued == 1 else 's'} stay queued {where}"
                + ("" if self.store_path == ":memory:" else "; running this again resumes them"))
        print(f"\ntaskmill: interrupted; {said}", file=sys.stderr, flush=True)
        quiet_interrupt()

    @property
    def _process(self) -> Channel | None:
        """The running coordinator's channel (None before start and after close)."""
        return self._session.process

    def _proc(self) -> Channel:
        return self._session.proc()

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
            h = self._handles[name] = DomainHandle(self._session, d)
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

    def subscribe(self, buffer: int | None = None) -> EventStream[events.Event]:
        """Every event from now on (``taskmill.events``), released after the commit that makes it true.

        Args:
            buffer: Events kept for this stream while the program does not read them
                (default: the scheduler's ``event_buffer``); the oldest go first, counted
                in ``missed``.

        Example:
            >>> with sched.subscribe() as stream:                         # doctest: +SKIP
            ...     for ev in stream:
            ...         print(type(ev).__name__, getattr(ev, "header", None))
        """
        return self._session.subscribe(buffer=buffer)

    def subscribe_progress(self, buffer: int | None = None) -> EventStream[TaskProgress]:
        """``TaskProgress`` of every running task that reports bytes, every ``progress_interval``.

        Raises:
            ConfigError: the scheduler has no ``progress_interval``.
        """
        return self._session.subscribe_progress(buffer=buffer)

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Counters and gauges from the shared-memory segment (no round trip to the coordinator):
        submissions, outcomes, gate denials by reason, the sampler's figures, capacity in use."""
        return read_metrics(self.shm_name)

    @property
    def metrics_port(self) -> int | None:
        """The port the Prometheus exporter listens on (127.0.0.1), None without one."""
        return None if self._exporter is None else self._exporter.port

    def retry_dead_letter(self, task_id: int) -> SubmitOutcome:
        """Resubmit a dead-letter task (any domain) with a fresh retry budget."""
        self._check_open()
        task_id = as_int(task_id, "task_id")
        return outcomes_from_wire([self._proc().call("retry_dead_letter", task_id)])[0]

    # ------------------------------------------------------------------ cancellation (F23), any domain

    def cancel(self, task_id: int) -> bool:
        """Cancel one active task of any domain (and its children); True if it was found."""
        return bool(self._call("cancel", as_int(task_id, "task_id")))

    def cancel_group(self, group: str) -> list[int]:
        """Cancel every active task of ``group``; their ids."""
        return self._call("cancel_group", as_str(group, "group"))

    def cancel_type(self, task_type: str) -> list[int]:
        """Cancel every active task of a qualified type (``"media::thumbnail"``); their ids."""
        return self._call("cancel_type", as_str(task_type, "task_type"))

    def cancel_by_tag(self, key: str, value: str) -> list[int]:
        """Cancel every active task whose tag ``key`` is ``value``; their ids."""
        return self._call("cancel_by_tag", as_str(key, "key"), as_str(value, "value"))

    def cancel_by_tag_key_prefix(self, prefix: str) -> list[int]:
        """Cancel every active task with a tag key starting with ``prefix``; their ids."""
        return self._call("cancel_by_tag_key_prefix", as_str(prefix, "prefix"))

    def cancel_where(self, predicate: Callable[[TaskRecord], bool]) -> list[int]:
        """Cancel the active tasks (any domain) for which ``predicate(record)`` is true; their ids.

        The predicate runs here, on the host, over a snapshot of the active tasks.
        """
        if not callable(predicate):
            raise TypeError(f"cancel_where() takes a function of a TaskRecord, got {describe(predicate)}")
        ids = [r.id for r in self._call("active_tasks_in", None) if predicate(r)]
        return self._call("cancel_ids", ids) if ids else []

    # ------------------------------------------------------------------ pause and resume (F22)

    def pause_all(self) -> int:
        """Pause everything: running tasks are asked to stop and come back paused; nothing dispatches
        until ``resume_all()``. Returns how many tasks it moved."""
        return self._call("pause", "global", "")

    def resume_all(self) -> int:
        """Lift the global pause; returns how many tasks became pending."""
        return self._call("resume", "global", "")

    def is_paused(self) -> bool:
        """Whether the whole scheduler is paused."""
        return self._call("is_paused", "global", "")

    # ------------------------------------------------------------------ recurring schedules (F15)

    def pause_recurring(self, task_id: int) -> bool:
        """Stop new occurrences of a recurring task (any domain); False if there is no such schedule."""
        return self._call("recurring", "pause", as_int(task_id, "task_id"))

    def resume_recurring(self, task_id: int) -> bool:
        """Let a paused schedule go on from its grid (a time already passed runs at once)."""
        return self._call("recurring", "resume", as_int(task_id, "task_id"))

    def cancel_recurring(self, task_id: int) -> bool:
        """End a schedule for good: a waiting occurrence is cancelled, a running one is its last."""
        return self._call("recurring", "cancel", as_int(task_id, "task_id"))

    # ------------------------------------------------------------------ lookups

    def task_lookup(self, task_type: str, key: str) -> TaskLookup:
        """See ``TaskStore.task_lookup``."""
        return self.store.task_lookup(task_type, key)

    def lookup_typed(self, submission: Submission) -> TaskLookup:
        """See ``TaskStore.lookup_typed``."""
        return self.store.lookup_typed(submission)
