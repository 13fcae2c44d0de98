"""Every read query of the store, over any DuckDB connection or cursor.

``Queries(con)`` answers the seed's query API (and ``select`` runs ``sql()``)
on the connection it is given: the loop's own (``Store`` is a ``Queries``) or a
reader thread's cursor, so no query has to run on the loop thread. Reads only;
methods return records, never cursors. Imports leaves only.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
from datetime import datetime, timezone
from typing import Any, Sequence

import duckdb

from taskmill.errors import QueryRefused, StoreError
from taskmill.records import (
    IoBudget,
    RecurringScheduleInfo,
    TaskHistoryRecord,
    TaskLookup,
    TaskRecord,
    TaskStatus,
    TypeStats,
    history_record,
)

__all__ = [
    "COMPLETED_KEYS_INDEX_MAX",
    "HISTORY_COLUMNS",
    "HISTORY_INSERT_COLUMNS",
    "SQL_MAX_BYTES",
    "SQL_MAX_ROWS",
    "TASK_COLUMNS",
    "TASK_INSERT_COLUMNS",
    "Queries",
    "copy_history",
    "journal_seq",
    "select",
]

#: Most rows one ``sql()`` call returns; beyond it the call fails and asks for a LIMIT.
SQL_MAX_ROWS = 200_000
#: Largest ``sql()`` result, measured as pickled bytes (what travels to the host).
SQL_MAX_BYTES = 64 * 1024 * 1024
#: Rows fetched per step while a result is checked against the caps.
SQL_FETCH_ROWS = 2048
#: ``completed_keys`` looks up at most this many keys through the ART index on
#: ``task_history.key`` (~35 µs a key); more keys are one hash join over the key column
#: (~50-70 ms at 1M history rows, whatever the number of keys). Measured crossover ~1,500.
COMPLETED_KEYS_INDEX_MAX = 1000

#: A full ``tasks`` row as ``WriteBatch.inserts`` carries it: schema 1's 27 columns, then schema 2's 13.
TASK_INSERT_COLUMNS: tuple[str, ...] = (
    "id", "task_type", "domain", "key", "label", "priority", "status", "payload", "tags", "group_key",
    "created_at", "run_after", "started_at", "retry_count", "max_retries", "retry_policy", "last_error",
    "timeout_s", "cpus", "memory", "expected_read_bytes", "expected_write_bytes", "expected_net_rx_bytes",
    "expected_net_tx_bytes", "requeue", "requeue_priority", "parent_id",
    # schema 2
    "ttl_seconds", "ttl_from", "expires_at", "on_dependency_failure", "fail_fast", "recurring_interval_secs",
    "recurring_max_executions", "recurring_execution_count", "recurring_initial_delay", "recurring_paused",
    "pause_reasons", "memo", "phase",
)
TASK_COLUMNS = ", ".join(TASK_INSERT_COLUMNS)
#: Every ``task_history`` column, in table order.
HISTORY_INSERT_COLUMNS: tuple[str, ...] = (
    "id", "task_type", "domain", "key", "label", "priority", "status", "payload", "result", "last_error", "tags",
    "group_key", "retry_count", "created_at", "started_at", "completed_at", "duration_ms", "read_bytes",
    "write_bytes", "net_rx_bytes", "net_tx_bytes", "expected_read_bytes", "expected_write_bytes",
    "expected_net_rx_bytes", "expected_net_tx_bytes", "cpus", "memory", "parent_id",
    # schema 2
    "seq", "run_after", "ttl_seconds", "ttl_from", "expires_at", "fail_fast",
)
HISTORY_COLUMNS = ", ".join(HISTORY_INSERT_COLUMNS)

_ACTIVE_STATUSES = frozenset(s.value for s in TaskStatus)
#: A task's tags as an exact-key map (``->>`` would read a key starting with ``$`` or ``/`` as a path).
_TAG_MAP = "tags::MAP(VARCHAR, VARCHAR)"


def _aware(v: datetime | None) -> datetime | None:
    return None if v is None else v.replace(tzinfo=timezone.utc)


def _json(v: str | None) -> Any:
    return None if v is None else json.loads(v)


class Queries:
    """The seed's read queries on one connection (or cursor), used from one thread.

    Active-task lists are in dispatch order (priority, then id); history is newest
    first, which is ``seq`` descending (the order rows were written).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, export_dir: str | None = None) -> None:
        self.con = con
        #: The one directory COPY may write to on this database (``export_history``), or None.
        self.export_dir = export_dir

    def export_history(self, since: datetime | None) -> tuple[str, int]:
        """History (rows completed at or after ``since``) as a new Parquet file in the export
        directory: its path and row count. The caller moves it where it belongs."""
        if self.export_dir is None:
            raise StoreError("this store has no export directory")
        path = os.path.join(self.export_dir, f"history-{uuid.uuid4().hex}.parquet")
        return path, copy_history(self.con, path, since)

    # ------------------------------------------------------------------ record mapping

    def _tasks(self, where: str, params: Sequence[Any] = ()) -> list[TaskRecord]:
        rows = self.con.execute(f"SELECT {TASK_COLUMNS} FROM tasks {where}", list(params)).fetchall()
        if not rows:
            return []
        deps = self._prerequisites([r[0] for r in rows])
        return [_task_record(r, deps.get(r[0])) for r in rows]

    def _prerequisites(self, ids: list[int]) -> dict[int, list[int]]:
        """Every edge of ``ids`` in one query: task id -> sorted prerequisite ids."""
        if len(ids) == 1:
            rows = self.con.execute("SELECT task_id, depends_on FROM task_deps WHERE task_id = ? ORDER BY depends_on",
                                    ids).fetchall()
        else:
            rows = self.con.execute(
                "SELECT task_id, depends_on FROM task_deps WHERE task_id IN (SELECT unnest($1::BIGINT[])) "
                "ORDER BY task_id, depends_on", [ids]).fetchall()
        out: dict[int, list[int]] = {}
        for task_id, dep in rows:
            out.setdefault(task_id, []).append(dep)
        return out

    def _history(self, where: str, params: Sequence[Any] = ()) -> list[TaskHistoryRecord]:
        rows = self.con.execute(f"SELECT {HISTORY_COLUMNS} FROM task_history {where}", list(params)).fetchall()
        return [_history_record(r) for r in rows]

    def _newest_history(self, column: str, value: Any) -> TaskHistoryRecord | None:
        """The newest history row whose ``column`` (``key`` or ``id``, both ART-indexed) is ``value``.

        The inner aggregate is an index lookup and the outer fetch one row by ``rowid``, in one
        statement; ``ORDER BY seq DESC LIMIT 1`` would be planned as a scan of the whole table, and
        a recurring task has one row per execution under the same id and key.
        """
        rows = self._history(f"WHERE rowid = (SELECT arg_max(rowid, seq) FROM task_history WHERE {column} = ?)",
                             [value])
        return rows[0] if rows else None

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._one(sql, params)[0]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
        row = self.con.execute(sql, list(params)).fetchone()
        if row is None:  # aggregates always return a row
            raise StoreError(f"no row from: {sql[:80]}")
        return row

    def _count(self, status: str) -> int:
        return int(self._scalar("SELECT count(*) FROM tasks WHERE status = ?", [status]))

    # ------------------------------------------------------------------ seed: active task queries

    def running_tasks(self) -> list[TaskRecord]:
        return self._tasks("WHERE status = 'running' ORDER BY priority, id")

    def running_count(self) -> int:
        return self._count("running")

    def pending_tasks(self, limit: int) -> list[TaskRecord]:
        return self._tasks("WHERE status = 'pending' ORDER BY priority, id LIMIT ?", [_limit(limit)])

    def pending_count(self) -> int:
        return self._count("pending")

    def pending_by_type(self, task_type: str) -> list[TaskRecord]:
        return self._tasks("WHERE status = 'pending' AND task_type = ? ORDER BY priority, id", [task_type])

    def paused_tasks(self) -> list[TaskRecord]:
        return self._tasks("WHERE status = 'paused' ORDER BY priority, id")

    def paused_count(self) -> int:
        return self._count("paused")

    def blocked_tasks(self) -> list[TaskRecord]:
        """Tasks waiting for their dependencies (F13)."""
        return self._tasks("WHERE status = 'blocked' ORDER BY priority, id")

    def blocked_count(self) -> int:
        return self._count("blocked")

    def waiting_tasks(self) -> list[TaskRecord]:
        """Parents waiting for their children (F14)."""
        return self._tasks("WHERE status = 'waiting' ORDER BY priority, id")

    def waiting_count(self) -> int:
        return self._count("waiting")

    def task_by_id(self, task_id: int) -> TaskRecord | None:
        rows = self._tasks("WHERE id = ?", [task_id])
        return rows[0] if rows else None

    def task_by_key(self, key: str) -> TaskRecord | None:
        rows = self._tasks("WHERE key = ? ORDER BY id LIMIT 1", [key])
        return rows[0] if rows else None

    def running_io_totals(self) -> tuple[int, int]:
        """Sum of the expected disk read and write bytes of running tasks."""
        r, w = self._one(
            "SELECT coalesce(sum(expected_read_bytes), 0), coalesce(sum(expected_write_bytes), 0) "
            "FROM tasks WHERE status = 'running'")
        return int(r), int(w)

    # ------------------------------------------------------------------ seed: dependencies

    def task_dependencies(self, task_id: int) -> list[int]:
        """The prerequisites ``task_id`` still waits on, sorted."""
        return [r[0] for r in self.con.execute(
            "SELECT depends_on FROM task_deps WHERE task_id = ? ORDER BY depends_on", [task_id]).fetchall()]

    def task_dependents(self, task_id: int) -> list[int]:
        """The tasks waiting on ``task_id``, sorted."""
        return [r[0] for r in self.con.execute(
            "SELECT task_id FROM task_deps WHERE depends_on = ? ORDER BY task_id", [task_id]).fetchall()]

    # ------------------------------------------------------------------ seed: history queries

    def history(self, limit: int, offset: int = 0) -> list[TaskHistoryRecord]:
        """Newest first, paged. Pages by ``seq`` range, so a deep offset costs no sort of the rows above it."""
        limit, offset = _limit(limit), _offset(offset)
        if limit == 0:
            return []
        hi = self._scalar("SELECT max(seq) FROM task_history")
        if hi is None:
            return []
        top = hi - offset
        # seq is unique; when exactly `offset` rows are newer than `top`, the page is the `limit`
        # rows at or below it. Pruning by age after a wall-clock step can leave holes: then sort.
        if offset and self._scalar("SELECT count(*) FROM task_history WHERE seq > ?", [top]) != offset:
            return self._history("ORDER BY seq DESC LIMIT ? OFFSET ?", [limit, offset])
        rows = self._history("WHERE seq <= ? AND seq > ? ORDER BY seq DESC", [top, top - limit])
        if len(rows) < limit:  # the oldest page, or holes inside this one
            rows = self._history("WHERE seq <= ? ORDER BY seq DESC LIMIT ?", [top, limit])
        return rows

    def history_by_type(self, task_type: str, limit: int = 100) -> list[TaskHistoryRecord]:
        return self._history("WHERE task_type = ? ORDER BY seq DESC LIMIT ?", [task_type, _limit(limit)])

    def history_by_key(self, key: str) -> list[TaskHistoryRecord]:
        return self._history("WHERE key = ? ORDER BY seq DESC", [key])

    def failed_tasks(self, limit: int = 100) -> list[TaskHistoryRecord]:
        """Recent ``failed`` and ``dead_letter`` rows, newest first."""
        return self._history("WHERE status IN ('failed', 'dead_letter') ORDER BY seq DESC LIMIT ?", [_limit(limit)])

    def dead_letter_tasks(self, domain: str | None, limit: int, offset: int = 0) -> list[TaskHistoryRecord]:
        where = "WHERE status = 'dead_letter'" + (" AND domain = ?" if domain is not None else "")
        params: list[Any] = [domain] if domain is not None else []
        return self._history(f"{where} ORDER BY seq DESC LIMIT ? OFFSET ?", params + [_limit(limit), _offset(offset)])

    def history_row(self, task_id: int) -> TaskHistoryRecord | None:
        """The newest history row of a task id (used to answer ``wait``)."""
        return self._newest_history("id", task_id)

    def history_rows(self, ids: Sequence[int]) -> dict[int, TaskHistoryRecord]:
        """The newest history row of each id that has one."""
        out: dict[int, TaskHistoryRecord] = {}
        for r in self._history(
                "WHERE id IN (SELECT unnest($1::BIGINT[])) "
                "QUALIFY row_number() OVER (PARTITION BY id ORDER BY seq DESC) = 1", [list(ids)]):
            out[r.id] = r
        return out

    def history_outcomes(self, ids: Sequence[int]) -> dict[int, str]:
        """The status of the newest history row of each id that has one."""
        if not ids:
            return {}
        rows = self.con.execute(
            "SELECT id, arg_max(status, seq) FROM task_history WHERE id IN (SELECT unnest($1::BIGINT[])) GROUP BY id",
            [list(ids)]).fetchall()
        return {i: s for i, s in rows}

    def completed_keys(self, keys: Sequence[str]) -> dict[str, int]:
        """For each key whose newest history row is ``completed``: that row's task id.

        Up to ``COMPLETED_KEYS_INDEX_MAX`` keys go through the ART index on ``key``;
        more are one hash join (cheaper than that many index probes).
        """
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        agg = "SELECT key, arg_max(id, seq) AS id, arg_max(status, seq) AS status FROM task_history"
        if len(wanted) <= COMPLETED_KEYS_INDEX_MAX:
            sql = f"{agg} WHERE key IN ({', '.join('?' * len(wanted))}) GROUP BY key"
            params: list[Any] = wanted
        else:
            sql = f"{agg} SEMI JOIN (SELECT unnest($1::VARCHAR[]) AS k) w ON key = w.k GROUP BY key"
            params = [wanted]
        rows = self.con.execute(f"SELECT key, id FROM ({sql}) WHERE status = 'completed'", params).fetchall()
        return {k: i for k, i in rows}

    # ------------------------------------------------------------------ seed: aggregates

    def history_stats(self, task_type: str) -> TypeStats:
        """Aggregates over the type's history, read from ``type_stats`` (one row).

        Averages are over completed rows (a completed row without a duration counts as 0 ms).
        """
        row = self.con.execute(
            "SELECT completed, failed, dead_letter, sum_duration_ms, sum_read_bytes, sum_write_bytes "
            "FROM type_stats WHERE task_type = ?", [task_type]).fetchone()
        if row is None:
            return TypeStats(count=0, avg_duration_ms=0.0, avg_read_bytes=0.0, avg_write_bytes=0.0, failure_rate=0.0)
        n, failed, dead, dur, rb, wb = row
        ended = n + failed + dead
        return TypeStats(count=int(n), avg_duration_ms=float(dur / n) if n else 0.0,
                         avg_read_bytes=float(rb / n) if n else 0.0, avg_write_bytes=float(wb / n) if n else 0.0,
                         failure_rate=(failed + dead) / ended if ended else 0.0)

    def avg_throughput(self, task_type: str, limit: int = 100) -> tuple[float, float]:
        """Average read and write bytes per second of the type's ``limit`` newest completions."""
        r, w = self._one(
            "SELECT coalesce(avg(read_bytes * 1000.0 / duration_ms), 0), coalesce(avg(write_bytes * 1000.0 / duration_ms), 0) "
            "FROM (SELECT read_bytes, write_bytes, duration_ms FROM task_history WHERE task_type = ? "
            "AND status = 'completed' AND duration_ms > 0 ORDER BY seq DESC LIMIT ?)",
            [task_type, _limit(limit)])
        return float(r), float(w)

    # ------------------------------------------------------------------ seed: scheduled and recurring

    def type_averages(self) -> dict[str, tuple[int, float]]:
        """Per type: (completed runs, sum of their durations in ms), for progress extrapolation."""
        rows = self.con.execute("SELECT task_type, completed, sum_duration_ms FROM type_stats WHERE completed > 0"
                                ).fetchall()
        return {t: (int(n), float(total or 0.0)) for t, n, total in rows}

    def child_failures(self, parent_ids: Sequence[int]) -> dict[int, tuple[int, str | None]]:
        """Per parent id: how many of its children ended as failures, and the first one's error."""
        rows = self.con.execute(
            "SELECT parent_id, count(*), arg_min('child task ' || id || ' ended as ' || status || ': ' || "
            "coalesce(last_error, ''), seq) FROM task_history WHERE parent_id IN (SELECT unnest($1::BIGINT[])) "
            "AND status IN ('failed', 'dead_letter', 'dependency_failed', 'expired') GROUP BY parent_id",
            [list(parent_ids)]).fetchall()
        return {int(p): (int(n), first) for p, n, first in rows}

    def active_tasks_in(self, domain: str | None) -> list[TaskRecord]:
        """Every active task (of one domain), most urgent first: what ``cancel_where`` predicates see."""
        if domain is None:
            return self._tasks("ORDER BY priority, id")
        return self._tasks("WHERE domain = ? ORDER BY priority, id", [domain])

    def next_run_after(self) -> datetime | None:
        """The earliest ``run_after`` among pending tasks that have one (a time already passed included)."""
        v = self._scalar("SELECT min(run_after) FROM tasks WHERE status = 'pending' AND run_after IS NOT NULL")
        return _aware(v)

    def recurring_schedules(self) -> list[RecurringScheduleInfo]:
        """Every task with a recurring interval, by id."""
        rows = self.con.execute(
            "SELECT id, task_type, label, recurring_interval_secs, run_after, recurring_execution_count, "
            "recurring_max_executions, recurring_paused FROM tasks WHERE recurring_interval_secs IS NOT NULL "
            "ORDER BY id").fetchall()
        return [RecurringScheduleInfo(task_id=r[0], task_type=r[1], label=r[2], interval_secs=r[3],
                                      next_run=_aware(r[4]), execution_count=r[5], max_executions=r[6],
                                      paused=bool(r[7])) for r in rows]

    # ------------------------------------------------------------------ seed: unified lookup

    def task_lookup_by_dedup_key(self, key: str) -> TaskLookup:
        """The active task of a dedup key, else its newest history row, else not found."""
        active = self.task_by_key(key)
        if active is not None:
            return TaskLookup(active=active)
        return TaskLookup(history=self._newest_history("key", key))

    # ------------------------------------------------------------------ seed: tags (active tasks)

    def task_ids_by_tags(self, domain: str | None, filters: dict[str, str], status: str | None = None) -> list[int]:
        """Ids of active tasks carrying every ``key=value`` of ``filters`` (none: ``[]``), by priority then id."""
        if not isinstance(filters, dict):
            raise TypeError(f"filters must be a dict of tag key -> value, got {type(filters).__name__}")
        pairs = [(_tag_text(k, "tag key"), _tag_text(v, "tag value")) for k, v in filters.items()]
        if not pairs:
            return []
        where, params = _tag_scope(domain, status)
        match = " AND ".join("m[?] = ?" for _ in pairs)
        for k, v in pairs:
            params += [k, v]
        rows = self.con.execute(
            f"SELECT id FROM (SELECT id, priority, {_TAG_MAP} AS m FROM tasks {where}) WHERE {match} "
            "ORDER BY priority, id", params).fetchall()
        return [r[0] for r in rows]

    def count_by_tag(self, domain: str | None, key: str, status: str | None = None) -> list[tuple[str, int]]:
        """``(value, count)`` of tag ``key`` over active tasks, most frequent first (then by value)."""
        return self._tag_counts(domain, _tag_text(key, "tag key"), status)

    def tag_values(self, domain: str | None, key: str) -> list[tuple[str, int]]:
        """Distinct values of tag ``key`` over active tasks with their counts, most frequent first."""
        return self._tag_counts(domain, _tag_text(key, "tag key"), None)

    def _tag_counts(self, domain: str | None, key: str, status: str | None) -> list[tuple[str, int]]:
        where, params = _tag_scope(domain, status)
        rows = self.con.execute(
            f"SELECT v, count(*) AS n FROM (SELECT ({_TAG_MAP})[?] AS v FROM tasks {where}) WHERE v IS NOT NULL "
            "GROUP BY v ORDER BY n DESC, v", [key] + params).fetchall()
        return [(v, int(n)) for v, n in rows]

    def tag_keys_by_prefix(self, domain: str | None, prefix: str) -> list[str]:
        """Distinct tag keys of active tasks that start with ``prefix`` (taken literally), sorted."""
        where, params = _tag_scope(domain, None)
        rows = self.con.execute(
            f"SELECT DISTINCT k FROM (SELECT unnest(json_keys(tags)) AS k FROM tasks {where}) "
            "WHERE starts_with(k, ?) ORDER BY k", params + [_tag_text(prefix, "prefix")]).fetchall()
        return [r[0] for r in rows]

    def task_ids_by_tag_key_prefix(self, domain: str | None, prefix: str, status: str | None = None) -> list[int]:
        """Ids of active tasks with any tag key starting with ``prefix``, by priority then id."""
        where, params = _tag_scope(domain, status)
        rows = self.con.execute(
            f"SELECT id FROM tasks {where} AND {_ANY_KEY_WITH_PREFIX} ORDER BY priority, id",
            params + [_tag_text(prefix, "prefix")]).fetchall()
        return [r[0] for r in rows]

    def count_by_tag_key_prefix(self, domain: str | None, prefix: str, status: str | None = None) -> int:
        """How many active tasks have any tag key starting with ``prefix``."""
        where, params = _tag_scope(domain, status)
        return int(self._scalar(f"SELECT count(*) FROM tasks {where} AND {_ANY_KEY_WITH_PREFIX}",
                                params + [_tag_text(prefix, "prefix")]))


