"""Getting results out of a running scheduler: ``sql()`` in three formats, ``export_history``,
``wait`` and ``wait_idle`` (with its progress bar).

``Retrieval`` is a mixin of ``Scheduler`` (and so of ``Connected``) over its
``Session``. Query results are decoded here (``taskmill.results``); an export is
written by the coordinator into its private directory and moved to its path by
this process. Imports leaves, the session and the results.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from datetime import datetime
from typing import Any, Sequence

from taskmill import protocol
from taskmill.controls import SessionCalls
from taskmill.errors import WaitTimeout
from taskmill.metrics import MetricsSnapshot, active_count
from taskmill.records import TaskHistoryRecord
from taskmill.results import SQL_FORMATS, sql_result
from taskmill.validation import as_int, as_str, as_wait_timeout, describe, sql_params

__all__ = ["PROGRESS_REFRESH", "Retrieval"]

#: Seconds between two redraws of ``wait_idle(progress=True)``'s bar.
PROGRESS_REFRESH = 0.2


class Retrieval(SessionCalls):
    """``sql``, ``export_history``, ``wait`` and ``wait_idle`` of a scheduler."""

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None, *,
            format: str = "rows") -> Any:  # noqa: A002 - the API's name
        """Run one read-only SQL statement on the store.

        Tables: ``tasks`` (active) and ``task_history`` (finished); payloads,
        tags and results are JSON columns, decoded to Python values here.

        Args:
            query: One SELECT statement.
            params: None, a list/tuple for positional (``?``) or a dict for named
                (``$name``) parameters; values are str, int, float, bool, None,
                bytes, datetime/date/time/timedelta, Decimal, UUID, or lists and
                dicts of them (subclasses are converted to the plain type).
            format: ``"rows"`` (a list of dicts by column name), ``"pandas"`` (a
                DataFrame; extra ``taskmill[pandas]``) or ``"arrow"`` (a pyarrow
                Table; extra ``taskmill[arrow]``).

        Raises:
            QueryRefused: a write, or more than one statement.
            StoreError: malformed SQL or a failing query.
            TypeError: ``query`` is not a str, or a parameter of another type (named by index or key).
            ValueError: an unknown ``format``; ImportError: its extra is not installed.
        """
        self._check_open()
        query, params = as_str(query, "query"), sql_params(params)
        if format not in SQL_FORMATS:
            raise ValueError(f"format must be one of {list(SQL_FORMATS)}, got {format!r}")
        names, rows, json_columns = self._session.proc().call("sql", query, params)
        return sql_result(names, rows, json_columns, format)

    def export_history(self, path: str | os.PathLike[str], *, since: datetime | None = None) -> int:
        """Write the task history (oldest first) to a Parquet file; the number of rows written.

        The coordinator runs DuckDB's ``COPY … TO`` into its private directory and the file
        is moved to ``path`` (mode 0600, as the store: payloads and results are in it); it
        reads back with pandas, pyarrow or DuckDB, JSON columns as text.

        Args:
            path: The file to write (replaced if it exists); its directory must exist.
            since: Only rows completed at or after this time (timezone-aware).

        Raises:
            ValueError: ``since`` is naive, or ``path``'s directory does not exist.
            StoreError: the export failed.
        """
        self._check_open()
        target = os.path.abspath(os.fspath(path))
        if not os.path.isdir(os.path.dirname(target)):
            raise ValueError(f"export_history: the directory of {target} does not exist")
        if since is not None:
            if not isinstance(since, datetime):
                raise TypeError(f"since must be a datetime or None, got {type(since).__name__}")
            if since.tzinfo is None:
                raise ValueError("since must be a timezone-aware datetime, got a naive one")
        made, rows = self._session.proc().call("export_history", since)
        try:
            shutil.move(made, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(made)
            raise
        return int(rows)

    # ------------------------------------------------------------------ waiting

    def wait(self, task_id: int, timeout: float | None = None) -> TaskHistoryRecord:
        """Block until a task is finished; returns its history record.

        Raises:
            WaitTimeout: not finished within ``timeout`` seconds.
            TaskNotFound: no task with that id, active or finished.
            TypeError, ValueError: a bad ``task_id`` or ``timeout`` (None or finite seconds >= 0).
        """
        self._check_open()
        task_id, timeout = as_int(task_id, "task_id"), as_wait_timeout(timeout)
        return self._session.proc().request(protocol.Wait(task_id, timeout))

    def wait_idle(self, timeout: float | None = None, progress: bool = False) -> None:
        """Block until no task is active. With ``progress=True``, draw a progress bar.

        Raises:
            WaitTimeout: still busy after ``timeout`` seconds.
            TypeError, ValueError: a bad ``timeout`` (None or finite seconds >= 0) or ``progress``.
        """
        self._check_open()
        timeout = as_wait_timeout(timeout)
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be a bool, got {describe(progress)}")
        if not progress:
            self._session.proc().request(protocol.WaitIdle(timeout))
            return
        self._wait_idle_with_bar(timeout)

    def _wait_idle_with_bar(self, timeout: float | None) -> None:
        """The bar counts every task this coordinator ended and every one still active, so its
        total grows with tasks submitted meanwhile; it shows the rate, the ETA and the failures.
        Its figures come from the shared-memory counters (no call to the coordinator)."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from taskmill.relay import SWAPPING
        from taskmill.shm import SegmentReader

        deadline = None if timeout is None else time.monotonic() + timeout
        reader = SegmentReader(self._session.proc().info["shm"])  # mapped once for the whole bar
        t0 = time.monotonic()
        try:
            c = reader.counters()
            first = _ended(c)
            bar = Progress(TextColumn("[bold]tasks"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                           TextColumn("{task.description}"), TimeElapsedColumn(), transient=False)
            with SWAPPING:  # it redirects sys.stdout/sys.stderr: not while task output is being copied
                bar.start()
            try:
                tid = bar.add_task("", total=max(first + _active(c), 1), completed=first, rate="")
                while True:
                    step = PROGRESS_REFRESH
                    if deadline is not None:
                        step = min(step, max(deadline - time.monotonic(), 0.0))
                    try:
                        self._session.proc().request(protocol.WaitIdle(step))
                        done = True
                    except WaitTimeout:
                        done = False
                    c = reader.counters()
                    settle = time.monotonic() + 1.0
                    while done and _active(c) and time.monotonic() < settle:  # the counters follow the
                        time.sleep(0.01)                                      # idle answer closely
                        c = reader.counters()
                    ended, active = _ended(c), (0 if done else _active(c))
                    failed = c["failed"] + c["dead_lettered"]
                    per_s = (ended - first) / max(time.monotonic() - t0, 1e-6)
                    bar.update(tid, total=max(ended + active, 1), completed=ended, rate=f"{per_s:,.1f}/s",
                               description=(f"running {c['running']}, pending {c['pending']}"
                                            + (f", [red]failed {failed}[/]" if failed else "")
                                            + (", done" if done else "")))
                    if done:
                        return
                    if deadline is not None and time.monotonic() >= deadline:
                        raise WaitTimeout("the scheduler did not become idle in time")
            finally:
                with SWAPPING:
                    bar.stop()
        finally:
            reader.close()


def _ended(c: dict[str, int]) -> int:
    """Tasks this coordinator ended, every way (``failed`` includes dependency failures)."""
    return c["completed"] + c["failed"] + c["dead_lettered"] + c["cancelled"] + c["superseded"] + c["expired"]


def _active(c: dict[str, int]) -> int:
    return active_count(MetricsSnapshot.from_counters(c))
