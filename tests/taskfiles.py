"""Files that tasks in the end-to-end tests use to talk to the test: a flag a task waits
for, and a log it appends lines to. Shared by tests/e2e and tests/conformance (the
workers import it by name, as they import the test modules themselves)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from polling import DEADLINE

import taskmill as tm


def wait_flag(ctx: tm.TaskContext, flag: str, limit: float = DEADLINE) -> str:
    """Block until ``flag`` exists ("released") or the task is cancelled ("cancelled")."""
    deadline = time.monotonic() + limit
    while not os.path.exists(flag):
        if ctx.cancelled:
            return "cancelled"
        if time.monotonic() > deadline:
            raise tm.Permanent(f"flag {flag} never appeared")
        time.sleep(0.01)
    return "released"


def append(path: str, text: str) -> None:
    """One line at the end of ``path``."""
    with open(path, "a") as f:
        f.write(text + "\n")


def lines(path: str) -> list[str]:
    """The lines of ``path`` (none while it does not exist)."""
    return Path(path).read_text().splitlines() if os.path.exists(path) else []
