"""The shared-memory segment: live counters and one slot per worker.

Leaf module: standard library only. It owns the byte layout; nothing else
computes offsets. The coordinator creates the segment (registered with the
multiprocessing resource tracker, so even a SIGKILLed coordinator's segment is
unlinked once its processes are gone) and is the only process that unlinks it.
Workers and readers attach *without* registering, so their exit never unlinks.

Layout (little-endian, native alignment, all fields 8 bytes)::

    header, HEADER_SIZE = 512 bytes
      0   magic           8s   b"TASKMILL"
      8   layout version  u32
      12  slot count      u32
      16  coordinator pid i64
      24  heartbeat       f64  time.time() of the last loop iteration
      32  sequence        u64  odd while the coordinator writes the counters
      40  counters        COUNTERS x i64 (names in COUNTER_NAMES, in order)

    slot i at HEADER_SIZE + i * SLOT_SIZE, SLOT_SIZE = 128 bytes
      0   sequence        u64  odd while the worker writes its fields
      8   pid             i64  worker writes
      16  task id         i64  0 when idle; worker writes
      24  started at      f64  worker writes
      32  progress        f64  0..1, or -1 when the task reported none
      40  bytes done      i64
      48  bytes total     i64
      56  read bytes      i64
      64  write bytes     i64
      72  net rx bytes    i64
      80  net tx bytes    i64
      88  heartbeat       f64
      96  cancel          i64  id of the task whose ctx.cancelled is true (0: none); coordinator writes
      104 revoked         u64  bit t % 64 set: queued run t was taken back; coordinator sets, worker clears,
                               both under the slot's claim lock
      112 claimed ticket  u64  worker writes, under the slot's claim lock
      120 (unused)        u64

Each field has one writer (the revoked bits: one setter, one clearer). Readers
retry while a slot's sequence is odd or changes under them, so they always take
a consistent copy.

Tickets: the n-th run sent to a worker is ticket n, on both sides of the
pipe. A run is sent either *dispatched* (alone, to an idle worker: it always
starts) or *queued* (in a list of runs behind the one the worker is busy with).
Before a worker starts a queued run it *claims* its ticket
(``WorkerSlot.claim``); the coordinator takes queued runs back
(``SharedState.revoke``) by setting the bits of those not claimed yet, and
learns the ticket claimed last. Both happen under one lock per slot, so each
queued run is either claimed or revoked, never both. The worker clears a
ticket's bit when it comes to that ticket, claimed or skipped, so a bit is
clean when the ticket 64 later reuses it: the coordinator never has 64 or more
tickets outstanding on a worker (``OUTSTANDING_MAX``). A queued run the worker
claims after sending the ``Done`` of the run before it, so once the worker has
claimed ticket t, the ``Done`` of every run before t is in the pipe.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

__all__ = ["COUNTER_NAMES", "SegmentReader", "SharedState", "SlotView", "WorkerSlot", "worker_slots"]

MAGIC = b"TASKMILL"
LAYOUT_VERSION = 5
HEADER_SIZE = 512
SLOT_SIZE = 128
COUNTER_NAMES = (
    "submitted",
    "dispatched",
    "completed",
    "failed",
    "retried",
    "dead_lettered",
    "cancelled",
    "superseded",
    "pending",
    "running",
    "paused",
    "blocked",
    "waiting",
    "workers",
    "max_concurrency",
    "commits",
    # admission (issue 7): denials by reason, the sampler's figures, what running tasks hold
    "expired",
    "rate_limit_throttles",
    "gate_denials",
    "denied_concurrency",
    "denied_domain_cap",
    "denied_group_cap",
    "denied_cpu",
    "denied_memory",
    "denied_io",
    "denied_throttle",
    "denied_rate_limit",
    "pressure_ppm",  # pressure x 1e6
    "cpu_usage_ppm",  # other processes' CPU load x 1e6
    "io_read_bps",
    "io_write_bps",
    "net_rx_bps",
    "net_tx_bps",
    "cpus_total_milli",
    "cpus_in_use_milli",
    "memory_total",
    "memory_in_use",
    "group_pauses",
    "group_resumes",
    "groups_paused",
    "preempted",
    # events (issue 15)
    "batches_submitted",
    "dependency_failures",
    "recurring_skipped",
)
_HEAD = struct.Struct("<8sIIqdQ")
_COUNTERS = struct.Struct("<%dq" % len(COUNTER_NAMES))
_SEQ = struct.Struct("<Q")
_SLOT = struct.Struct("<QqqddqqqqqqdqQQQ")
_WORKER_FIELDS = struct.Struct("<qqddqqqqqqd")  # offsets 8..96: everything the worker owns
_PROGRESS = struct.Struct("<dqq")  # progress, bytes done, bytes total at offset 32
_IO = struct.Struct("<qqqq")  # at offset 56
_CANCEL = struct.Struct("<q")
_CANCEL_OFFSET = 96
_TICKET = struct.Struct("<Q")
_REVOKED_OFFSET = 104
_CLAIMED_OFFSET = 112
#: Tickets a worker may have outstanding (sent, not yet claimed or skipped): one bit each in the slot.
OUTSTANDING_MAX = 63
#: Longest the coordinator waits for a slot's claim lock (a worker holds it for microseconds; only a
#: worker stopped or killed inside ``claim`` holds it longer).
CLAIM_LOCK_TIMEOUT = 1.0
assert _HEAD.size + _COUNTERS.size <= HEADER_SIZE and _SLOT.size == SLOT_SIZE


def worker_slots(max_concurrency: int) -> int:
    """Slots for a pool of ``max_concurrency`` workers, with room for it to grow at runtime
    (``set_max_concurrency``) and for the workers a suspension holds."""
    return 2 * max_concurrency + 16


def _slot_offset(slot: int) -> int:
    return HEADER_SIZE + slot * SLOT_SIZE


def _size(slots: int) -> int:
    return _slot_offset(slots)


class SharedState:
    """The coordinator's side: creates, updates and finally unlinks the segment."""

    def __init__(self, slots: int) -> None:
        name = f"taskmill_{os.getpid()}_{os.urandom(4).hex()}"
        self._shm = shared_memory.SharedMemory(name=name, create=True, size=_size(slots))
        self.name = self._shm.name
        self.slots = slots
        assert self._shm.buf is not None
        self._buf: memoryview = self._shm.buf
        self._seq = 0
        _HEAD.pack_into(self._buf, 0, MAGIC, LAYOUT_VERSION, slots, os.getpid(), time.time(), 0)

    def publish(self, counters: dict[str, int]) -> None:
        """Write the header counters and heartbeat (one writer: the coordinator loop)."""
        self._seq += 1
        _SEQ.pack_into(self._buf, 32, self._seq)
        _COUNTERS.pack_into(self._buf, 40, *(int(counters.get(n, 0)) for n in COUNTER_NAMES))
        struct.pack_into("<d", self._buf, 24, time.time())
        self._seq += 1
        _SEQ.pack_into(self._buf, 32, self._seq)

    def set_cancel(self, slot: int, task_id: int) -> None:
        """``ctx.cancelled`` turns true in the run of ``task_id`` on this slot (0: in none)."""
        _CANCEL.pack_into(self._buf, _slot_offset(slot) + _CANCEL_OFFSET, task_id)

    def cancel_of(self, slot: int) -> int:
        return _CANCEL.unpack_from(self._buf, _slot_offset(slot) + _CANCEL_OFFSET)[0]

    def revoke(self, slot: int, first: int, last: int, lock: Any) -> int | None:
        """Take back a worker's queued runs, tickets ``first`` to ``last``: returns the ticket it
        claimed last (those of them up to it start, the rest never do), or None if the lock could
        not be had in time."""
        if not lock.acquire(timeout=CLAIM_LOCK_TIMEOUT):
            return None
        try:
            off = _slot_offset(slot)
            claimed = _TICKET.unpack_from(self._buf, off + _CLAIMED_OFFSET)[0]
            bits = _TICKET.unpack_from(self._buf, off + _REVOKED_OFFSET)[0]
            for ticket in range(max(first, claimed + 1), last + 1):
                bits |= 1 << (ticket % 64)
            _TICKET.pack_into(self._buf, off + _REVOKED_OFFSET, bits)
            return claimed
        finally:
            lock.release()

    def claimed(self, slot: int) -> int:
        """The last ticket the slot's worker claimed."""
        return _TICKET.unpack_from(self._buf, _slot_offset(slot) + _CLAIMED_OFFSET)[0]

    def reset_slot(self, slot: int) -> None:
        """Zero the coordinator's fields and the tickets of a slot before a new worker takes it."""
        off = _slot_offset(slot)
        struct.pack_into("<qQQQ", self._buf, off + _CANCEL_OFFSET, 0, 0, 0, 0)

    def read_slot(self, slot: int) -> SlotView:
        return _read_slot(self._buf, slot)

    def close(self) -> None:
        """Detach and unlink; safe to call twice."""
        if self._shm is None:
            return
        try:
            self._shm.close()
        finally:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
            self._shm = None  # type: ignore[assignment]


