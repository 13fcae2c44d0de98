"""Internal: the DuckDB store. All SQL of taskmill lives in this package.

Only the coordinator process opens a store; nothing here imports the
coordinator, the workers or the host API.
"""

from taskmill.store.store import LATEST_SCHEMA, FinishedRow, Store, WriteBatch, select

__all__ = ["LATEST_SCHEMA", "FinishedRow", "Store", "WriteBatch", "select"]
