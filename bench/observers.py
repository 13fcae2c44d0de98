"""What watching costs: W1 (N no-ops end to end) with nobody watching, and with ``taskmill top``
(in a tmux terminal) and the dashboard (``taskmill dashboard`` with headless Chromium polling
the page) watching, side by side in one run (issue 16's target: within 5 %).

    python bench/observers.py                 # 20,000 no-ops, 7 repeats (about 2 minutes on 2 cores)
    python bench/observers.py --tasks 5000 --repeat 3

Each repeat runs both variants one after another on fresh schedulers (warmed up untimed; the
watchers attach to the running scheduler and have drawn at least once before the clock
starts). Needs tmux and chromium on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BENCH_DIR]
sys.path.insert(0, REPO_ROOT)

from bench.harness import machine_info  # noqa: E402
from bench.systems import PHASE_TIMEOUT, TaskmillSystem  # noqa: E402

CHUNK = 5000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Watchers:
    """``taskmill top`` in a tmux terminal and the dashboard in headless Chromium, on one store."""

    def __init__(self, store: str, workdir: str, top: bool = True, dashboard: bool = True) -> None:
        env = {**os.environ, "PYTHONPATH": REPO_ROOT}
        self.tmux = ["tmux", "-L", f"taskmill-bench-{os.getpid()}"]
        self.browser = self.dash = None
        if top:
            subprocess.run([*self.tmux, "new-session", "-d", "-s", "top", "-x", "160", "-y", "45",
                            f"{sys.executable} -m taskmill top --store {store}"], check=True, env=env)
        if dashboard:
            self._dashboard(store, workdir, env)
        time.sleep(3.0)  # the page has loaded and polls; top has drawn

    def _dashboard(self, store: str, workdir: str, env: dict[str, str]) -> None:
        self.dash = subprocess.Popen([sys.executable, "-m", "taskmill", "dashboard", "--store", store],
                                     stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        assert self.dash.stdout is not None
        line = self.dash.stdout.readline()
        url = line[line.index("http://"):].strip()
        self.browser = subprocess.Popen(
            [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={os.path.join(workdir, 'profile')}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def cpu(self) -> float:
        """CPU seconds used so far by the watchers: top, the dashboard server, the browser (all its processes)."""
        roots = [p.pid for p in (self.dash, self.browser) if p is not None]
        pane = subprocess.run([*self.tmux, "list-panes", "-a", "-F", "#{pane_pid}"], capture_output=True, text=True)
        roots += [int(x) for x in pane.stdout.split()]
        total = 0.0
        for pid in roots:
            try:
                root = psutil.Process(pid)
                for p in [root, *root.children(recursive=True)]:
                    t = p.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)
        for p in (self.browser, self.dash):
            if p is None:
                continue
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(30)


def one_run(n: int, variant: str, run: int) -> tuple[float, float]:
    system = TaskmillSystem(CHUNK)
    with system, tempfile.TemporaryDirectory(prefix="taskmill-bench-watch-") as workdir:
        watchers = None if variant == "none" else Watchers(system.sched.store_path, workdir, top="top" in variant,
                                                             dashboard="dashboard" in variant)
        try:
            payloads = [{"i": i, "run": f"watch-{run}-{variant}"} for i in range(n)]
            cpu0 = watchers.cpu() if watchers else 0.0
            t0 = time.perf_counter()
            system.submit("noop", payloads)
            system.sched.wait_idle(timeout=PHASE_TIMEOUT)
            seconds = time.perf_counter() - t0
            cpu = (watchers.cpu() - cpu0) if watchers else 0.0
            system.verify_finished()
        finally:
            if watchers is not None:
                watchers.close()
    return seconds, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--each", action="store_true", help="also top alone and the dashboard alone")
    args = ap.parse_args()
    if CHROMIUM is None or shutil.which("tmux") is None:
        print("bench/observers.py needs tmux and chromium on PATH", file=sys.stderr)
        return 2
    variants = ["none", "top", "dashboard", "top + dashboard"] if args.each else ["none", "top + dashboard"]
    samples: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[float]] = {v: [] for v in variants}
    for run in range(args.repeat):
        for v in variants:
            seconds, cpu = one_run(args.tasks, v, run)
            samples[v].append(seconds)
            cpus[v].append(cpu)
            print(f"  [{run + 1}/{args.repeat}] {v}: {seconds:.3f} s, watchers' CPU {cpu:.2f} s", file=sys.stderr,
                  flush=True)
    print("# Watching W1: top and the dashboard\n")
    for k, v in machine_info(REPO_ROOT).items():
        print(f"- **{k}**: {v}")
    print(f"- **run**: {args.tasks:,} no-ops, `submit_batch` chunks of {CHUNK:,}, {args.repeat} repeats, medians\n")
    base = statistics.median(samples["none"])
    print("| watching | median | min–max | none ÷ this (medians) | none ÷ this (per repeat, median) "
          "| watchers' CPU during the run | target |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        med = statistics.median(samples[v])
        paired = statistics.median(a / b for a, b in zip(samples["none"], samples[v]))
        target = "" if v == "none" else ("≥ 0.95: ✅" if min(base / med, paired) >= 0.95 else "≥ 0.95: ❌ missed")
        print(f"| {v} | {med:.3f} s | {min(samples[v]):.3f}–{max(samples[v]):.3f} s | {base / med:.2f} "
              f"| {paired:.2f} | {statistics.median(cpus[v]):.2f} s | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
