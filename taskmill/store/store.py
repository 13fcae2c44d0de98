"""The DuckDB store: schema, migrations, the group commit and every query.

Invariant: one ``Store`` per database file, used from one thread (the
coordinator loop); reader threads query through their own cursors
(``cursor()``, see ``queries``). Writes arrive as one ``WriteBatch`` per
commit and are applied in a single transaction. Imports leaves and the
store's own modules only.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any, Iterator, Sequence

import duckdb

from taskmill.batch import UPDATE_COLUMNS, FinishedRow, Recovered, WriteBatch
from taskmill.errors import NotATaskmillStore, SchemaTooNew, StoreError, StoreLocked
from taskmill.store.queries import HISTORY_COLUMNS, Queries, journal_seq, select

__all__ = ["LATEST_SCHEMA", "PLAIN_COLUMNS", "RECOVER_COLUMNS", "Store"]

#: DuckDB worker threads for the store. One: every statement runs on the thread that
#: issued it, so the reader threads' low CPU priority applies to user queries (with more,
#: DuckDB's own pool would compete with the workers at normal priority).
DUCKDB_THREADS = int(os.environ.get("TASKMILL_DUCKDB_THREADS", "1"))
#: Memory DuckDB may use before spilling.
DUCKDB_MEMORY_LIMIT = "1GB"

APP_NAME = "taskmill"

#: What ``recover()`` loads per active task, in this order (``*_at`` and ``run_after`` as epoch
#: seconds or None; ``retry_policy``, ``tags`` and ``memo`` as JSON text; ``pause_reasons`` a list).
RECOVER_COLUMNS: tuple[str, ...] = (
    "id", "task_type", "domain", "key", "label", "priority", "status", "created_at", "run_after", "retry_count",
    "max_retries", "retry_policy", "timeout_s", "cpus", "memory", "group_key", "requeue", "requeue_priority",
    "parent_id", "tags", "ttl_seconds", "ttl_from", "expires_at", "on_dependency_failure", "fail_fast",
    "recurring_interval_secs", "recurring_max_executions", "recurring_execution_count", "recurring_initial_delay",
    "recurring_paused", "pause_reasons", "memo", "phase", "started_at", "expected_read_bytes",
    "expected_write_bytes", "expected_net_rx_bytes", "expected_net_tx_bytes",
)
_EPOCH = {"created_at", "run_after", "expires_at", "started_at"}
#: A "plain" pending task: nothing but its place in the queue matters (no delay, TTL, schedule,
#: pause, requeue mark, parent, children or edges). Recovery may leave such tasks in the store
#: (a cold tail) and load them as dispatch reaches them; ``coalesce``: NULL is not plain.
_PLAIN = ("coalesce(status = 'pending' AND run_after IS NULL AND expires_at IS NULL AND ttl_seconds IS NULL "
          "AND recurring_interval_secs IS NULL AND parent_id IS NULL AND memo IS NULL AND phase = 'execute' "
          "AND NOT requeue AND (pause_reasons IS NULL OR len(pause_reasons) = 0) "
          "AND id NOT IN (SELECT task_id FROM task_deps) AND id NOT IN (SELECT depends_on FROM task_deps) "
          "AND id NOT IN (SELECT parent_id FROM tasks WHERE parent_id IS NOT NULL), false)")
#: The columns of a plain pending task (``cold_rows``, ``plain_rows``): what ``_PLAIN`` leaves
#: non-NULL, and its payload when short. Half the columns of a full row: a cold tail loads faster.
PLAIN_COLUMNS: tuple[str, ...] = (
    "id", "task_type", "domain", "key", "label", "priority", "created_at", "retry_count", "max_retries",
    "retry_policy", "timeout_s", "cpus", "memory", "group_key", "tags", "fail_fast", "expected_read_bytes",
    "expected_write_bytes", "expected_net_rx_bytes", "expected_net_tx_bytes", "payload",
)
_RECOVER_SELECT = ", ".join(
    f"epoch_us({c}) / 1e6" if c in _EPOCH else "coalesce(pause_reasons, []::VARCHAR[])" if c == "pause_reasons" else c
    for c in RECOVER_COLUMNS)
#: Payloads longer than this come with a plain row as NULL (loaded when the task is about to run):
#: a chunk of cold rows holds at most ``chunk × PLAIN_PAYLOAD_MAX`` bytes of payloads.
PLAIN_PAYLOAD_MAX = 1024
_PLAIN_SELECT = ", ".join(
    f"epoch_us({c}) / 1e6" if c in _EPOCH
    else f"CASE WHEN strlen(payload) <= {PLAIN_PAYLOAD_MAX} THEN payload END" if c == "payload" else c
    for c in PLAIN_COLUMNS)


def _migrations() -> list[tuple[int, str]]:
    out = []
    for entry in resources.files("taskmill.store").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(out)


LATEST_SCHEMA = max(v for v, _ in _migrations())

#: DuckDB database files carry this magic at byte 8 (after a checksum).
_DUCKDB_MAGIC = b"DUCK"


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of (acyclic) row tuples are built."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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

    def __init__(self, path: str, export_dir: str | None = None) -> None:  # noqa: D107 - see the class
        self.path = path
        self.export_dir = export_dir
        _check_duckdb_file(path)
        config: dict[str, str | bool | int | float | list[str]] = {
            "threads": DUCKDB_THREADS,
            "memory_limit": DUCKDB_MEMORY_LIMIT,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": True,
            "TimeZone": "UTC",
        }
        try:
            self.con = duckdb.connect(path, config=config)
        except duckdb.Error as e:
            raise _map_open_error(path, e) from e
        try:
            self._lock_down(export_dir)
        except BaseException:
            self.con.close()
            raise
        try:
            self._migrate()
        except BaseException:
            self.con.close()
            raise
        self.schema_version = LATEST_SCHEMA
        #: The seq of the next history row (history is newest-first by seq); advanced after each commit.
        self._next_seq = int(self._scalar("SELECT coalesce(max(seq), 0) + 1 FROM task_history"))
        #: False only while task_deps is known to be empty: finished tasks then skip the edge DELETE
        #: (~10 ms a batch even on an empty table). Set before a commit that may add edges, cleared
        #: only after a commit that left none.
        self._edges = bool(self._scalar("SELECT count(*) FROM task_deps"))
        #: The last record of the submission journal (``journal.py``) this store holds.
        self.journal_seq = journal_seq(self.con)

    def _lock_down(self, export_dir: str | None) -> None:
        """User SQL runs on this database: no file or network access beyond the store itself
        (read_text('/etc/shadow'), glob, COPY … TO) and the export directory, and no setting
        can be changed later. (The allowed directory can only be set while access is open.)"""
        if export_dir is not None:
            quoted = os.path.join(export_dir, "").replace("'", "''")
            self.con.execute(f"SET allowed_directories = ['{quoted}']")
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

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

    def recover(self, hot: int | None = None) -> Recovered:
        """Reset interrupted runs to pending (no retry counted) and load the active state.

        Returns a ``Recovered``: ``next_id`` (the larger of the stored counter and every id
        seen, history included), the ``tasks`` rows in dispatch order (priority, id), each a
        tuple of ``RECOVER_COLUMNS`` with times as epoch seconds and no payloads, every
        dependency edge and every paused scope.

        With ``hot``, a domain with more than ``hot`` plain pending tasks (see ``_PLAIN``)
        loads only its first ``hot`` of them; ``cold`` then maps the domain to how many are
        left and the (priority, id) of the last one loaded (see ``cold_rows``). Not while a
        scope is paused (a pause must see every task).
        """
        with self.transaction() as con:
            con.execute("UPDATE tasks SET status = 'pending', started_at = NULL WHERE status = 'running'")
            next_id = int(self._scalar("SELECT value FROM meta WHERE key = 'next_id'"))
            top = int(self._scalar(
                "SELECT greatest((SELECT coalesce(max(id), 0) FROM tasks), (SELECT coalesce(max(id), 0) FROM task_history))"))
            scopes = con.execute(
                "SELECT kind, scope, epoch_us(paused_at) / 1e6, epoch_us(resume_at) / 1e6 FROM paused_scopes "
                "ORDER BY kind, scope").fetchall()
            plain: dict[str, int] = {}
            if hot is not None and not scopes:
                plain = {d: n for d, n in con.execute(
                    f"SELECT domain, count(*) FROM tasks WHERE {_PLAIN} GROUP BY domain").fetchall() if n > hot}
            cold: dict[str, tuple[int, tuple[int, int]]] = {}
            if plain and hot is not None:
                # the first ``hot`` plain tasks of each deep domain (narrow rows: the sort is cheap),
                # then every row that is not plain or not in a deep domain, plus those
                con.execute(
                    f"CREATE TEMP TABLE recover_hot AS SELECT id, domain, priority FROM (SELECT id, domain, priority, "
                    f"row_number() OVER (PARTITION BY domain ORDER BY priority, id) AS rn FROM tasks WHERE {_PLAIN} "
                    f"AND domain IN (SELECT unnest($1::VARCHAR[]))) WHERE rn <= $2", [sorted(plain), hot])
                cur = con.execute(
                    f"SELECT {_RECOVER_SELECT} FROM tasks WHERE NOT {_PLAIN} OR domain NOT IN (SELECT unnest($1::VARCHAR[])) "
                    f"UNION ALL SELECT {_RECOVER_SELECT} FROM tasks SEMI JOIN recover_hot USING (id) ORDER BY 6, 1",
                    [sorted(plain)])
                with _gc_paused():
                    rows = cur.fetchall()
                last = {d: (int(p), int(i)) for d, p, i in con.execute(
                    "SELECT domain, priority, id FROM recover_hot QUALIFY row_number() OVER "
                    "(PARTITION BY domain ORDER BY priority DESC, id DESC) = 1").fetchall()}
                con.execute("DROP TABLE recover_hot")
                cold = {d: (n - hot, last[d]) for d, n in plain.items()}
            else:
                cur = con.execute(f"SELECT {_RECOVER_SELECT} FROM tasks ORDER BY priority, id")
                with _gc_paused():  # 1M rows: 10 s with the collector re-scanning the new tuples, 2.9 s without
                    rows = cur.fetchall()
            edges = con.execute("SELECT task_id, depends_on FROM task_deps ORDER BY task_id, depends_on").fetchall()
        return Recovered(next_id=max(next_id, top + 1), tasks=rows, edges=edges, scopes=scopes, cold=cold,
                         max_id=top)

    def cold_rows(self, domain: str, after: tuple[int, int], max_id: int, limit: int,
                  con: duckdb.DuckDBPyConnection | None = None) -> list[tuple]:
        """The next ``limit`` plain pending tasks of ``domain`` after ``after`` (priority, id) in
        dispatch order, among the ids recovery saw (``<= max_id``); rows of ``PLAIN_COLUMNS``.
        ``con``: another cursor of this store (a thread of its own)."""
        with _gc_paused():
            return (con or self.con).execute(
                f"SELECT {_PLAIN_SELECT} FROM tasks WHERE domain = ? AND id <= ? AND "
                f"(priority > ? OR (priority = ? AND id > ?)) AND {_PLAIN} ORDER BY priority, id LIMIT ?",
                [domain, max_id, after[0], after[0], after[1], limit]).fetchall()

    def plain_rows(self, ids: Sequence[int], keys: Sequence[str], max_id: int) -> list[tuple]:
        """Plain pending tasks (ids ``<= max_id``) with one of ``ids`` or ``keys``; rows of ``PLAIN_COLUMNS``."""
        return self.con.execute(
            f"SELECT {_PLAIN_SELECT} FROM tasks WHERE id <= $3 AND (id IN (SELECT unnest($1::BIGINT[])) "
            f"OR key IN (SELECT unnest($2::VARCHAR[]))) AND {_PLAIN} ORDER BY priority, id",
            [list(ids), list(keys), max_id]).fetchall()

    def quarantine(self, rows: Sequence[tuple[int, str]], now: float) -> list[int]:
        """Move active tasks that recovery cannot interpret to history as ``failed`` with a reason.

        Each row moves in its own transaction, so one that cannot even be copied stays
        where it is; returns the ids that could not be moved.
        """
        stuck = []
        for task_id, reason in rows:
            seq = self._next_seq
            try:
                with self.transaction() as con:
                    moved = con.execute(
                        f"INSERT INTO task_history ({HISTORY_COLUMNS}) SELECT id, task_type, domain, key, label, "
                        "priority, 'failed', payload, NULL, ?, tags, group_key, retry_count, created_at, started_at, "
                        "make_timestamp((? * 1e6)::BIGINT), NULL, 0, 0, 0, 0, expected_read_bytes, "
                        "expected_write_bytes, expected_net_rx_bytes, expected_net_tx_bytes, cpus, memory, parent_id, "
                        "?, run_after, ttl_seconds, ttl_from, expires_at, fail_fast FROM tasks WHERE id = ? LIMIT 1 "
                        "RETURNING task_type, status, duration_ms, read_bytes, write_bytes",
                        [reason, now, seq, task_id]).fetchall()
                    _add_type_stats(con, moved)
                    con.execute("DELETE FROM tasks WHERE id = ?", [task_id])
                    con.execute("DELETE FROM task_deps WHERE task_id = ? OR depends_on = ?", [task_id, task_id])
            except StoreError:
                stuck.append(task_id)
            else:
                self._next_seq += len(moved)
        return stuck

    # ------------------------------------------------------------------ the group commit

    def apply(self, batch: WriteBatch, journal_seq: int | None = None) -> None:
        """Apply one iteration's writes in one transaction (one fsync), in ``WriteBatch``'s order;
        with ``journal_seq``, record that the journal's records up to it are in the store."""
        self.apply_all([batch], journal_seq)

    def apply_all(self, batches: Sequence[WriteBatch], journal_seq: int | None = None) -> None:
        """Apply batches one after the other in one transaction (one fsync): how a start applies the
        journal's records the store lacks (``journal.replay``). ``journal_seq`` as in ``apply``."""
        seq, edges = self._next_seq, self._edges
        with self.transaction() as con:
            for batch in batches:
                seq, edges = _write(con, batch, seq, edges)
            if journal_seq is not None:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('journal_seq', ?)", [str(journal_seq)])
        self._next_seq, self._edges = seq, edges  # only once committed: a rolled-back batch leaves no hole
        if journal_seq is not None:
            self.journal_seq = journal_seq

    def fetch_payloads(self, ids: Sequence[int]) -> dict[int, str]:
        rows = self.con.execute("SELECT id, payload FROM tasks WHERE id IN (SELECT unnest($1::BIGINT[]))",
                                [list(ids)]).fetchall()
        return {i: p for i, p in rows}

    def dead_letter_row(self, task_id: int) -> tuple[Any, ...] | None:
        """The newest dead-letter row of ``task_id`` as a full ``tasks`` row template:
        ``(task_type, domain, key, label, priority, payload, tags, group_key, cpus, memory,
        expected_read_bytes, expected_write_bytes, expected_net_rx_bytes, expected_net_tx_bytes, parent_id)``."""
        return self.con.execute(
            "SELECT task_type, domain, key, label, priority, payload, tags, group_key, cpus, memory, "
            "expected_read_bytes, expected_write_bytes, expected_net_rx_bytes, expected_net_tx_bytes, parent_id "
            "FROM task_history WHERE rowid = (SELECT arg_max(rowid, seq) FILTER (WHERE status = 'dead_letter') "
            "FROM task_history WHERE id = ?)", [task_id]).fetchone()

    # ------------------------------------------------------------------ pruning

    def prune_history_by_count(self, keep: int) -> int:
        """Delete all but the ``keep`` newest history rows; returns how many went."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep must be an int >= 0, got {keep!r}")
        with self.transaction() as con:
            return _prune(con, "count", keep)

    def prune_history_by_age(self, days: float) -> int:
        """Delete history rows completed more than ``days`` days ago; returns how many went."""
        if isinstance(days, bool) or not isinstance(days, (int, float)) or days < 0:
            raise ValueError(f"days must be a number >= 0, got {days!r}")
        with self.transaction() as con:
            return _prune(con, "age_days", days)

    # ------------------------------------------------------------------ SQL over history (F25)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the same database, for use by one other thread (a reader)."""
        return self.con.cursor()

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None
            ) -> tuple[list[str], list[tuple], list[int]]:
        """Run one SELECT on a fresh cursor; see :func:`select`."""
        cur = self.con.cursor()
        try:
            return select(cur, query, params)
        finally:
            cur.close()


