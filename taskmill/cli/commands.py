"""The commands that read or steer a store: status, history, sql, cancel, pause, resume,
dead-letter, prune and export. Each takes the parsed arguments and returns its exit code;
``CliError`` (or any ``TaskmillError``) becomes one line on stderr in ``taskmill.cli``."""

from __future__ import annotations

import argparse
import os
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from taskmill.cli.output import console, print_json, print_rows
from taskmill.cli.reading import CliError, Reading, open_reading
from taskmill.connect import Connected
from taskmill.records import HistoryStatus
from taskmill.store.queries import copy_history

__all__ = ["LAST_FAILURES", "PAUSED_SCOPES", "cancel", "dead_letter", "export", "future", "history", "moment",
           "pause", "pause_or_resume", "prune", "resume", "sql", "status", "status_doc"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def moment(text: str, what: str) -> datetime:
    """An ISO time (local when it has no zone) or a span back from now (``90s``, ``10m``, ``2h``, ``7d``),
    as a naive UTC datetime (how the store keeps times)."""
    m = _DURATION.match(text.strip())
    if m:
        when = datetime.now(timezone.utc) - timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])
    else:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise CliError(f"{what} takes an ISO time (2026-12-07T10:00) or a span back from now (90s, 10m, 2h, "
                           f"7d), got {text!r}") from None
        if when.tzinfo is None:
            when = when.astimezone()
    return when.astimezone(timezone.utc).replace(tzinfo=None)


def future(text: str, what: str) -> datetime:
    """An ISO time or a span from now (``10m``) as an aware datetime, for ``--until``."""
    m = _DURATION.match(text.strip())
    if m:
        return datetime.now(timezone.utc) + timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"{what} takes an ISO time (2026-12-07T18:00) or a span from now (30m, 2h), "
                       f"got {text!r}") from None
    return when if when.tzinfo is not None else when.astimezone()


def _report(args: argparse.Namespace, doc: dict[str, Any], line: str) -> int:
    """What a command that acts says: one JSON document with ``--json``, else one line for people."""
    if args.json:
        print_json(doc)
    else:
        console().print(line)
    return 0


def _tasks(n: int, noun: str = "task") -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _fmt(args: argparse.Namespace) -> str:
    return "json" if getattr(args, "json", False) else "csv" if getattr(args, "csv", False) else "table"


# ---------------------------------------------------------------------- status

#: The last failures and the paused scopes, as ``status``, ``top`` and the dashboard show them.
LAST_FAILURES = ("SELECT id, task_type, completed_at, last_error AS error FROM task_history "
                 "WHERE status IN ('failed', 'dead_letter') ORDER BY seq DESC LIMIT 5")
PAUSED_SCOPES = "SELECT kind, scope, paused_at, resume_at FROM paused_scopes ORDER BY kind, scope"
_BY_SCOPE = ("SELECT domain, coalesce(group_key, '') AS \"group\", status, count(*) AS tasks FROM tasks "
             "WHERE status <> 'running' GROUP BY ALL ORDER BY ALL")


def status_doc(r: Reading) -> dict[str, Any]:
    """Everything ``taskmill status`` shows, as plain values."""
    names, rows = r.sql(_BY_SCOPE)
    queued = [dict(zip(names, row)) for row in rows]
    names, rows = r.sql(PAUSED_SCOPES)
    paused = [dict(zip(names, row)) for row in rows]
    names, rows = r.sql(LAST_FAILURES)
    failures = [dict(zip(names, row)) for row in rows]
    doc: dict[str, Any] = {"store": r.store, "served": r.served is not None, "queued": queued, "paused": paused,
                           "failures": failures}
    if r.served is None:
        names, rows = r.sql("SELECT status, count(*) AS n FROM tasks GROUP BY status")
        doc["counts"] = {s: n for s, n in rows}
        return doc
    snap = r.served.snapshot()
    percent = {p.header.task_id: p.percent for p in snap.progress}
    now = datetime.now(timezone.utc)
    doc["coordinator_pid"] = r.served.coordinator_pid
    doc["counts"] = {"running": snap.running_count, "pending": snap.pending_count, "paused": snap.paused_count,
                     "waiting": snap.waiting_count, "blocked": snap.blocked_count}
    doc["running"] = [{"id": t.id, "task_type": t.task_type, "label": t.label, "group": t.group,
                       "elapsed_s": None if t.started_at is None else round((now - t.started_at).total_seconds(), 1),
                       "percent": percent.get(t.id)} for t in snap.running]
    doc["pressure"] = snap.pressure
    doc["pressure_breakdown"] = dict(snap.pressure_breakdown)
    doc["max_concurrency"] = snap.max_concurrency
    doc["workers"] = snap.workers
    doc["is_paused"] = snap.is_paused
    cap = snap.capacity
    doc["capacity"] = None if cap is None else {"cpus_in_use": cap.cpus_in_use, "cpus_total": cap.cpus_total,
                                                "memory_in_use": cap.memory_in_use, "memory_total": cap.memory_total}
    return doc


