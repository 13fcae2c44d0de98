"""Values that configure admission control (F17–F21): capacity, the sampler, pressure, rates.

Each value checks itself when built, so a bad setting is an error where it is
written (``TypeError``/``ValueError`` naming the field), never a surprise in the
coordinator. They travel to the coordinator as plain tuples (``as_wire``);
user objects (a custom sampler, pressure sources, a throttle policy) travel
with cloudpickle and are called there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from taskmill.config import IO_FRACTION, IO_WINDOW, SAMPLE_ALPHA, SAMPLE_INTERVAL, THROTTLE_THRESHOLDS
from taskmill.records import Priority
from taskmill.validation import INT32_MAX, INT64_MAX, as_float, as_int, as_seconds, read_text, usable_cpus

__all__ = [
    "AgingConfig",
    "Capacity",
    "PressureSource",
    "RateLimit",
    "ResourceSample",
    "SamplerConfig",
    "ThrottlePolicy",
    "admission_settings",
    "concurrency_warning",
    "fairness_settings",
    "preemption_settings",
    "usable_memory",
]

#: A cgroup memory limit and usage (v2, then v1): what the limit leaves lowers the default capacity.
CGROUP_MEMORY = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def usable_memory() -> int:
    """Bytes of memory available now: the system's available memory, lowered by what this
    process's cgroup memory limit leaves."""
    import psutil  # here, not at import: the coordinator's decision code imports these values

    available = int(psutil.virtual_memory().available)
    for limit_path, usage_path in CGROUP_MEMORY:
        limit, usage = read_text(limit_path), read_text(usage_path)
        if limit is None or usage is None:
            continue
        try:
            left = int(limit) - int(usage)
        except ValueError:  # "max": no limit
            break
        if 0 < left < available:
            available = left
        break
    return available


@dataclass(frozen=True)
class Capacity:
    """What running tasks may hold together: ``cpus`` cores and ``memory`` bytes.

    ``None`` means the machine's: the cores this process may use (CPU affinity and
    a cgroup quota) and the memory available when the scheduler starts. A task
    asking for more than either is refused at submit.

    Example:
        >>> Capacity(cpus=2, memory=8 << 30)
        Capacity(cpus=2.0, memory=8589934592)
    """

    cpus: float | None = None
    memory: int | None = None

    def __post_init__(self) -> None:
        if self.cpus is not None:
            object.__setattr__(self, "cpus", as_float(self.cpus, "Capacity.cpus", lo=0.0, lo_open=True,
                                                      hi=float(INT32_MAX), unit="cores"))
        if self.memory is not None:
            object.__setattr__(self, "memory", as_int(self.memory, "Capacity.memory", lo=1, hi=INT64_MAX))

    def resolved(self) -> tuple[float, int]:
        """(cores, bytes) with the machine's figures where this says None."""
        return (usable_cpus() if self.cpus is None else self.cpus,
                usable_memory() if self.memory is None else self.memory)


@dataclass(frozen=True)
class SamplerConfig:
    """How the resource sampler observes the machine (F18).

    ``interval``: seconds between samples; ``alpha``: EWMA weight of a new sample
    (0 < alpha <= 1); ``window``: seconds of smoothed throughput that make the IO
    window; ``max_io_fraction``: the share of the window running tasks' expected IO
    may fill.
    """

    interval: float = SAMPLE_INTERVAL
    alpha: float = SAMPLE_ALPHA
    window: float = IO_WINDOW
    max_io_fraction: float = IO_FRACTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", as_float(self.interval, "SamplerConfig.interval", lo=0.01,
                                                      hi=3600.0, unit="seconds"))
        object.__setattr__(self, "alpha", as_float(self.alpha, "SamplerConfig.alpha", lo=0.0, lo_open=True, hi=1.0))
        object.__setattr__(self, "window", as_float(self.window, "SamplerConfig.window", lo=0.0, lo_open=True,
                                                    hi=3600.0, unit="seconds"))
        object.__setattr__(self, "max_io_fraction", as_float(self.max_io_fraction, "SamplerConfig.max_io_fraction",
                                                             lo=0.0, lo_open=True, hi=1.0))


@dataclass(frozen=True)
class ResourceSample:
    """One raw observation: CPU use (0..1 of all cores) and IO rates in bytes per second.

    A custom ``resource_sampler`` returns these from ``sample()``; the scheduler
    smooths them.
    """

    cpu_usage: float = 0.0
    io_read_bytes_per_sec: float = 0.0
    io_write_bytes_per_sec: float = 0.0
    net_rx_bytes_per_sec: float = 0.0
    net_tx_bytes_per_sec: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpu_usage", as_float(self.cpu_usage, "ResourceSample.cpu_usage", lo=0.0, hi=1.0))
        for name in ("io_read_bytes_per_sec", "io_write_bytes_per_sec", "net_rx_bytes_per_sec",
                     "net_tx_bytes_per_sec"):
            object.__setattr__(self, name, as_float(getattr(self, name), f"ResourceSample.{name}", lo=0.0,
                                                    hi=1e18, unit="bytes per second"))

    def rates(self) -> tuple[float, float, float, float]:
        """IO rates in the gate's order: disk read, disk write, network rx, network tx."""
        return (self.io_read_bytes_per_sec, self.io_write_bytes_per_sec, self.net_rx_bytes_per_sec,
                self.net_tx_bytes_per_sec)


