"""The commit journal: small commits made durable by one append and one ``fdatasync``.

A DuckDB commit costs about a millisecond or more here, an append plus an
``fdatasync`` of a few hundred bytes about a tenth of that. So the coordinator
makes the changes a step owes answers for (a submission, a cancel) durable by
appending them here as one ``WriteBatch``, answers, and lets the writer thread
apply them to DuckDB later, with the write-behind batch that holds them too.
Every commit has a sequence number; the store records, in the transaction that
applies a batch, the number of the last record it holds (``Store.journal_seq``). At start-up ``replay`` applies the records the store
does not hold yet, in order, and empties the file. The store stays the one
source of truth for queries: the loop lets the writer catch up before any
query reads it.

File: ``<store>.journal`` next to the store (none for ``:memory:``), allocated
ahead. A record is a header (payload length, CRC-32 of the payload, sequence
number) and the pickled batch. A torn last record (the process died while
writing it) fails its length or CRC check: it was never acknowledged, and
reading stops there. A gap in the numbers (a commit that went to DuckDB
directly and never arrived) ends the replay too: nothing after it was
acknowledged either.

Imports the standard library and the batch type only.
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence

from taskmill.batch import WriteBatch

__all__ = ["Journal", "journal_path", "pending", "read_records", "replay"]

_HEADER = struct.Struct("<IIQ")  # payload length, crc32 of the payload, sequence number
#: Bytes the file is allocated ahead of its records (and grown by when they reach its end).
ALLOCATE = 4 << 20


def journal_path(store_path: str) -> str | None:
    """The journal of a store file; None for an in-memory store (nothing to make durable)."""
    if store_path.startswith(":memory:"):
        return None
    return store_path + ".journal"


class Journal:
    """A file of ``(seq, WriteBatch)`` records, written one after the other from its start.

    The file is allocated ahead (``ALLOCATE`` bytes at a time): a record overwrites space the
    file already has, so its ``fdatasync`` writes the data and no change of the file's size
    (a third cheaper here). What follows the last record is zeros or older records, whose
    numbers are lower: reading stops at either. ``sync=False`` skips the ``fdatasync`` (the
    ``durability="os"`` setting: a crash of the machine, not of a process, can lose the last
    commits)."""

    def __init__(self, path: str, sync: bool = True) -> None:
        self.path = path
        self.sync = sync
        existed = os.path.exists(path)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        #: Where the next record goes: the end of the records there are.
        self.size = _records_end(path)
        self._allocated = os.fstat(self._fd).st_size
        self._allocate(self.size + ALLOCATE)
        if not existed:  # the file's name must be durable too before a record in it counts
            _sync_dir(os.path.dirname(os.path.abspath(path)))

    def _allocate(self, size: int) -> None:
        if size > self._allocated:
            os.posix_fallocate(self._fd, 0, size)
            os.fsync(self._fd)  # the new size is durable before any record relies on it
            self._allocated = size

    def records(self) -> Iterator[tuple[int, WriteBatch]]:
        """Every whole record in file order; stops at the first torn or damaged one."""
        return read_records(self.path)

    def append(self, seq: int, batch: WriteBatch) -> None:
        """Write one record and make it durable (``fdatasync``) before returning."""
        body = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        record = _HEADER.pack(len(body), zlib.crc32(body), seq) + body
        end = self.size + len(record)
        if end + _HEADER.size > self._allocated:  # (room for the zeros that end the records, too)
            self._allocate(end + ALLOCATE)
        view, at = memoryview(record), self.size
        while view:
            n = os.pwrite(self._fd, view, at)
            view, at = view[n:], at + n
        if self.sync:
            os.fdatasync(self._fd)
        self.size = end

    def reset(self) -> None:
        """Start over from the file's start: every record in it is in the store. (A zero header
        there ends the records until the next one is written.)"""
        os.pwrite(self._fd, bytes(_HEADER.size), 0)
        os.fdatasync(self._fd)
        self.size = 0

    def close(self, remove: bool) -> None:
        """Close; with ``remove``, delete the file (every record is in the store)."""
        os.close(self._fd)
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def read_records(path: str) -> Iterator[tuple[int, WriteBatch]]:
    """The whole records of the journal at ``path`` in file order (none when there is no file);
    stops at the first torn or damaged one, at zeros, and at an older record (lower number)."""
    for seq, _, batch in _scan(path):
        yield seq, batch


def _records_end(path: str) -> int:
    end = 0
    for _, end, _ in _scan(path):
        pass
    return end


def _scan(path: str) -> Iterator[tuple[int, int, WriteBatch]]:
    """(seq, end offset, batch) of each whole record, in order."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return
    pos, last = 0, 0
    while pos + _HEADER.size <= len(data):
        length, crc, seq = _HEADER.unpack_from(data, pos)
        body = data[pos + _HEADER.size: pos + _HEADER.size + length]
        if length == 0 or seq <= last or len(body) < length or zlib.crc32(body) != crc:
            return
        try:
            batch = pickle.loads(body)
        except Exception:  # noqa: BLE001 - unreadable: treated like a torn record
            return
        if not isinstance(batch, WriteBatch):
            return
        pos += _HEADER.size + length
        last = seq
        yield seq, pos, batch


def pending(path: str, applied: int) -> list[WriteBatch]:
    """The records after ``applied`` that follow it without a gap: what a store at ``applied`` lacks."""
    batches: list[WriteBatch] = []
    expected = applied + 1
    for seq, batch in read_records(path):
        if seq <= applied:
            continue
        if seq != expected:
            break
        batches.append(batch)
        expected += 1
    return batches


def replay(journal: Journal, apply_all: Callable[[Sequence[WriteBatch], int], None], applied: int) -> int:
    """Apply what a store at ``applied`` lacks in one transaction (``apply_all(batches, last_seq)``,
    the store's), then empty the journal. Returns how many records."""
    batches = pending(journal.path, applied)
    if batches:
        apply_all(batches, applied + len(batches))
    journal.reset()
    return len(batches)


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
