"""The commit journal: records read back whole, a torn or damaged tail and a gap end the replay,
replay applies what the store lacks exactly once, and an emptied journal starts over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmill.batch import WriteBatch
from taskmill.store import Store
from taskmill.store.journal import Journal, journal_path, replay
from taskmill.store.queries import TASK_INSERT_COLUMNS


def batch_with(n: int) -> WriteBatch:
    b = WriteBatch()
    b.scopes[("group", f"g{n}")] = (float(n), None)
    return b


def scopes(store: Store) -> set[str]:
    return {r[0] for r in store.con.execute("SELECT scope FROM paused_scopes").fetchall()}


def test_no_journal_for_a_store_in_memory(tmp_path: Path) -> None:
    assert journal_path(":memory:") is None
    assert journal_path(str(tmp_path / "s.duckdb")) == str(tmp_path / "s.duckdb.journal")


def tear(path: str, at: int, data: bytes) -> None:
    """What a kill in the middle of a write leaves: ``data`` at ``at``, nothing after it."""
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def test_records_come_back_in_order_and_a_torn_tail_is_left_out(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j"))
    for seq in (1, 2, 3):
        j.append(seq, batch_with(seq))
    whole = j.size
    tear(j.path, whole, b"\x40\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00" + b"x" * 10)
    got = [(seq, b.scopes) for seq, b in j.records()]
    assert got == [(n, {("group", f"g{n}"): (float(n), None)}) for n in (1, 2, 3)]
    j.close(remove=False)
    again = Journal(j.path)  # reopened after the kill: the next record goes after the whole ones
    assert again.size == whole
    again.append(4, batch_with(4))
    assert [seq for seq, _ in again.records()] == [1, 2, 3, 4]
    again.close(remove=True)
    assert not os.path.exists(j.path)


def test_after_a_reset_older_records_behind_the_new_ones_are_not_read(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j"))
    for seq in (1, 2, 3):
        j.append(seq, batch_with(seq))
    j.reset()
    assert list(j.records()) == [] and j.size == 0
    j.append(4, batch_with(4))  # as long as record 1: record 2 follows it on the disk, and is older
    assert [seq for seq, _ in j.records()] == [4]
    j.close(remove=True)


def test_a_damaged_record_ends_the_records(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j"))
    for seq in (1, 2, 3):
        j.append(seq, batch_with(seq))
    data = bytearray(Path(j.path).read_bytes())
    first = j.size // 3
    data[first + 20] ^= 0xFF  # a flipped byte in the second record's body
    Path(j.path).write_bytes(bytes(data))
    assert [seq for seq, _ in j.records()] == [1]
    j.close(remove=True)


def test_replay_applies_what_the_store_lacks_once_and_empties_the_journal(tmp_path: Path) -> None:
    path = str(tmp_path / "s.duckdb")
    store = Store(path)
    j = Journal(journal_path(path) or "")
    store.apply(batch_with(1), 1)  # record 1 reached the store before the crash
    for seq in (1, 2, 3):
        j.append(seq, batch_with(seq))
    assert replay(j, store.apply_all, store.journal_seq) == 2
    assert scopes(store) == {"g1", "g2", "g3"} and store.journal_seq == 3
    assert j.size == 0 and list(j.records()) == []
    assert replay(j, store.apply_all, store.journal_seq) == 0  # a second replay finds nothing
    j.close(remove=True)
    store.close()
    again = Store(path)
    assert again.journal_seq == 3  # kept in the store with the rows
    again.close()


def test_a_gap_ends_the_replay(tmp_path: Path) -> None:
    """Commit 2 went to DuckDB directly and never arrived: 3 was not acknowledged either."""
    store = Store(str(tmp_path / "s.duckdb"))
    j = Journal(str(tmp_path / "j"))
    for seq in (1, 3):
        j.append(seq, batch_with(seq))
    assert replay(j, store.apply_all, store.journal_seq) == 1
    assert scopes(store) == {"g1"} and store.journal_seq == 1
    j.close(remove=True)
    store.close()


def test_a_rolled_back_replay_leaves_the_store_and_the_journal_as_they_were(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.duckdb"))
    j = Journal(str(tmp_path / "j"))
    j.append(1, batch_with(1))
    bad = WriteBatch()
    bad.inserts.append(tuple(None for _ in TASK_INSERT_COLUMNS))  # NOT NULL columns: the insert fails
    j.append(2, bad)
    with pytest.raises(Exception):
        replay(j, store.apply_all, store.journal_seq)
    assert scopes(store) == set() and store.journal_seq == 0
    assert [seq for seq, _ in j.records()] == [1, 2]  # kept for the next start
    j.close(remove=True)
    store.close()


@settings(max_examples=25, deadline=None)
@given(cut=st.integers(min_value=0, max_value=400))
def test_a_kill_at_any_byte_leaves_only_whole_records_to_read(tmp_path_factory: pytest.TempPathFactory,
                                                              cut: int) -> None:
    j = Journal(str(tmp_path_factory.mktemp("j") / "j"))
    ends = []
    for seq in range(1, 6):
        j.append(seq, batch_with(seq))
        ends.append(j.size)
    keep = max(0, j.size - cut)
    tear(j.path, keep, bytes(j.size - keep))  # the last bytes never reached the disk
    assert [seq for seq, _ in j.records()] == [i + 1 for i, end in enumerate(ends) if end <= keep]
    j.close(remove=True)
