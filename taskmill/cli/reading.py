"""Where a command reads from: the coordinator that serves the store, or the store file itself.

A store that a coordinator serves (``taskmill serve``, or a script's running
``Scheduler``) is reached through ``connect``: live counts, pressure and
capacity, and every command that changes state. A store nobody serves is
opened read-only with DuckDB, so history, SQL and exports still work after the
job ended; commands that change state say they need ``taskmill serve``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import duckdb

from taskmill.connect import Connected, served_state
from taskmill.errors import TaskmillError
from taskmill.results import decode_json
from taskmill.store.journal import journal_path, pending
from taskmill.store.queries import journal_seq, select
from taskmill.validation import sql_params

__all__ = ["CliError", "Reading", "open_reading"]


class CliError(TaskmillError):
    """A command cannot do what it was asked; the message says why and what to do."""


class Reading:
    """One command's view of a store: ``served`` (a ``Connected``) or ``offline`` (read-only DuckDB)."""

    def __init__(self, store: str, served: Connected | None, offline: duckdb.DuckDBPyConnection | None) -> None:
        self.store = store
        self.served = served
        self.offline = offline

    def sql(self, query: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[list[Any]]]:
        """Column names and rows (JSON decoded) of one read-only SELECT."""
        if self.served is not None:
            self.served._check_open()
            names, rows, json_columns = self.served._proc().call("sql", query, sql_params(params))
        else:
            assert self.offline is not None
            names, rows, json_columns = select(self.offline, query, params)
        return names, decode_json(rows, json_columns)

    def need_served(self, command: str, why: str = "changes the scheduler's state") -> Connected:
        """The served scheduler, or a ``CliError`` naming ``taskmill serve``."""
        if self.served is None:
            raise CliError(f"{command} {why}, and no coordinator serves {self.store}: "
                           f"start one with `taskmill serve MODULE:SCHEDULER --store {self.store}`")
        return self.served

    def close(self) -> None:
        if self.served is not None:
            self.served.close()
        if self.offline is not None:
            self.offline.close()

    def __enter__(self) -> Reading:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_reading(store: str) -> Reading:
    """Attach to the coordinator serving ``store``, or open the file read-only if none does."""
    store = os.path.abspath(store)
    if served_state(store) is not None:
        return Reading(store, Connected(store), None)
    if not os.path.exists(store):
        raise CliError(f"no store at {store} (pass --store PATH; the default is ./taskmill.duckdb)")
    try:
        con = duckdb.connect(store, read_only=True)
    except duckdb.IOException as e:
        raise CliError(f"{store} is open in another process that does not serve it ({e})") from None
    except duckdb.Error as e:
        raise CliError(f"{store} cannot be opened as a taskmill store: {e}") from None
    unmerged = _unmerged(store, con)
    if unmerged:
        print(f"taskmill: {store}.journal holds {unmerged} acknowledged commits a crash left out of the "
              "store; they are not shown here until a scheduler starts on the store (it applies them first)",
              file=sys.stderr)
    return Reading(store, None, con)


def _unmerged(store: str, con: duckdb.DuckDBPyConnection) -> int:
    """Journal records the store does not hold yet (see ``taskmill.store.journal``)."""
    path = journal_path(store)
    if path is None or not os.path.exists(path) or os.path.getsize(path) == 0:
        return 0
    try:
        applied = journal_seq(con)
    except duckdb.Error:  # not a taskmill store: the command says so
        return 0
    return len(pending(path, applied))