def status(args: argparse.Namespace) -> int:
    with open_reading(args.store) as r:
        doc = status_doc(r)
    if args.json:
        print_json(doc)
        return 0
    out = console()
    counts = doc["counts"]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if n) or "no active tasks"
    if doc["served"]:
        cap = doc["capacity"] or {}
        out.print(f"[bold]{doc['store']}[/] served by pid {doc['coordinator_pid']}"
                  f"{' [yellow](all paused)[/]' if doc['is_paused'] else ''}: {summary}")
        breakdown = ", ".join(f"{k} {v:.2f}" for k, v in doc["pressure_breakdown"].items())
        out.print(f"pressure {doc['pressure']:.2f}{f' ({breakdown})' if breakdown else ''}; "
                  f"cpus {cap.get('cpus_in_use', 0):g}/{cap.get('cpus_total', 0):g} in use; "
                  f"max concurrency {doc['max_concurrency']} on {doc['workers']} workers")
    else:
        out.print(f"[bold]{doc['store']}[/] (no coordinator serves it; what the store says): {summary}")
    if doc.get("running"):
        print_rows(["id", "task_type", "label", "group", "elapsed_s", "percent"],
                   [[t["id"], t["task_type"], t["label"], t["group"], t["elapsed_s"],
                     None if t["percent"] is None else f"{100 * t['percent']:.0f}%"] for t in doc["running"]],
                   title="running")
    if doc["queued"]:
        print_rows(["domain", "group", "status", "tasks"], [list(q.values()) for q in doc["queued"]],
                   title="waiting to run")
    if doc["paused"]:
        print_rows(["kind", "scope", "paused_at", "resume_at"], [list(p.values()) for p in doc["paused"]],
                   title="paused")
    if doc["failures"]:
        print_rows(["id", "task_type", "completed_at", "error"], [list(f.values()) for f in doc["failures"]],
                   title="last failures")
    return 0


# ---------------------------------------------------------------------- reading history

_HISTORY_COLUMNS = ("id, task_type, label, status, retry_count AS retries, round(duration_ms, 1) AS duration_ms, "
                    "completed_at, last_error AS error")


def history(args: argparse.Namespace) -> int:
    where, params = [], []
    if args.type:
        where.append("(task_type = ? OR split_part(task_type, '::', 2) = ?)")
        params += [args.type, args.type]
    if args.status:
        if args.status not in HistoryStatus._value2member_map_:
            raise CliError(f"--status takes one of {', '.join(s.value for s in HistoryStatus)}, got {args.status!r}")
        where.append("status = ?")
        params.append(args.status)
    if args.since:
        where.append("completed_at >= ?")
        params.append(moment(args.since, "--since"))
    query = (f"SELECT {_HISTORY_COLUMNS} FROM task_history {'WHERE ' + ' AND '.join(where) if where else ''} "
             "ORDER BY seq DESC LIMIT ?")
    with open_reading(args.store) as r:
        names, rows = r.sql(query, params + [args.limit])
    print_rows(names, rows, fmt=_fmt(args))
    return 0


def sql(args: argparse.Namespace) -> int:
    with open_reading(args.store) as r:
        names, rows = r.sql(args.query)
    print_rows(names, rows, fmt=_fmt(args))
    return 0


def dead_letter(args: argparse.Namespace) -> int:
    with open_reading(args.store) as r:
        if args.action == "list":
            names, rows = r.sql(f"SELECT {_HISTORY_COLUMNS} FROM task_history WHERE status = 'dead_letter' "
                                "ORDER BY seq DESC LIMIT ?", [args.limit])
            print_rows(names, rows, fmt=_fmt(args))
            return 0
        if args.id is None:
            raise CliError("dead-letter retry takes the id of a dead-lettered task (see `taskmill dead-letter list`)")
        outcome = r.need_served("dead-letter retry").retry_dead_letter(args.id)
    return _report(args, {"outcome": outcome.kind, "id": outcome.id},
                   f"task {args.id} submitted again: {outcome.kind}"
                   f"{'' if outcome.id is None else f' (task {outcome.id})'}")


