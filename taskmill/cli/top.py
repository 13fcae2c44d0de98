"""``taskmill top``: a live screen of a served scheduler, until ``q``.

The counters come from the shared-memory segment (no round trip, read twice
a second, when the screen is redrawn); running tasks with their progress, the
queue by group and the pressure from a snapshot once a second; the last
failures from the store every 2 s. Rendered with rich in the terminal's
alternate screen; the keyboard is read in cbreak mode, so ``q`` quits at once
and the terminal is restored however the command ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import time
import tty
from datetime import datetime, timezone
from typing import Any, Iterator

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from taskmill.cli.commands import LAST_FAILURES
from taskmill.cli.output import cell
from taskmill.cli.reading import CliError, open_reading
from taskmill.connect import Connected
from taskmill.shm import SegmentReader

__all__ = ["top"]

#: Seconds between two redraws (from the shared-memory segment), two snapshots, two reads of the
#: last failures: the screen changes twice a second at little cost to the scheduler it watches.
SHM_EVERY, SNAPSHOT_EVERY, FAILURES_EVERY = 0.5, 1.0, 2.0


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """Standard input in cbreak mode (keys arrive one by one, unechoed); its fd, or None if not a terminal."""
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    if fd is None:
        yield None
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _pressed(fd: int | None, timeout: float) -> str:
    """The keys pressed within ``timeout`` seconds ('' if none); sleeps the timeout without a terminal."""
    if fd is None:
        time.sleep(timeout)
        return ""
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 32).decode(errors="replace") if ready else ""


class Screen:
    """What ``top`` shows, refreshed from its three sources at their own pace."""

    def __init__(self, sched: Connected) -> None:
        self.sched = sched
        self.shm = SegmentReader(sched.shm_name)
        self.counters = self.shm.counters()
        self.rates: dict[str, float] = {}
        self.snapshot: Any = None
        self.failures: list[tuple] = []
        self._last = {"shm": 0.0, "snapshot": 0.0, "failures": 0.0}
        self._before = (time.monotonic(), dict(self.counters))

    def refresh(self, now: float) -> None:
        if now - self._last["shm"] >= SHM_EVERY:
            self._last["shm"] = now
            self.counters = self.shm.counters()
            t0, before = self._before
            if now - t0 >= 1.0:  # rates over the last second or so
                self.rates = {k: (self.counters[k] - before[k]) / (now - t0) for k in ("completed", "failed",
                                                                                     "submitted")}
                self._before = (now, dict(self.counters))
        if now - self._last["snapshot"] >= SNAPSHOT_EVERY:
            self._last["snapshot"] = now
            self.snapshot = self.sched.snapshot()
        if now - self._last["failures"] >= FAILURES_EVERY:
            self._last["failures"] = now
            self.failures = [tuple(r.values()) for r in self.sched.sql(LAST_FAILURES)]

    def render(self) -> Group:
        c, snap = self.counters, self.snapshot
        head = Text()
        head.append(f"taskmill top  pid {self.sched.coordinator_pid}", style="bold")
        head.append(f"   {datetime.now().strftime('%H:%M:%S')}   q quits   {self.sched.store_path}\n")
        head.append(f"running {c['running']}  pending {c['pending']}  paused {c['paused']}  blocked {c['blocked']}  "
                    f"waiting {c['waiting']}   completed {c['completed']} ({self.rates.get('completed', 0):.1f}/s)  "
                    f"failed {c['failed']}  dead-lettered {c['dead_lettered']}  cancelled {c['cancelled']}")
        if snap is not None:
            cap = snap.capacity
            head.append(f"\npressure {snap.pressure:.2f}  ")
            if cap is not None:
                head.append(f"cpus {cap.cpus_in_use:g}/{cap.cpus_total:g}  ")
            head.append(f"max concurrency {snap.max_concurrency}  workers {snap.workers}")
            if snap.is_paused:
                head.append("   ALL PAUSED", style="bold yellow")
        parts: list[Any] = [head]
        parts.append(Panel(self._running(), title="running", title_align="left"))
        if snap is not None and (snap.group_allocations or snap.paused_groups):
            parts.append(Panel(self._groups(), title="groups", title_align="left"))
        if self.failures:
            t = Table(show_edge=False, pad_edge=False, expand=True)
            for n in ("id", "task_type", "completed_at", "error"):
                t.add_column(n)
            for r in self.failures:
                t.add_row(*(cell(v) for v in r))
            parts.append(Panel(t, title="last failures", title_align="left"))
        return Group(*parts)

    def _running(self) -> Table:
        t = Table(show_edge=False, pad_edge=False, expand=True)
        for n in ("id", "task_type", "label", "elapsed", "progress", ""):
            t.add_column(n)
        snap = self.snapshot
        if snap is None:
            return t
        percent = {p.header.task_id: p.percent for p in snap.progress}
        now = datetime.now(timezone.utc)
        for r in snap.running[:30]:
            p = percent.get(r.id, 0.0)
            elapsed = "" if r.started_at is None else f"{(now - r.started_at).total_seconds():.1f}s"
            t.add_row(str(r.id), r.task_type, cell(r.label, 30), elapsed, ProgressBar(total=1.0, completed=p, width=24),
                      f"{100 * p:.0f}%")
        return t

    def _groups(self) -> Table:
        t = Table(show_edge=False, pad_edge=False, expand=True)
        for n in ("group", "running", "pending", "weight", "slots", "cap", "paused"):
            t.add_column(n)
        snap = self.snapshot
        paused = {g.group: g for g in snap.paused_groups}
        for a in snap.group_allocations:
            g = paused.pop(a.group or "", None)
            t.add_row(a.group or "(none)", str(a.running), str(a.pending), f"{a.weight:g}", str(a.allocated_slots),
                      "" if a.cap is None else str(a.cap), "" if g is None else _until(g))
        for name, g in paused.items():
            t.add_row(name, "", str(g.paused_task_count), "", "", "", _until(g))
        return t

    def close(self) -> None:
        self.shm.close()


def _until(g: Any) -> str:
    return "paused" if g.resume_at is None else f"until {g.resume_at.astimezone().strftime('%H:%M:%S')}"


def top(args: argparse.Namespace) -> int:
    """Show the served scheduler live until ``q`` (or Ctrl-C)."""
    if not sys.stdout.isatty():
        raise CliError("top needs a terminal; for a one-off look in a pipe or a script use `taskmill status`")
    with open_reading(args.store) as r:
        sched = r.need_served("top", "shows a running scheduler live")
        screen = Screen(sched)
        try:
            with _keys() as fd, Live(screen.render(), screen=True, auto_refresh=False) as live:
                while True:
                    screen.refresh(time.monotonic())
                    live.update(screen.render(), refresh=True)
                    if "q" in _pressed(fd, SHM_EVERY).lower():
                        return 0
        finally:
            screen.close()
