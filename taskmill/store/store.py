"""The DuckDB store: schema, migrations, the group commit and every query.

Invariant: one ``Store`` per database file, used from one thread (the
coordinator loop). Writes arrive as one ``WriteBatch`` per commit and are
applied in a single transaction; methods return records, never cursors.
Imports only the leaf modules ``records`` and ``errors``.
"""

from __future__ import annotations

import json
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any, Iterator, Sequence

import duckdb

from taskmill.errors import NotATaskmillStore, QueryRefused, SchemaTooNew, StoreError, StoreLocked
from taskmill.records import (
    HistoryStatus,
    IoBudget,
    TaskHistoryRecord,
    TaskLookup,
    TaskRecord,
    TaskStatus,
    TypeStats,
)

__all__ = ["LATEST_SCHEMA", "FinishedRow", "Store", "WriteBatch", "select"]

#: DuckDB worker threads for the store; queries are small, the loop is single-threaded.
DUCKDB_THREADS = 2
#: Memory DuckDB may use before spilling.
DUCKDB_MEMORY_LIMIT = "1GB"

APP_NAME = "taskmill"
#: Most rows one ``sql()`` call returns; beyond it the call fails and asks for a LIMIT.
SQL_MAX_ROWS = 200_000
#: Largest ``sql()`` result, measured as pickled bytes (what travels to the host).
SQL_MAX_BYTES = 64 * 1024 * 1024
#: Rows fetched per step while a result is checked against the caps.
SQL_FETCH_ROWS = 2048


def _migrations() -> list[tuple[int, str]]:
    out = []
    for entry in resources.files("taskmill.store").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(out)


LATEST_SCHEMA = max(v for v, _ in _migrations())

TASK_COLUMNS = (
    "id, task_type, domain, key, label, priority, status, payload, tags, group_key, created_at, run_after, "
    "started_at, retry_count, max_retries, retry_policy, last_error, timeout_s, cpus, memory, "
    "expected_read_bytes, expected_write_bytes, expected_net_rx_bytes, expected_net_tx_bytes, requeue, "
    "requeue_priority, parent_id"
)
HISTORY_COLUMNS = (
    "id, task_type, domain, key, label, priority, status, payload, result, error, tags, group_key, retry_count, "
    "created_at, started_at, completed_at, duration_ms, read_bytes, write_bytes, net_rx_bytes, net_tx_bytes, "
    "expected_read_bytes, expected_write_bytes, expected_net_rx_bytes, expected_net_tx_bytes, cpus, memory, parent_id"
)
_ACTIVE = "('pending','running','paused','waiting','blocked')"


def utc(ts: float) -> datetime:
    """Epoch seconds to the naive-UTC datetime the store keeps."""
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)


def _aware(v: datetime | None) -> datetime | None:
    return None if v is None else v.replace(tzinfo=timezone.utc)


def _json(v: str | None) -> Any:
    return None if v is None else json.loads(v)


@dataclass(slots=True)
class FinishedRow:
    """A task execution that ended: becomes one ``task_history`` row."""

    id: int
    status: str
    result: str | None
    error: str | None
    retry_count: int
    started_at: float | None  # epoch seconds
    completed_at: float  # epoch seconds
    duration_ms: float | None
    read_bytes: int = 0
    write_bytes: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    keep_active: bool = False  # requeued: the task stays, back to pending


@dataclass(slots=True)
class WriteBatch:
    """Everything one loop iteration changed, applied in one transaction in this order."""

    inserts: list[tuple] = field(default_factory=list)  # full ``tasks`` rows
    priorities: dict[int, int] = field(default_factory=dict)  # upgrades
    requeue_marks: dict[int, int] = field(default_factory=dict)  # id -> requeue priority
    running: dict[int, float] = field(default_factory=dict)  # id -> started_at (epoch s)
    retries: dict[int, tuple[int, float | None, str]] = field(default_factory=dict)  # id -> (count, run_after epoch s, error)
    finished: list[FinishedRow] = field(default_factory=list)
    requeued_runs: dict[int, int] = field(default_factory=dict)  # id -> priority, after its history row
    to_pending: set[int] = field(default_factory=set)  # interrupted runs, no retry counted
    next_id: int | None = None

    def __len__(self) -> int:
        return (
            len(self.inserts)
            + len(self.priorities)
            + len(self.requeue_marks)
            + len(self.running)
            + len(self.retries)
            + len(self.finished)
            + len(self.requeued_runs)
            + len(self.to_pending)
        )

    def forget_running(self, task_id: int) -> None:
        """The task ended before its ``running`` mark was written: skip the mark."""
        self.running.pop(task_id, None)