def export(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.path)
    if not path.endswith(".parquet"):
        raise CliError(f"export writes Parquet: the path must end in .parquet, got {args.path!r}")
    if not os.path.isdir(os.path.dirname(path)):
        raise CliError(f"the directory of {path} does not exist")
    since = None if args.since is None else moment(args.since, "--since").replace(tzinfo=timezone.utc)
    with open_reading(args.store) as r:
        if r.served is not None:
            n = r.served.export_history(path, since=since)
        else:
            assert r.offline is not None
            n = copy_history(r.offline, path, since)
    return _report(args, {"path": path, "rows": n}, f"{_tasks(n, 'history row')} written to {path}")


# ---------------------------------------------------------------------- steering


def cancel(args: argparse.Namespace) -> int:
    chosen = [x for x in (args.id is not None, args.tag, args.type, args.group) if x]
    if len(chosen) != 1:
        raise CliError("cancel takes exactly one of: a task id, --tag KEY=VALUE, --type TYPE, --group GROUP")
    with open_reading(args.store) as r:
        s = r.need_served("cancel")
        if args.id is not None:
            ids = [args.id] if s.cancel(args.id) else []
        elif args.tag:
            key, sep, value = args.tag.partition("=")
            if not sep or not key:
                raise CliError(f"--tag takes KEY=VALUE, got {args.tag!r}")
            ids = s.cancel_by_tag(key, value)
        elif args.type:
            ids = s.cancel_type(args.type)
        else:
            ids = s.cancel_group(args.group)
    listed = ": " + ", ".join(map(str, ids[:20])) + (" …" if len(ids) > 20 else "") if ids else ""
    return _report(args, {"cancelled": ids}, f"cancelled {_tasks(len(ids))}{listed}")


def _scope(args: argparse.Namespace) -> str:
    if args.domain and args.group:
        raise CliError("pass --domain or --group, not both")
    return f"domain {args.domain}" if args.domain else f"group {args.group}" if args.group else "everything"


def pause_or_resume(sched: Connected, action: str, *, domain: str | None = None, group: str | None = None,
                    until: datetime | None = None) -> int:
    """What ``pause``/``resume`` (and the dashboard's buttons) do to everything, a domain or a group
    (a group's pause until a time, if given); how many tasks it moved."""
    pausing = action == "pause"
    if domain is not None:
        h = sched.domain(domain)
        return h.pause() if pausing else h.resume()
    if group is not None:
        if not pausing:
            return sched.resume_group(group)
        return sched.pause_group(group) if until is None else sched.pause_group_until(group, until)
    return sched.pause_all() if pausing else sched.resume_all()


def pause(args: argparse.Namespace) -> int:
    scope = _scope(args)
    if args.until and not args.group:
        raise CliError("--until works with --group (a timed pause is a group's)")
    until = future(args.until, "--until") if args.until else None
    with open_reading(args.store) as r:
        moved = pause_or_resume(r.need_served("pause"), "pause", domain=args.domain, group=args.group, until=until)
    return _report(args, {"paused": scope, "tasks": moved}, f"paused {scope}: {_tasks(moved)} held")


def resume(args: argparse.Namespace) -> int:
    scope = _scope(args)
    with open_reading(args.store) as r:
        moved = pause_or_resume(r.need_served("resume"), "resume", domain=args.domain, group=args.group)
    return _report(args, {"resumed": scope, "tasks": moved}, f"resumed {scope}: {_tasks(moved)} released")


def prune(args: argparse.Namespace) -> int:
    if (args.keep is None) == (args.older_than_days is None):
        raise CliError("prune takes one of --keep N (newest rows kept) or --older-than-days D")
    with open_reading(args.store) as r:
        s = r.need_served("prune")
        n = s.store.prune_history_by_count(args.keep) if args.keep is not None else \
            s.store.prune_history_by_age(args.older_than_days)
    return _report(args, {"pruned": n}, f"pruned {_tasks(n, 'history row')}")

