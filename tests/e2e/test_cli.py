"""The command line against a served store and against a store nobody serves.

``taskmill serve`` runs in the background; every command runs as ``python -m
taskmill`` in a directory where the task module does not import (the command
line never needs it), and its output is checked as a user would read it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import taskmill as tm
from tests.polling import DEADLINE, poll_until
from tests.serving import Served, module_of, taskmill_cli
from tests.terminal import Terminal, needs_tmux

pytestmark = pytest.mark.timeout(300)


def ok(served: Served, *args: str, cwd: Path) -> str:
    done = taskmill_cli(*args, "--store", served.store, cwd=cwd)
    assert done.returncode == 0, f"{args}: {done.returncode} {done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def js(served: Served, *args: str, cwd: Path) -> Any:
    return json.loads(ok(served, *args, "--json", cwd=cwd))


def test_the_commands_read_and_steer_a_served_scheduler(served: Served, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # the task module does not import here
    flag = served.dir / "release"
    with tm.connect(served.store) as c:
        jobs = module_of(served)
        h = c.domain("media")
        dead = h.submit(jobs.boom, n=7).id
        c.wait(dead, timeout=DEADLINE)
        held = [h.submit(jobs.hold.options(group="g1", tags={"batch": "a"}), flag=str(flag), n=i).id
                for i in range(2)]
        queued = [h.submit(jobs.hold.options(group="g2", tags={"batch": "b"}), flag=str(flag), n=i).id
                  for i in range(2, 5)]
        poll_until(lambda: c.snapshot().running_count == 2, what="two tasks running")

        doc = js(served, "status", cwd=elsewhere)
        assert doc["served"] and doc["coordinator_pid"] == served.coordinator_pid
        assert doc["counts"]["running"] == 2 and doc["counts"]["pending"] == 3
        assert sorted(t["id"] for t in doc["running"]) == held
        assert {(q["group"], q["status"], q["tasks"]) for q in doc["queued"]} == {("g2", "pending", 3)}
        assert [f["id"] for f in doc["failures"]] == [dead] and "boom 7" in doc["failures"][0]["error"]
        assert doc["capacity"]["cpus_total"] > 0 and "pressure" in doc
        text = ok(served, "status", cwd=elsewhere)
        assert "2 running" in text and "last failures" in text and "boom 7" in text

        hist = js(served, "history", "--status", "dead_letter", cwd=elsewhere)
        assert [r["id"] for r in hist] == [dead] and hist[0]["retries"] == 1
        assert js(served, "history", "--type", "boom", "--since", "1h", cwd=elsewhere)[0]["id"] == dead
        assert js(served, "history", "--type", "double", cwd=elsewhere) == []
        assert [r["id"] for r in js(served, "dead-letter", "list", cwd=elsewhere)] == [dead]

        out = ok(served, "sql", "SELECT id, status FROM tasks ORDER BY id", "--csv", cwd=elsewhere)
        rows = list(csv.reader(io.StringIO(out)))
        assert rows[0] == ["id", "status"] and [int(r[0]) for r in rows[1:]] == held + queued

        # steering: a group paused with a deadline, a domain, everything; cancels by id, tag and group
        assert js(served, "pause", "--group", "g2", "--until", "30m", cwd=elsewhere) == {"paused": "group g2", "tasks": 3}
        groups = c.paused_groups()
        assert [g.group for g in groups] == ["g2"] and groups[0].resume_at is not None
        assert js(served, "status", cwd=elsewhere)["paused"][0]["scope"] == "g2"
        assert js(served, "resume", "--group", "g2", cwd=elsewhere)["tasks"] == 3
        ok(served, "pause", cwd=elsewhere)
        assert c.is_paused()
        ok(served, "resume", cwd=elsewhere)
        assert not c.is_paused()
        assert js(served, "cancel", str(queued[0]), cwd=elsewhere) == {"cancelled": [queued[0]]}
        assert js(served, "cancel", "--tag", "batch=b", cwd=elsewhere) == {"cancelled": queued[1:]}
        assert js(served, "cancel", "--group", "nothing-here", cwd=elsewhere) == {"cancelled": []}

        again = js(served, "dead-letter", "retry", str(dead), cwd=elsewhere)
        assert again["outcome"] == "inserted"
        flag.touch()  # (the held tasks hold both slots)
        assert c.wait(again["id"], timeout=DEADLINE).status == "dead_letter"
        for i in held:
            assert c.wait(i, timeout=DEADLINE).result == "released"
        before = c.sql("SELECT count(*) AS n FROM task_history")[0]["n"]
        exported = js(served, "export", str(elsewhere / "h.parquet"), "--since", "1h", cwd=elsewhere)
        assert exported["rows"] == before
        assert pd.read_parquet(exported["path"])["id"].tolist() == \
            [r["id"] for r in c.sql("SELECT id FROM task_history ORDER BY seq")]
        assert js(served, "prune", "--keep", "2", cwd=elsewhere) == {"pruned": before - 2}
        assert c.sql("SELECT count(*) AS n FROM task_history")[0]["n"] == 2


def test_a_store_nobody_serves_is_read_and_changes_are_refused(served: Served,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with tm.connect(served.store) as c:
        jobs = module_of(served)
        ids = [c.domain("media").submit(jobs.double, n=i).id for i in range(5)]
        for i in ids:
            c.wait(i, timeout=DEADLINE)
        c.domain("media").pause_group("later")
    served.stop()
    doc = js(served, "status", cwd=elsewhere)
    assert not doc["served"] and doc["paused"][0]["scope"] == "later" and doc["counts"] == {}
    newest_first = [r["id"] for r in js(served, "sql", "SELECT id FROM task_history ORDER BY seq DESC", cwd=elsewhere)]
    assert sorted(newest_first) == ids  # (two workers: the order they finished in is theirs)
    assert [r["id"] for r in js(served, "history", cwd=elsewhere)] == newest_first
    assert js(served, "sql", "SELECT sum(CAST(result AS INTEGER)) AS s FROM task_history", cwd=elsewhere) == [{"s": 20}]
    assert "(no coordinator serves it" in ok(served, "status", cwd=elsewhere)
    assert js(served, "export", "h.parquet", cwd=elsewhere)["rows"] == 5  # the offline store, read-only
    assert sorted(pd.read_parquet(elsewhere / "h.parquet")["id"]) == ids
    for args in (["cancel", "1"], ["pause"], ["resume", "--domain", "media"], ["dead-letter", "retry", "1"],
                 ["prune", "--keep", "1"]):
        done = taskmill_cli(*args, "--store", served.store, cwd=elsewhere)
        assert done.returncode == 1 and "taskmill serve" in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


MISTAKES = [
    (["history", "--limit", "0"], 2, "must be at least 1"),
    (["history", "--status", "finished"], 1, "--status takes one of"),
    (["history", "--since", "yesterday"], 1, "--since takes an ISO time"),
    (["sql", "DELETE FROM tasks"], 1, "read-only"),
    (["cancel"], 1, "exactly one of"),
    (["pause", "--until", "10m"], 1, "--until works with --group"),
    (["pause", "--domain", "nope"], 1, "nope"),
    (["prune"], 2, "one of the arguments --keep --older-than-days is required"),
    (["nonsense"], 2, "invalid choice"),
    (["export", "h.csv"], 1, "must end in .parquet"),
    (["export", "nowhere/h.parquet"], 1, "does not exist"),
]


def test_mistakes_are_one_line_with_the_fix(served: Served, tmp_path: Path) -> None:
    for args, code, says in MISTAKES:
        done = taskmill_cli(*args, "--store", served.store, cwd=tmp_path)
        assert done.returncode == code, (args, done.stderr)
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)


def test_a_missing_store_is_named(tmp_path: Path) -> None:
    done = taskmill_cli("status", "--store", str(tmp_path / "nope.duckdb"), cwd=tmp_path)
    assert done.returncode == 1 and "no store at" in done.stderr, done.stderr


def _showing(screen: str, *texts: str, times: int = 1) -> str | None:
    """``screen`` if it shows every one of ``texts`` (the last one at least ``times`` times)."""
    return screen if all(t in screen for t in texts) and screen.count(texts[-1]) >= times else None


@needs_tmux
def test_top_shows_the_scheduler_live_in_a_terminal_and_quits_on_q(served: Served, tmp_path: Path) -> None:
    flag = served.dir / "release"
    with tm.connect(served.store) as c:
        jobs = module_of(served)
        held = [c.domain("media").submit(jobs.hold, flag=str(flag), n=i).id for i in range(2)]
        command = f"{shlex.quote(sys.executable)} -m taskmill top --store {shlex.quote(served.store)}"
        with Terminal(command, tmp_path, height=45) as term:
            shown = poll_until(lambda: _showing(term.screen(), "running 2", "media::hold", times=2),
                               what="top showing the two running tasks")
            assert f"pid {served.coordinator_pid}" in shown and "q quits" in shown
            clock = re.search(r"\d\d:\d\d:\d\d", shown)
            assert clock is not None
            poll_until(lambda: _showing(term.screen(), "q quits") and clock.group(0) not in term.screen(),
                       what="the clock on the screen moving")
            flag.touch()
            for i in held:
                c.wait(i, timeout=DEADLINE)
            term.when("completed 2", "running 0", what="top showing the two tasks completed")
            term.keys("q")
            term.when("EXITED 0", what="top quitting on q")


def test_top_outside_a_terminal_points_to_status(served: Served, tmp_path: Path) -> None:
    done = taskmill_cli("top", "--store", served.store, cwd=tmp_path)
    assert done.returncode == 1 and "taskmill status" in done.stderr, done.stderr