class PressureSource:
    """A signal that the machine (or something it serves) is busy: subclass it.

    ``pressure()`` returns 0.0 (idle) .. 1.0 (saturated); ``name`` labels it in
    ``snapshot().pressure_breakdown``. Sources are sent to the coordinator process
    (with cloudpickle) and called there every sampler interval, each within a time
    budget: a call that overruns it is not waited for, and the source's last value
    stands until the call returns. State a source reads must therefore be reachable
    from another process (a file, a socket, shared memory, psutil).

    Example:
        >>> class Load(PressureSource):
        ...     name = "loadavg"
        ...     def pressure(self) -> float:
        ...         import os
        ...         return min(1.0, os.getloadavg()[0] / os.cpu_count())
    """

    name: str = "custom"

    def pressure(self) -> float:
        raise NotImplementedError("a PressureSource subclass defines pressure() -> float in 0..1")


@dataclass(frozen=True)
class ThrottlePolicy:
    """Which priorities wait under pressure: ``thresholds`` are ``(priority, limit)`` pairs;
    a task whose (effective) priority is ``priority`` or less urgent waits while the
    aggregate pressure is above ``limit``. The default: BACKGROUND and lower above 0.5,
    NORMAL above 0.75, HIGH and REALTIME never.

    Example:
        >>> ThrottlePolicy([(Priority.NORMAL, 0.9)]).throttled(Priority.BACKGROUND, 0.95)
        True
    """

    thresholds: tuple[tuple[int, float], ...] = THROTTLE_THRESHOLDS

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, (str, bytes)) or not hasattr(self.thresholds, "__iter__"):
            raise TypeError("ThrottlePolicy.thresholds must be a list of (priority, limit) pairs")
        pairs = []
        for pair in self.thresholds:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"ThrottlePolicy.thresholds: {pair!r} is not a (priority, limit) pair")
            pairs.append((int(Priority(pair[0])), as_float(pair[1], "ThrottlePolicy limit", lo=0.0, hi=1.0)))
        object.__setattr__(self, "thresholds", tuple(sorted(pairs, reverse=True)))

    @classmethod
    def default(cls) -> ThrottlePolicy:
        return cls()

    def throttled(self, priority: int, pressure: float) -> bool:
        """Does a task of ``priority`` wait at ``pressure``? The least urgent matching rule decides."""
        for floor, limit in self.thresholds:
            if priority >= floor:
                return pressure > limit
        return False


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``permits`` starts per ``interval`` seconds, at most ``burst`` at once
    (default: ``permits``). The bucket starts full.

    Example:
        >>> RateLimit.per_minute(10).with_burst(20)
        RateLimit(permits=10, interval=60.0, burst=20)
    """

    permits: int
    interval: float
    burst: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "permits", as_int(self.permits, "RateLimit.permits", lo=1, hi=INT32_MAX))
        object.__setattr__(self, "interval", as_float(self.interval, "RateLimit.interval", lo=0.0, lo_open=True,
                                                      hi=86400.0 * 366, unit="seconds"))
        burst = self.permits if self.burst is None else as_int(self.burst, "RateLimit.burst", lo=1, hi=INT32_MAX)
        object.__setattr__(self, "burst", burst)

    @classmethod
    def per_second(cls, n: int) -> RateLimit:
        return cls(n, 1.0)

    @classmethod
    def per_minute(cls, n: int) -> RateLimit:
        return cls(n, 60.0)

    def with_burst(self, burst: int) -> RateLimit:
        """The same rate holding at most ``burst`` tokens."""
        return RateLimit(self.permits, self.interval, burst)

    def as_wire(self) -> tuple[int, float, int]:
        return (self.permits, self.interval, int(self.burst or self.permits))


@dataclass(frozen=True)
class AgingConfig:
    """Priority aging (F21): after ``grace_period`` seconds pending, a task gains one level
    (its effective priority goes down by one) per ``aging_interval`` seconds, up to
    ``max_effective_priority``; time paused does not count. Its stored priority never
    changes. A task aged to ``urgent_threshold`` or more urgent bypasses group weights.
    """

    grace_period: float = 300.0
    aging_interval: float = 60.0
    max_effective_priority: int = field(default=int(Priority.HIGH))
    urgent_threshold: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "grace_period", as_seconds(self.grace_period, "AgingConfig.grace_period"))
        object.__setattr__(self, "aging_interval", as_seconds(self.aging_interval, "AgingConfig.aging_interval",
                                                              lo_open=True))
        object.__setattr__(self, "max_effective_priority", int(Priority(self.max_effective_priority)))
        if self.urgent_threshold is not None:
            urgent = int(Priority(self.urgent_threshold))
            if urgent < self.max_effective_priority:
                raise ValueError(f"AgingConfig.urgent_threshold ({urgent}) is more urgent than "
                                 f"max_effective_priority ({self.max_effective_priority}): no task could reach it")
            object.__setattr__(self, "urgent_threshold", urgent)

    def as_wire(self) -> tuple[float, float, int, int | None]:
        return (self.grace_period, self.aging_interval, self.max_effective_priority, self.urgent_threshold)


def wire_rate_limits(limits: Any, what: str) -> dict[str, tuple[int, float, int]]:
    """A ``{name: RateLimit}`` setting as plain tuples, checked."""
    out = {}
    for name, limit in _named_dict(limits, what, "names").items():
        if not isinstance(limit, RateLimit):
            raise TypeError(f"{what}[{name!r}] must be a RateLimit, got {type(limit).__name__}")
        out[name] = limit.as_wire()
    return out


def preemption_settings(preempt_priority: Any, preemption: Any) -> dict[str, Any]:
    """``preempt_priority`` (a priority, or None: off) and the mode, checked."""
    if preemption not in ("cancel", "suspend"):
        raise ValueError(f"preemption must be 'cancel' or 'suspend', got {preemption!r}")
    return {"preempt_priority": None if preempt_priority is None else int(Priority(preempt_priority)),
            "preemption": preemption}


def fairness_settings(group_weights: Any, default_group_weight: Any, group_minimum_slots: Any,
                      priority_aging: Any) -> dict[str, Any]:
    """The Scheduler's fair-share and aging keywords, checked, as plain config values."""
    weights = {}
    for group, w in _named_dict(group_weights, "group_weights").items():
        weights[group] = as_float(w, f"group_weights[{group!r}]", lo=0.0, lo_open=True, hi=1e9)
    mins = {g: as_int(n, f"group_minimum_slots[{g!r}]", lo=0, hi=INT32_MAX)
            for g, n in _named_dict(group_minimum_slots, "group_minimum_slots").items()}
    if priority_aging is not None and not isinstance(priority_aging, AgingConfig):
        raise TypeError(f"priority_aging must be an AgingConfig or None, got {type(priority_aging).__name__}")
    return {"group_weights": weights,
            "default_group_weight": as_float(default_group_weight, "default_group_weight", lo=0.0, lo_open=True,
                                             hi=1e9),
            "group_minimum_slots": mins,
            "aging": None if priority_aging is None else priority_aging.as_wire()}