# ---------------------------------------------------------------------- statements of apply()

#: The per-type aggregates of a set of history rows (``FROM``/``WHERE`` appended by the caller).
_TYPE_STATS_SELECT = (
    "SELECT task_type, count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'), "
    "count(*) FILTER (WHERE status = 'dead_letter'), count(*), "
    "coalesce(sum(duration_ms) FILTER (WHERE status = 'completed'), 0), "
    "coalesce(sum(read_bytes) FILTER (WHERE status = 'completed'), 0), "
    "coalesce(sum(write_bytes) FILTER (WHERE status = 'completed'), 0) FROM task_history ")
_STATS_COLUMNS = ("completed", "failed", "dead_letter", "total", "sum_duration_ms", "sum_read_bytes", "sum_write_bytes")


def _write(con: duckdb.DuckDBPyConnection, batch: WriteBatch, seq: int, edges: bool) -> tuple[int, bool]:
    """One batch's statements, in ``WriteBatch``'s order, inside the caller's transaction. ``seq`` is the
    next history row's, ``edges`` whether task_deps may hold rows; returns both as they are after it."""
    if batch.deps or batch.dep_moves:
        edges = True
    edges_left = edges
    if batch.inserts:
        app = con.appender("tasks")
        app.append_rows(batch.inserts)
        app.flush()
    if batch.deps:
        pairs = list(dict.fromkeys(batch.deps))
        con.execute(
            "INSERT INTO task_deps SELECT unnest($1::BIGINT[]), unnest($2::BIGINT[]) ON CONFLICT DO NOTHING",
            [[t for t, _ in pairs], [d for _, d in pairs]])
    for old, new in batch.dep_moves:  # in order: a chain a -> b -> c ends at c
        con.execute("INSERT INTO task_deps SELECT task_id, ? FROM task_deps WHERE depends_on = ? "
                    "ON CONFLICT DO NOTHING", [new, old])
        con.execute("DELETE FROM task_deps WHERE depends_on = ?", [old])
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
    if batch.retries:
        rids = list(batch.retries)
        counts, afters, errs = zip(*batch.retries.values())
        con.execute(
            "UPDATE tasks SET status = 'pending', started_at = NULL, retry_count = u.c, "
            "run_after = make_timestamp((u.a * 1e6)::BIGINT), last_error = u.e FROM (SELECT "
            "unnest($1::BIGINT[]) AS id, unnest($2::INTEGER[]) AS c, unnest($3::DOUBLE[]) AS a, "
            "unnest($4::VARCHAR[]) AS e) u WHERE tasks.id = u.id",
            [rids, list(counts), list(afters), list(errs)])
    added = 0
    if batch.finished:
        added = _move_to_history(con, batch.finished, seq, edges=edges)
    if batch.deps_released and edges:
        con.execute("DELETE FROM task_deps WHERE depends_on IN (SELECT unnest($1::BIGINT[]))",
                    [list(batch.deps_released)])
    if edges and (batch.finished or batch.deps_released):
        edges_left = bool(con.execute("SELECT count(*) FROM task_deps").fetchall()[0][0])
    if batch.requeued_runs:
        ids, prios = zip(*batch.requeued_runs.items())
        con.execute(
            "UPDATE tasks SET status = 'pending', started_at = NULL, retry_count = 0, requeue = false, "
            "requeue_priority = NULL, priority = u.p FROM (SELECT unnest($1::BIGINT[]) AS id, "
            "unnest($2::SMALLINT[]) AS p) u WHERE tasks.id = u.id", [list(ids), list(prios)])
    if batch.to_pending:
        con.execute("UPDATE tasks SET status = 'pending', started_at = NULL WHERE id IN (SELECT unnest($1::BIGINT[]))",
                    [list(batch.to_pending)])
    if batch.updates:
        _apply_updates(con, batch.updates)
    if batch.running:
        ids, starts = zip(*batch.running.items())
        con.execute(
            "UPDATE tasks SET status = 'running', started_at = make_timestamp((u.s * 1e6)::BIGINT) FROM "
            "(SELECT unnest($1::BIGINT[]) AS id, unnest($2::DOUBLE[]) AS s) u WHERE tasks.id = u.id",
            [list(ids), list(starts)])
    if batch.scopes:
        _apply_scopes(con, batch.scopes)
    if batch.next_id is not None:
        con.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", [str(batch.next_id)])
    if batch.prune is not None:
        kind, value = batch.prune
        _prune(con, kind, value)
    return seq + added, edges_left


