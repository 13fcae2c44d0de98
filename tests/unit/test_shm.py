"""The shared-memory segment: counters, worker slots, the cancel flag and cleanup."""

from __future__ import annotations

import os
import struct
import time
from multiprocessing import shared_memory
from typing import Any, Iterator

import pytest

from taskmill.shm import COUNTER_NAMES, HEADER_SIZE, SLOT_SIZE, SegmentReader, SharedState, WorkerSlot

SLOTS = 3


@pytest.fixture
def state() -> Iterator[SharedState]:
    s = SharedState(SLOTS)
    yield s
    s.close()


@pytest.fixture
def reader(state: SharedState) -> Iterator[SegmentReader]:
    r = SegmentReader(state.name)
    yield r
    r.close()


@pytest.fixture
def slot1(state: SharedState) -> Iterator[WorkerSlot]:
    w = WorkerSlot(state.name, 1)
    yield w
    w.close()


def shm_path(name: str) -> str:
    return os.path.join("/dev/shm", name.lstrip("/"))


# =========================================================================== header and counters


def test_a_new_segment_exists_with_the_right_size(state: SharedState) -> None:
    assert state.name.startswith("taskmill_")
    assert os.path.getsize(shm_path(state.name)) >= HEADER_SIZE + SLOTS * SLOT_SIZE


def test_a_reader_sees_the_slot_count_and_coordinator_pid(reader: SegmentReader) -> None:
    assert reader.slots == SLOTS
    assert reader.coordinator_pid == os.getpid()


def test_counters_start_at_zero(reader: SegmentReader) -> None:
    assert reader.counters() == {name: 0 for name in COUNTER_NAMES}


def test_published_counters_are_read_back_by_name(state: SharedState, reader: SegmentReader) -> None:
    values = {name: (i + 1) * 11 for i, name in enumerate(COUNTER_NAMES)}
    state.publish(values)
    assert reader.counters() == values


def test_missing_counters_publish_as_zero_and_unknown_ones_are_ignored(
    state: SharedState, reader: SegmentReader
) -> None:
    state.publish({"submitted": 5, "completed": 2, "not_a_counter": 99})
    got = reader.counters()
    assert set(got) == set(COUNTER_NAMES)
    assert (got["submitted"], got["completed"], got["failed"]) == (5, 2, 0)


def test_a_later_publish_replaces_the_counters(state: SharedState, reader: SegmentReader) -> None:
    state.publish({"running": 4, "pending": 100})
    state.publish({"running": 1})
    got = reader.counters()
    assert (got["running"], got["pending"]) == (1, 0)


def test_publish_refreshes_the_heartbeat(state: SharedState, reader: SegmentReader) -> None:
    before = time.time()
    state.publish({})
    assert before <= reader.heartbeat() <= time.time()


def test_negative_and_large_counter_values_round_trip(state: SharedState, reader: SegmentReader) -> None:
    state.publish({"submitted": 2**62, "pending": -3})
    got = reader.counters()
    assert (got["submitted"], got["pending"]) == (2**62, -3)


# =========================================================================== worker slots


def test_an_unused_slot_reads_as_idle(state: SharedState) -> None:
    view = state.read_slot(0)
    assert (view.pid, view.task_id, view.cancel) == (0, 0, False)


def test_a_started_slot_shows_pid_task_and_no_progress_yet(state: SharedState, slot1: WorkerSlot) -> None:
    before = time.time()
    slot1.start(4242, 17)
    view = state.read_slot(1)
    assert (view.pid, view.task_id) == (4242, 17)
    assert before <= view.started_at <= time.time()
    assert view.progress == -1.0
    assert (view.bytes_done, view.bytes_total) == (0, 0)
    assert (view.read_bytes, view.write_bytes, view.net_rx_bytes, view.net_tx_bytes) == (0, 0, 0, 0)
    assert view.heartbeat == view.started_at


def test_progress_updates_fraction_bytes_and_heartbeat(state: SharedState, slot1: WorkerSlot) -> None:
    slot1.start(1, 5)
    started = state.read_slot(1).started_at
    slot1.progress(0.25, 250, 1000)
    view = state.read_slot(1)
    assert (view.progress, view.bytes_done, view.bytes_total) == (0.25, 250, 1000)
    assert view.heartbeat >= started
    assert (view.task_id, view.started_at) == (5, started)


def test_io_updates_the_four_counters(state: SharedState, slot1: WorkerSlot) -> None:
    slot1.start(1, 5)
    slot1.progress(0.5, 1, 2)
    slot1.io(10, 20, 30, 40)
    view = state.read_slot(1)
    assert (view.read_bytes, view.write_bytes, view.net_rx_bytes, view.net_tx_bytes) == (10, 20, 30, 40)
    assert view.progress == 0.5  # untouched by io()


def test_clear_marks_the_slot_idle_but_keeps_the_pid(state: SharedState, slot1: WorkerSlot) -> None:
    slot1.start(77, 9)
    slot1.clear(77)
    view = state.read_slot(1)
    assert (view.pid, view.task_id) == (77, 0)