def _named_dict(value: Any, what: str, names: str = "group names") -> dict[str, Any]:
    """``value`` (None: empty) checked to be a dict keyed by non-empty str ``names``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict of {names}, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str) or not key:
            raise TypeError(f"{what}: keys must be non-empty {names}, got {key!r}")
    return value


def admission_settings(capacity: Any, group_concurrency: Any, default_group_concurrency: Any, rate_limits: Any,
                       group_rate_limits: Any) -> dict[str, Any]:
    """The Scheduler's admission keywords, checked, as the coordinator's ``admission`` config
    (plain values; ``cpus`` and ``memory`` resolved to the machine's where not given)."""
    if capacity is None:
        capacity = Capacity()
    if not isinstance(capacity, Capacity):
        raise TypeError(f"capacity must be a Capacity, got {type(capacity).__name__}")
    cpus, memory = capacity.resolved()
    caps = {g: as_int(n, f"group_concurrency[{g!r}]", lo=1, hi=INT32_MAX)
            for g, n in _named_dict(group_concurrency, "group_concurrency").items()}
    default_cap = None if default_group_concurrency is None else as_int(
        default_group_concurrency, "default_group_concurrency", lo=1, hi=INT32_MAX)
    types = wire_rate_limits(rate_limits, "rate_limits")
    return {"cpus": cpus, "memory": memory, "group_caps": caps, "default_group_cap": default_cap,
            "rate_limits": types, "group_rate_limits": wire_rate_limits(group_rate_limits, "group_rate_limits")}


def concurrency_warning(max_concurrency: int, cpus: float, lightest: float) -> str | None:
    """Why ``max_concurrency`` cannot be reached on ``cpus`` cores when the lightest registered task
    type claims ``lightest`` cores each (None: it can). Every task holds its ``cpus`` while it
    runs, so at most ``cpus // lightest`` run at once whatever ``max_concurrency`` says."""
    if lightest <= 0 or max_concurrency * lightest <= cpus + 1e-9:
        return None
    most = max(1, int(cpus / lightest + 1e-9))
    return (f"max_concurrency={max_concurrency} cannot be reached: the CPU capacity is {cpus:g} cores and every "
            f"task type claims at least {lightest:g} core(s) while it runs, so at most {most} task(s) run at once. "
            f"For IO-bound work declare fewer cores on its task types (for example @domain.task(cpus=0.25)), "
            f"or raise the capacity with capacity=Capacity(cpus={max_concurrency * lightest:g}).")
