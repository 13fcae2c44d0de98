"""``taskmill demo``: a real CPU + disk batch on the embedded default store.

Three task types at mixed priorities create, hash and compress files in a
temporary directory; a progress bar follows the run; per-type statistics come
from ``sched.sql`` and ``history_stats``. Task functions live in this module,
so workers import them by reference.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import time
import zlib
from typing import Any

from rich.console import Console
from rich.table import Table

import taskmill as tm

__all__ = ["media", "run_demo"]

media = tm.Domain("demo", retry=tm.RetryPolicy.exponential(2, initial=0.1, max=1.0))

_WORDS = ("mill grain water wheel stone flour river gear shaft sack barley oat rye spelt hopper "
          "chute belt pulley sluice weir dam race bucket").split()
_CHUNK = 64 * 1024


def _write_corpus(ctx: tm.TaskContext, path: str, size: int, seed: int) -> None:
    """Write ``size`` bytes of seeded pseudo-text (compressible, like real documents)."""
    rng = random.Random(seed)
    written = 0
    with open(path, "wb") as f:
        while written < size:
            lines = [" ".join(rng.choices(_WORDS, k=10)) + f" {rng.random():.6f}\n" for _ in range(128)]
            text = "".join(lines).encode()
            block = (text * (_CHUNK // len(text) + 1))[: min(_CHUNK, size - written)]
            f.write(block)
            written += len(block)
            ctx.record_write_bytes(len(block))
            ctx.progress_fraction(written, size)


@media.task(expected_io=tm.IoBudget.disk(0, 1_000_000), priority=tm.Priority.BACKGROUND)
def generate(ctx: tm.TaskContext, workdir: str, name: str, size: int, seed: int) -> dict[str, Any]:
    """Create a file of pseudo-text."""
    path = os.path.join(workdir, name)
    _write_corpus(ctx, path, size, seed)
    return {"path": path, "bytes": size}


@media.task(expected_io=tm.IoBudget.disk(1_000_000, 1_000_000), priority=tm.Priority.HIGH)
def digest(ctx: tm.TaskContext, workdir: str, name: str, size: int, seed: int) -> dict[str, Any]:
    """Create a file, then read it back and SHA-256 it in chunks."""
    path = os.path.join(workdir, name)
    _write_corpus(ctx, path, size, seed)
    h = hashlib.sha256()
    words: dict[bytes, int] = {}
    ctx.set_bytes_total(size)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            for w in chunk.split():
                words[w] = words.get(w, 0) + 1
            ctx.record_read_bytes(len(chunk))
            ctx.add_bytes(len(chunk))
    top = max(words, key=words.__getitem__).decode(errors="replace") if words else ""
    return {"sha256": h.hexdigest(), "distinct_words": len(words), "top_word": top}


@media.task(expected_io=tm.IoBudget.disk(1_000_000, 500_000), cpus=1)
def pack(ctx: tm.TaskContext, workdir: str, name: str, size: int, seed: int, level: int) -> dict[str, Any]:
    """Create a file, then zlib-compress it to ``name.z``."""
    path = os.path.join(workdir, name)
    _write_corpus(ctx, path, size, seed)
    comp = zlib.compressobj(level)
    out = 0
    with open(path, "rb") as src, open(path + ".z", "wb") as dst:
        while chunk := src.read(_CHUNK):
            ctx.record_read_bytes(len(chunk))
            data = comp.compress(chunk)
            dst.write(data)
            out += len(data)
        data = comp.flush()
        dst.write(data)
        out += len(data)
    ctx.record_write_bytes(out)
    return {"ratio": round(size / max(out, 1), 2)}


def run_demo(store_path: str = tm.scheduler.DEFAULT_STORE, tasks: int = 300, workers: int | None = None,
             console: Console | None = None) -> int:
    """Run the demo batch; returns a process exit code."""
    console = console or Console()
    workdir = tempfile.mkdtemp(prefix="taskmill-demo-")
    run = f"{time.time_ns():x}"
    rng = random.Random(1234)
    subs = []
    for i in range(tasks):
        size = rng.choice((256, 512, 1024, 2048)) * 1024
        name = f"{run}-{i}.txt"
        kind = i % 3
        if kind == 0:
            subs.append(generate.call(workdir=workdir, name=name, size=size, seed=i))
        elif kind == 1:
            subs.append(digest.call(workdir=workdir, name=name, size=size, seed=i))
        else:
            subs.append(pack.call(workdir=workdir, name=name, size=size, seed=i, level=rng.choice((1, 6, 9))))
    rng.shuffle(subs)
    console.print(f"[bold]taskmill demo[/]: {tasks} tasks (generate / digest / pack) "
                  f"on store [cyan]{os.path.abspath(store_path)}[/], files in {workdir}")
    started = time.perf_counter()
    try:
        with tm.Scheduler(store_path, [media], max_concurrency=workers) as sched:
            h = sched.domain(media)
            batch = h.submit_batch(subs)
            console.print(f"submitted: {len(batch.inserted)} inserted, {len(batch.duplicates)} duplicates "
                          f"in {time.perf_counter() - started:.2f}s")
            sched.wait_idle(timeout=600, progress=True)
            elapsed = time.perf_counter() - started
            rows = sched.sql(
                "SELECT replace(task_type, 'demo::', '') AS task_type, status, count(*) AS n, "
                "round(avg(duration_ms), 1) AS avg_ms, "
                "round(quantile_cont(duration_ms, 0.95), 1) AS p95_ms, "
                "round(sum(read_bytes) / 1048576.0, 1) AS read_mib, round(sum(write_bytes) / 1048576.0, 1) AS write_mib, "
                "min(priority) AS priority FROM task_history WHERE payload->>'workdir' = $1 "
                "GROUP BY ALL ORDER BY priority, task_type", [workdir])
            table = Table(title=f"this run, from sched.sql(...): {elapsed:.1f}s wall")
            for col in ("type", "status", "tasks", "avg ms", "p95 ms", "read MiB", "write MiB", "prio"):
                table.add_column(col, justify="left" if col in ("type", "status") else "right")
            for r in rows:
                table.add_row(r["task_type"], r["status"], str(r["n"]), str(r["avg_ms"]), str(r["p95_ms"]),
                              str(r["read_mib"]), str(r["write_mib"]), str(r["priority"]))
            console.print(table)
            stats = Table(title="all runs on this store, from store.history_stats / avg_throughput")
            for col in ("type", "completed", "avg ms", "avg read KiB", "avg write KiB", "failed", "read MiB/s"):
                stats.add_column(col, justify="left" if col == "type" else "right")
            for t in (generate, digest, pack):
                s = sched.store.history_stats(t.qualified)
                rbps, _wbps = sched.store.avg_throughput(t.qualified, 100)
                stats.add_row(t.name, str(s.count), f"{s.avg_duration_ms:.1f}", f"{s.avg_read_bytes / 1024:,.0f}",
                              f"{s.avg_write_bytes / 1024:,.0f}", f"{s.failure_rate:.1%}", f"{rbps / 1048576:,.1f}")
            console.print(stats)
            failed = sum(r["n"] for r in rows if r["status"] != "completed")
            return 1 if failed else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