def test_a_new_start_resets_progress_and_io(state: SharedState, slot1: WorkerSlot) -> None:
    slot1.start(1, 5)
    slot1.progress(0.9, 9, 10)
    slot1.io(1, 2, 3, 4)
    slot1.clear(1)
    slot1.start(1, 6)
    view = state.read_slot(1)
    assert (view.task_id, view.progress, view.bytes_done, view.read_bytes, view.net_tx_bytes) == (6, -1.0, 0, 0, 0)


def test_slots_are_independent(state: SharedState, slot1: WorkerSlot) -> None:
    other = WorkerSlot(state.name, 2)
    try:
        slot1.start(1, 100)
        other.start(2, 200)
        other.progress(1.0, 5, 5)
        assert (state.read_slot(1).task_id, state.read_slot(1).progress) == (100, -1.0)
        assert (state.read_slot(2).task_id, state.read_slot(2).progress) == (200, 1.0)
        assert state.read_slot(0).task_id == 0
    finally:
        other.close()


def test_the_segment_reader_sees_the_same_slot_as_the_coordinator(
    state: SharedState, reader: SegmentReader, slot1: WorkerSlot
) -> None:
    slot1.start(3, 33)
    slot1.progress(0.75, 3, 4)
    slot1.io(5, 6, 7, 8)
    assert reader.slot(1) == state.read_slot(1)


def test_a_replacement_worker_attaching_to_a_slot_continues_it(state: SharedState) -> None:
    first = WorkerSlot(state.name, 1)
    first.start(1, 5)
    first.close()
    again = WorkerSlot(state.name, 1)
    try:
        again.progress(0.5, 1, 2)
        view = state.read_slot(1)
        assert (view.task_id, view.progress) == (5, 0.5)
    finally:
        again.close()


# =========================================================================== cancel flag


def test_the_cancel_flag_set_by_the_coordinator_is_seen_by_the_worker(state: SharedState, slot1: WorkerSlot) -> None:
    slot1.start(1, 5)
    assert slot1.cancelled_for(5) is False
    state.set_cancel(1, 5)
    assert slot1.cancelled_for(5) is True
    assert state.read_slot(1).cancel is True
    state.set_cancel(1, 0)
    assert slot1.cancelled_for(5) is False
    assert state.read_slot(1).cancel is False


def test_the_cancel_flag_names_its_task(state: SharedState, slot1: WorkerSlot) -> None:
    """A cancel meant for one run is not seen by the next run on the same worker."""
    slot1.start(1, 5)
    state.set_cancel(1, 5)
    slot1.clear(1)
    slot1.start(1, 6)
    assert slot1.cancelled_for(6) is False
    assert state.read_slot(1).cancel is False  # shown for the task the slot runs now
    assert state.cancel_of(1) == 5


def test_the_cancel_flag_is_per_slot(state: SharedState, slot1: WorkerSlot) -> None:
    slot1.start(1, 5)
    state.set_cancel(0, 5)
    state.set_cancel(2, 5)
    assert slot1.cancelled_for(5) is False


def test_worker_writes_do_not_clear_the_cancel_flag(state: SharedState, slot1: WorkerSlot) -> None:
    state.set_cancel(1, 5)
    slot1.start(1, 5)
    slot1.progress(0.1, 1, 10)
    slot1.io(1, 1, 1, 1)
    slot1.clear(1)
    assert slot1.cancelled_for(5) is True


# =========================================================================== cleanup and bad segments


def test_close_unlinks_the_segment_and_is_idempotent() -> None:
    s = SharedState(2)
    path = shm_path(s.name)
    assert os.path.exists(path)
    s.close()
    assert not os.path.exists(path)
    s.close()  # safe twice
    with pytest.raises(FileNotFoundError):
        SegmentReader(s.name)


def test_a_reader_that_outlives_close_keeps_its_mapping(state: SharedState) -> None:
    state.publish({"completed": 3})
    r = SegmentReader(state.name)
    try:
        state.close()
        assert not os.path.exists(shm_path(state.name))
        assert r.counters()["completed"] == 3
    finally:
        r.close()


@pytest.fixture
def foreign_segment() -> Iterator[Any]:
    seg = shared_memory.SharedMemory(create=True, size=HEADER_SIZE + SLOT_SIZE)
    try:
        yield seg
    finally:
        seg.close()
        seg.unlink()


def test_a_reader_refuses_a_segment_with_a_wrong_magic(foreign_segment: Any) -> None:
    foreign_segment.buf[:8] = b"NOTMINE!"
    with pytest.raises(ValueError, match="not a taskmill segment"):
        SegmentReader(foreign_segment.name)


def test_a_reader_refuses_a_zeroed_segment(foreign_segment: Any) -> None:
    with pytest.raises(ValueError):
        SegmentReader(foreign_segment.name)


def test_a_reader_refuses_a_segment_of_another_layout_version(foreign_segment: Any) -> None:
    foreign_segment.buf[:8] = b"TASKMILL"
    struct.pack_into("<I", foreign_segment.buf, 8, 999)
    with pytest.raises(ValueError):
        SegmentReader(foreign_segment.name)


def test_a_reader_never_unlinks_the_segment(state: SharedState) -> None:
    r = SegmentReader(state.name)
    r.close()
    w = WorkerSlot(state.name, 0)
    w.close()
    assert os.path.exists(shm_path(state.name))