_ANY_KEY_WITH_PREFIX = "EXISTS (SELECT 1 FROM unnest(json_keys(tasks.tags)) AS u(k) WHERE starts_with(u.k, ?))"


def _tag_scope(domain: str | None, status: str | None) -> tuple[str, list[Any]]:
    """``WHERE`` over tasks with tags, optionally in one domain and one active status."""
    where = "WHERE tags IS NOT NULL"
    params: list[Any] = []
    if domain is not None:
        where += " AND domain = ?"
        params.append(_tag_text(domain, "domain"))
    if status is not None:
        where += " AND status = ?"
        params.append(_status(status))
    return where, params


def _status(v: Any) -> str:
    if not isinstance(v, str) or str.__str__(v) not in _ACTIVE_STATUSES:
        raise ValueError(f"status must be one of {sorted(_ACTIVE_STATUSES)} or None, got {v!r}")
    return str.__str__(v)


def _tag_text(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{what} must be a str, got {type(v).__name__} {v!r}")
    return str.__str__(v)


def select(cur: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | dict[str, Any] | None = None, *,
           max_rows: int = SQL_MAX_ROWS, max_bytes: int = SQL_MAX_BYTES) -> tuple[list[str], list[tuple], list[int]]:
    """Run one SELECT statement on ``cur`` inside a read-only transaction: ``(column names, rows,
    the indexes of the JSON columns)`` (their values stay JSON text: the caller decodes them).

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
            json_columns = [i for i, d in enumerate(cur.description or []) if str(d[1]) == "JSON"]
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
    return names, rows, json_columns


def copy_history(con: duckdb.DuckDBPyConnection, path: str, since: datetime | None) -> int:
    """Write ``task_history`` (oldest first; from ``since``, a UTC time, on) to ``path`` as Parquet
    with DuckDB's ``COPY``; the number of rows written."""
    where = ""
    if since is not None:
        if since.tzinfo is not None:
            since = since.astimezone(timezone.utc).replace(tzinfo=None)
        where = f"WHERE completed_at >= TIMESTAMP '{since.isoformat(sep=' ')}'"  # (a datetime's own text)
    target = path.replace("'", "''")
    try:
        row = con.execute(f"COPY (SELECT * FROM task_history {where} ORDER BY seq) TO '{target}' "
                          "(FORMAT parquet)").fetchone()
    except duckdb.Error as e:
        raise StoreError(f"the history cannot be exported to {path}: {e}") from e
    return int(row[0]) if row else 0


def journal_seq(con: duckdb.DuckDBPyConnection) -> int:
    """The last commit journal record the store holds (``journal.py``; 0: none)."""
    row = con.execute("SELECT coalesce(max(value::BIGINT), 0) FROM meta WHERE key = 'journal_seq'").fetchone()
    return int(row[0]) if row else 0


def _limit(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"limit must be an int >= 0, got {v!r}")
    return v


def _offset(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"offset must be an int >= 0, got {v!r}")
    return v


def _task_record(r: tuple, deps: list[int] | None = None) -> TaskRecord:
    return TaskRecord(
        id=r[0], task_type=r[1], domain=r[2], key=r[3], label=r[4], priority=r[5], status=TaskStatus(r[6]),
        payload=_json(r[7]), tags=_json(r[8]) or {}, group=r[9], created_at=_aware(r[10]), run_after=_aware(r[11]),
        started_at=_aware(r[12]), retry_count=r[13], max_retries=r[14], last_error=r[16], timeout=r[17], cpus=r[18],
        memory=r[19], expected_io=IoBudget(disk_read=r[20], disk_write=r[21], net_rx=r[22], net_tx=r[23]),
        requeue=bool(r[24]), requeue_priority=r[25], parent_id=r[26],
        ttl_seconds=r[27], ttl_from=r[28], expires_at=_aware(r[29]), on_dependency_failure=r[30],
        fail_fast=bool(r[31]), recurring_interval_secs=r[32], recurring_max_executions=r[33],
        recurring_execution_count=r[34], recurring_paused=bool(r[36]), pause_reasons=list(r[37] or ()),
        memo=_json(r[38]), dependencies=deps or [])


def _history_record(r: tuple) -> TaskHistoryRecord:
    return history_record(r, _aware)
