"""The dashboard's web application: one page, a JSON state, and the actions of its buttons.

Starlette routes, served by uvicorn on 127.0.0.1 (``taskmill.dashboard``). Every
request carries the random token of the URL the command printed (the page
sends it as a header), and the Host must be the loopback address it serves, so
other local users and web pages elsewhere cannot read or steer the scheduler.
The state is built per poll from a snapshot, the shared-memory counters and a
few short queries; throughput over time comes from a sampler thread that reads
the counters once a second. Imports the host API and the extra (starlette).
"""

from __future__ import annotations

import collections
import hmac
import threading
import time
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from taskmill.cli.commands import PAUSED_SCOPES, pause_or_resume
from taskmill.cli.output import plain
from taskmill.connect import Connected
from taskmill.errors import TaskmillError

__all__ = ["Throughput", "make_app", "state"]

#: Seconds of throughput history kept and shown.
HISTORY_SECONDS = 300
#: Seconds the query-backed parts (queue, paused scopes, failures, dead letters, per-type history)
#: are reused between polls: they cost the coordinator a reader query each, while the snapshot and
#: the counters (running tasks, progress, counts) are fresh on every poll.
QUERIES_EVERY = 3.0

_QUEUE = ("SELECT domain, coalesce(group_key, '') AS \"group\", priority, status, count(*) AS tasks FROM tasks "
          "WHERE status <> 'running' GROUP BY ALL ORDER BY domain, \"group\", priority, status")
_FAILURES = ("SELECT id, task_type, status, completed_at, last_error AS error FROM task_history "
             "WHERE status IN ('failed', 'dead_letter') ORDER BY seq DESC LIMIT 10")
_DEAD = ("SELECT id, task_type, completed_at, last_error AS error FROM task_history WHERE status = 'dead_letter' "
         "ORDER BY seq DESC LIMIT 20")
_TYPES = ("SELECT task_type, count(*) AS count, round(avg(duration_ms) FILTER (WHERE status = 'completed'), 1) "
          "AS avg_ms, round(count(*) FILTER (WHERE status IN ('failed', 'dead_letter')) / count(*), 3) "
          "AS failure_rate FROM task_history GROUP BY task_type ORDER BY count DESC LIMIT 20")


class Throughput:
    """Completions and failures per second, sampled from the shared-memory counters once a second;
    and the query-backed parts of the state, refreshed at most every ``QUERIES_EVERY`` seconds."""

    def __init__(self, sched: Connected) -> None:
        self._sched = sched
        self._queries: tuple[float, dict[str, Any]] = (0.0, {})
        self._lock = threading.Lock()
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=HISTORY_SECONDS + 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="taskmill-dashboard-sampler")

    def start(self) -> Throughput:
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        m = self._sched.metrics_snapshot()
        self._samples.append((time.time(), m.completed, m.failed))

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._sample()
            except TaskmillError:
                pass  # the page says the coordinator is gone

    def series(self) -> list[dict[str, float]]:
        """Per-second rates between consecutive samples, oldest first."""
        s = list(self._samples)
        return [{"t": b[0], "completed": (b[1] - a[1]) / max(b[0] - a[0], 1e-3),
                 "failed": (b[2] - a[2]) / max(b[0] - a[0], 1e-3)} for a, b in zip(s, s[1:])]

    def queries(self) -> dict[str, Any]:
        """The queue, paused scopes, failures, dead letters and per-type history (cached briefly)."""
        with self._lock:
            at, parts = self._queries
            if time.monotonic() - at >= QUERIES_EVERY:
                parts = {name: self._sched.sql(q) for name, q in
                         (("queue", _QUEUE), ("paused", PAUSED_SCOPES), ("failures", _FAILURES),
                          ("dead_letters", _DEAD), ("types", _TYPES))}
                self._queries = (time.monotonic(), parts)
            return parts

    def refresh(self) -> None:
        """Make the next ``queries()`` read the store (after a button changed something)."""
        with self._lock:
            self._queries = (0.0, self._queries[1])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def state(sched: Connected, throughput: Throughput) -> dict[str, Any]:
    """Everything the page shows, as plain values."""
    snap, metrics = sched.snapshot(), sched.metrics_snapshot()
    now = datetime.now(timezone.utc)
    percent = {p.header.task_id: p.percent for p in snap.progress}
    running = []
    for t in snap.running:
        elapsed = None if t.started_at is None else max((now - t.started_at).total_seconds(), 0.0)
        p = percent.get(t.id)
        eta = elapsed * (1 - p) / p if elapsed is not None and p else None
        running.append({"id": t.id, "task_type": t.task_type, "label": t.label, "group": t.group,
                        "priority": t.priority, "elapsed_s": elapsed, "percent": p, "eta_s": eta})
    cap = snap.capacity
    return {
        "store": sched.store_path, "pid": sched.coordinator_pid, "now": now.isoformat(),
        "counts": {"running": snap.running_count, "pending": snap.pending_count, "paused": snap.paused_count,
                   "blocked": snap.blocked_count, "waiting": snap.waiting_count},
        "totals": {"completed": metrics.completed, "failed": metrics.failed, "dead_lettered": metrics.dead_lettered,
                   "cancelled": metrics.cancelled},
        "is_paused": snap.is_paused,
        "domains": sorted(sched._domains),
        "running": running,
        **throughput.queries(),
        "pressure": snap.pressure,
        "pressure_breakdown": dict(snap.pressure_breakdown),
        "capacity": None if cap is None else {"cpus_in_use": cap.cpus_in_use, "cpus_total": cap.cpus_total,
                                              "memory_in_use": cap.memory_in_use, "memory_total": cap.memory_total},
        "max_concurrency": snap.max_concurrency,
        "workers": snap.workers,
        "denials": metrics.gate_denials_by_reason,
        "throughput": throughput.series(),
    }