def _attach(name: str, writable: bool) -> mmap.mmap:
    """Map an existing segment without telling the resource tracker."""
    flags = os.O_RDWR if writable else os.O_RDONLY
    fd = os.open(os.path.join("/dev/shm", name.lstrip("/")), flags)
    try:
        size = os.fstat(fd).st_size
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
    finally:
        os.close(fd)


class WorkerSlot:
    """A worker's view of its own slot: the single writer of its fields."""

    def __init__(self, name: str, index: int) -> None:
        self._map = _attach(name, writable=True)
        self._buf: memoryview = memoryview(self._map)
        self._off = _slot_offset(index)
        self._seq = _SEQ.unpack_from(self._buf, self._off)[0] & ~1

    def _begin(self) -> None:
        self._seq += 1
        _SEQ.pack_into(self._buf, self._off, self._seq)

    def _end(self) -> None:
        self._seq += 1
        _SEQ.pack_into(self._buf, self._off, self._seq)

    def start(self, pid: int, task_id: int) -> None:
        self._begin()
        now = time.time()
        _WORKER_FIELDS.pack_into(self._buf, self._off + 8, pid, task_id, now, -1.0, 0, 0, 0, 0, 0, 0, now)
        self._end()

    def progress(self, fraction: float, done: int, total: int) -> None:
        self._begin()
        _PROGRESS.pack_into(self._buf, self._off + 32, fraction, done, total)
        struct.pack_into("<d", self._buf, self._off + 88, time.time())
        self._end()

    def io(self, read: int, write: int, rx: int, tx: int) -> None:
        self._begin()
        _IO.pack_into(self._buf, self._off + 56, read, write, rx, tx)
        self._end()

    def clear(self, pid: int) -> None:
        self._begin()
        struct.pack_into("<qq", self._buf, self._off + 8, pid, 0)
        self._end()

    def claim(self, ticket: int, lock: Any, queued: bool = True) -> bool:
        """May run ``ticket`` start? A dispatched run always may; a ``queued`` one, unless the
        coordinator took it back (see the module docstring)."""
        with lock:
            buf, off = self._buf, self._off
            if queued:
                bits = _TICKET.unpack_from(buf, off + _REVOKED_OFFSET)[0]
                bit = 1 << (ticket % 64)
                if bits & bit:
                    _TICKET.pack_into(buf, off + _REVOKED_OFFSET, bits & ~bit)
                    return False
            _TICKET.pack_into(buf, off + _CLAIMED_OFFSET, ticket)
            return True

    def cancelled_for(self, task_id: int) -> bool:
        """Is ``ctx.cancelled`` true for the run of ``task_id``?"""
        return _CANCEL.unpack_from(self._buf, self._off + _CANCEL_OFFSET)[0] == task_id

    def close(self) -> None:
        self._buf.release()
        self._map.close()


