"""The Huey peer: a SqliteHuey whose tasks are the bodies in ``bench.tasks``.

The host builds one instance per run with :func:`make_huey`. The consumer
subprocess imports ``bench.huey_app.huey``, which exists only when
``BENCH_HUEY_DB`` names the SQLite file. Task names derive from the wrapped
functions (``bench.tasks.noop``…), so host and consumer agree on them.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from huey import SqliteHuey

from bench import tasks

#: Environment variable naming the SQLite file of the consumer's Huey.
DB_ENV = "BENCH_HUEY_DB"
#: SQLite busy timeout of every connection, in seconds (Huey's default is 5).
BUSY_TIMEOUT = 60.0


def make_huey(filename: str) -> SimpleNamespace:
    """A SqliteHuey on ``filename`` (defaults: WAL, synchronous=FULL) with the bench tasks.

    ``store_none=True`` so that ``None`` results count as results too. The
    SQLite busy timeout is raised from 5 s to ``BUSY_TIMEOUT``: on a loaded
    2-core machine a worker can wait longer than 5 s for the write lock while
    the host enqueues, and Huey then drops that task's result.
    """
    huey = SqliteHuey("bench", filename=filename, store_none=True, timeout=BUSY_TIMEOUT)
    return SimpleNamespace(
        huey=huey,
        noop=huey.task()(tasks.noop),
        busy=huey.task()(tasks.busy),
        sleeper=huey.task()(tasks.sleeper),
    )


if os.environ.get(DB_ENV):
    huey = make_huey(os.environ[DB_ENV]).huey
