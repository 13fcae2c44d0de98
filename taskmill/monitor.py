"""The resource monitor (F18, F19): samples the machine and the pressure sources on the host.

A thread of the ``Scheduler`` process, started with it when ``resource_monitoring``
is on, a custom ``resource_sampler`` is given, or pressure sources are. Every
``SamplerConfig.interval`` it takes one raw sample (psutil, or the user's
sampler), smooths it (EWMA), asks every pressure source for its value (each
within a time budget), and sends the result to the coordinator in one
``observe`` call; the coordinator's gate only reads those numbers. User code
(samplers, sources) therefore runs in the user's own process, next to the state
it reads, never in the coordinator.

Pure parts, tested alone: ``smooth``, ``network_pressure``, ``aggregate``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

import psutil

from taskmill.admission import PressureSource, ResourceSample, SamplerConfig, ThrottlePolicy
from taskmill.validation import as_float

__all__ = ["Monitoring", "PsutilSampler", "ResourceMonitor", "aggregate", "monitoring_settings", "network_pressure",
           "smooth"]

log = logging.getLogger("taskmill")

#: Longest a pressure source's call is waited for, as a share of the sampling interval.
SOURCE_BUDGET_SHARE = 0.25
#: Longest a pressure source's call is waited for, in seconds.
SOURCE_BUDGET_MAX = 0.2


def smooth(prev: ResourceSample | None, raw: ResourceSample, alpha: float) -> ResourceSample:
    """EWMA of every field (the first sample is taken as it is)."""
    if prev is None:
        return raw
    keep = 1.0 - alpha
    return ResourceSample(
        cpu_usage=min(1.0, keep * prev.cpu_usage + alpha * raw.cpu_usage),
        io_read_bytes_per_sec=keep * prev.io_read_bytes_per_sec + alpha * raw.io_read_bytes_per_sec,
        io_write_bytes_per_sec=keep * prev.io_write_bytes_per_sec + alpha * raw.io_write_bytes_per_sec,
        net_rx_bytes_per_sec=keep * prev.net_rx_bytes_per_sec + alpha * raw.net_rx_bytes_per_sec,
        net_tx_bytes_per_sec=keep * prev.net_tx_bytes_per_sec + alpha * raw.net_tx_bytes_per_sec)


def network_pressure(sample: ResourceSample, limit: float) -> float:
    """Observed network throughput (rx + tx) against ``limit`` bytes/s, as 0..1."""
    return min(1.0, (sample.net_rx_bytes_per_sec + sample.net_tx_bytes_per_sec) / limit)


def aggregate(values: Sequence[tuple[str, float]]) -> tuple[float, list[tuple[str, float]]]:
    """The aggregate pressure (the maximum, 0 with no source) and the breakdown, each clamped to 0..1."""
    breakdown = [(name, min(1.0, max(0.0, float(v)))) for name, v in values]
    return max((v for _, v in breakdown), default=0.0), breakdown


class PsutilSampler:
    """Raw rates from psutil: disk and network bytes per second since the last call, and the
    CPU load of everything but this scheduler's own processes (``own_pids()``: the
    coordinator and its workers), so running tasks do not throttle themselves."""

    def __init__(self, own_pids: Callable[[], list[int]]) -> None:
        self._own_pids = own_pids
        self._last: tuple[float, Any, Any, float, float] | None = None
        self._procs: dict[int, psutil.Process] = {}

    def _own_cpu_seconds(self) -> float:
        total = 0.0
        alive = {}
        for pid in self._own_pids():
            p = self._procs.get(pid)
            try:
                if p is None:
                    p = psutil.Process(pid)
                t = p.cpu_times()
            except (psutil.Error, OSError):
                continue
            alive[pid] = p
            total += t.user + t.system
        self._procs = alive
        return total

    def sample(self) -> ResourceSample:
        now = time.monotonic()
        disk = psutil.disk_io_counters()
        net = psutil.net_io_counters()
        cpu = psutil.cpu_times()
        busy = cpu.user + cpu.system + getattr(cpu, "nice", 0.0) + getattr(cpu, "irq", 0.0) \
            + getattr(cpu, "softirq", 0.0) + getattr(cpu, "steal", 0.0)
        own = self._own_cpu_seconds()
        last, self._last = self._last, (now, disk, net, busy, own)
        if last is None:
            return ResourceSample()
        then, disk0, net0, busy0, own0 = last
        dt = max(now - then, 1e-3)
        cores = psutil.cpu_count() or 1

        def rate(new: Any, old: Any, name: str) -> float:
            if new is None or old is None:
                return 0.0
            return max(0.0, (getattr(new, name) - getattr(old, name)) / dt)

        others = max(0.0, (busy - busy0) - max(0.0, own - own0)) / (dt * cores)
        return ResourceSample(cpu_usage=min(1.0, others),
                              io_read_bytes_per_sec=rate(disk, disk0, "read_bytes"),
                              io_write_bytes_per_sec=rate(disk, disk0, "write_bytes"),
                              net_rx_bytes_per_sec=rate(net, net0, "bytes_recv"),
                              net_tx_bytes_per_sec=rate(net, net0, "bytes_sent"))


class _Source:
    """One pressure source, called on a thread of its own so a slow call is not waited for."""

    def __init__(self, source: PressureSource) -> None:
        self.source = source
        self.name = str(getattr(source, "name", type(source).__name__))
        self.value = 0.0
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            v = float(self.source.pressure())
            if v == v:  # not nan
                self.value = min(1.0, max(0.0, v))
        except Exception as e:  # noqa: BLE001 - a failing source keeps its last value; it is the user's code
            log.warning("pressure source %s failed: %s", self.name, e)

    def poll(self, budget: float) -> float:
        """Call the source (unless its last call is still running) and wait up to ``budget``."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=f"taskmill-pressure-{self.name}", daemon=True)
            self._thread.start()
        self._thread.join(budget)
        if self._thread.is_alive():
            log.warning("pressure source %s took longer than %.2f s; its last value stands", self.name, budget)
        return self.value


