"""Connections are bounded: per host thread while it lives, handshakes in time and number, EMFILE survived.

The host runs in a subprocess with a 256-descriptor limit (inherited by its
coordinator), as a user under a tight ``ulimit -n`` would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

DEADLINE = 180.0

pytestmark = pytest.mark.timeout(240)

PRELUDE = """
import json, os, resource, socket, sys, threading, time
import psutil
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
import taskmill as tm
d = tm.Domain("lim")

@d.task
def ok(ctx, x: int) -> int:
    return x

s = tm.Scheduler(store_path=sys.argv[1], domains=[d], max_concurrency=1).start()
coord = psutil.Process(s.coordinator_pid)
out = {"coordinator": s.coordinator_pid, "shm": s.shm_name}

def report(**kw):
    out.update(kw)

def finish():
    report(last=s.wait(s.domain(d).submit(ok, x=42).id, timeout=60).result)
    s.close()
    print(json.dumps(out), flush=True)
"""

THREADS = """
errors = []
def one_call(i):
    try:
        s.store.pending_count()
        s.domain(d).submit(ok, x=i)
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")

base_host = psutil.Process().num_fds()
for wave in range(10):  # 500 short-lived threads, 50 at a time
    threads = [threading.Thread(target=one_call, args=(wave * 50 + i,)) for i in range(50)]
    for t in threads: t.start()
    for t in threads: t.join(60)
import gc; gc.collect()
s.wait_idle(timeout=120)
time.sleep(0.5)  # the coordinator sees the ended threads' connections close
report(errors=errors[:5], n_errors=len(errors), host_fds=psutil.Process().num_fds(), base_host=base_host,
       coordinator_fds=coord.num_fds())
finish()
"""

EXHAUST = """
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))  # the host may hold more than its coordinator
held = []
for i in range(400):  # authenticated clients that stay: the coordinator runs out of descriptors
    try:
        held.append(s._process._connect())  # bounded: gives up when the coordinator cannot accept
    except Exception:
        break
    if len(held) % 50 == 0:
        time.sleep(0.1)
coord.cpu_percent(None)
time.sleep(3.0)
cpu = coord.cpu_percent(None)
for c in held: c.close()
time.sleep(1.0)
report(held=len(held), cpu_while_exhausted=cpu)
finish()
"""

SILENT = """
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))  # the host may hold more than its coordinator
peers = []
for i in range(300):  # connect and say nothing
    p = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    p.connect(s._process.socket_path)
    peers.append(p)
time.sleep(1.0)
during = coord.num_threads()
t0 = time.monotonic()
s.store.pending_count()  # an honest client still gets through
report(threads_during=during, honest_call_s=time.monotonic() - t0)
time.sleep(7.0)  # past the handshake deadline: the silent peers are dropped
report(threads_after=coord.num_threads())
for p in peers: p.close()
finish()
"""


def run_host(tmp_path: Path, store: str, body: str, no_leaks: Any) -> tuple[dict[str, Any], str]:
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    proc = subprocess.run([sys.executable, str(script), store], capture_output=True, text=True, timeout=DEADLINE,
                          cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, f"host failed ({proc.returncode}): {proc.stderr[-3000:]}"
    info = json.loads(lines[-1])
    no_leaks.note(info["coordinator"], info["shm"])
    return info, proc.stderr


def test_short_lived_threads_do_not_leak_connections(store_path: str, tmp_path: Path, no_leaks: Any) -> None:
    info, _ = run_host(tmp_path, store_path, THREADS, no_leaks)
    assert info["n_errors"] == 0, info["errors"]
    assert info["host_fds"] <= info["base_host"] + 10, info
    assert info["coordinator_fds"] < 80, info
    assert info["last"] == 42


def test_a_coordinator_out_of_descriptors_backs_off_and_recovers(store_path: str, tmp_path: Path,
                                                                  no_leaks: Any) -> None:
    info, stderr = run_host(tmp_path, store_path, EXHAUST, no_leaks)
    assert info["held"] >= 150, info  # enough to exhaust a 256-descriptor coordinator
    assert info["cpu_while_exhausted"] < 50, info  # backing off, not spinning
    assert len(stderr) < 20_000, f"{len(stderr)} bytes of stderr: {stderr[:2000]}"
    assert info["last"] == 42  # a new connection works once descriptors are free again


def test_silent_peers_are_dropped_and_hold_few_threads(store_path: str, tmp_path: Path, no_leaks: Any) -> None:
    info, _ = run_host(tmp_path, store_path, SILENT, no_leaks)
    assert info["threads_during"] < 20, info  # one thread runs every handshake, not a thread per peer
    assert info["honest_call_s"] < 10, info
    assert info["threads_after"] < 20, info
    assert info["last"] == 42
