"""The resource monitor's pure parts and one tick of it (no scheduler): EWMA smoothing,
the network source, the aggregate (the maximum), and pressure sources that fail or
overrun their time budget."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import taskmill as tm
from taskmill.admission import PressureSource, ResourceSample, SamplerConfig
from taskmill.monitor import PsutilSampler, ResourceMonitor, aggregate, network_pressure, smooth

RATE = st.floats(0.0, 1e9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), RATE), min_size=1, max_size=30), st.floats(0.01, 1.0))
def test_smoothing_is_an_ewma_that_stays_between_the_samples(samples: list[tuple[float, float]],
                                                              alpha: float) -> None:
    prev = None
    expected = None
    for cpu, rate in samples:
        raw = ResourceSample(cpu_usage=cpu, io_read_bytes_per_sec=rate)
        prev = smooth(prev, raw, alpha)
        expected = rate if expected is None else (1 - alpha) * expected + alpha * rate
        assert prev.io_read_bytes_per_sec == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert prev is not None
    assert min(r for _, r in samples) - 1e-6 <= prev.io_read_bytes_per_sec <= max(r for _, r in samples) + 1e-6
    assert 0.0 <= prev.cpu_usage <= 1.0


def test_alpha_weighs_the_new_sample() -> None:
    a = smooth(None, ResourceSample(io_write_bytes_per_sec=100.0), 0.3)
    b = smooth(a, ResourceSample(io_write_bytes_per_sec=200.0), 0.3)
    assert b.io_write_bytes_per_sec == pytest.approx(130.0)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=5), st.floats(-1.0, 2.0)), max_size=6))
def test_the_aggregate_is_the_largest_source_clamped(values: list[tuple[str, float]]) -> None:
    total, breakdown = aggregate(values)
    assert [n for n, _ in breakdown] == [n for n, _ in values]
    assert all(0.0 <= v <= 1.0 for _, v in breakdown)
    assert total == max((min(1.0, max(0.0, v)) for _, v in values), default=0.0)


def test_network_pressure_is_throughput_against_the_cap() -> None:
    s = ResourceSample(net_rx_bytes_per_sec=300.0, net_tx_bytes_per_sec=200.0)
    assert network_pressure(s, 1000.0) == 0.5
    assert network_pressure(s, 100.0) == 1.0


class Fixed(PressureSource):
    def __init__(self, name: str, value: float) -> None:
        self.name = name
        self.value = value

    def pressure(self) -> float:
        return self.value


class Slow(PressureSource):
    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()

    def pressure(self) -> float:
        self.release.wait(10)
        return 0.9


class Broken(PressureSource):
    name = "broken"

    def pressure(self) -> float:
        raise RuntimeError("no signal")


class Scripted:
    def __init__(self, *samples: ResourceSample) -> None:
        self.samples = list(samples)

    def sample(self) -> ResourceSample:
        return self.samples.pop(0)


def test_one_tick_smooths_the_sample_and_reads_every_source_within_its_budget() -> None:
    slow = Slow()
    sampler = Scripted(ResourceSample(cpu_usage=0.2, net_rx_bytes_per_sec=50.0),
                       ResourceSample(cpu_usage=0.4, net_rx_bytes_per_sec=150.0))
    m = ResourceMonitor(lambda *a: None, SamplerConfig(interval=0.2, alpha=0.5), sampler,
                        [Fixed("api", 0.3), slow, Broken()], bandwidth_limit=200.0)
    t = time.monotonic()
    sample, pressure, breakdown = m.observe_once()
    assert time.monotonic() - t < 2.0  # the slow source was not waited for
    assert dict(breakdown) == {"cpu": 0.2, "network": 0.25, "api": 0.3, "slow": 0.0, "broken": 0.0}
    assert pressure == 0.3
    slow.release.set()
    deadline = time.monotonic() + 10
    while m._sources[1].value == 0.0 and time.monotonic() < deadline:  # its call ends later; its value stands
        time.sleep(0.01)
    sample, pressure, breakdown = m.observe_once()
    assert sample.cpu_usage == pytest.approx(0.3) and sample.net_rx_bytes_per_sec == pytest.approx(100.0)
    assert dict(breakdown)["slow"] == 0.9 and pressure == 0.9


def test_a_sampler_must_return_a_resource_sample() -> None:
    class Wrong:
        def sample(self) -> float:
            return 1.0

    with pytest.raises(TypeError, match="ResourceSample"):
        ResourceMonitor(lambda *a: None, SamplerConfig(), Wrong(), [], None).observe_once()


def test_psutil_sampler_reports_rates_in_range() -> None:
    import os

    s = PsutilSampler(lambda: [os.getpid()])
    assert s.sample() == ResourceSample()  # the first call only starts the counters
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        pass
    second = s.sample()
    assert 0.0 <= second.cpu_usage <= 1.0 and second.io_read_bytes_per_sec >= 0.0
    assert tm.Capacity().resolved()[0] >= 1.0


def test_a_cgroup_cpu_quota_lowers_the_default_capacity() -> None:
    from taskmill.validation import cgroup_cpus

    assert cgroup_cpus("max 100000\n", None, None) is None  # v2, no quota
    assert cgroup_cpus("200000 100000\n", None, None) == 2.0
    assert cgroup_cpus("50000 100000", None, None) == 0.5
    assert cgroup_cpus(None, "-1\n", "100000\n") is None  # v1, no quota
    assert cgroup_cpus(None, "150000\n", "100000\n") == 1.5
    assert cgroup_cpus("garbage", None, None) is None
    assert cgroup_cpus(None, None, None) is None
    cores, memory = tm.Capacity().resolved()
    assert cores >= 1.0 and memory > 0