def _move_to_history(con: duckdb.DuckDBPyConnection, rows: Sequence[FinishedRow], first_seq: int, *,
                     edges: bool = True) -> int:
    """History rows for ``rows`` (seq from ``first_seq`` in list order, without holes), the type_stats
    they add, then the DELETE of tasks that left and (when ``edges``) of their edges. Returns the rows written."""
    cols = list(zip(*((i, r.id, r.status, r.result, r.error, r.retry_count, r.started_at, r.completed_at,
                       r.duration_ms, r.read_bytes, r.write_bytes, r.net_rx_bytes, r.net_tx_bytes, r.priority)
                      for i, r in enumerate(rows))))
    written = con.execute(_HISTORY_INSERT, [list(c) for c in cols] + [first_seq]).fetchall()
    if len(written) < len(rows):
        # A finished row whose task is not in `tasks` wrote nothing: close the hole it left in seq
        # (history pages by seq arithmetic). Never happens when the coordinator is right.
        con.execute("UPDATE task_history SET seq = u.s FROM (SELECT seq AS old, ? + row_number() OVER (ORDER BY seq) - 1 "
                    "AS s FROM task_history WHERE seq >= ?) u WHERE task_history.seq = u.old",
                    [first_seq, first_seq])
    if written:
        _add_type_stats(con, written)
    gone = [r.id for r in rows if not r.keep_active]
    if gone:
        con.execute("DELETE FROM tasks WHERE id IN (SELECT unnest($1::BIGINT[]))", [gone])
        if edges:  # both directions; two joins are cheaper than one DELETE with an OR of two INs
            con.execute(
                "DELETE FROM task_deps WHERE rowid IN (SELECT d.rowid FROM task_deps d JOIN "
                "(SELECT unnest($1::BIGINT[]) AS g) u ON d.task_id = u.g UNION ALL SELECT d.rowid FROM task_deps d "
                "JOIN (SELECT unnest($1::BIGINT[]) AS g) u ON d.depends_on = u.g)", [gone])
    return len(written)


