"""Internal: the DuckDB store. All SQL of taskmill lives in this package.

Only the coordinator process opens a store; nothing here imports the
coordinator, the workers or the host API.
"""

from taskmill.batch import FinishedRow, Recovered, WriteBatch
from taskmill.store.queries import TASK_INSERT_COLUMNS, Queries, select
from taskmill.store.store import LATEST_SCHEMA, PLAIN_COLUMNS, RECOVER_COLUMNS, Store

__all__ = [
    "LATEST_SCHEMA",
    "PLAIN_COLUMNS",
    "RECOVER_COLUMNS",
    "TASK_INSERT_COLUMNS",
    "FinishedRow",
    "Queries",
    "Recovered",
    "Store",
    "WriteBatch",
    "select",
]