class ResourceMonitor:
    """The sampling thread of one Scheduler (see the module docstring)."""

    def __init__(self, send: Callable[..., Any], config: SamplerConfig, sampler: Any,
                 sources: Sequence[PressureSource], bandwidth_limit: float | None) -> None:
        self._send = send
        self.config = config
        self._sampler = sampler
        self._sources = [_Source(s) for s in sources]
        self._bandwidth = bandwidth_limit
        self._stop = threading.Event()
        self.smoothed: ResourceSample | None = None
        self._thread = threading.Thread(target=self._loop, name="taskmill-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def observe_once(self) -> tuple[ResourceSample, float, list[tuple[str, float]]]:
        """Take one sample, smooth it and read the sources (what each tick sends)."""
        raw = self._sampler.sample() if self._sampler is not None else ResourceSample()
        if not isinstance(raw, ResourceSample):
            raise TypeError(f"resource_sampler.sample() must return a ResourceSample, got {type(raw).__name__}")
        self.smoothed = smooth(self.smoothed, raw, self.config.alpha)
        values: list[tuple[str, float]] = []
        if self._sampler is not None:
            values.append(("cpu", self.smoothed.cpu_usage))
        if self._bandwidth:
            values.append(("network", network_pressure(self.smoothed, self._bandwidth)))
        budget = min(SOURCE_BUDGET_MAX, self.config.interval * SOURCE_BUDGET_SHARE)
        values.extend((s.name, s.poll(budget)) for s in self._sources)
        pressure, breakdown = aggregate(values)
        return self.smoothed, pressure, breakdown

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                sample, pressure, breakdown = self.observe_once()
                self._send("observe", sample.rates(), sample.cpu_usage, pressure, breakdown)
            except Exception as e:  # noqa: BLE001 - the monitor must not die; the gate keeps the last figures
                if self._stop.is_set():
                    return
                log.warning("resource monitor: %s", e)
            self._stop.wait(max(0.0, self.config.interval - (time.monotonic() - started)))


class Monitoring:
    """A Scheduler's checked monitoring settings: what to sample, which sources, which policy."""

    def __init__(self, sampler: Any, config: SamplerConfig, sources: list[PressureSource],
                 policy: ThrottlePolicy, bandwidth_limit: float | None) -> None:
        self.sampler = sampler  # an object with sample(), "psutil", or None (no sampling)
        self.config = config
        self.sources = sources
        self.policy = policy
        self.bandwidth_limit = bandwidth_limit

    def wire(self) -> dict[str, Any]:
        """What the coordinator's gate needs: the IO window and the throttle thresholds."""
        return {"io_window": self.config.window, "io_fraction": self.config.max_io_fraction,
                "throttle": tuple(self.policy.thresholds)}

    def monitor(self, send: Callable[..., Any], coordinator_pid: int) -> ResourceMonitor | None:
        """A started monitor sending to the coordinator, or None when nothing is to be sampled."""
        if self.sampler is None and not self.sources:
            return None
        sampler = self.sampler
        if sampler == "psutil":
            def own() -> list[int]:
                try:
                    return [coordinator_pid] + [c.pid for c in psutil.Process(coordinator_pid).children(True)]
                except psutil.Error:
                    return [coordinator_pid]
            sampler = PsutilSampler(own)
        m = ResourceMonitor(send, self.config, sampler, self.sources, self.bandwidth_limit)
        m.start()
        return m


def monitoring_settings(resource_monitoring: Any, resource_sampler: Any, sampler_config: Any, pressure_sources: Any,
                        throttle_policy: Any, bandwidth_limit: Any) -> Monitoring:
    """The Scheduler's monitoring keywords, checked (``TypeError``/``ValueError`` naming each)."""
    if not isinstance(resource_monitoring, bool):
        raise TypeError(f"resource_monitoring must be a bool, got {type(resource_monitoring).__name__}")
    if resource_sampler is not None and not callable(getattr(resource_sampler, "sample", None)):
        raise TypeError("resource_sampler must have a sample() method returning a ResourceSample")
    config = SamplerConfig() if sampler_config is None else sampler_config
    if not isinstance(config, SamplerConfig):
        raise TypeError(f"sampler_config must be a SamplerConfig, got {type(config).__name__}")
    if isinstance(pressure_sources, PressureSource) or not isinstance(pressure_sources, (list, tuple)):
        raise TypeError("pressure_sources must be a list of PressureSource objects")
    for src in pressure_sources:
        if not isinstance(src, PressureSource):
            raise TypeError(f"pressure_sources must be PressureSource objects, got {type(src).__name__}")
    policy = ThrottlePolicy() if throttle_policy is None else throttle_policy
    if not isinstance(policy, ThrottlePolicy):
        raise TypeError(f"throttle_policy must be a ThrottlePolicy, got {type(policy).__name__}")
    limit = None if bandwidth_limit is None else as_float(bandwidth_limit, "bandwidth_limit", lo=0.0, lo_open=True,
                                                           unit="bytes per second")
    sampler = resource_sampler if resource_sampler is not None else (
        "psutil" if resource_monitoring or limit is not None else None)
    return Monitoring(sampler, config, list(pressure_sources), policy, limit)
