"""End-to-end IO admission and backpressure (issue 7, F18, F19) with a fake sampler.

The sampler and the pressure sources run in this (the host's) process, so the
test sets what they report: the IO window opens and closes as the fake sampler's
throughput changes, BACKGROUND work waits while a source reports pressure above
0.5 and NORMAL work keeps running, a custom ``ThrottlePolicy`` moves the
thresholds, and the snapshot shows the pressure and its breakdown. Workers log
their own start and end times; overlap is read from those.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from polling import poll_until
from taskfiles import append, lines

import taskmill as tm
from taskmill.admission import PressureSource, ResourceSample, SamplerConfig, ThrottlePolicy

pr = tm.Domain("pr")
MB = 1_000_000
FAST = SamplerConfig(interval=0.05, alpha=1.0)  # every sample taken as it is: deterministic


@pr.task(cpus=0.25)
def writer(ctx: tm.TaskContext, n: int, log: str, hold: float) -> None:
    append(log, f"start {n} {time.time()}")
    time.sleep(hold)
    append(log, f"end {n} {time.time()}")


class FakeSampler:
    """Reports the disk write rate the test sets."""

    def __init__(self, write_rate: float) -> None:
        self.write_rate = write_rate
        self.calls = 0

    def sample(self) -> ResourceSample:
        self.calls += 1
        return ResourceSample(io_write_bytes_per_sec=self.write_rate)


class Dial(PressureSource):
    """A pressure the test turns."""

    name = "dial"

    def __init__(self, value: float) -> None:
        self.value = value

    def pressure(self) -> float:
        return self.value


def _overlapped(log: str) -> int:
    """The most tasks of ``log`` running at one instant."""
    events = sorted((float(t), 1 if kind == "start" else -1)
                    for kind, _, t in (ln.split() for ln in lines(log)))
    peak = held = 0
    for _, d in sorted(events, key=lambda x: (x[0], x[1])):
        held += d
        peak = max(peak, held)
    return peak


def test_the_io_window_follows_the_observed_throughput(tmp_path: Any) -> None:
    slow_log, fast_log = str(tmp_path / "slow"), str(tmp_path / "fast")
    sampler = FakeSampler(write_rate=100 * MB)  # window: 2 s x 0.8 x 100 MB/s = 160 MB
    budget = tm.IoBudget.disk(0, 100 * MB)
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pr], max_concurrency=3, resource_sampler=sampler,
                      sampler_config=FAST) as s:
        poll_until(lambda: sampler.calls >= 3, what="the sampler running")
        h = s.domain(pr)
        h.submit_batch([writer.options(expected_io=budget).call(n=i, log=slow_log, hold=0.2) for i in range(3)])
        s.wait_idle(timeout=60)
        assert _overlapped(slow_log) == 1  # two budgets of 100 MB do not fit in 160 MB
        assert s.metrics_snapshot().gate_denials_by_reason["io"] >= 1
        sampler.write_rate = 1000 * MB  # window: 1.6 GB
        time.sleep(0.3)
        h.submit_batch([writer.options(expected_io=budget).call(n=i, log=fast_log, hold=0.3) for i in range(3, 6)])
        s.wait_idle(timeout=60)
        assert _overlapped(fast_log) == 3


def test_background_work_waits_under_pressure_and_normal_work_does_not(tmp_path: Any) -> None:
    log = str(tmp_path / "log")
    dial = Dial(0.6)
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pr], max_concurrency=2, pressure_sources=[dial],
                      sampler_config=FAST) as s:
        poll_until(lambda: s.snapshot().pressure == 0.6, what="the pressure reaching the coordinator")
        snap = s.snapshot()
        assert snap.pressure_breakdown == [("dial", 0.6)]
        h = s.domain(pr)
        bg = h.submit(writer.options(priority=tm.Priority.BACKGROUND), n=1, log=log, hold=0.0)
        normal = h.submit(writer.options(priority=tm.Priority.NORMAL), n=2, log=log, hold=0.0)
        assert s.wait(normal.id, timeout=60).status == tm.HistoryStatus.COMPLETED
        time.sleep(0.3)
        assert s.task(bg.id).status == tm.TaskStatus.PENDING  # held back by the pressure
        assert s.metrics_snapshot().gate_denials_by_reason["throttle"] >= 1
        dial.value = 0.8  # NORMAL waits above 0.75, HIGH never
        poll_until(lambda: s.snapshot().pressure == 0.8, what="0.8")
        normal2 = h.submit(writer.options(priority=tm.Priority.NORMAL), n=3, log=log, hold=0.0)
        high = h.submit(writer.options(priority=tm.Priority.HIGH), n=4, log=log, hold=0.0)
        assert s.wait(high.id, timeout=60).status == tm.HistoryStatus.COMPLETED
        assert s.task(normal2.id).status == tm.TaskStatus.PENDING
        dial.value = 0.0
        assert s.wait(bg.id, timeout=60).status == tm.HistoryStatus.COMPLETED
        assert s.wait(normal2.id, timeout=60).status == tm.HistoryStatus.COMPLETED


def test_a_custom_throttle_policy_moves_the_thresholds(tmp_path: Any) -> None:
    log = str(tmp_path / "log")
    dial = Dial(0.3)
    policy = ThrottlePolicy([(tm.Priority.HIGH, 0.2)])  # everything from HIGH down waits above 0.2
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pr], max_concurrency=2, pressure_sources=[dial],
                      throttle_policy=policy, sampler_config=FAST) as s:
        poll_until(lambda: s.snapshot().pressure == 0.3, what="the pressure")
        h = s.domain(pr)
        high = h.submit(writer.options(priority=tm.Priority.HIGH), n=1, log=log, hold=0.0)
        rt = h.submit(writer.options(priority=tm.Priority.REALTIME), n=2, log=log, hold=0.0)
        assert s.wait(rt.id, timeout=60).status == tm.HistoryStatus.COMPLETED
        time.sleep(0.3)
        assert s.task(high.id).status == tm.TaskStatus.PENDING
        dial.value = 0.1
        assert s.wait(high.id, timeout=60).status == tm.HistoryStatus.COMPLETED


def test_a_slow_or_failing_source_does_not_stall_the_scheduler(tmp_path: Any) -> None:
    release = threading.Event()

    class Stuck(PressureSource):
        name = "stuck"

        def pressure(self) -> float:
            release.wait(30)
            return 1.0

    class Failing(PressureSource):
        name = "failing"

        def pressure(self) -> float:
            raise RuntimeError("broken")

    log = str(tmp_path / "log")
    try:
        with tm.Scheduler(str(tmp_path / "s.duckdb"), [pr], max_concurrency=2, pressure_sources=[Stuck(), Failing()],
                          sampler_config=FAST) as s:
            poll_until(lambda: dict(s.snapshot().pressure_breakdown).keys() == {"stuck", "failing"},
                       what="both sources in the breakdown")
            r = s.domain(pr).submit(writer.options(priority=tm.Priority.BACKGROUND), n=1, log=log, hold=0.0)
            assert s.wait(r.id, timeout=60).status == tm.HistoryStatus.COMPLETED
    finally:
        release.set()


def test_monitoring_settings_are_checked_at_construction(tmp_path: Any) -> None:
    path = str(tmp_path / "s.duckdb")
    with pytest.raises(TypeError, match="resource_sampler must have a sample"):
        tm.Scheduler(path, [pr], resource_sampler=object())
    with pytest.raises(TypeError, match="pressure_sources must be PressureSource"):
        tm.Scheduler(path, [pr], pressure_sources=[lambda: 0.5])
    with pytest.raises(ValueError, match="bandwidth_limit"):
        tm.Scheduler(path, [pr], bandwidth_limit=0)
    with pytest.raises(ValueError, match="SamplerConfig.alpha"):
        SamplerConfig(alpha=0)
    with pytest.raises(TypeError, match="resource_monitoring must be a bool"):
        tm.Scheduler(path, [pr], resource_monitoring="yes")


def test_psutil_monitoring_reports_cpu_and_network_sources(tmp_path: Any) -> None:
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pr], max_concurrency=1, resource_monitoring=True,
                      bandwidth_limit=1e12, sampler_config=SamplerConfig(interval=0.05)) as s:
        assert s.resource_monitoring
        names = poll_until(lambda: [n for n, _ in s.snapshot().pressure_breakdown], what="the breakdown")
        assert names == ["cpu", "network"]
        m = s.metrics_snapshot()
        assert 0.0 <= m.cpu_usage <= 1.0 and m.io_read_bytes_per_sec >= 0.0
