"""The coordinator's configuration: one frozen value, built and checked on the host, read everywhere.

Leaf module (records only). ``Scheduler`` checks every argument and builds one
``CoordinatorConfig``; it travels to the coordinator process (pickled, with the
``Launch`` details) and is the only place the coordinator, its gate and its
lifecycle read their settings from. Every default is written once, here, as a
constant the ``Scheduler``'s signature and the dataclasses both name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from taskmill.records import Priority, RetryPolicy, Shutdown

__all__ = [
    "CANCEL_HOOK_TIMEOUT",
    "DEFAULT_GROUP_WEIGHT",
    "DEFAULT_PRIORITY",
    "EVENT_BUFFER",
    "EXPIRY_SWEEP_INTERVAL",
    "IO_FRACTION",
    "IO_WINDOW",
    "MAX_EVENT_BUFFER",
    "POLL_INTERVAL",
    "PREEMPT_PRIORITY",
    "PREEMPTION",
    "RETENTION_EVERY",
    "SAMPLE_ALPHA",
    "SAMPLE_INTERVAL",
    "THROTTLE_THRESHOLDS",
    "AdmissionConfig",
    "CoordinatorConfig",
    "Launch",
]

#: Priority of tasks whose submission, type and domain set none.
DEFAULT_PRIORITY = int(Priority.NORMAL)
#: Longest the coordinator sleeps without an event (seconds): shorter wakes it more often when
#: idle; submissions, results and calls wake it at once anyway.
POLL_INTERVAL = 0.5
#: Seconds between two TTL sweeps (tasks are also checked when they would be dispatched).
EXPIRY_SWEEP_INTERVAL = 30.0
#: Finished executions between two retention prunes: more means fewer, larger deletes.
RETENTION_EVERY = 100
#: Seconds an ``on_cancel`` hook may run before its worker is killed.
CANCEL_HOOK_TIMEOUT = 30.0
#: Events kept for each subscriber before the oldest are dropped (and counted in ``.missed``): more
#: rides out longer stalls of a reader, at the memory of that many events per subscriber.
EVENT_BUFFER = 10_000
#: The largest buffer a subscription may ask for.
MAX_EVENT_BUFFER = 10_000_000
#: Seconds between two resource samples, and the EWMA weight of a new one.
SAMPLE_INTERVAL = 1.0
SAMPLE_ALPHA = 0.3
#: Seconds of smoothed IO throughput that make the IO window, and the share running tasks may fill.
IO_WINDOW = 2.0
IO_FRACTION = 0.8
#: The default throttle policy: (priority, limit) pairs, a task of that priority or less urgent waits
#: while the pressure is above the limit (BACKGROUND above 0.5, NORMAL above 0.75, HIGH never).
THROTTLE_THRESHOLDS: tuple[tuple[int, float], ...] = ((int(Priority.BACKGROUND), 0.5), (int(Priority.NORMAL), 0.75))
#: A task this urgent or more preempts running work of lower priority.
PREEMPT_PRIORITY: int | None = int(Priority.REALTIME)
#: How preempted work stops: "cancel" (ctx.cancelled, runs again later) or "suspend" (SIGSTOP/SIGCONT).
PREEMPTION = "cancel"
#: ``Scheduler(durability=…)``: how far a journaled change is written before it is answered.
DURABILITY = ("fsync", "os")
#: The fair-share weight of a group that has none of its own (and of ungrouped tasks).
DEFAULT_GROUP_WEIGHT = 1.0

RateWire = tuple[int, float, int]  # (permits, interval seconds, burst)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionConfig:
    """What the gate, fair share, aging and preemption start from (the host resolved every value)."""

    cpus: float = math.inf  # the capacity in cores (the Scheduler resolves the machine's)
    memory: int = 0  # bytes; 0: memory is not admitted on
    group_caps: Mapping[str, int] = field(default_factory=dict)
    default_group_cap: int | None = None
    rate_limits: Mapping[str, RateWire] = field(default_factory=dict)  # qualified task type -> bucket
    group_rate_limits: Mapping[str, RateWire] = field(default_factory=dict)
    io_window: float = IO_WINDOW
    io_fraction: float = IO_FRACTION
    throttle: tuple[tuple[int, float], ...] = THROTTLE_THRESHOLDS
    group_weights: Mapping[str, float] = field(default_factory=dict)
    default_group_weight: float = DEFAULT_GROUP_WEIGHT
    group_minimum_slots: Mapping[str, int] = field(default_factory=dict)
    aging: tuple[float, float, int, int | None] | None = None  # AgingConfig.as_wire(), or off
    preempt_priority: int | None = PREEMPT_PRIORITY
    preemption: str = PREEMPTION


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorConfig:
    """Everything the coordinator is configured with, checked on the host."""

    store_path: str
    max_concurrency: int
    domain_caps: Mapping[str, int | None] = field(default_factory=dict)
    type_retry: Mapping[str, RetryPolicy] = field(default_factory=dict)  # qualified type -> its policy
    default_retry: RetryPolicy = field(default_factory=RetryPolicy)
    shutdown: Shutdown = field(default_factory=Shutdown.hard)
    poll_interval: float = POLL_INTERVAL
    finalizers: frozenset[str] = frozenset()  # task types with a finalize step
    cancel_hooks: frozenset[str] = frozenset()  # task types with an on_cancel hook
    cancel_hook_timeout: float = CANCEL_HOOK_TIMEOUT
    expiry_sweep_interval: float = EXPIRY_SWEEP_INTERVAL
    retention: tuple[str, float] | None = None  # ("count", keep) or ("age_days", days)
    retention_every: int = RETENTION_EVERY
    start_paused: bool = False
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    progress_interval: float | None = None  # seconds between TaskProgress ticks (None: no ticker)
    event_buffer: int = EVENT_BUFFER
    backend: str = "local"  # where admitted runs execute (``coordinator/backends``)
    durability: str = "fsync"  # the journal's records: "fsync" (fdatasync'd) or "os" (written only)


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """How the coordinator process starts: what travels on its stdin beside the configuration."""

    registry: bytes  # cloudpickled task functions, hooks, state and defaults (the workers load it)
    #: Pickled with the standard pickle, of taskmill's own types only, so any process can load it:
    #: what ``connect()`` needs (domain names and caps, task type names, the defaults).
    session: bytes = b""
    sys_path: tuple[str, ...]
    cwd: str
    embedded: bool = True  # the host's stdin and pid are the coordinator's lifelines
    socket_path: str = ""
    authkey: bytes = b""
    runtime_dir: str = ""
    host_pid: int | None = None
    log_level: int = 30  # logging.WARNING
    log_format: str = "keyvalue"  # of the coordinator's log lines on stderr: "keyvalue", "console" or "json"
