"""The feel of a long job run from a script: the bar, Ctrl-C, a coordinator that dies.

Scripts run as real processes; Ctrl-C is a real keypress in a real terminal
(tmux), as a user would press it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.polling import DEADLINE, poll_until
from tests.terminal import Terminal, needs_tmux

pytestmark = pytest.mark.timeout(240)

SCRIPT = """
import os, sys, threading, time
import taskmill as tm

d = tm.Domain("d")

@d.task(retry=tm.RetryPolicy.none())
def work(ctx, i: int, pause: float) -> int:
    time.sleep(pause)
    if i % 10 == 9:
        raise ValueError(f"task {{i}} fails")
    return i

if __name__ == "__main__":
    pause = float(sys.argv[1])
    with tm.Scheduler("job.duckdb", [d], max_concurrency=2) as s:
        print("coordinator", s.coordinator_pid, flush=True)
        h = s.domain(d)
        if not s.store.pending_count():
            out = h.submit_batch([work.call(i=i, pause=pause) for i in range({first})])
            s.wait(out.outcomes[0].id, timeout=60)  # some end before the bar starts: they count too
            later = [work.call(i=i, pause=pause) for i in range({first}, {first} + {more})]
            if later:
                threading.Timer(0.3, lambda: h.submit_batch(later)).start()  # while the bar runs
        s.wait_idle(timeout=120, progress=True)
        print("ended", s.sql("SELECT count(*) AS n FROM task_history")[0]["n"], flush=True)
"""


def script(tmp_path: Path, first: int = 40, more: int = 20) -> Path:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(SCRIPT.format(first=first, more=more)))
    return path


def test_the_bar_counts_every_task_of_the_run_with_rate_and_failures(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(script(tmp_path)), "0.05"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=DEADLINE * 2, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    bar = [ln for ln in done.stdout.splitlines() if ln.startswith("tasks")][-1]
    assert "60/60" in bar, bar  # the 20 submitted while it ran are counted too
    assert re.search(r"[\d,.]+/s", bar) and "failed 6" in bar and "done" in bar, bar
    assert "ended 60" in done.stdout


@needs_tmux
def test_ctrl_c_says_what_stays_queued_and_a_rerun_resumes_it(tmp_path: Path, no_leaks: object) -> None:
    path = script(tmp_path, first=30, more=0)
    with Terminal(f"{sys.executable} {path} 0.3", tmp_path, width=200) as term:
        poll_until(lambda: re.search(r" [2-9]\d*/30 ", term.screen()), what="some tasks done")
        term.keys("C-c")
        screen = term.when("EXITED", what="the script's end")
    said = re.search(r"taskmill: interrupted; (\d+) tasks stay queued in (\S+); running this again resumes them",
                     screen.replace("\n", ""))
    assert said is not None, screen
    assert said.group(2) == str(tmp_path / "job.duckdb") and 0 < int(said.group(1)) < 30
    assert "Traceback" not in screen and "EXITED 130" in screen, screen
    again = subprocess.run([sys.executable, str(path), "0.01"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=DEADLINE * 2)
    assert again.returncode == 0 and "ended 30" in again.stdout, again.stderr  # every task, once


def test_a_dead_coordinator_is_one_clear_error_and_nothing_else_speaks(tmp_path: Path, no_leaks: object) -> None:
    proc = subprocess.Popen([sys.executable, str(script(tmp_path, first=40, more=0)), "0.5"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        coordinator = int(line.split()[1])
        os.kill(coordinator, signal.SIGKILL)
        _out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert f"SchedulerBroken: the coordinator (pid {coordinator}) exited with code -9" in err, err
    for noise in ("BrokenPipeError", "resource_tracker", "leaked", "Exception ignored"):
        assert noise not in err, err


CHATTY = """
import time
import taskmill as tm

d = tm.Domain("chat")

@d.task
def chatty(ctx, i: int) -> int:
    for k in range(3):
        print(f"task {i} says line {k}")
        time.sleep(0.05)
    ctx.log.info("task log line", i=i)
    return i

if __name__ == "__main__":
    with tm.Scheduler("chat.duckdb", [d], max_concurrency=2) as s:
        s.domain(d).submit_batch([chatty.call(i=i) for i in range(12)])
        s.wait_idle(timeout=120, progress=True)
"""


@needs_tmux
def test_task_output_goes_above_the_bar_and_never_tears_it(tmp_path: Path, no_leaks: object) -> None:
    (tmp_path / "chat.py").write_text(textwrap.dedent(CHATTY))
    # unbuffered (as in CI): print()'s text and its newline are two writes, and lines of two tasks tore apart
    with Terminal(f"PYTHONUNBUFFERED=1 {sys.executable} {tmp_path / 'chat.py'}", tmp_path, height=80) as term:
        screen = term.when("EXITED", what="the script's end")
    lines = [ln.rstrip() for ln in screen.splitlines() if ln.strip()]
    said = [ln for ln in lines if "says line" in ln]
    assert sorted(said) == sorted(f"task {i} says line {k}" for i in range(12) for k in range(3)), lines
    assert sum("task log line" in ln for ln in lines) == 12, lines
    bars = [ln for ln in lines if "━" in ln]
    assert len(bars) == 1 and "12/12" in bars[0] and bars[0].startswith("tasks"), lines  # drawn once, whole
    assert lines.index(bars[0]) == len(lines) - 2 and lines[-1] == "EXITED 0", lines  # and below them all
