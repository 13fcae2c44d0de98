"""End-to-end admission control (issue 7, F17, F18, F20) through real workers.

- CPU cores: tasks declaring ``cpus=2`` never overlap on a 2-core capacity, and
  the sum of declared cores of running tasks never exceeds it (checked from the
  workers' own start/end timestamps);
- memory: tasks declaring memory never hold more than the capacity together;
- more cores or memory than the capacity is refused at submit, naming the field;
- group caps: a group at its cap waits while another group of the same domain
  runs; ``set_group_limit`` / ``remove_group_limit`` /
  ``set_default_group_concurrency`` take effect while the scheduler runs;
- ``set_max_concurrency`` grows the pool at runtime and lowers the cap;
  a domain handle's ``set_max_concurrency`` caps its domain;
- rate limits: a limited type starts no faster than its bucket allows, and a
  type without a limit is not held up behind it; runtime ``set_rate_limit``;
- the snapshot's ``capacity`` and ``rate_limits``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from polling import poll_until
from taskfiles import append, lines, wait_flag

import taskmill as tm

ad = tm.Domain("ad")


@ad.task(cpus=2)
def wide(ctx: tm.TaskContext, n: int, log: str, hold: float) -> None:
    append(log, f"start {ctx.task_id} 2 {time.time()}")
    time.sleep(hold)
    append(log, f"end {ctx.task_id} 2 {time.time()}")


@ad.task(cpus=1)
def narrow(ctx: tm.TaskContext, n: int, log: str, hold: float) -> None:
    append(log, f"start {ctx.task_id} 1 {time.time()}")
    time.sleep(hold)
    append(log, f"end {ctx.task_id} 1 {time.time()}")


@ad.task
def sized(ctx: tm.TaskContext, n: int, log: str, hold: float, mib: int) -> None:
    append(log, f"start {ctx.task_id} {mib} {time.time()}")
    time.sleep(hold)
    append(log, f"end {ctx.task_id} {mib} {time.time()}")


@ad.task
def held(ctx: tm.TaskContext, n: int, log: str, flag: str) -> str:
    append(log, f"start {ctx.task_id} {ctx.record.group} {time.time()}")
    out = wait_flag(ctx, flag)
    append(log, f"end {ctx.task_id} {ctx.record.group} {time.time()}")
    return out


@ad.task
def stamp(ctx: tm.TaskContext, n: int, log: str) -> None:
    append(log, f"{ctx.record.task_type} {ctx.task_id} {time.time()}")


def _intervals(log: str) -> list[tuple[float, float, float]]:
    """(start, end, cores) of every task in ``log``."""
    starts: dict[str, tuple[float, float]] = {}
    out = []
    for line in lines(log):
        kind, tid, cores, at = line.split()
        if kind == "start":
            starts[tid] = (float(at), float(cores))
        else:
            begin, c = starts.pop(tid)
            out.append((begin, float(at), c))
    assert not starts, f"tasks that never ended: {sorted(starts)}"
    return out


def _peak(intervals: list[tuple[float, float, float]]) -> float:
    """The largest sum of ``cores`` over tasks running at one instant (an end before a start at a tie)."""
    events = sorted([(s, 1, c) for s, _, c in intervals] + [(e, 0, -c) for _, e, c in intervals])
    held = peak = 0.0
    for _, _, c in events:
        held += c
        peak = max(peak, held)
    return peak


def _idle(s: tm.Scheduler) -> None:
    s.wait_idle(timeout=60)


def test_cpu_capacity_is_never_exceeded(tmp_path: Any) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [ad], max_concurrency=3, capacity=tm.Capacity(cpus=2)) as s:
        h = s.domain(ad)
        h.submit_batch([wide.call(n=i, log=log, hold=0.15) for i in range(3)]
                       + [narrow.call(n=i, log=log, hold=0.15) for i in range(4)])
        _idle(s)
        snap = s.snapshot()
    runs = _intervals(log)
    assert len(runs) == 7
    assert _peak(runs) <= 2.0, runs
    wides = [r for r in runs if r[2] == 2.0]
    assert _peak(wides) == 2.0  # one at a time: two would make 4
    assert snap.capacity.cpus_total == 2.0 and snap.capacity.cpus_in_use == 0.0


def test_memory_capacity_is_never_exceeded(tmp_path: Any) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [ad], max_concurrency=3,
                      capacity=tm.Capacity(memory=100 << 20)) as s:
        h = s.domain(ad)
        h.submit_batch([sized.options(memory=mib << 20).call(n=i, log=log, hold=0.1, mib=mib)
                        for i, mib in enumerate((60, 60, 30, 60, 30))])
        _idle(s)
    runs = _intervals(log)
    assert len(runs) == 5
    assert _peak(runs) <= 100, runs  # MiB held at once
    assert _peak(runs) == 90  # a 60 and a 30 did run together


def test_more_than_the_capacity_is_refused_at_submit(tmp_path: Any) -> None:
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [ad], max_concurrency=1,
                      capacity=tm.Capacity(cpus=1.5, memory=1 << 20)) as s:
        h = s.domain(ad)
        with pytest.raises(ValueError, match="cpus=2 is more than the scheduler's CPU capacity of 1.5"):
            h.submit(wide, n=0, log="x", hold=0)
        with pytest.raises(ValueError, match="memory=2097152 bytes is more than"):
            h.submit(narrow.options(memory=2 << 20), n=0, log="x", hold=0)
        with pytest.raises(ValueError, match="memory"):
            h.submit_batch([narrow.call(n=1, log="x", hold=0), narrow.options(memory=2 << 20).call(n=2, log="x", hold=0)])
        assert s.snapshot().pending_count == 0  # nothing of the batch was written
    with pytest.raises(ValueError, match="Capacity.cpus"):
        tm.Capacity(cpus=0)
    with pytest.raises(TypeError, match="capacity must be a Capacity"):
        tm.Scheduler(str(tmp_path / "t.duckdb"), [ad], capacity=2)  # type: ignore[arg-type]


def _running_groups(log: str) -> list[str]:
    """Groups of the tasks that started and have not ended."""
    live: dict[str, str] = {}
    for line in lines(log):
        kind, tid, group, _ = line.split()
        if kind == "start":
            live[tid] = group
        else:
            live.pop(tid, None)
    return sorted(live.values())


def test_a_group_at_its_cap_does_not_hold_up_another_group(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [ad], max_concurrency=4, group_concurrency={"a": 1},
                      capacity=tm.Capacity(cpus=4)) as s:
        h = s.domain(ad)
        h.submit_batch([held.options(group="a").call(n=i, log=log, flag=flag) for i in range(3)]
                       + [held.options(group="b").call(n=i, log=log, flag=flag) for i in range(3, 5)])
        poll_until(lambda: _running_groups(log) == ["a", "b", "b"], what="one of a, both of b")
        time.sleep(0.3)  # a second "a" would have started by now
        assert _running_groups(log) == ["a", "b", "b"]
        s.set_group_limit("a", 2)
        poll_until(lambda: _running_groups(log) == ["a", "a", "b", "b"], what="a second a after raising its cap")
        s.set_default_group_concurrency(1)
        s.remove_group_limit("a")  # "a" now falls under the default cap of 1: nothing new starts
        assert s.snapshot().running_count == 4
        open(flag, "w").close()
        _idle(s)
    starts = [ln.split()[2] for ln in lines(log) if ln.startswith("start")]
    assert sorted(starts) == ["a", "a", "a", "b", "b"]


def test_max_concurrency_changes_at_runtime(tmp_path: Any) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "go")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [ad], max_concurrency=1, capacity=tm.Capacity(cpus=4)) as s:
        h = s.domain(ad)
        h.submit_batch([held.call(n=i, log=log, flag=flag) for i in range(4)])
        poll_until(lambda: len(_running_groups(log)) == 1, what="one task running")
        s.set_max_concurrency(3)  # the pool grows
        assert s.max_concurrency == 3
        poll_until(lambda: len(_running_groups(log)) == 3, what="three tasks running")
        assert s.snapshot().max_concurrency == 3
        s.set_max_concurrency(1)
        open(flag, "w").close()
        _idle(s)
        with pytest.raises(ValueError, match="max_concurrency must be in 1"):
            s.set_max_concurrency(10_000)
        h.set_max_concurrency(1)
        assert h.max_concurrency == 1
        os.unlink(flag)
        h.submit_batch([held.call(n=i, log=log, flag=flag) for i in range(10, 12)])
        s.set_max_concurrency(2)
        poll_until(lambda: len(_running_groups(log)) == 1, what="the domain's one task")
        time.sleep(0.3)
        assert len(_running_groups(log)) == 1  # the domain cap holds though two slots are free
        h.set_max_concurrency(None)
        poll_until(lambda: len(_running_groups(log)) == 2, what="both once the cap is gone")
        open(flag, "w").close()
        _idle(s)


def test_a_rate_limited_type_waits_for_tokens_without_holding_up_others(tmp_path: Any) -> None:
    log = str(tmp_path / "log")
    limit = tm.RateLimit.per_second(5).with_burst(1)
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [ad], max_concurrency=2,
                      rate_limits={"ad::stamp": limit}) as s:
        h = s.domain(ad)
        t0 = time.time()
        h.submit_batch([stamp.call(n=i, log=log) for i in range(6)]
                       + [narrow.call(n=i, log=str(tmp_path / "free"), hold=0.0) for i in range(6)])
        _idle(s)
        info = s.snapshot().rate_limits
    stamps = sorted(float(ln.split()[2]) for ln in lines(log))
    assert len(stamps) == 6
    # 5 per second with a burst of 1: the k-th start is a token (0.2 s) after the k-1-th at the
    # earliest. A start delayed by a loaded machine leaves its successor a shorter gap, never an
    # earlier time, so the check is on each start's time since the first.
    since = [s - stamps[0] for s in stamps]
    assert all(d >= 0.2 * k - 0.05 for k, d in enumerate(since)), since
    free_ends = [float(ln.split()[3]) for ln in lines(str(tmp_path / "free")) if ln.startswith("end")]
    assert len(free_ends) == 6 and max(free_ends) < stamps[-1]  # the other type did not queue behind
    assert stamps[-1] - t0 >= 0.75
    (rl,) = info
    assert (rl.scope, rl.scope_kind, rl.permits, rl.interval_ms, rl.burst) == ("type:ad::stamp", "type", 5, 1000, 1)
    assert 0.0 <= rl.available_tokens <= 1.0


def test_rate_limits_change_at_runtime(tmp_path: Any) -> None:
    log = str(tmp_path / "log")
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [ad], max_concurrency=1) as s:
        h = s.domain(ad)
        h.set_rate_limit(stamp, tm.RateLimit.per_second(4).with_burst(1))
        s.set_group_rate_limit("g", tm.RateLimit.per_minute(1))
        assert [r.scope for r in s.snapshot().rate_limits] == ["type:ad::stamp", "group:g"]
        h.submit_batch([stamp.call(n=i, log=log) for i in range(3)])
        _idle(s)
        stamps = sorted(float(ln.split()[2]) for ln in lines(log))
        assert min(b - a for a, b in zip(stamps, stamps[1:])) >= 0.12
        h.remove_rate_limit("stamp")
        s.remove_group_rate_limit("g")
        assert s.snapshot().rate_limits == []
        with pytest.raises(ValueError, match="unknown task type"):
            s.set_rate_limit("ad::nope", tm.RateLimit.per_second(1))
        with pytest.raises(TypeError, match="RateLimit"):
            s.set_rate_limit("ad::stamp", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate_limits names task types no domain registers"):
        with tm.Scheduler(str(tmp_path / "t.duckdb"), [ad], rate_limits={"ad::nope": tm.RateLimit.per_second(1)}):
            pass


def test_metrics_snapshot_reads_the_counters_from_shared_memory(tmp_path: Any) -> None:
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [ad], max_concurrency=1, capacity=tm.Capacity(cpus=1.5)) as s:
        s.pause_group("x")
        poll_until(lambda: s.metrics_snapshot().groups_paused == 1, what="the pause published")
        s.resume_group("x")
        m = poll_until(lambda: (m := s.metrics_snapshot()).groups_paused == 0 and m, what="the resume published")
        assert (m.group_pauses, m.group_resumes, m.cpus_total, m.max_concurrency) == (1, 1, 1.5, 1)
        s.domain(ad).submit(stamp, n=1, log=str(tmp_path / "log"))
        s.wait_idle(timeout=60)
        m = poll_until(lambda: (m := s.metrics_snapshot()).completed == 1 and m, what="the completion published")
        assert m.submitted == 1 and m.dispatched == 1 and m.failed == 0 and m.running == 0
