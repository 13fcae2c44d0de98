"""Progress of running tasks: reported, extrapolated, and byte throughput with an ETA (F24, F28).

Plain code fed by the loop: ``sample`` takes a running task's byte counter
from its shared-memory slot (at most every ``SAMPLE_INTERVAL``) into an EWMA
of its throughput; ``estimate`` turns a reported fraction, or else the time it
has run against its type's average duration, into a fraction 0.0..1.0 (extrapolation
is capped at 0.99: only the task itself says it is done). Type averages start
from the store's aggregates and follow every completion.
"""

from __future__ import annotations

__all__ = ["EXTRAPOLATION_CAP", "ProgressTracker"]

#: EWMA weight of the newest throughput sample.
ALPHA = 0.3
#: Seconds between two throughput samples of one task (shorter gaps are noise).
SAMPLE_INTERVAL = 0.25
#: Highest fraction an extrapolation may claim.
EXTRAPOLATION_CAP = 0.99


class _Rate:
    __slots__ = ("at", "done", "bps")

    def __init__(self, at: float, done: int) -> None:
        self.at = at
        self.done = done
        self.bps = 0.0


class ProgressTracker:
    """Byte throughput per running task and average duration per task type."""

    def __init__(self, averages: dict[str, tuple[int, float]] | None = None) -> None:
        self._rates: dict[int, _Rate] = {}
        self._avg: dict[str, tuple[int, float]] = dict(averages or {})  # type -> (count, sum of ms)

    def completed(self, task_type: str, duration_ms: float | None) -> None:
        if duration_ms is None or duration_ms < 0:
            return
        n, total = self._avg.get(task_type, (0, 0.0))
        self._avg[task_type] = (n + 1, total + duration_ms)

    def average_ms(self, task_type: str) -> float | None:
        n, total = self._avg.get(task_type, (0, 0.0))
        return total / n if n else None

    def sample(self, task_id: int, done: int, now: float) -> None:
        r = self._rates.get(task_id)
        if r is None:
            self._rates[task_id] = _Rate(now, done)
            return
        dt = now - r.at
        if dt < SAMPLE_INTERVAL:
            return
        rate = max(done - r.done, 0) / dt
        r.bps = rate if r.bps == 0.0 else ALPHA * rate + (1 - ALPHA) * r.bps
        r.at, r.done = now, done

    def forget(self, task_id: int) -> None:
        self._rates.pop(task_id, None)

    def throughput(self, task_id: int) -> float:
        r = self._rates.get(task_id)
        return r.bps if r is not None else 0.0

    def eta(self, task_id: int, done: int, total: int | None) -> float | None:
        bps = self.throughput(task_id)
        if not total or bps <= 0:
            return None
        return max(total - done, 0) / bps

    def estimate(self, task_type: str, reported: float | None, elapsed: float) -> tuple[float | None, float | None, float]:
        """(reported, extrapolated, shown) as fractions: reported wins, else extrapolated, else 0."""
        avg = self.average_ms(task_type)
        extrapolated = None if not avg else min(elapsed * 1000.0 / avg, EXTRAPOLATION_CAP)
        rep = None if reported is None or reported < 0 else min(float(reported), 1.0)
        percent = rep if rep is not None else extrapolated if extrapolated is not None else 0.0
        return rep, extrapolated, percent
