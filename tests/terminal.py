"""A real terminal for the tests: a tmux server of their own, one session running a command."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.polling import DEADLINE, poll_until

__all__ = ["Terminal", "needs_tmux"]

#: Marks a test that drives a terminal (``.ci/run`` installs tmux when it is missing).
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (.ci/run installs it)")


class Terminal:
    """``command`` (a shell line) running in a ``width`` × ``height`` terminal; afterwards it prints
    ``EXITED <status>`` and stays on screen. A context manager: leaving kills the tmux server."""

    def __init__(self, command: str, cwd: Path, width: int = 160, height: int = 50) -> None:
        self.tmux = ["tmux", "-L", f"taskmill-test-{uuid.uuid4().hex[:8]}"]  # a server with this environment
        runner = cwd / f"run-{uuid.uuid4().hex[:6]}.sh"
        runner.write_text(f"trap true INT\n{command}\necho EXITED $?\nsleep 120\n")  # (the shell outlives Ctrl-C)
        subprocess.run([*self.tmux, "new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                        f"bash {runner}"], cwd=cwd, check=True, timeout=DEADLINE)

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", "t"], capture_output=True, text=True,
                              timeout=DEADLINE).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", "t", *keys], check=True, timeout=DEADLINE)

    def when(self, *texts: str, what: str) -> str:
        """The screen, once it shows every one of ``texts``."""
        return str(poll_until(lambda: (lambda s: s if all(t in s for t in texts) else None)(self.screen()),
                              what=what))

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, timeout=DEADLINE)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
