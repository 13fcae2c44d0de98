"""Every read query of the store, over any DuckDB connection or cursor.

``Queries(con)`` answers the seed's query API (and ``select`` runs ``sql()``)
on the connection it is given: the loop's own (``Store`` is a ``Queries``) or a
reader thread's cursor, so no query has to run on the loop thread. Reads only;
methods return records, never cursors. Imports leaves only.
"""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timezone
from typing import Any, Sequence

import duckdb

from taskmill.errors import QueryRefused, StoreError
from taskmill.records import (
    HistoryStatus,
    IoBudget,
    TaskHistoryRecord,
    TaskLookup,
    TaskRecord,
    TaskStatus,
    TypeStats,
)

__all__ = ["HISTORY_COLUMNS", "SQL_MAX_BYTES", "SQL_MAX_ROWS", "TASK_COLUMNS", "Queries", "select"]

#: Most rows one ``sql()`` call returns; beyond it the call fails and asks for a LIMIT.
SQL_MAX_ROWS = 200_000
#: Largest ``sql()`` result, measured as pickled bytes (what travels to the host).
SQL_MAX_BYTES = 64 * 1024 * 1024
#: Rows fetched per step while a result is checked against the caps.
SQL_FETCH_ROWS = 2048

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


def _aware(v: datetime | None) -> datetime | None:
    return None if v is None else v.replace(tzinfo=timezone.utc)


def _json(v: str | None) -> Any:
    return None if v is None else json.loads(v)


class Queries:
    """The seed's read queries on one connection (or cursor), used from one thread."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

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