def _act(sched: Connected, body: dict[str, Any]) -> dict[str, Any]:
    """Do what a button asks: pause/resume (all, a domain or a group), cancel a task, retry a dead letter."""
    action, scope, name = body.get("action"), body.get("scope", "all"), body.get("name")
    if action in ("pause", "resume"):
        if scope != "all" and (scope not in ("domain", "group") or not isinstance(name, str)):
            raise ValueError(f"{action} takes scope all, domain or group (with a name)")
        n = pause_or_resume(sched, action, domain=name if scope == "domain" else None,
                            group=name if scope == "group" else None)
        return {"done": f"{action}d {scope}{'' if name is None else ' ' + name}", "tasks": n}
    task_id = body.get("id")
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise ValueError(f"{action} takes a task id")
    if action == "cancel":
        return {"done": f"cancel {task_id}", "cancelled": sched.cancel(task_id)}
    if action == "retry":
        outcome = sched.retry_dead_letter(task_id)
        return {"done": f"retry {task_id}", "outcome": outcome.kind, "id": outcome.id}
    raise ValueError(f"unknown action {action!r}")


def _page(token: str) -> str:
    static = resources.files("taskmill.dashboard").joinpath("static")
    html = static.joinpath("index.html").read_text()
    return (html.replace("/*STYLE*/", static.joinpath("app.css").read_text())
                .replace("/*SCRIPT*/", static.joinpath("app.js").read_text())
                .replace("__TOKEN__", token))


def make_app(sched: Connected, token: str, port: int, throughput: Throughput) -> Starlette:
    """The application; ``port`` is the one it is served on (the Host it accepts)."""
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}

    def allowed(request: Request) -> bool:
        given = request.headers.get("x-taskmill-token") or request.query_params.get("token") or ""
        return request.headers.get("host", "") in hosts and hmac.compare_digest(given, token)

    def refuse() -> Response:
        return Response("taskmill dashboard: open the URL the command printed (it carries the token)\n",
                        status_code=403, media_type="text/plain")

    def index(request: Request) -> Response:
        return HTMLResponse(_page(token)) if allowed(request) else refuse()

    def api_state(request: Request) -> Response:
        if not allowed(request):
            return refuse()
        try:
            return JSONResponse(plain(state(sched, throughput)))
        except TaskmillError as e:
            return JSONResponse({"error": f"{type(e).__name__}: {e}"}, status_code=503)

    async def api_action(request: Request) -> Response:
        if not allowed(request):
            return refuse()
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        try:
            from starlette.concurrency import run_in_threadpool

            done = await run_in_threadpool(_act, sched, body)
            throughput.refresh()
            return JSONResponse(plain(done))
        except (TaskmillError, ValueError, TypeError) as e:
            return JSONResponse({"error": f"{type(e).__name__}: {e}"}, status_code=400)

    return Starlette(routes=[Route("/", index), Route("/api/state", api_state),
                             Route("/api/action", api_action, methods=["POST"])])
