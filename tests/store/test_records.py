"""The records the store returns and the value types of schema 2 (``taskmill.records``).

Kept beside the store suite because these records are what its queries build.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from taskmill.records import (
    DuplicateStrategy,
    EstimatedProgress,
    HistoryStatus,
    IoBudget,
    MaxAgeDays,
    MaxCount,
    ModuleSnapshot,
    PausedGroupInfo,
    Recurring,
    RecurringScheduleInfo,
    SchedulerSnapshot,
    TaskEventHeader,
    TaskHistoryRecord,
    TaskProgress,
    TaskRecord,
    TaskStatus,
)
from taskmill.validation import MAX_DELAY_SECONDS, MAX_PRUNE_DAYS

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_task_record_has_the_api_fields() -> None:
    assert field_names(TaskRecord) == [
        "id", "task_type", "domain", "key", "label", "priority", "status", "payload", "expected_io", "retry_count",
        "max_retries", "last_error", "created_at", "started_at", "requeue", "requeue_priority", "parent_id",
        "fail_fast", "group", "ttl_seconds", "ttl_from", "expires_at", "run_after", "recurring_interval_secs",
        "recurring_max_executions", "recurring_execution_count", "recurring_paused", "dependencies",
        "on_dependency_failure", "tags", "cpus", "memory", "timeout", "effective_priority", "pause_reasons", "memo"]


def test_a_task_record_from_memory_needs_few_fields_and_defaults_effective_priority() -> None:
    t = TaskRecord(id=1, task_type="m::t", domain="m", key="k", label="l", priority=64, status=TaskStatus.RUNNING)
    assert (t.effective_priority, t.dependencies, t.pause_reasons, t.fail_fast, t.ttl_from) == (
        64, [], [], True, "submission")
    aged = TaskRecord(id=1, task_type="m::t", domain="m", key="k", label="l", priority=64,
                      status=TaskStatus.RUNNING, effective_priority=0)
    assert aged.effective_priority == 0
    d = t.to_dict()
    assert d["status"] == "running" and d["expected_io"] == {"disk_read": 0, "disk_write": 0, "net_rx": 0, "net_tx": 0}
    json.dumps(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.priority = 3  # type: ignore[misc, unused-ignore]


def test_history_record_has_the_api_fields_and_last_error() -> None:
    assert field_names(TaskHistoryRecord) == [
        "id", "task_type", "domain", "key", "label", "priority", "status", "payload", "result", "expected_io",
        "actual_io", "retry_count", "last_error", "created_at", "started_at", "completed_at", "duration_ms",
        "parent_id", "fail_fast", "group", "ttl_seconds", "ttl_from", "expires_at", "run_after", "tags", "cpus",
        "memory"]
    h = TaskHistoryRecord(id=1, task_type="m::t", domain="m", key="k", label="l", priority=1,
                          status=HistoryStatus.FAILED, last_error="boom", actual_io=IoBudget.disk(1, 2),
                          completed_at=NOW)
    assert h.to_dict()["last_error"] == "boom" and h.to_dict()["completed_at"] == NOW.isoformat()


def test_duplicate_strategy_has_skip_completed() -> None:
    assert DuplicateStrategy("skip_completed") is DuplicateStrategy.SKIP_COMPLETED
    assert [s.value for s in DuplicateStrategy] == ["skip", "supersede", "reject", "skip_completed"]


# --------------------------------------------------------------------------- Recurring


def test_recurring_takes_seconds_or_timedeltas() -> None:
    r = Recurring(60)
    assert (r.interval, r.max_executions, r.initial_delay) == (60.0, None, 0.0)
    assert type(r.interval) is float
    r = Recurring(timedelta(minutes=2), max_executions=5, initial_delay=timedelta(seconds=1.5))
    assert (r.interval, r.max_executions, r.initial_delay) == (120.0, 5, 1.5)
    assert Recurring(MAX_DELAY_SECONDS, initial_delay=MAX_DELAY_SECONDS).interval == MAX_DELAY_SECONDS
    assert r.to_dict() == {"interval": 120.0, "max_executions": 5, "initial_delay": 1.5}


@pytest.mark.parametrize(("args", "kwargs", "exc", "field"), [
    ((0,), {}, ValueError, "interval"),
    ((-1,), {}, ValueError, "interval"),
    ((float("nan"),), {}, ValueError, "interval"),
    ((float("inf"),), {}, ValueError, "interval"),
    ((MAX_DELAY_SECONDS + 1,), {}, ValueError, "interval"),
    (("60",), {}, TypeError, "interval"),
    ((True,), {}, TypeError, "interval"),
    ((60,), {"max_executions": 0}, ValueError, "max_executions"),
    ((60,), {"max_executions": 2.0}, TypeError, "max_executions"),
    ((60,), {"initial_delay": -0.5}, ValueError, "initial_delay"),
    ((60,), {"initial_delay": None}, TypeError, "initial_delay"),
])
def test_recurring_rejects_bad_fields_naming_them(args: tuple, kwargs: dict[str, Any], exc: type, field: str) -> None:
    with pytest.raises(exc, match=f"Recurring.{field}"):
        Recurring(*args, **kwargs)


# --------------------------------------------------------------------------- retention


def test_retention_values() -> None:
    assert MaxCount(0).n == 0 and MaxCount(10_000).n == 10_000
    assert MaxAgeDays(7).days == 7.0 and MaxAgeDays(0.5).days == 0.5
    assert MaxAgeDays(MAX_PRUNE_DAYS).days == MAX_PRUNE_DAYS


@pytest.mark.parametrize(("make", "exc"), [
    (lambda: MaxCount(-1), ValueError), (lambda: MaxCount(1.5), TypeError),  # type: ignore[arg-type]
    (lambda: MaxCount(True), TypeError),
    (lambda: MaxAgeDays(-1), ValueError), (lambda: MaxAgeDays(float("nan")), ValueError),
    (lambda: MaxAgeDays(MAX_PRUNE_DAYS + 1), ValueError),
    (lambda: MaxAgeDays("7"), TypeError),  # type: ignore[arg-type]
])
def test_retention_values_are_validated(make: Any, exc: type) -> None:
    with pytest.raises(exc, match="MaxCount.n|MaxAgeDays.days"):
        make()


# --------------------------------------------------------------------------- progress and snapshots


def test_progress_records_and_snapshots_have_the_api_fields() -> None:
    assert field_names(TaskEventHeader) == ["task_id", "task_type", "domain", "key", "label", "tags",
                                            "base_priority", "effective_priority"]
    assert field_names(EstimatedProgress) == ["header", "reported_percent", "extrapolated_percent", "percent"]
    assert field_names(TaskProgress) == ["task_id", "task_type", "key", "label", "bytes_completed", "bytes_total",
                                         "throughput_bps", "elapsed", "eta"]
    assert field_names(PausedGroupInfo) == ["group", "paused_at", "paused_task_count", "resume_at"]
    assert field_names(RecurringScheduleInfo) == ["task_id", "task_type", "label", "interval_secs", "next_run",
                                                  "execution_count", "max_executions", "paused"]
    assert field_names(ModuleSnapshot) == ["domain", "running", "pending_count", "paused_count", "blocked_count",
                                           "waiting_count", "progress", "byte_progress", "is_paused"]
    assert field_names(SchedulerSnapshot) == [
        "running", "running_count", "pending_count", "paused_count", "waiting_count", "blocked_count", "progress",
        "byte_progress", "pressure", "pressure_breakdown", "max_concurrency", "is_paused", "recurring_schedules",
        "paused_groups", "rate_limits", "aging_config", "group_allocations", "capacity", "workers"]


def test_snapshots_default_what_later_features_fill_and_serialise() -> None:
    header = TaskEventHeader(task_id=1, task_type="m::t", domain="m", key="k", label="l", tags={"a": "b"},
                             base_priority=128, effective_priority=64)
    snap = SchedulerSnapshot(
        running=[], running_count=0, pending_count=3, paused_count=0, waiting_count=0, blocked_count=1,
        max_concurrency=2,
        progress=[EstimatedProgress(header=header, reported_percent=None, extrapolated_percent=0.4, percent=0.4)],
        byte_progress=[TaskProgress(task_id=1, task_type="m::t", key="k", label="l", bytes_completed=10,
                                    bytes_total=None, throughput_bps=5.0, elapsed=2.0, eta=None)],
        paused_groups=[PausedGroupInfo(group="s3", paused_at=NOW, paused_task_count=2, resume_at=None)])
    assert (snap.rate_limits, snap.aging_config, snap.group_allocations, snap.capacity, snap.workers) == (
        [], None, [], None, 0)
    d = snap.to_dict()
    json.dumps(d)
    assert d["progress"][0]["header"]["effective_priority"] == 64
    assert d["paused_groups"][0]["paused_at"] == NOW.isoformat()
    mod = ModuleSnapshot(domain="m", running=[], pending_count=0, paused_count=0, blocked_count=0, waiting_count=0)
    assert (mod.progress, mod.byte_progress, mod.is_paused) == ([], [], False)
