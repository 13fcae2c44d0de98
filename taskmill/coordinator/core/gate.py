"""Admission control: may this ready task start now? Plain code, no I/O (issue 7).

The lifecycle offers candidates most urgent first; ``Gate.admit`` answers with
one of three verdicts, or the time of a rate limit's next token:

- ``ADMIT``: start it (``take`` books its slot and resources; ``give`` returns them).
- ``SKIP``: denied by a check scoped to its domain or group (a cap): the
  candidate's lane is passed over for the rest of the round; other domains and
  groups go on.
- ``STOP``: denied by a check of the whole machine (concurrency, CPU cores,
  memory, the IO window, the throttle policy): no less urgent candidate may
  pass it, so the round ends. A task waiting for two free cores is not
  overtaken forever by one-core tasks; it starts as soon as the cores are free.
- a float: rate-limited; the monotonic time of the bucket's next token. The
  lifecycle delays the task until then, so it blocks nobody.

Checks run cheapest first and each denial is counted by reason
(``denials``). Pauses are the lifecycle's: a paused task is never a candidate.
The gate never samples anything itself: the loop hands it the sampler's
smoothed rates (``observe``) and the pressure (``set_pressure``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

from taskmill.config import IO_FRACTION, IO_WINDOW, THROTTLE_THRESHOLDS, AdmissionConfig
from taskmill.metrics import DENIAL_REASONS

__all__ = ["ADMIT", "SKIP", "STOP", "REASONS", "Bucket", "Gate", "default_throttle", "gate_figures", "make_gate",
           "thresholds_policy"]

ADMIT = 0
SKIP = 1
STOP = 2

#: Denial reasons, in the order the checks run (their names in ``metrics_snapshot()``).
REASONS = DENIAL_REASONS
#: Reasons scoped to the candidate's domain or group: only its lane is passed over.
_SCOPED = frozenset({"domain_cap", "group_cap"})

def thresholds_policy(thresholds: list[tuple[int, float]]) -> Callable[[int, float], bool]:
    """A throttle policy from ``(priority, limit)`` pairs (``ThrottlePolicy.thresholds``: least
    urgent first): a task of that priority or less urgent waits while the pressure is above the limit."""
    rules = sorted(((int(p), float(limit)) for p, limit in thresholds), reverse=True)

    def throttled(priority: int, pressure: float) -> bool:
        for floor, limit in rules:
            if priority >= floor:
                return pressure > limit
        return False
    return throttled


#: The default policy: BACKGROUND (192) and lower wait above 0.5, NORMAL (128) and lower above
#: 0.75, more urgent work never (``ThrottlePolicy()`` on the host holds the same pairs).
default_throttle = thresholds_policy(list(THROTTLE_THRESHOLDS))


#: Tokens short of a whole one that still count as one: ``(t1 - t0) * permits / interval`` lands
#: a hair under 1.0 where the exact refill is 1.0, and a refused task would be due "now" forever.
TOKEN_EPSILON = 1e-9


class Bucket:
    """A token bucket: ``permits`` tokens per ``interval`` seconds, holding at most ``burst``.
    Starts full. Times are monotonic seconds."""

    __slots__ = ("permits", "interval", "burst", "tokens", "stamp")

    def __init__(self, permits: int, interval: float, burst: int, now: float) -> None:
        self.permits = permits
        self.interval = interval
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.permits / self.interval)
            self.stamp = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def next_token(self, now: float) -> float:
        """When a whole token will be there (``now`` if it is, to within float rounding)."""
        self._refill(now)
        if self.tokens >= 1.0 - TOKEN_EPSILON:
            return now
        return now + (1.0 - self.tokens) * self.interval / self.permits

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens = max(0.0, self.tokens - 1.0)


class Gate:
    """The admission state of one coordinator: caps, capacities, what running tasks hold."""

    def __init__(self, max_concurrency: int, *, cpus: float = math.inf, memory: int = 0,
                 domain_caps: dict[str, int] | None = None, group_caps: dict[str, int] | None = None,
                 default_group_cap: int | None = None, io_window: float = IO_WINDOW, io_fraction: float = IO_FRACTION,
                 throttle: Callable[[int, float], bool] = default_throttle) -> None:
        self.max_concurrency = max_concurrency
        self.cpus_total = cpus
        self.memory_total = memory  # 0: memory is not admitted on
        self.domain_caps = dict(domain_caps or {})
        self.group_caps = dict(group_caps or {})
        self.default_group_cap = default_group_cap
        self.io_window = io_window
        self.io_fraction = io_fraction
        self.throttle = throttle
        self.running = 0
        self.by_domain: dict[str, int] = {}
        self.by_group: dict[str, int] = {}
        self.cpus_in_use = 0.0
        self.memory_in_use = 0
        self.io_in_use = [0, 0, 0, 0]
        self.io_running = 0  # running tasks that declared any IO
        self.io_rates = [0.0, 0.0, 0.0, 0.0]  # smoothed observed bytes/s per direction
        self.pressure = 0.0
        self.cpu_usage = 0.0  # other processes' CPU load, as the host's monitor last saw it
        self.pressure_breakdown: list[tuple[str, float]] = []
        self.type_limits: dict[str, Bucket] = {}
        self.group_limits: dict[str, Bucket] = {}
        self.denials = dict.fromkeys(REASONS, 0)

    # ------------------------------------------------------------------ the decision

    def group_cap(self, group: str | None) -> int | None:
        if group is None:
            return None
        cap = self.group_caps.get(group)
        return cap if cap is not None else self.default_group_cap

    def admit(self, e: Any, now: float, priority: int | None = None) -> int | float:
        """The verdict for ready entry ``e`` (see the module docstring); ``priority``: its
        effective priority (default its own). A rate-limited answer takes no token."""
        reason = self._no_room(e)
        if reason is not None:
            return self._deny(reason, SKIP if reason in _SCOPED else STOP)
        io = e.io
        if io is not None and self.io_running and not self._io_fits(io):
            return self._deny("io", STOP)
        if self.throttled(e.priority if priority is None else priority):
            return self._deny("throttle", STOP)
        if self.type_limits or self.group_limits:
            due = self._next_token(e, now)
            if due > now:
                self.denials["rate_limit"] += 1
                return due
        return ADMIT

    def throttled(self, priority: int) -> bool:
        """Does the throttle policy hold ``priority`` back at the current pressure? (None is at 0.)"""
        return self.pressure > 0.0 and self.throttle(priority, self.pressure)

    def _deny(self, reason: str, verdict: int) -> int:
        self.denials[reason] += 1
        return verdict

    def _no_room(self, e: Any) -> str | None:
        """The first slot or resource check ``e`` fails (a reason of ``REASONS``), or None."""
        if self.running >= self.max_concurrency:
            return "concurrency"
        cap = self.domain_caps.get(e.domain)
        if cap is not None and self.by_domain.get(e.domain, 0) >= cap:
            return "domain_cap"
        cap = self.group_cap(e.group)
        if cap is not None and self.by_group.get(e.group, 0) >= cap:
            return "group_cap"
        if self.running and e.cpus > self.cpus_total - self.cpus_in_use + 1e-9:
            return "cpu"
        if self.running and e.memory and self.memory_total and e.memory > self.memory_total - self.memory_in_use:
            return "memory"
        return None

    def _io_fits(self, io: tuple[int, int, int, int]) -> bool:
        """Every direction's budget fits in what is left of its window. A direction with no
        observed throughput has no window (nothing to go by): it does not hold anyone back."""
        scale = self.io_window * self.io_fraction
        for want, held, rate in zip(io, self.io_in_use, self.io_rates):
            if want and rate > 0.0 and held + want > rate * scale:
                return False
        return True

    def _next_token(self, e: Any, now: float) -> float:
        due = now
        for bucket in (self.type_limits.get(e.task_type), self.group_limits.get(e.group) if e.group else None):
            if bucket is not None:
                due = max(due, bucket.next_token(now))
        return due

    # ------------------------------------------------------------------ bookkeeping

    def fits(self, e: Any) -> bool:
        """Is there room for ``e`` now: slot, domain and group caps, cores, memory (a suspended
        run continuing: no IO window, pressure or token is asked of it)? Counts no denial."""
        return self._no_room(e) is None

    def running_by_group(self) -> dict[str | None, int]:
        """Running tasks per group, the ungrouped ones under None."""
        out: dict[str | None, int] = {g: n for g, n in self.by_group.items()}
        out[None] = self.running - sum(self.by_group.values())
        return out

    def take(self, e: Any, now: float, tokens: bool = True) -> None:
        """``e`` starts: it holds a slot, its cores, memory and IO budget, and (``tokens``) a token."""
        self.running += 1
        self.by_domain[e.domain] = self.by_domain.get(e.domain, 0) + 1
        group = e.group
        if group is not None:
            self.by_group[group] = self.by_group.get(group, 0) + 1
        self.cpus_in_use += e.cpus
        self.memory_in_use += e.memory
        io = e.io
        if io is not None:
            self.io_running += 1
            held = self.io_in_use
            for i in range(4):
                held[i] += io[i]
        if tokens and (self.type_limits or self.group_limits):
            bucket = self.type_limits.get(e.task_type)
            if bucket is not None:
                bucket.take(now)
            bucket = self.group_limits.get(group) if group is not None else None
            if bucket is not None:
                bucket.take(now)

    def give(self, e: Any) -> None:
        """``e`` stopped running (ended, or stopped for a pause): what it held is free."""
        self.running -= 1
        self.by_domain[e.domain] -= 1
        group = e.group
        if group is not None:
            left = self.by_group[group] - 1
            if left:
                self.by_group[group] = left
            else:
                del self.by_group[group]
        self.cpus_in_use -= e.cpus
        if self.running == 0:
            self.cpus_in_use = 0.0  # no float drift survives an idle moment
        self.memory_in_use -= e.memory
        io = e.io
        if io is not None:
            self.io_running -= 1
            held = self.io_in_use
            for i in range(4):
                held[i] -= io[i]

    def check(self, running: Iterable[Any]) -> None:
        """Assert that what the gate books equals a recount over ``running`` (tests)."""
        running = list(running)
        by_domain: dict[str, int] = {}
        by_group: dict[str, int] = {}
        io = [0, 0, 0, 0]
        for e in running:
            by_domain[e.domain] = by_domain.get(e.domain, 0) + 1
            if e.group is not None:
                by_group[e.group] = by_group.get(e.group, 0) + 1
            for i, b in enumerate(e.io or (0, 0, 0, 0)):
                io[i] += b
        assert self.running == len(running), (self.running, len(running))
        assert {d: n for d, n in self.by_domain.items() if n} == by_domain, (self.by_domain, by_domain)
        assert self.by_group == by_group, (self.by_group, by_group)
        assert abs(self.cpus_in_use - sum(e.cpus for e in running)) < 1e-6
        assert self.memory_in_use == sum(e.memory for e in running)
        assert self.io_in_use == io and self.io_running == sum(1 for e in running if e.io is not None)

    # ------------------------------------------------------------------ inputs and settings

    def observe(self, rates: Iterable[float]) -> None:
        """The sampler's smoothed IO rates (bytes/s: disk read, disk write, net rx, net tx)."""
        self.io_rates = [max(0.0, float(r)) for r in rates]

    def set_pressure(self, value: float, breakdown: list[tuple[str, float]]) -> None:
        self.pressure = min(1.0, max(0.0, value))
        self.pressure_breakdown = breakdown

    def set_rate_limit(self, kind: str, scope: str, limit: tuple[int, float, int] | None, now: float) -> None:
        """Set (``(permits, interval, burst)``) or remove (None) the bucket of a task type
        (``kind`` "type") or a group ("group"). A new bucket starts full."""
        table = self.type_limits if kind == "type" else self.group_limits
        if limit is None:
            table.pop(scope, None)
        else:
            permits, interval, burst = limit
            table[scope] = Bucket(permits, interval, burst, now)


