"""Internal: the DuckDB store. All SQL of taskmill lives in this package.

Only the coordinator process opens a store; nothing here imports the
coordinator, the workers or the host API.
"""

from taskmill.store.batch import FinishedRow, WriteBatch
from taskmill.store.queries import Queries, select
from taskmill.store.store import LATEST_SCHEMA, Store

__all__ = ["LATEST_SCHEMA", "FinishedRow", "Queries", "Store", "WriteBatch", "select"]
