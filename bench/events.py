"""What subscribers cost: W1 (N no-ops end to end) with no subscriber, three that read every
event, and one that reads nothing, side by side in one run.

    python bench/events.py                 # 20,000 no-ops, 9 repeats (about 2 minutes on 2 cores)
    python bench/events.py --tasks 5000 --repeat 3

Each repeat runs the three variants one after another on fresh schedulers (started and
warmed up untimed, subscribers attached before the clock starts). The clock runs from the
first submission until ``wait_idle`` returns; readers are threads of the benchmark process
that iterate their stream (``type(ev)``, ``ev.header.task_id``). After each run the readers
must have seen every event of it (untimed check). Two ratios are shown: of the medians, and
the median of each repeat's own ratio (the variants of a repeat run back to back, so machine
drift cancels there). Targets (issue 15): within 10 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH_DIR]
sys.path.insert(0, REPO_ROOT)

import psutil  # noqa: E402

import taskmill as tm  # noqa: E402
from bench.harness import machine_info  # noqa: E402
from bench.systems import PHASE_TIMEOUT, TaskmillSystem  # noqa: E402

CHUNK = 5000


class Reader(threading.Thread):
    """Reads every event of a stream until told to stop; counts what it saw."""

    def __init__(self, stream: tm.EventStream) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.seen = 0
        self.completed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            ev = self.stream.get(timeout=0.1)
            if ev is None:
                continue
            self.seen += 1
            if isinstance(ev, tm.events.TaskEvent):
                _ = ev.header.task_id
            if type(ev) is tm.events.Completed:
                self.completed += 1


def one_run(n: int, variant: str, run: int) -> tuple[float, float, float, str]:
    """Seconds for W1 with ``variant`` subscribers, the CPU seconds the coordinator and this
    (subscribing) process used meanwhile, and a note on what the subscribers saw."""
    system = TaskmillSystem(CHUNK)
    with system:
        coordinator = psutil.Process(system.sched.coordinator_pid)
        me = psutil.Process()
        readers: list[Reader] = []
        stalled: list[tm.EventStream] = []
        if variant == "3 readers":
            readers = [Reader(system.sched.subscribe(buffer=n * 3)) for _ in range(3)]
            for r in readers:
                r.start()
        elif variant == "1 stalled":
            stalled = [system.sched.subscribe()]
        payloads = [{"i": i, "run": f"events-{run}-{variant}"} for i in range(n)]
        c0, h0 = sum(coordinator.cpu_times()[:2]), sum(me.cpu_times()[:2])
        t0 = time.perf_counter()
        system.submit("noop", payloads)
        system.sched.wait_idle(timeout=PHASE_TIMEOUT)
        seconds = time.perf_counter() - t0
        coord_cpu = sum(coordinator.cpu_times()[:2]) - c0
        system.verify_finished()
        note = ""
        if readers:
            deadline = time.monotonic() + 60
            while any(r.completed < n for r in readers) and time.monotonic() < deadline:
                time.sleep(0.05)
            for r in readers:
                r.stop.set()
                r.join()
                r.stream.close()
            note = f"Completed seen {[r.completed for r in readers]}, missed {[r.stream.missed for r in readers]}"
            if any(r.completed != n for r in readers):
                raise AssertionError(f"a reader did not see every Completed: {note}")
        host_cpu = sum(me.cpu_times()[:2]) - h0  # (readers included: they had to see every event)
        for s in stalled:
            time.sleep(0.5)  # its reader thread takes what arrived
            note = f"stalled subscriber missed {s.missed:,} events"
            s.close()
    return seconds, coord_cpu, host_cpu, note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    variants = ["none", "3 readers", "1 stalled"]
    samples: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    notes: dict[str, str] = {}
    for run in range(args.repeat):
        for v in variants:
            seconds, coord_cpu, host_cpu, note = one_run(args.tasks, v, run)
            samples[v].append(seconds)
            cpu[v].append((coord_cpu, host_cpu))
            notes[v] = note
            print(f"  [{run + 1}/{args.repeat}] {v}: {seconds:.3f} s, coordinator CPU {coord_cpu:.2f} s, "
                  f"this process {host_cpu:.2f} s {note}", file=sys.stderr, flush=True)
    print("# Event subscribers and W1\n")
    for k, v in machine_info(REPO_ROOT).items():
        print(f"- **{k}**: {v}")
    print(f"- **run**: {args.tasks:,} no-ops, `submit_batch` chunks of {CHUNK:,}, {args.repeat} repeats, medians\n")
    base = statistics.median(samples["none"])
    print("| subscribers | median | min–max | none ÷ this (medians) | none ÷ this (per repeat, median) "
          "| coordinator CPU | this process's CPU | target |")
    print("|---|---|---|---|---|---|---|---|")
    for v in variants:
        med = statistics.median(samples[v])
        ratio = base / med
        paired = statistics.median(a / b for a, b in zip(samples["none"], samples[v]))
        target = "" if v == "none" else ("≥ 0.90: ✅" if min(ratio, paired) >= 0.90 else "≥ 0.90: ❌ missed")
        coord_cpu = statistics.median(c for c, _ in cpu[v])
        host_cpu = statistics.median(h for _, h in cpu[v])
        print(f"| {v} | {med:.3f} s | {min(samples[v]):.3f}–{max(samples[v]):.3f} s | {ratio:.2f} | {paired:.2f} "
              f"| {coord_cpu:.2f} s | {host_cpu:.2f} s | {target} |")
    print()
    for v, note in notes.items():
        if note:
            print(f"- {v}: {note} (last repeat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