#: DuckDB database files carry this magic at byte 8 (after a checksum).
_DUCKDB_MAGIC = b"DUCK"


def _check_duckdb_file(path: str) -> None:
    """Refuse an existing non-empty file that is not a DuckDB database before DuckDB sees it
    (DuckDB would otherwise try, for example, to load its SQLite extension for a SQLite file)."""
    if path == ":memory:" or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb") as f:
        head = f.read(12)
    if head[8:12] != _DUCKDB_MAGIC:
        raise NotATaskmillStore(f"{path} is not a DuckDB database file, so not a taskmill store")


def _map_open_error(path: str, e: duckdb.Error) -> StoreError:
    text = str(e)
    if "not a valid DuckDB database file" in text or "Invalid Input Error" in text and "database" in text:
        return NotATaskmillStore(f"{path} is not a DuckDB database file, so not a taskmill store")
    if "Could not set lock" in text or "Conflicting lock" in text:
        return StoreLocked(f"another process already has {path} open (is a coordinator running on it?): {text}")
    return StoreError(f"cannot open store {path}: {text}")


class Store:
    """A taskmill store in one DuckDB database (a file, or ``":memory:"``).

    Raises on open:
        NotATaskmillStore: not a DuckDB file, or a database with foreign tables.
        SchemaTooNew: written by a newer taskmill.
        StoreLocked: another process holds the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        _check_duckdb_file(path)
        config: dict[str, str | bool | int | float | list[str]] = {
            "threads": DUCKDB_THREADS,
            "memory_limit": DUCKDB_MEMORY_LIMIT,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": True,
            "TimeZone": "UTC",
            # User SQL runs on this database: no file or network access beyond the store itself
            # (read_text('/etc/shadow'), glob, COPY … TO), and no setting can be changed later.
            "enable_external_access": False,
            "lock_configuration": True,
        }
        try:
            self.con = duckdb.connect(path, config=config)
        except duckdb.Error as e:
            raise _map_open_error(path, e) from e
        try:
            self._migrate()
        except BaseException:
            self.con.close()
            raise
        self.schema_version = LATEST_SCHEMA

    # ------------------------------------------------------------------ lifecycle

    def _migrate(self) -> None:
        tables = {r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
        version = 0
        if "meta" in tables:
            meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("app") != APP_NAME:
                raise NotATaskmillStore(f"{self.path} has a 'meta' table that taskmill did not write")
            version = int(meta.get("schema_version", "0"))
            if version > LATEST_SCHEMA:
                raise SchemaTooNew(
                    f"{self.path} has schema version {version}; this taskmill knows up to {LATEST_SCHEMA}. "
                    "Upgrade taskmill to open it.")
        elif tables:
            raise NotATaskmillStore(
                f"{self.path} is a DuckDB database with other tables ({', '.join(sorted(tables)[:5])}), not a taskmill store")
        for v, sql in _migrations():
            if v <= version:
                continue
            with self.transaction():
                self.con.execute(sql)
                if v == 1:
                    self.con.execute("INSERT INTO meta VALUES ('app', ?), ('schema_version', '1'), ('next_id', '1')",
                                     [APP_NAME])
                self.con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(v)])

    def close(self) -> None:
        try:
            self.con.close()
        except duckdb.Error:
            pass

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One DuckDB transaction; a duckdb error rolls back and becomes ``StoreError``."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
        except duckdb.Error as e:
            con.execute("ROLLBACK")
            raise StoreError(f"store transaction failed: {e}") from e
        except BaseException:
            con.execute("ROLLBACK")
            raise
        else:
            try:
                con.execute("COMMIT")
            except duckdb.Error as e:
                raise StoreError(f"store commit failed: {e}") from e

    def checkpoint(self) -> None:
        self.con.execute("CHECKPOINT")

    # ------------------------------------------------------------------ recovery

    def recover(self) -> tuple[int, list[tuple]]:
        """Reset interrupted runs to pending (no retry counted) and load active tasks.

        Returns ``(next_id, rows)``; rows carry what the ready queues need, no payloads:
        ``(id, task_type, domain, key, label, priority, status, created_at_epoch, run_after_epoch,
        retry_count, max_retries, retry_policy, timeout_s, cpus, memory, group_key, requeue, requeue_priority)``.
        """
        with self.transaction() as con:
            con.execute("UPDATE tasks SET status = 'pending', started_at = NULL WHERE status = 'running'")
            next_id = int(self._scalar("SELECT value FROM meta WHERE key = 'next_id'"))
            top = self._scalar(
                "SELECT greatest((SELECT coalesce(max(id), 0) FROM tasks), (SELECT coalesce(max(id), 0) FROM task_history))")
            rows = con.execute(
                "SELECT id, task_type, domain, key, label, priority, status, epoch_us(created_at) / 1e6, "
                "epoch_us(run_after) / 1e6, retry_count, max_retries, retry_policy, timeout_s, cpus, memory, "
                "group_key, requeue, requeue_priority FROM tasks ORDER BY id"
            ).fetchall()
        return max(next_id, int(top) + 1), rows

    def quarantine(self, rows: Sequence[tuple[int, str]], now: float) -> list[int]:
        """Move active tasks that recovery cannot interpret to history as ``failed`` with a reason.

        Each row moves in its own transaction, so one that cannot even be copied stays
        where it is; returns the ids that could not be moved.
        """
        stuck = []
        for task_id, reason in rows:
            try:
                with self.transaction() as con:
                    con.execute(
                        f"INSERT INTO task_history ({HISTORY_COLUMNS}) SELECT id, task_type, domain, key, label, "
                        "priority, 'failed', payload, NULL, ?, tags, group_key, retry_count, created_at, started_at, "
                        "make_timestamp((? * 1e6)::BIGINT), NULL, 0, 0, 0, 0, expected_read_bytes, "
                        "expected_write_bytes, expected_net_rx_bytes, expected_net_tx_bytes, cpus, memory, parent_id "
                        "FROM tasks WHERE id = ?", [reason, now, task_id])
                    con.execute("DELETE FROM tasks WHERE id = ?", [task_id])
            except StoreError:
                stuck.append(task_id)
        return stuck

    # ------------------------------------------------------------------ the group commit

    def apply(self, batch: WriteBatch) -> None:
        """Apply one iteration's writes in one transaction (one fsync)."""
        with self.transaction() as con:
            if batch.inserts:
                app = con.appender("tasks")
                app.append_rows(batch.inserts)
                app.flush()
            if batch.priorities:
                ids, prios = zip(*batch.priorities.items())
                con.execute(
                    "UPDATE tasks SET priority = u.p FROM (SELECT unnest($1::BIGINT[]) AS id, unnest($2::SMALLINT[]) AS p) u "
                    "WHERE tasks.id = u.id", [list(ids), list(prios)])
            if batch.requeue_marks:
                ids, prios = zip(*batch.requeue_marks.items())
                con.execute(
                    "UPDATE tasks SET requeue = true, requeue_priority = u.p FROM (SELECT unnest($1::BIGINT[]) AS id, "
                    "unnest($2::SMALLINT[]) AS p) u WHERE tasks.id = u.id", [list(ids), list(prios)])
            if batch.running:
                ids, starts = zip(*batch.running.items())
                con.execute(
                    "UPDATE tasks SET status = 'running', started_at = make_timestamp((u.s * 1e6)::BIGINT) FROM "
                    "(SELECT unnest($1::BIGINT[]) AS id, unnest($2::DOUBLE[]) AS s) u WHERE tasks.id = u.id",
                    [list(ids), list(starts)])
            if batch.retries:
                rids = list(batch.retries)
                counts, afters, errs = zip(*batch.retries.values())
                con.execute(
                    "UPDATE tasks SET status = 'pending', started_at = NULL, retry_count = u.c, "
                    "run_after = make_timestamp((u.a * 1e6)::BIGINT), last_error = u.e FROM (SELECT "
                    "unnest($1::BIGINT[]) AS id, unnest($2::INTEGER[]) AS c, unnest($3::DOUBLE[]) AS a, "
                    "unnest($4::VARCHAR[]) AS e) u WHERE tasks.id = u.id",
                    [rids, list(counts), list(afters), list(errs)])
            if batch.finished:
                self._move_to_history(con, batch.finished)
            if batch.requeued_runs:
                ids, prios = zip(*batch.requeued_runs.items())
                con.execute(
                    "UPDATE tasks SET status = 'pending', started_at = NULL, retry_count = 0, requeue = false, "
                    "requeue_priority = NULL, priority = u.p FROM (SELECT unnest($1::BIGINT[]) AS id, "
                    "unnest($2::SMALLINT[]) AS p) u WHERE tasks.id = u.id", [list(ids), list(prios)])
            if batch.to_pending:
                con.execute("UPDATE tasks SET status = 'pending', started_at = NULL WHERE id IN (SELECT unnest($1::BIGINT[]))",
                            [list(batch.to_pending)])
            if batch.next_id is not None:
                con.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", [str(batch.next_id)])

    @staticmethod
    def _move_to_history(con: duckdb.DuckDBPyConnection, rows: Sequence[FinishedRow]) -> None:
        cols = list(zip(*((r.id, r.status, r.result, r.error, r.retry_count, r.started_at, r.completed_at,
                           r.duration_ms, r.read_bytes, r.write_bytes, r.net_rx_bytes, r.net_tx_bytes) for r in rows)))
        con.execute(
            f"INSERT INTO task_history ({HISTORY_COLUMNS}) "
            "SELECT t.id, t.task_type, t.domain, t.key, t.label, t.priority, f.status, t.payload, f.result::JSON, f.error, "
            "t.tags, t.group_key, f.retry_count, t.created_at, make_timestamp((f.started_at * 1e6)::BIGINT), "
            "make_timestamp((f.completed_at * 1e6)::BIGINT), f.duration_ms, f.rb, f.wb, "
            "f.rx, f.tx, t.expected_read_bytes, t.expected_write_bytes, t.expected_net_rx_bytes, t.expected_net_tx_bytes, "
            "t.cpus, t.memory, t.parent_id FROM tasks t JOIN (SELECT unnest($1::BIGINT[]) AS id, unnest($2::VARCHAR[]) AS status, "
            "unnest($3::VARCHAR[]) AS result, unnest($4::VARCHAR[]) AS error, unnest($5::INTEGER[]) AS retry_count, "
            "unnest($6::DOUBLE[]) AS started_at, unnest($7::DOUBLE[]) AS completed_at, "
            "unnest($8::DOUBLE[]) AS duration_ms, unnest($9::BIGINT[]) AS rb, unnest($10::BIGINT[]) AS wb, "
            "unnest($11::BIGINT[]) AS rx, unnest($12::BIGINT[]) AS tx) f ON t.id = f.id",
            [list(c) for c in cols])
        gone = [r.id for r in rows if not r.keep_active]
        if gone:
            con.execute("DELETE FROM tasks WHERE id IN (SELECT unnest($1::BIGINT[]))", [gone])

    def fetch_payloads(self, ids: Sequence[int]) -> dict[int, str]:
        rows = self.con.execute("SELECT id, payload FROM tasks WHERE id IN (SELECT unnest($1::BIGINT[]))",
                                [list(ids)]).fetchall()
        return {i: p for i, p in rows}

    def history_row(self, task_id: int) -> TaskHistoryRecord | None:
        """The newest history row of a task id (used to answer ``wait``)."""
        rows = self._history("WHERE id = ? ORDER BY completed_at DESC LIMIT 1", [task_id])
        return rows[0] if rows else None

    def history_rows(self, ids: Sequence[int]) -> dict[int, TaskHistoryRecord]:
        out: dict[int, TaskHistoryRecord] = {}
        for r in self._history("WHERE id IN (SELECT unnest($1::BIGINT[])) ORDER BY completed_at", [list(ids)]):
            out[r.id] = r
        return out

    # ------------------------------------------------------------------ record mapping

    def _tasks(self, where: str, params: Sequence[Any] = ()) -> list[TaskRecord]:
        rows = self.con.execute(f"SELECT {TASK_COLUMNS} FROM tasks {where}", list(params)).fetchall()
        return [_task_record(r) for r in rows]

    def _history(self, where: str, params: Sequence[Any] = ()) -> list[TaskHistoryRecord]:
        rows = self.con.execute(f"SELECT {HISTORY_COLUMNS} FROM task_history {where}", list(params)).fetchall()
        return [_history_record(r) for r in rows]

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._one(sql, params)[0]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
        row = self.con.execute(sql, list(params)).fetchone()
        if row is None:  # aggregates always return a row
            raise StoreError(f"no row from: {sql[:80]}")
        return row

    # ------------------------------------------------------------------ seed: active task queries

    def running_tasks(self) -> list[TaskRecord]:
        return self._tasks("WHERE status = 'running' ORDER BY priority, id")

    def running_count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM tasks WHERE status = 'running'"))

    def pending_tasks(self, limit: int) -> list[TaskRecord]:
        return self._tasks("WHERE status = 'pending' ORDER BY priority, id LIMIT ?", [_limit(limit)])

    def pending_count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM tasks WHERE status = 'pending'"))

    def pending_by_type(self, task_type: str) -> list[TaskRecord]:
        return self._tasks("WHERE status = 'pending' AND task_type = ? ORDER BY priority, id", [task_type])

    def paused_tasks(self) -> list[TaskRecord]:
        return self._tasks("WHERE status = 'paused' ORDER BY priority, id")

    def paused_count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM tasks WHERE status = 'paused'"))

    def task_by_id(self, task_id: int) -> TaskRecord | None:
        rows = self._tasks("WHERE id = ?", [task_id])
        return rows[0] if rows else None

    def task_by_key(self, key: str) -> TaskRecord | None:
        rows = self._tasks("WHERE key = ? ORDER BY id LIMIT 1", [key])
        return rows[0] if rows else None

    def running_io_totals(self) -> tuple[int, int]:
        r, w = self._one(
            "SELECT coalesce(sum(expected_read_bytes), 0), coalesce(sum(expected_write_bytes), 0) "
            "FROM tasks WHERE status = 'running'")
        return int(r), int(w)

    # ------------------------------------------------------------------ seed: history queries

    def history(self, limit: int, offset: int = 0) -> list[TaskHistoryRecord]:
        return self._history("ORDER BY completed_at DESC, id DESC LIMIT ? OFFSET ?", [_limit(limit), _offset(offset)])

    def history_by_type(self, task_type: str, limit: int) -> list[TaskHistoryRecord]:
        return self._history("WHERE task_type = ? ORDER BY completed_at DESC, id DESC LIMIT ?", [task_type, _limit(limit)])

    def history_by_key(self, key: str) -> list[TaskHistoryRecord]:
        return self._history("WHERE key = ? ORDER BY completed_at DESC, id DESC", [key])

    def failed_tasks(self, limit: int) -> list[TaskHistoryRecord]:
        return self._history("WHERE status IN ('failed', 'dead_letter') ORDER BY completed_at DESC, id DESC LIMIT ?",
                             [_limit(limit)])

    def dead_letter_tasks(self, domain: str | None, limit: int, offset: int = 0) -> list[TaskHistoryRecord]:
        where = "WHERE status = 'dead_letter'" + (" AND domain = ?" if domain else "")
        params: list[Any] = [domain] if domain else []
        return self._history(f"{where} ORDER BY completed_at DESC, id DESC LIMIT ? OFFSET ?",
                             params + [_limit(limit), _offset(offset)])

    def history_stats(self, task_type: str) -> TypeStats:
        n, dur, rb, wb, failed, finished = self._one(
            "SELECT count(*) FILTER (WHERE status = 'completed'), "
            "avg(duration_ms) FILTER (WHERE status = 'completed'), "
            "avg(read_bytes) FILTER (WHERE status = 'completed'), "
            "avg(write_bytes) FILTER (WHERE status = 'completed'), "
            "count(*) FILTER (WHERE status IN ('failed', 'dead_letter')), "
            "count(*) FILTER (WHERE status IN ('completed', 'failed', 'dead_letter')) "
            "FROM task_history WHERE task_type = ?", [task_type])
        return TypeStats(count=int(n), avg_duration_ms=float(dur or 0.0), avg_read_bytes=float(rb or 0.0),
                         avg_write_bytes=float(wb or 0.0), failure_rate=(failed / finished) if finished else 0.0)

    def avg_throughput(self, task_type: str, limit: int) -> tuple[float, float]:
        r, w = self._one(
            "SELECT coalesce(avg(read_bytes * 1000.0 / duration_ms), 0), coalesce(avg(write_bytes * 1000.0 / duration_ms), 0) "
            "FROM (SELECT read_bytes, write_bytes, duration_ms FROM task_history WHERE task_type = ? "
            "AND status = 'completed' AND duration_ms > 0 ORDER BY completed_at DESC LIMIT ?)",
            [task_type, _limit(limit)])
        return float(r), float(w)

    def task_lookup_by_dedup_key(self, key: str) -> TaskLookup:
        active = self.task_by_key(key)
        if active is not None:
            return TaskLookup(active=active)
        rows = self._history("WHERE key = ? ORDER BY completed_at DESC, id DESC LIMIT 1", [key])
        return TaskLookup(history=rows[0] if rows else None)

    def dead_letter_row(self, task_id: int) -> tuple[Any, ...] | None:
        """The newest dead-letter row of ``task_id`` as a full ``tasks`` row template."""
        return self.con.execute(
            "SELECT task_type, domain, key, label, priority, payload, tags, group_key, cpus, memory, "
            "expected_read_bytes, expected_write_bytes, expected_net_rx_bytes, expected_net_tx_bytes, parent_id "
            "FROM task_history WHERE id = ? AND status = 'dead_letter' ORDER BY completed_at DESC LIMIT 1",
            [task_id]).fetchone()

    # ------------------------------------------------------------------ pruning

    def prune_history_by_count(self, keep: int) -> int:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep must be an int >= 0, got {keep!r}")
        with self.transaction():
            n = self._scalar(
                "DELETE FROM task_history WHERE (completed_at, id) NOT IN "
                "(SELECT (completed_at, id) FROM task_history ORDER BY completed_at DESC, id DESC LIMIT ?)",
                [keep])
        return int(n)

    def prune_history_by_age(self, days: float) -> int:
        if isinstance(days, bool) or not isinstance(days, (int, float)) or days < 0:
            raise ValueError(f"days must be a number >= 0, got {days!r}")
        cutoff = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=days)
        with self.transaction():
            n = self._scalar("DELETE FROM task_history WHERE completed_at < ?", [cutoff])
        return int(n)

    # ------------------------------------------------------------------ SQL over history (F25)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the same database, for use by one other thread (a reader)."""
        return self.con.cursor()

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run one SELECT on a fresh cursor; see :func:`select`."""
        cur = self.con.cursor()
        try:
            return select(cur, query, params)
        finally:
            cur.close()


def select(cur: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | dict[str, Any] | None = None, *,
           max_rows: int = SQL_MAX_ROWS, max_bytes: int = SQL_MAX_BYTES) -> tuple[list[str], list[tuple]]:
    """Run one SELECT statement on ``cur`` inside a read-only transaction; ``(column names, rows)``.

    Read-only is the engine's rule, not a parse of the text: the statement runs in
    ``BEGIN TRANSACTION READ ONLY``, so even a ``DELETE … RETURNING`` inside a CTE is
    refused by DuckDB, and the database has no external access. The one-statement
    check only keeps a second statement from ending that transaction.

    Raises:
        QueryRefused: not exactly one SELECT, a write, or a result over ``max_rows``
            rows or about ``max_bytes`` bytes.
        StoreError: the query failed (syntax, binder, runtime), from the duckdb error.
    """
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise StoreError(f"malformed SQL: {e}") from e
    if len(statements) != 1:
        raise QueryRefused(f"sql() runs exactly one statement, got {len(statements)}")
    kind = statements[0].type
    # Only SELECT: EXPLAIN ANALYZE executes the statement it explains (a COPY writes its file).
    if kind != duckdb.StatementType.SELECT:
        raise QueryRefused(f"sql() is read-only and runs one SELECT; refused a {kind.name} statement")
    try:
        cur.execute("BEGIN TRANSACTION READ ONLY")
        try:
            cur.execute(query, params if params is not None else None)
            names = [d[0] for d in cur.description or []]
            rows: list[tuple] = []
            size = 0
            while True:
                chunk = cur.fetchmany(SQL_FETCH_ROWS)
                if not chunk:
                    break
                rows.extend(chunk)
                if len(rows) > max_rows:
                    raise QueryRefused(f"the result has more than {max_rows:,} rows; add a LIMIT, page with "
                                       "OFFSET, or aggregate")
                size += len(pickle.dumps(chunk, pickle.HIGHEST_PROTOCOL))
                if size > max_bytes:
                    raise QueryRefused(f"the result is larger than {max_bytes // (1024 * 1024)} MiB; select fewer "
                                       "columns or rows")
        finally:
            cur.execute("ROLLBACK")
    except duckdb.TransactionException as e:
        raise QueryRefused(f"sql() is read-only: {e}") from e
    except duckdb.InterruptException:
        raise
    except duckdb.Error as e:
        raise StoreError(f"query failed: {e}") from e
    return names, rows


def _limit(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"limit must be an int >= 0, got {v!r}")
    return v


def _offset(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"offset must be an int >= 0, got {v!r}")
    return v


def _task_record(r: tuple) -> TaskRecord:
    return TaskRecord(
        id=r[0], task_type=r[1], domain=r[2], key=r[3], label=r[4], priority=r[5], status=TaskStatus(r[6]),
        payload=_json(r[7]), tags=_json(r[8]) or {}, group=r[9], created_at=_aware(r[10]), run_after=_aware(r[11]),
        started_at=_aware(r[12]), retry_count=r[13], max_retries=r[14], last_error=r[16], timeout=r[17], cpus=r[18],
        memory=r[19], expected_io=IoBudget(disk_read=r[20], disk_write=r[21], net_rx=r[22], net_tx=r[23]),
        requeue=bool(r[24]), parent_id=r[26])


def _history_record(r: tuple) -> TaskHistoryRecord:
    return TaskHistoryRecord(
        id=r[0], task_type=r[1], domain=r[2], key=r[3], label=r[4], priority=r[5], status=HistoryStatus(r[6]),
        payload=_json(r[7]), result=_json(r[8]), error=r[9], tags=_json(r[10]) or {}, group=r[11], retry_count=r[12],
        created_at=_aware(r[13]), started_at=_aware(r[14]), completed_at=_aware(r[15]), duration_ms=r[16],
        read_bytes=r[17], write_bytes=r[18], net_rx_bytes=r[19], net_tx_bytes=r[20],
        expected_io=IoBudget(disk_read=r[21], disk_write=r[22], net_rx=r[23], net_tx=r[24]), parent_id=r[27])
