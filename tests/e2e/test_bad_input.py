"""Bad input and limits (SPEC §6): every one is a clear exception and nothing is half-written."""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

import duckdb
import pytest

import taskmill as tm
from taskmill import protocol

DEADLINE = 60.0
MiB = 1024 * 1024

alpha = tm.Domain("alpha")
beta = tm.Domain("beta")


@alpha.task
def echo(ctx: tm.TaskContext, x: Any = None) -> Any:
    return x


@alpha.task
def size_of(ctx: tm.TaskContext, s: str) -> int:
    return len(s)


@beta.task
def beta_task(ctx: tm.TaskContext, x: int = 0) -> int:
    return x


def sched(store: str, **kw: Any) -> tm.Scheduler:
    kw.setdefault("max_concurrency", 1)
    return tm.Scheduler(store_path=store, domains=[alpha, beta], **kw)


def counts(s: tm.Scheduler) -> tuple[int, int]:
    t = s.sql("SELECT count(*) AS n FROM tasks")[0]["n"]
    h = s.sql("SELECT count(*) AS n FROM task_history")[0]["n"]
    return t, h


# --------------------------------------------------------------------------- domains and task types


def test_unknown_domain(store_path: str) -> None:
    with sched(store_path) as s:
        with pytest.raises(tm.UnknownDomain, match="nope"):
            s.domain("nope")
        with pytest.raises(LookupError):
            s.domain("nope")
        assert s.try_domain("nope") is None
        impostor = tm.Domain("alpha")  # same name, not the registered object
        assert s.try_domain(impostor) is None
        with pytest.raises(tm.UnknownDomain):
            s.domain(impostor)
        assert s.domain("alpha") is s.domain(alpha)
        assert s.try_domain(beta) is s.domain("beta")


def test_task_of_another_domain(store_path: str) -> None:
    late = tm.Domain("late")

    @late.task
    def first(ctx: tm.TaskContext) -> int:
        return 1

    with tm.Scheduler(store_path=store_path, domains=[alpha, late], max_concurrency=1) as s:
        with pytest.raises(tm.UnknownTaskType, match="beta"):
            s.domain(alpha).submit(beta_task, x=1)
        with pytest.raises(tm.UnknownTaskType):
            s.domain(alpha).submit(beta_task.options(priority=1), x=1)
        with pytest.raises(tm.UnknownTaskType):
            s.domain(alpha).submit(beta_task.call(x=1))

        @late.task
        def registered_after_start(ctx: tm.TaskContext) -> int:
            return 2

        with pytest.raises(tm.UnknownTaskType, match="not registered"):
            s.domain(late).submit(registered_after_start)
        assert counts(s) == (0, 0)
        assert s.wait(s.domain(late).submit(first).id, timeout=DEADLINE).result == 1


def test_configuration_errors() -> None:
    d = tm.Domain("cfg")
    with pytest.raises(tm.ConfigError):
        tm.Scheduler(store_path=":memory:", domains=[d, tm.Domain("cfg")])

    @d.task
    def t(ctx: tm.TaskContext) -> None: ...

    with pytest.raises(tm.ConfigError):
        d.task(name="t")(lambda ctx: None)
    with pytest.raises(tm.ConfigError):
        d.task(lambda ctx: None)  # a lambda needs a name
    with pytest.raises(ValueError):
        tm.Domain("bad::name")
    with pytest.raises(ValueError):
        tm.Domain("x", default_priority=256)
    with pytest.raises(ValueError):
        d.task(name="p", priority=-1)(lambda ctx: None)
    with pytest.raises(ValueError):
        d.task(name="c", cpus=0)(lambda ctx: None)
    with pytest.raises(ValueError):
        tm.IoBudget.disk(-1, 0)
    with pytest.raises(ValueError):
        tm.Scheduler(store_path=":memory:", max_concurrency=0)
    with pytest.raises(ValueError):
        tm.RetryPolicy.constant(max_retries=-1)


# --------------------------------------------------------------------------- payloads and options