#: Copies each finished run's task row into history; returns what type_stats needs of each row.
_HISTORY_INSERT = (
    f"INSERT INTO task_history ({HISTORY_COLUMNS}) "
    "SELECT t.id, t.task_type, t.domain, t.key, t.label, coalesce(f.priority, t.priority), f.status, t.payload, "
    "f.result::JSON, f.error, t.tags, t.group_key, f.retry_count, t.created_at, "
    "make_timestamp((f.started_at * 1e6)::BIGINT), make_timestamp((f.completed_at * 1e6)::BIGINT), "
    "f.duration_ms, f.rb, f.wb, f.rx, f.tx, t.expected_read_bytes, t.expected_write_bytes, "
    "t.expected_net_rx_bytes, t.expected_net_tx_bytes, t.cpus, t.memory, t.parent_id, "
    "$15 + f.pos, t.run_after, t.ttl_seconds, t.ttl_from, t.expires_at, t.fail_fast "
    "FROM tasks t JOIN (SELECT unnest($1::BIGINT[]) AS pos, unnest($2::BIGINT[]) AS id, "
    "unnest($3::VARCHAR[]) AS status, unnest($4::VARCHAR[]) AS result, unnest($5::VARCHAR[]) AS error, "
    "unnest($6::INTEGER[]) AS retry_count, unnest($7::DOUBLE[]) AS started_at, "
    "unnest($8::DOUBLE[]) AS completed_at, unnest($9::DOUBLE[]) AS duration_ms, unnest($10::BIGINT[]) AS rb, "
    "unnest($11::BIGINT[]) AS wb, unnest($12::BIGINT[]) AS rx, unnest($13::BIGINT[]) AS tx, "
    "unnest($14::SMALLINT[]) AS priority) f ON t.id = f.id "
    "RETURNING task_type, status, duration_ms, read_bytes, write_bytes")