def make_gate(max_concurrency: int, domain_caps: Mapping[str, int | None], admission: AdmissionConfig,
              now: float) -> Gate:
    """The gate of a coordinator from its configuration (the host resolved every value)."""
    gate = Gate(max_concurrency, cpus=admission.cpus, memory=admission.memory,
                domain_caps={d: c for d, c in domain_caps.items() if c is not None},
                group_caps=dict(admission.group_caps), default_group_cap=admission.default_group_cap,
                io_window=admission.io_window, io_fraction=admission.io_fraction,
                throttle=thresholds_policy(list(admission.throttle)))
    for scope, limit in admission.rate_limits.items():
        gate.set_rate_limit("type", scope, limit, now)
    for scope, limit in admission.group_rate_limits.items():
        gate.set_rate_limit("group", scope, limit, now)
    return gate


def gate_figures(gate: Gate) -> dict[str, int]:
    """The gate's numbers as the shared segment's integer counters (see ``shm.COUNTER_NAMES``)."""
    out = {f"denied_{reason}": n for reason, n in gate.denials.items()}
    out["gate_denials"] = sum(gate.denials.values())
    out["pressure_ppm"] = round(gate.pressure * 1e6)
    out["cpu_usage_ppm"] = round(gate.cpu_usage * 1e6)
    for name, rate in zip(("io_read_bps", "io_write_bps", "net_rx_bps", "net_tx_bps"), gate.io_rates):
        out[name] = round(min(rate, 1e18))
    out["cpus_total_milli"] = round(min(gate.cpus_total, 1e15) * 1000)
    out["cpus_in_use_milli"] = round(gate.cpus_in_use * 1000)
    out["memory_total"] = gate.memory_total
    out["memory_in_use"] = gate.memory_in_use
    return out
