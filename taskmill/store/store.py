"""The DuckDB store: schema, migrations, the group commit and every query.

Invariant: one ``Store`` per database file, used from one thread (the
coordinator loop); reader threads query through their own cursors
(``cursor()``, see ``queries``). Writes arrive as one ``WriteBatch`` per
commit and are applied in a single transaction. Imports leaves and the
store's own modules only.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any, Iterator, Sequence

import duckdb

from taskmill.errors import NotATaskmillStore, SchemaTooNew, StoreError, StoreLocked
from taskmill.store.batch import FinishedRow, WriteBatch
from taskmill.store.queries import HISTORY_COLUMNS, Queries, select

__all__ = ["LATEST_SCHEMA", "Store"]

#: DuckDB worker threads for the store; queries are small, the loop is single-threaded.
DUCKDB_THREADS = 2
#: Memory DuckDB may use before spilling.
DUCKDB_MEMORY_LIMIT = "1GB"

APP_NAME = "taskmill"
def _migrations() -> list[tuple[int, str]]:
    out = []
    for entry in resources.files("taskmill.store").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(out)


LATEST_SCHEMA = max(v for v, _ in _migrations())

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


class Store(Queries):
    """A taskmill store in one DuckDB database (a file, or ``":memory:"``).

    Raises on open:
        NotATaskmillStore: not a DuckDB file, or a database with foreign tables.
        SchemaTooNew: written by a newer taskmill.
        StoreLocked: another process holds the file.
    """

    def __init__(self, path: str) -> None:  # noqa: D107 - Queries gets its connection below
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
