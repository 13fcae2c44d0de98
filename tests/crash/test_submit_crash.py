"""SIGKILL of the coordinator while single submissions stream in from several threads.

A single ``submit()`` returns once its submission is durable: journaled (one
append and ``fdatasync``), not yet in DuckDB (``taskmill.store.journal``). Four
threads submit one task at a time while the pool runs them, the coordinator
is killed at a random moment, and a new Scheduler on the store replays the
journal and finishes the work. Checked: every submission a thread saw
acknowledged is there after the restart (one history row, completed), and no
submission exists twice, acknowledged or not (a submission the kill cut off
is there once or not at all).
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from coordinators import gone
from polling import poll_until
from serving import taskmill_cli

import taskmill as tm

DEADLINE = 90.0
THREADS = 4

stream = tm.Domain("stream")


@stream.task
def item(ctx: tm.TaskContext, t: int, n: int) -> int:
    return n


@pytest.mark.parametrize(("seed", "durability"), [(1, "fsync"), (2, "fsync"), (3, "os")])
def test_sigkill_while_single_submits_stream_loses_no_acknowledged_one(store_path: str, seed: int,
                                                                     durability: str) -> None:
    """``durability="os"`` skips the fdatasync: a killed process loses nothing either (the kernel
    holds what was written); only a crash of the machine could."""
    delay = random.Random(seed).uniform(0.3, 1.2)
    acked: list[list[int]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    s = tm.Scheduler(store_path=store_path, domains=[stream], max_concurrency=2, durability=durability).start()
    try:
        h = s.domain(stream)
        for n in range(20):  # the pool is warm and runs tasks while the stream goes on
            h.submit(item, t=-1, n=n)

        def submitter(t: int) -> None:
            n = 0
            try:
                while True:
                    h.submit(item, t=t, n=n)
                    acked[t].append(n)  # returned: durable
                    n += 1
            except (tm.SchedulerBroken, tm.SchedulerClosed):
                return
            except BaseException as e:  # noqa: BLE001 - reported by the test below
                errors.append(e)

        threads = [threading.Thread(target=submitter, args=(t,), daemon=True) for t in range(THREADS)]
        for th in threads:
            th.start()
        poll_until(lambda: sum(map(len, acked)) >= 100, DEADLINE, what="the stream to be under way")
        time.sleep(delay)
        coord = s.coordinator_pid
        os.kill(coord, signal.SIGKILL)
        poll_until(lambda: gone(coord), 30, what="the coordinator to die")
        for th in threads:
            th.join(DEADLINE)
            assert not th.is_alive(), "a submitter hung on a dead coordinator"
    finally:
        t0 = time.monotonic()
        s.close()
        assert time.monotonic() - t0 < 30, "closing the broken scheduler hung"
    assert not errors, errors
    journal = Path(store_path + ".journal")
    assert journal.exists() and journal.stat().st_size > 0, "the kill left nothing journaled to replay"
    if seed == 1:  # the command line, reading the store offline, says what it cannot show yet
        said = taskmill_cli("status", "--store", store_path, cwd=Path(store_path).parent).stderr
        assert re.search(r"journal holds \d+ acknowledged commits a crash left out of the store", said), said

    with tm.Scheduler(store_path=store_path, domains=[stream], max_concurrency=2) as s2:
        s2.wait_idle(timeout=DEADLINE)
        rows = s2.sql("SELECT (payload->>'t')::INTEGER AS t, (payload->>'n')::INTEGER AS n, status "
                      "FROM task_history WHERE (payload->>'t')::INTEGER >= 0")
        assert s2.sql("SELECT count(*) AS n FROM tasks") == [{"n": 0}]
    have = Counter((r["t"], r["n"]) for r in rows)
    twice = [k for k, c in have.items() if c > 1]
    assert not twice, f"{len(twice)} submissions exist more than once, e.g. {twice[:5]}"
    lost = [(t, n) for t in range(THREADS) for n in acked[t] if (t, n) not in have]
    assert not lost, f"{len(lost)} acknowledged submissions are gone, e.g. {lost[:5]}"
    assert {r["status"] for r in rows} == {"completed"}
    for t in range(THREADS):  # what is there beyond the acknowledged is at most the one cut off
        assert max((n for (tt, n) in have if tt == t), default=-1) <= len(acked[t])
    assert not journal.exists(), "a clean close leaves the journal behind"
    print(f"seed {seed}: killed {delay:.2f}s in, {sum(map(len, acked))} acknowledged, {len(have)} stored")
