"""Shared measurement plumbing: timing, samples, polling, machine info, the table.

Nothing here knows about a particular workload or system.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

__all__ = [
    "Row",
    "Samples",
    "Stopwatch",
    "chunks",
    "fmt_rate",
    "fmt_ratio",
    "fmt_seconds",
    "machine_info",
    "markdown_table",
    "poll_until",
    "run_sections",
    "status",
]


# --------------------------------------------------------------------------- timing


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (``time.perf_counter``)."""

    seconds: float = float("nan")

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


def poll_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005, what: str = "condition") -> None:
    """Call ``predicate`` every ``interval`` seconds until it holds; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        time.sleep(interval)


def chunks(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass
class Samples:
    """Repeated measurements of one quantity; summaries are medians (the machine is noisy)."""

    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    def fail(self, why: str) -> None:
        self.failures.append(why)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def spread(self, fmt: Callable[[float], str]) -> str:
        """``min–max`` of the samples (``—`` for one), plus how many repeats failed."""
        text = f"{fmt(min(self.values))}–{fmt(max(self.values))}" if len(self.values) > 1 else "—"
        return text + (f" ({len(self.failures)} failed)" if self.failures else "")


# --------------------------------------------------------------------------- formatting


def _na(fmt: Callable[[float], str]) -> Callable[[float], str]:
    """Format NaN (no successful sample) as ``n/a``."""
    return lambda v: "n/a" if math.isnan(v) else fmt(v)


fmt_seconds = _na(lambda s: f"{s:.3f} s" if s < 10 else f"{s:.2f} s")
fmt_ratio = _na(lambda r: f"{r:.2f}×")


def fmt_rate(r: float, unit: str = "/s") -> str:
    return "n/a" if math.isnan(r) else f"{r:,.0f}{unit}"


def status(ok: bool) -> str:
    return "✅ met" if ok else "❌ missed"


@dataclass
class Row:
    """One line of the results table."""

    workload: str
    system: str
    median: str
    spread: str = "—"
    derived: str = ""
    ratio: str = ""
    target: str = ""


_HEADERS = ("Workload", "System", "Median", "Range (min–max)", "Rate / efficiency", "taskmill ÷ peer", "Target")


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "|".join("---" for _ in _HEADERS) + "|"]
    for r in rows:
        cells = (r.workload, r.system, r.median, r.spread, r.derived, r.ratio, r.target)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision(repo: str) -> str:
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_info(repo: str) -> dict[str, str]:
    """What the numbers depend on, printed with every table."""
    import multiprocessing

    import duckdb

    import taskmill

    try:
        import huey
        huey_version = huey.__version__
    except ImportError:
        huey_version = "not installed"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": f"{os.cpu_count()} ({_cpu_model()})",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "duckdb": duckdb.__version__,
        "taskmill": f"{taskmill.__version__} (git {_git_revision(repo)})",
        "huey": huey_version,
        "mp start method": multiprocessing.get_start_method(),
        "executable": sys.executable,
    }


def run_sections(title: str, repo: str, names: str, known: dict, fail: Callable[[str], object],
                 run: Callable[[str, str], bool]) -> int:
    """The command of a sectioned benchmark: a heading with machine info, then ``run(name, tmp)``
    for each comma-separated name in ``names``, each in a fresh temporary directory
    (``fail(message)`` for an unknown name). Exit status 0 when every section met its target."""
    print(f"# {title}\n")
    for k, v in machine_info(repo).items():
        print(f"- **{k}**: {v}")
    ok = True
    for name in [x.strip() for x in names.split(",") if x.strip()]:
        if name not in known:
            fail(f"unknown section {name!r}")
        with tempfile.TemporaryDirectory() as d:
            ok &= run(name, d)
    print()
    return 0 if ok else 1