#: Up to this many task types in one commit update type_stats one statement each (~1 ms); more
#: share one upsert (~5 ms whatever the count). A commit usually finishes runs of a type or two.
_STATS_SCALAR_MAX = 3
_STATS_UPSERT = (
    f"INSERT INTO type_stats SELECT {', '.join(f'unnest(${i}::{t}[])' for i, t in enumerate(('VARCHAR',) + ('BIGINT',) * 4 + ('DOUBLE',) * 3, start=1))} "
    "ON CONFLICT (task_type) DO UPDATE SET " + ", ".join(f"{c} = type_stats.{c} + excluded.{c}" for c in _STATS_COLUMNS))


def _add_type_stats(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple]) -> None:
    """Add history rows ``(task_type, status, duration_ms, read_bytes, write_bytes)`` to ``type_stats``."""
    agg: dict[str, list[Any]] = {}
    for task_type, status, dur, rb, wb in rows:
        a = agg.get(task_type)
        if a is None:
            a = agg[task_type] = [0, 0, 0, 0, 0.0, 0.0, 0.0]
        a[3] += 1
        if status == "completed":
            a[0] += 1
            a[4] += dur or 0.0
            a[5] += rb
            a[6] += wb
        elif status == "failed":
            a[1] += 1
        elif status == "dead_letter":
            a[2] += 1
    if len(agg) <= _STATS_SCALAR_MAX:
        for task_type, a in agg.items():
            # Only the columns that change: DuckDB's cost grows with the columns an UPDATE sets.
            changed = [(c, v) for c, v in zip(_STATS_COLUMNS, a) if v]
            sets = ", ".join(f"{c} = {c} + ?" for c, _ in changed)
            if not con.execute(f"UPDATE type_stats SET {sets} WHERE task_type = ?",
                               [v for _, v in changed] + [task_type]).fetchall()[0][0]:
                con.execute("INSERT INTO type_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [task_type] + a)
        return
    cols = list(zip(*([t] + a for t, a in agg.items())))
    con.execute(_STATS_UPSERT, [list(c) for c in cols])


def _apply_updates(con: duckdb.DuckDBPyConnection, updates: dict[int, dict[str, Any]]) -> None:
    """One ``UPDATE … FROM (unnest …)`` per set of columns."""
    groups: dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]] = {}
    for task_id, cols in updates.items():
        if cols:
            groups.setdefault(tuple(sorted(cols)), []).append((task_id, cols))
    for names, items in groups.items():
        sets, unnests, params = [], ["unnest($1::BIGINT[]) AS id"], [[i for i, _ in items]]
        for n, name in enumerate(names, start=2):
            kind = UPDATE_COLUMNS[name]
            if kind == "TIMESTAMP":
                unnests.append(f"unnest(${n}::DOUBLE[]) AS c{n}")
                sets.append(f"{name} = make_timestamp((u.c{n} * 1e6)::BIGINT)")
            elif kind == "JSON":
                unnests.append(f"unnest(${n}::VARCHAR[]) AS c{n}")
                sets.append(f"{name} = u.c{n}::JSON")
            else:
                unnests.append(f"unnest(${n}::{kind}[]) AS c{n}")
                sets.append(f"{name} = u.c{n}")
            params.append([cols[name] for _, cols in items])
        con.execute(f"UPDATE tasks SET {', '.join(sets)} FROM (SELECT {', '.join(unnests)}) u WHERE tasks.id = u.id",
                    params)


