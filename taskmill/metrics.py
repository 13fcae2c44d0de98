"""``MetricsSnapshot``: the counters and gauges of the shared-memory segment as one record.

Leaf module: built from ``shm.SegmentReader.counters()`` on the host, with no
round trip to the coordinator (``Scheduler.metrics_snapshot()``).
"""

from __future__ import annotations

from dataclasses import dataclass

from taskmill.records import _RECORD, _ToDict

__all__ = ["DENIAL_REASONS", "MetricsSnapshot", "active_count"]

#: The admission checks, in the order the gate runs them (``coordinator/gate.py``).
DENIAL_REASONS = ("concurrency", "domain_cap", "group_cap", "cpu", "memory", "io", "throttle", "rate_limit")


@dataclass(**_RECORD)
class MetricsSnapshot(_ToDict):
    """Counters and gauges, read from the shared-memory segment (no call to the coordinator).

    ``failed`` counts every failed attempt (``failed_retryable`` those retried);
    ``gate_denials_by_reason`` maps each admission check to how often it said no;
    the sampler's figures (``cpu_usage``: other processes' CPU load, IO rates in
    bytes/s) are zero unless resource monitoring runs.
    """

    submitted: int
    dispatched: int
    completed: int
    failed: int
    failed_retryable: int
    retried: int
    dead_lettered: int
    superseded: int
    cancelled: int
    expired: int
    preempted: int
    gate_denials: int
    gate_denials_by_reason: dict[str, int]
    rate_limit_throttles: int
    group_pauses: int
    group_resumes: int
    batches_submitted: int
    dependency_failures: int
    recurring_skipped: int
    pending: int
    running: int
    blocked: int
    paused: int
    waiting: int
    pressure: float
    max_concurrency: int
    groups_paused: int
    cpu_usage: float
    io_read_bytes_per_sec: float
    io_write_bytes_per_sec: float
    net_rx_bytes_per_sec: float
    net_tx_bytes_per_sec: float
    cpus_total: float
    cpus_in_use: float
    memory_total: int
    memory_in_use: int

    @classmethod
    def from_counters(cls, c: dict[str, int]) -> MetricsSnapshot:
        return cls(
            submitted=c["submitted"], dispatched=c["dispatched"], completed=c["completed"],
            failed=c["failed"] + c["dead_lettered"] + c["retried"], failed_retryable=c["retried"],
            retried=c["retried"], dead_lettered=c["dead_lettered"], superseded=c["superseded"],
            cancelled=c["cancelled"], expired=c["expired"], preempted=c["preempted"], gate_denials=c["gate_denials"],
            gate_denials_by_reason={r: c[f"denied_{r}"] for r in DENIAL_REASONS},
            rate_limit_throttles=c["rate_limit_throttles"], group_pauses=c["group_pauses"],
            group_resumes=c["group_resumes"], batches_submitted=c["batches_submitted"],
            dependency_failures=c["dependency_failures"], recurring_skipped=c["recurring_skipped"], pending=c["pending"], running=c["running"], blocked=c["blocked"],
            paused=c["paused"], waiting=c["waiting"], pressure=c["pressure_ppm"] / 1e6,
            max_concurrency=c["max_concurrency"], groups_paused=c["groups_paused"],
            cpu_usage=c["cpu_usage_ppm"] / 1e6, io_read_bytes_per_sec=float(c["io_read_bps"]),
            io_write_bytes_per_sec=float(c["io_write_bps"]), net_rx_bytes_per_sec=float(c["net_rx_bps"]),
            net_tx_bytes_per_sec=float(c["net_tx_bps"]), cpus_total=c["cpus_total_milli"] / 1000,
            cpus_in_use=c["cpus_in_use_milli"] / 1000, memory_total=c["memory_total"],
            memory_in_use=c["memory_in_use"])


def active_count(m: MetricsSnapshot) -> int:
    """Tasks not ended yet, every way they wait or run (what stays in the store if the job stops now)."""
    return m.pending + m.running + m.paused + m.blocked + m.waiting
