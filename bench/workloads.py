"""The workloads: each runs its systems side by side, repeat by repeat, and
turns the samples into table rows and notes.

Within a repeat the systems run one after another (interleaved, not all
repeats of one system then the next), so slow drifts of a noisy machine hit
every system alike. Every system instance is fresh: its own temporary
directory, store and processes.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from bench import tasks
from bench.harness import Row, Samples, Stopwatch, fmt_rate, fmt_ratio, fmt_seconds, poll_until, status
from bench.systems import HUEY_ERROR, PHASE_TIMEOUT, WORKERS, HueySystem, PoolSystem, System, TaskmillSystem

__all__ = ["SEED", "WORKLOADS", "Report", "Sizes"]

#: Seed of every payload's run id: reruns submit byte-identical payloads.
SEED = 20_240_917


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; ``QUICK`` is the smoke-test variant."""

    w1_tasks: int = 20_000
    w1_chunk: int = 5_000
    w2_tasks: int = 200
    w2_task_s: float = 0.010
    w3_tasks: int = 100_000
    w3_batch: int = 10_000
    d_small: int = 1_000
    d_large: int = 100_000
    d_window: int = 1_000


FULL = Sizes()
QUICK = Sizes(w1_tasks=2_000, w1_chunk=500, w2_tasks=40, w3_tasks=10_000, w3_batch=2_000, d_small=500,
              d_large=5_000, d_window=500)