@dataclass(frozen=True, slots=True)
class SlotView:
    pid: int
    task_id: int
    started_at: float
    progress: float
    bytes_done: int
    bytes_total: int
    read_bytes: int
    write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    heartbeat: float
    cancel: bool


def _read_slot(buf: memoryview | mmap.mmap, slot: int) -> SlotView:
    off = _slot_offset(slot)
    for _ in range(1000):
        values = _SLOT.unpack_from(buf, off)
        if values[0] & 1 == 0 and _SEQ.unpack_from(buf, off)[0] == values[0]:
            break
    # a writer that died mid-write leaves an odd sequence; the last copy is still usable
    (_seq, pid, task_id, started, progress, done, total, rb, wb, rx, tx, heartbeat, cancel) = values[:13]
    return SlotView(pid, task_id, started, progress, done, total, rb, wb, rx, tx, heartbeat,
                    task_id != 0 and cancel == task_id)


class SegmentReader:
    """Read-only access for any local process (CLI, dashboards, the host)."""

    def __init__(self, name: str) -> None:
        self._map = _attach(name, writable=False)
        magic, version, slots, pid, _hb, _seq = _HEAD.unpack_from(self._map, 0)
        if magic != MAGIC or version != LAYOUT_VERSION:
            self._map.close()
            raise ValueError(f"shared memory segment {name!r} is not a taskmill segment of layout {LAYOUT_VERSION}")
        self.slots = slots
        self.coordinator_pid = pid

    def heartbeat(self) -> float:
        return struct.unpack_from("<d", self._map, 24)[0]

    def counters(self) -> dict[str, int]:
        for _ in range(1000):
            seq = _SEQ.unpack_from(self._map, 32)[0]
            values = _COUNTERS.unpack_from(self._map, 40)
            if seq & 1 == 0 and _SEQ.unpack_from(self._map, 32)[0] == seq:
                break
        return dict(zip(COUNTER_NAMES, values))

    def slot(self, i: int) -> SlotView:
        return _read_slot(self._map, i)

    def close(self) -> None:
        self._map.close()