@pytest.mark.parametrize("payload", [
    pytest.param({"x": object()}, id="object"),
    pytest.param({"x": {1, 2}}, id="set"),
    pytest.param({"x": b"bytes"}, id="bytes"),
    pytest.param({"x": math.nan}, id="nan"),
    pytest.param({"x": [math.inf]}, id="inf"),
    pytest.param({"x": "\ud800"}, id="lone-surrogate"),
])
def test_non_json_payload_is_refused(store_path: str, payload: dict) -> None:
    with sched(store_path) as s:
        h = s.domain(alpha)
        with pytest.raises(tm.InvalidPayload):
            h.submit(echo, **payload)
        with pytest.raises(ValueError):  # InvalidPayload is a ValueError too
            h.submit(echo.options(priority=3), **payload)
        assert counts(s) == (0, 0)
        assert s.wait(h.submit(echo, x=[1, "two", None]).id, timeout=DEADLINE).result == [1, "two", None]


def test_payload_size_limit(store_path: str) -> None:
    overhead = len('{"s":""}')
    with sched(store_path) as s:
        h = s.domain(alpha)
        with pytest.raises(tm.InvalidPayload, match="1048576"):
            h.submit(size_of, s="a" * (MiB - overhead + 1))
        with pytest.raises(tm.InvalidPayload):  # counted in UTF-8 bytes, not characters
            h.submit(size_of, s="é" * (MiB // 2))
        assert counts(s) == (0, 0)
        ok = h.submit(size_of, s="a" * (MiB - overhead))  # exactly 1 MiB is accepted
        rec = s.wait(ok.id, timeout=DEADLINE)
        assert rec.status == "completed" and rec.result == MiB - overhead


@pytest.mark.parametrize("prio,exc", [(256, ValueError), (-1, ValueError), (1000, ValueError), ("high", TypeError),
                                      (1.5, TypeError)])
def test_priority_out_of_range(store_path: str, prio: Any, exc: type) -> None:
    with sched(store_path) as s:
        h = s.domain(alpha)
        with pytest.raises(exc):
            h.submit(echo.options(priority=prio), x=1)
        with pytest.raises(tm.InvalidSubmission):
            h.submit_batch([echo.call(x=0), echo.options(priority=prio).call(x=1)])
        assert counts(s) == (0, 0)
        for good in (0, 255, tm.Priority.HIGH):
            assert isinstance(h.submit(echo.options(priority=good), x=good), tm.Inserted)
        s.wait_idle(timeout=DEADLINE)


def test_other_option_limits(store_path: str) -> None:
    with sched(store_path) as s:
        h = s.domain(alpha)
        bad = [
            echo.options(cpus=0),
            echo.options(cpus=-1),
            echo.options(memory=-5),
            echo.options(expected_io="lots"),
            echo.options(tags={f"k{i}": "v" for i in range(33)}),
            echo.options(tags={"k" * 65: "v"}),
            echo.options(tags={"k": "v" * 257}),
            echo.options(tags={"k": 1}),
            echo.options(timeout=-1),
            echo.options(retry="often"),
            echo.options(duplicate="sometimes"),
            echo.options(key=42),
        ]
        for i, opt in enumerate(bad):
            with pytest.raises((ValueError, TypeError)):
                h.submit(opt, x=i)
        with pytest.raises(TypeError):
            echo.options(colour="blue")
        with pytest.raises(TypeError):
            h.submit(echo.call(x=1), x=2)  # payload twice
        with pytest.raises(TypeError):
            h.submit("alpha::echo", x=1)
        assert counts(s) == (0, 0)
        assert isinstance(h.submit(echo.options(tags={f"k{i}": "v" for i in range(32)}), x=1), tm.Inserted)
        s.wait_idle(timeout=DEADLINE)


@pytest.mark.parametrize("bad_index,bad_item", [
    pytest.param(0, lambda: size_of.call(s="a" * (MiB + 1)), id="oversize-first"),
    pytest.param(1, lambda: echo.options(priority=256).call(x=1), id="priority"),
    pytest.param(2, lambda: echo.call(x=object()), id="non-json"),
    pytest.param(3, lambda: beta_task.call(x=1), id="other-domain"),
    pytest.param(4, lambda: 42, id="not-a-submission"),
    pytest.param(5, lambda: echo.options(tags={"k": 1}).call(x=1), id="bad-tag"),
])
def test_batch_with_one_bad_item_writes_nothing(store_path: str, bad_index: int, bad_item: Any) -> None:
    with sched(store_path) as s:
        h = s.domain(alpha)
        first = h.submit(echo, x="before")
        s.wait(first.id, timeout=DEADLINE)
        before = counts(s)
        items = [echo.call(x=f"item{i}") for i in range(8)]
        items[bad_index] = bad_item()
        with pytest.raises(tm.InvalidSubmission) as info:
            h.submit_batch(items)
        assert info.value.index == bad_index
        assert f"item {bad_index}" in str(info.value)
        assert counts(s) == before
        assert s.store.pending_count() == 0
        # the same batch without the bad item goes through whole
        del items[bad_index]
        out = h.submit_batch(items)
        assert len(out.inserted) == 7
        # no id was burnt by the refused batch
        assert out.inserted[0] == first.id + 1
        s.wait_idle(timeout=DEADLINE)
        assert counts(s) == (0, 8)


# --------------------------------------------------------------------------- stores


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _text(path: Path) -> None:
    path.write_text("id,name\n1,photo.jpg\n" * 100)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign_duckdb(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE photos (id INTEGER, path VARCHAR)")
    con.execute("INSERT INTO photos VALUES (1, '/a.jpg')")
    con.close()


def _foreign_meta(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('app', 'something-else'), ('schema_version', '1')")
    con.close()


def _sqlite(path: Path) -> None:
    con = sqlite3.connect(str(path))
    con.execute("CREATE TABLE photos (id INTEGER)")
    con.commit()
    con.close()


@pytest.mark.parametrize("make", [
    _random_bytes, _text, _empty, _foreign_duckdb, _foreign_meta,
    _sqlite,
])
def test_not_a_taskmill_store(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "store.duckdb"
    make(path)
    before = path.read_bytes()
    t0 = time.monotonic()
    with pytest.raises(tm.NotATaskmillStore):
        tm.Scheduler(store_path=str(path), domains=[alpha], max_concurrency=1).start()
    assert time.monotonic() - t0 < 30
    assert path.read_bytes() == before, "the foreign file was modified"
    assert not os.path.exists(str(path) + ".taskmill.json")


def test_schema_too_new(store_path: str) -> None:
    with sched(store_path) as s:
        s.wait(s.domain(alpha).submit(echo, x=1).id, timeout=DEADLINE)
    con = duckdb.connect(store_path)
    (version,) = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(int(version) + 1)])
    con.close()
    with pytest.raises(tm.SchemaTooNew, match=str(int(version) + 1)):
        sched(store_path).start()
    con = duckdb.connect(store_path, read_only=True)
    try:  # untouched: still the newer version and the old history
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(int(version) + 1),)
        assert con.execute("SELECT count(*) FROM task_history").fetchone() == (1,)
    finally:
        con.close()


def test_second_scheduler_on_same_store_is_locked(store_path: str) -> None:
    with sched(store_path) as s:
        h = s.domain(alpha)
        with pytest.raises(tm.StoreLocked):
            sched(store_path).start()
        # the first one is unharmed
        assert s.wait(h.submit(echo, x="still here").id, timeout=DEADLINE).result == "still here"
    # once closed, the store is free again
    with sched(store_path) as s2:
        assert s2.sql("SELECT count(*) AS n FROM task_history") == [{"n": 1}]


def test_store_held_by_another_duckdb_process_is_locked(store_path: str) -> None:
    with sched(store_path) as s:
        s.wait(s.domain(alpha).submit(echo, x=1).id, timeout=DEADLINE)
    holder = duckdb.connect(store_path)  # this (test) process holds the write lock
    try:
        with pytest.raises(tm.StoreLocked):
            sched(store_path).start()
    finally:
        holder.close()
    with sched(store_path) as s:
        assert counts(s) == (0, 1)


# --------------------------------------------------------------------------- sql() is read-only


WRITES = [
    "DELETE FROM task_history",
    "UPDATE task_history SET status = 'failed'",
    "INSERT INTO meta VALUES ('x', 'y')",
    "CREATE TABLE evil (a INTEGER)",
    "CREATE TEMP TABLE evil AS SELECT 1",
    "DROP TABLE task_history",
    "ALTER TABLE tasks ADD COLUMN evil INTEGER",
    "SELECT 1; DELETE FROM task_history",
    "SELECT 1; SELECT 2",
    "COPY task_history TO '{out}'",
    "EXPORT DATABASE '{out}'",
    "ATTACH '{out}' AS other",
    "CHECKPOINT",
    "SET memory_limit = '1MB'",
    "PRAGMA memory_limit = '1MB'",
    "INSTALL sqlite",
    "VACUUM",
    "BEGIN TRANSACTION",
]


def _store_state(s: tm.Scheduler) -> Any:
    return (s.sql("SELECT id, status FROM task_history ORDER BY id"),
            s.sql("SELECT key, value FROM meta ORDER BY key"),
            s.sql("SELECT table_name FROM information_schema.tables ORDER BY 1"),
            s.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks' ORDER BY 1"),
            s.sql("SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t"))


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory: Any) -> str:
    path = str(tmp_path_factory.mktemp("sqlstore") / "store.duckdb")
    with sched(path) as s:
        h = s.domain(alpha)
        for i in range(3):
            s.wait(h.submit(echo, x=i).id, timeout=DEADLINE)
    return path


def test_sql_refuses_writes_and_nothing_is_written(finished_store: str, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    with sched(finished_store) as s:
        before = _store_state(s)
        for q in WRITES:
            with pytest.raises(tm.QueryRefused):
                s.sql(q.format(out=out))
            assert not os.path.exists(out), q
        assert _store_state(s) == before
        # malformed SQL is a StoreError, not a crash
        with pytest.raises(tm.StoreError):
            s.sql("SELEC nonsense FROM")
        with pytest.raises(tm.StoreError):
            s.sql("SELECT * FROM no_such_table")
        with pytest.raises(TypeError):
            s.sql(b"SELECT 1")  # type: ignore[arg-type]
        # reads work, the scheduler is fine
        assert s.sql("SELECT 42 AS answer") == [{"answer": 42}]
        assert s.sql("SELECT count(*) AS n FROM task_history WHERE payload->>'x' = $x", {"x": "1"}) == [{"n": 1}]
        assert s.wait(s.domain(alpha).submit(echo, x=99).id, timeout=DEADLINE).result == 99


@pytest.mark.parametrize("query", [
    "EXPLAIN ANALYZE DELETE FROM task_history",
    "EXPLAIN ANALYZE UPDATE meta SET value = '999' WHERE key = 'schema_version'",
    "WITH gone AS (DELETE FROM task_history RETURNING id) SELECT count(*) FROM gone",
])
def test_sql_write_hidden_in_a_read_is_not_persisted(finished_store: str, query: str) -> None:
    with sched(finished_store) as s:
        before = _store_state(s)
        try:
            s.sql(query)
        except tm.StoreError:
            pass  # refusing is fine too
        assert _store_state(s) == before
    with sched(finished_store) as s:  # and it did not persist across a restart either
        assert _store_state(s) == before


@pytest.mark.parametrize("query", [
    "EXPLAIN ANALYZE COPY task_history TO '{out}'",
    "EXPLAIN ANALYZE SET memory_limit = '123MB'",
    "EXPLAIN ANALYZE SET GLOBAL threads = 1",
    "EXPLAIN ANALYZE CHECKPOINT",
])
def test_sql_explain_analyze_cannot_write(finished_store: str, tmp_path: Path, query: str) -> None:
    """EXPLAIN ANALYZE executes its statement, and neither a file write nor a SET is undone by a rollback."""
    out = str(tmp_path / "leak.csv")
    with sched(finished_store) as s:
        before = _store_state(s)
        with pytest.raises(tm.QueryRefused):
            s.sql(query.format(out=out))
        assert not os.path.exists(out)
        assert _store_state(s) == before


# --------------------------------------------------------------------------- the control socket


def test_unauthenticated_client_is_refused(store_path: str) -> None:
    with sched(store_path) as s:
        path = s._process.socket_path
        assert os.path.exists(path)
        assert (os.stat(os.path.dirname(path)).st_mode & 0o077) == 0, "runtime dir is readable by others"
        for _ in range(3):
            with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
                Client(path, family="AF_UNIX", authkey=b"wrong key")
        # no key at all: the client skips the handshake and sends a request straight away
        c = Client(path, family="AF_UNIX")
        c.send(protocol.Call("snapshot", ()))
        got: list[bytes] = []
        try:
            while c.poll(DEADLINE):
                got.append(c.recv_bytes())
        except (EOFError, ConnectionError):
            pass
        finally:
            c.close()
        assert got and got[0].startswith(b"#CHALLENGE#"), got
        assert all(m.startswith(b"#") for m in got), f"a reply was sent to an unauthenticated peer: {got!r}"
        # garbage instead of a handshake
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(path)
        raw.sendall(b"\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n")
        raw.close()
        # the scheduler keeps working, also for new connections (a fresh thread opens one)
        h = s.domain(alpha)
        assert s.wait(h.submit(echo, x="ok").id, timeout=DEADLINE).result == "ok"
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(s.snapshot().running_count), daemon=True)
        t.start()
        t.join(DEADLINE)
        assert box == [0]


def test_silent_client_does_not_block_new_connections(store_path: str) -> None:
    with sched(store_path) as s:
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.connect(s._process.socket_path)
        try:
            box: list[Any] = []
            t = threading.Thread(target=lambda: box.append(s.snapshot().running_count), daemon=True)
            t.start()
            t.join(10.0)
            answered = box == [0]
        finally:
            silent.close()  # unblocks the accept thread either way
            t.join(DEADLINE)
        assert answered, "a new connection was not served while a silent peer was connected"


# --------------------------------------------------------------------------- task modules on sys.path


TASK_MODULE = """
import taskmill as tm

jobs = tm.Domain("jobs")

def helper(x):
    return x + 1

@jobs.task
def bump(ctx, x):
    return helper(x)
"""

HOST_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])          # the task module is importable only through sys.path
import mytasks
import taskmill as tm

with tm.Scheduler(store_path=sys.argv[2], domains=[mytasks.jobs], max_concurrency=1) as s:
    out = s.domain(mytasks.jobs).submit(mytasks.bump, x=1)
    print(json.dumps(s.wait(out.id, timeout=60).result))
"""


def test_task_module_only_on_sys_path(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mytasks.py").write_text(textwrap.dedent(TASK_MODULE))
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST_SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), str(pkg), str(tmp_path / "s.duckdb")], cwd=tmp_path,
                          env=env, check=False, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == 2


FAILED_START_SCRIPT = """
import os, sys
import taskmill as tm

d = tm.Domain("d")
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(os.urandom(4096))
for _ in range(3):
    try:
        tm.Scheduler(store_path=path, domains=[d], max_concurrency=1).start()
    except tm.NotATaskmillStore:
        print("refused", flush=True)
"""


def test_failed_start_is_quiet_and_clean(tmp_path: Path) -> None:
    script = tmp_path / "failing.py"
    script.write_text(textwrap.dedent(FAILED_START_SCRIPT))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "junk.duckdb")], cwd=tmp_path,
                          check=False, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["refused"] * 3
    assert "leaked" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