@dataclass
class Report:
    """What a workload contributes to the results."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- shared helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_tag(workload: str, repeat: int) -> str:
    """A deterministic, distinct run id for payloads (dedup would merge identical payloads)."""
    return f"{workload}-{repeat}-{random.Random(f'{SEED}:{workload}:{repeat}').getrandbits(32):08x}"


def payloads(n: int, tag: str, **extra: object) -> list[dict]:
    return [{"i": i, "run": tag, **extra} for i in range(n)]


def measure(report: Report, workload: str, runners: dict[str, Callable[[int], float]], repeats: int,
            fmt: Callable[[float], str]) -> dict[str, Samples]:
    """Run every runner once per repeat (interleaved); ``runner(repeat)`` returns one sample.

    A failing repeat is logged, left out of the samples and noted in the report.
    """
    samples = {name: Samples() for name in runners}
    for r in range(repeats):
        for name, runner in runners.items():
            try:
                value = runner(r)
            except Exception as e:  # noqa: BLE001 - one failed sample must not sink the whole run
                samples[name].fail(f"{type(e).__name__}: {e}")
                log(f"  [{workload} {r + 1}/{repeats}] {name}: FAILED {type(e).__name__}: {e}")
                continue
            samples[name].add(value)
            log(f"  [{workload} {r + 1}/{repeats}] {name}: {fmt(value)}")
    for name, s in samples.items():
        for why in dict.fromkeys(s.failures):  # unique, in order
            report.notes.append(f"{workload}: a {name} repeat failed and is left out: {why}")
    return samples


def end_to_end(system: System, kind: str, items: list[dict], results: list[list] | None = None) -> float:
    """Seconds from the first submission until every task is finished and recorded (start-up excluded).

    The task results (checked, untimed) are appended to ``results`` if given.
    """
    with system:
        with Stopwatch() as sw:
            system.submit(kind, items)
            system.wait_all()
        values = system.verify_finished()
    if results is not None:
        results.append(values)
    return sw.seconds


def submission_only(system: System, kind: str, items: list[dict]) -> float:
    """Seconds to durably submit ``items`` (nothing else is timed)."""
    with system:
        with Stopwatch() as sw:
            system.submit(kind, items)
        system.verify_queued()
    return sw.seconds


def contenders(report: Report, workload: str, chunk: int, *, pool: bool = True,
               consumer: bool = True) -> dict[str, Callable[[], System]]:
    """Factories of the systems a workload compares: taskmill (``submit_batch`` chunks of ``chunk``),
    optionally ProcessPoolExecutor, and Huey unless it cannot be imported (then a note says so)."""
    out: dict[str, Callable[[], System]] = {"taskmill": lambda: TaskmillSystem(chunk)}
    if pool:
        out["ProcessPoolExecutor"] = PoolSystem
    if HUEY_ERROR is None:
        out["Huey"] = lambda: HueySystem(consumer=consumer)
    else:
        report.notes.append(f"{workload}: Huey skipped: {HUEY_ERROR}.")
        log(f"  [{workload}] Huey skipped: {HUEY_ERROR}")
    return out


def per_system(factories: dict[str, Callable[[], System]],
               sample: Callable[[str, System, int], float]) -> dict[str, Callable[[int], float]]:
    """Runners for :func:`measure`: each builds a fresh system and takes ``sample(name, system, repeat)``."""
    return {name: (lambda r, name=name, make=make: sample(name, make(), r)) for name, make in factories.items()}


def compare(report: Report, label: str, samples: dict[str, Samples], *, speed: Callable[[float], float],
            derived: Callable[[float], str], target: Callable[[float, dict[str, float]], str]) -> None:
    """Rows of a taskmill-versus-peers workload whose samples are seconds.

    ``speed(median_seconds)`` is higher-is-better; the ratio column is taskmill's
    speed over the peer's. ``target(taskmill_median, speeds)`` fills taskmill's target cell.
    """
    speeds = {name: speed(s.median) for name, s in samples.items()}
    for name, s in samples.items():
        mine = name == "taskmill"
        report.rows.append(Row(
            label, name, fmt_seconds(s.median), s.spread(fmt_seconds), derived(s.median),
            "" if mine else fmt_ratio(speeds["taskmill"] / speeds[name]),
            target(s.median, speeds) if mine else ""))


# --------------------------------------------------------------------------- W1


def w1(sizes: Sizes, repeats: int) -> Report:
    """W1: N no-op tasks end to end, against ProcessPoolExecutor and Huey."""
    n, report = sizes.w1_tasks, Report()
    label = f"W1 {n:,} no-ops end to end"
    runners = per_system(contenders(report, "W1", sizes.w1_chunk),
                         lambda _, system, r: end_to_end(system, "noop", payloads(n, run_tag("W1", r))))
    samples = measure(report, "W1", runners, repeats, fmt_seconds)

    def target(_: float, speeds: dict[str, float]) -> str:
        vs = speeds["taskmill"] / speeds["ProcessPoolExecutor"]
        return f"≥ 1.00× ProcessPoolExecutor: {fmt_ratio(vs)} {status(vs >= 1.0)}"

    compare(report, label, samples, speed=lambda s: n / s, derived=lambda s: fmt_rate(n / s, " tasks/s"),
            target=target)
    report.notes.append(
        f"W1: taskmill `submit_batch` in chunks of {sizes.w1_chunk:,}, then `wait_idle` (returns once every history "
        f"row is committed); ProcessPoolExecutor(max_workers={WORKERS}) one `submit` per task, then `wait` on all "
        "futures; Huey enqueues one task per call and the clock stops when all results are stored.")
    return report


# --------------------------------------------------------------------------- W2


def w2(sizes: Sizes, repeats: int) -> Report:
    """W2: N calibrated CPU tasks on 2 workers; efficiency = ideal / wall."""
    n, report = sizes.w2_tasks, Report()
    loops, single = tasks.calibrate_spin(sizes.w2_task_s)
    ideal = n * single / WORKERS
    label = f"W2 {n:,} × {single * 1e3:.1f} ms CPU"

    def items(r: int) -> list[dict]:
        return payloads(n, run_tag("W2", r), loops=loops)

    # each busy task returns its own duration: per system, one list of task times per successful repeat
    task_times: dict[str, list[list]] = {}

    def sample(name: str, system: System, r: int) -> float:
        return end_to_end(system, "busy", items(r), task_times.setdefault(name, []))

    runners = per_system(contenders(report, "W2", sizes.w1_chunk), sample)
    samples = measure(report, "W2", runners, repeats, fmt_seconds)

    def busy_share(name: str) -> float:
        """Median over repeats of Σ task time ÷ (workers × wall)."""
        runs = zip(task_times.get(name, []), samples[name].values, strict=True)
        shares = [sum(times) / (WORKERS * wall) for times, wall in runs]
        return statistics.median(shares) if shares else float("nan")

    shares = {name: busy_share(name) for name in samples}
    compare(report, label, samples, speed=lambda s: 1.0 / s, derived=lambda s: f"efficiency {ideal / s:.3f}",
            target=lambda s, _: f"efficiency ≥ 0.90: {status(ideal / s >= 0.90)}")
    for row in report.rows:
        row.derived += f"; busy {shares[row.system]:.3f}"
    in_worker = {name: statistics.median(t for run in runs for t in run) for name, runs in task_times.items() if runs}
    drift = [t / single for t in in_worker.values()]
    caveat = "."
    if drift and max(drift) > 1.10:
        caveat = " — over 10 % above the in-process figure: the CPU was shared with other load."
    elif drift and min(drift) < 0.95:
        caveat = (" — below the in-process figure: the CPU ran faster than during calibration, so efficiency "
                  "overstates (it can exceed 1); \"busy\" does not depend on the calibration.")
    report.notes.append(
        f"W2: `spin({loops:,})` takes {single * 1e3:.2f} ms in-process (median of 31 calls after calibration); "
        f"ideal = {n} × {single * 1e3:.2f} ms / {WORKERS} workers = {fmt_seconds(ideal)}. \"busy\" = Σ task time "
        f"measured inside each task ÷ ({WORKERS} × wall): the share of worker capacity spent in task code, which "
        "load elsewhere on the machine barely lowers. Median task time measured inside the workers: "
        + ", ".join(f"{name} {t * 1e3:.2f} ms" for name, t in in_worker.items())
        + caveat)
    return report


# --------------------------------------------------------------------------- W3


def w3(sizes: Sizes, repeats: int) -> Report:
    """W3: durable submission rate (nothing executes meanwhile)."""
    n, report = sizes.w3_tasks, Report()
    label = f"W3 {n:,} durable submissions"
    runners = per_system(contenders(report, "W3", sizes.w3_batch, pool=False, consumer=False),
                         lambda _, system, r: submission_only(system, "sleeper", payloads(n, run_tag("W3", r))))
    samples = measure(report, "W3", runners, repeats, fmt_seconds)
    compare(report, label, samples, speed=lambda s: n / s, derived=lambda s: fmt_rate(n / s, " submissions/s"),
            target=lambda s, _: f"≥ 50,000/s: {status(n / s >= 50_000)}")
    report.notes.append(
        f"W3: taskmill `submit_batch` in batches of {sizes.w3_batch:,} (building the `.call(...)` submissions "
        "included), each answered after its DuckDB commit; the tasks are `sleeper`s, so the two workers hold one "
        "each and nothing else runs; the scheduler closes with `Shutdown.hard()`. Huey enqueues the same tasks into "
        "SqliteHuey with no consumer, one SQLite transaction per task (WAL, synchronous=FULL: Huey's defaults).")
    return report


# --------------------------------------------------------------------------- D


def dispatch_rate(backlog: int, window: int, chunk: int, repeat: int) -> float:
    """Completions per second over the first ``window`` tasks once ``backlog`` no-ops are queued.

    Two ``gate`` tasks hold both workers while the backlog is submitted; the
    clock starts when the gate file appears and stops at the ``window``-th
    completion (the workers' own finish timestamps, read back from history).
    """
    system = TaskmillSystem(chunk)
    with system:
        gate = os.path.join(system.workdir, "gate")
        system.handle.submit_batch([tasks.tm_gate.call(path=gate, slot=k) for k in range(WORKERS)])
        poll_until(lambda: system.counter("running") == WORKERS, PHASE_TIMEOUT, what="gates running")
        system.submit("noop", payloads(backlog, run_tag(f"D{backlog}", repeat)))
        done_before = system.counter("completed")
        released = time.time()
        open(gate, "w").close()
        poll_until(lambda: system.counter("completed") >= done_before + WORKERS + window, PHASE_TIMEOUT,
                   what=f"{window} completions")
        rows = system.sched.sql(
            "SELECT epoch(completed_at) AS t FROM task_history WHERE task_type = ? AND status = 'completed' "
            "AND epoch(completed_at) >= ? ORDER BY completed_at LIMIT ?",
            [tasks.tm_noop.qualified, released, window])
    if len(rows) != window:
        raise AssertionError(f"expected {window} completions after the gate opened, found {len(rows)}")
    return window / (rows[-1]["t"] - released)


def d(sizes: Sizes, repeats: int) -> Report:
    """D: dispatch throughput with a small versus a large backlog already queued."""
    report, w = Report(), sizes.d_window
    runners = {f"backlog {b:,}": (lambda r, b=b: dispatch_rate(b, w, sizes.w3_batch, r))
               for b in (sizes.d_small, sizes.d_large)}
    samples = measure(report, "D", runners, repeats, lambda v: fmt_rate(v, " tasks/s"))
    small, large = (samples[f"backlog {b:,}"] for b in (sizes.d_small, sizes.d_large))
    ratio = large.median / small.median
    for name, s in samples.items():
        mine = s is large
        report.rows.append(Row(
            f"D dispatch, first {w:,} completions", f"taskmill, {name}", fmt_rate(s.median, " tasks/s"),
            s.spread(lambda v: fmt_rate(v, "")), "",
            f"{sizes.d_large:,} ÷ {sizes.d_small:,}: {fmt_ratio(ratio)}" if mine else "",
            f"within 20 %: {status(abs(ratio - 1.0) <= 0.20)}" if mine else ""))
    report.notes.append(
        f"D: {WORKERS} `gate` tasks hold both workers while the backlog is submitted (batches of "
        f"{sizes.w3_batch:,}); the clock starts when the gate opens and stops at the {w:,}th no-op completion "
        "(worker-side `completed_at` from task_history). The ratio column here is large-backlog rate ÷ "
        "small-backlog rate.")
    return report


#: Workload name -> function(sizes, repeats) -> Report, in run order.
WORKLOADS: dict[str, Callable[[Sizes, int], Report]] = {"W1": w1, "W2": w2, "W3": w3, "D": d}