def _apply_scopes(con: duckdb.DuckDBPyConnection,
                  scopes: dict[tuple[str, str], tuple[float, float | None] | None]) -> None:
    gone = [k for k, v in scopes.items() if v is None]
    if gone:
        con.execute("DELETE FROM paused_scopes WHERE (kind, scope) IN "
                    "(SELECT (unnest($1::VARCHAR[]), unnest($2::VARCHAR[])))",
                    [[k for k, _ in gone], [s for _, s in gone]])
    put = [(k, v) for k, v in scopes.items() if v is not None]
    if put:
        con.execute(
            "INSERT OR REPLACE INTO paused_scopes SELECT unnest($1::VARCHAR[]), unnest($2::VARCHAR[]), "
            "make_timestamp((unnest($3::DOUBLE[]) * 1e6)::BIGINT), make_timestamp((unnest($4::DOUBLE[]) * 1e6)::BIGINT)",
            [[k[0] for k, _ in put], [k[1] for k, _ in put], [v[0] for _, v in put], [v[1] for _, v in put]])


def _prune(con: duckdb.DuckDBPyConnection, kind: str, value: float) -> int:
    """Delete the oldest history rows (``"count"``: all but the ``value`` newest by seq;
    ``"age_days"``: completed more than ``value`` days ago) and take them out of ``type_stats``."""
    if kind == "count":
        keep = int(value)
        n, lo, hi = con.execute("SELECT count(*), min(seq), max(seq) FROM task_history").fetchall()[0]
        if n <= keep:
            return 0
        if hi - lo + 1 == n:  # no holes: the cut is arithmetic
            cut = lo + (n - keep) - 1
        else:
            cut = con.execute("SELECT seq FROM task_history ORDER BY seq LIMIT 1 OFFSET ?",
                              [n - keep - 1]).fetchall()[0][0]
        where, params = "WHERE seq <= ?", [cut]
    elif kind == "age_days":
        cutoff = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=value)
        where, params = "WHERE completed_at < ?", [cutoff]
    else:
        raise ValueError(f"prune must be ('count', keep) or ('age_days', days), got {kind!r}")
    # Subtract what goes (exact for the counts; the sums are over what stays), then delete.
    sets = ", ".join(f"{c} = type_stats.{c} - g.{c}" for c in _STATS_COLUMNS)
    con.execute(
        f"UPDATE type_stats SET {sets} FROM ({_TYPE_STATS_SELECT} {where} GROUP BY task_type) "
        f"AS g(task_type, {', '.join(_STATS_COLUMNS)}) WHERE type_stats.task_type = g.task_type", params)
    con.execute("DELETE FROM type_stats WHERE total <= 0")
    return int(con.execute(f"DELETE FROM task_history {where}", params).fetchall()[0][0])
