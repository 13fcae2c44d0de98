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
from taskmill.records import HistoryStatus
from taskmill.store.queries import copy_history

__all__ = ["cancel", "dead_letter", "export", "future", "history", "moment", "pause", "prune", "resume", "sql", "status", "status_doc"]

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


def _fmt(args: argparse.Namespace) -> str:
    return "json" if getattr(args, "json", False) else "csv" if getattr(args, "csv", False) else "table"


# ---------------------------------------------------------------------- status

_FAILURES = ("SELECT id, task_type, completed_at, last_error AS error FROM task_history "
             "WHERE status IN ('failed', 'dead_letter') ORDER BY seq DESC LIMIT 5")
_BY_SCOPE = ("SELECT domain, coalesce(group_key, '') AS \"group\", status, count(*) AS tasks FROM tasks "
             "WHERE status <> 'running' GROUP BY ALL ORDER BY ALL")


def status_doc(r: Reading) -> dict[str, Any]:
    """Everything ``taskmill status`` shows, as plain values."""
    names, rows = r.sql(_BY_SCOPE)
    queued = [dict(zip(names, row)) for row in rows]
    names, rows = r.sql("SELECT kind, scope, paused_at, resume_at FROM paused_scopes ORDER BY kind, scope")
    paused = [dict(zip(names, row)) for row in rows]
    names, rows = r.sql(_FAILURES)
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
    if args.json:
        print_json({"outcome": outcome.kind, "id": outcome.id})
    else:
        console().print(f"task {args.id} submitted again: {outcome.kind}"
                        f"{'' if outcome.id is None else f' (task {outcome.id})'}")
    return 0


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
    if args.json:
        print_json({"path": path, "rows": n})
    else:
        console().print(f"{n} history row{'s' if n != 1 else ''} written to {path}")
    return 0


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
    if args.json:
        print_json({"cancelled": ids})
    else:
        console().print(f"cancelled {len(ids)} task{'s' if len(ids) != 1 else ''}"
                        f"{': ' + ', '.join(map(str, ids[:20])) + (' …' if len(ids) > 20 else '') if ids else ''}")
    return 0


def _scope(args: argparse.Namespace) -> str:
    if args.domain and args.group:
        raise CliError("pass --domain or --group, not both")
    return f"domain {args.domain}" if args.domain else f"group {args.group}" if args.group else "everything"


def pause(args: argparse.Namespace) -> int:
    scope = _scope(args)
    if args.until and not args.group:
        raise CliError("--until works with --group (a timed pause is a group's)")
    with open_reading(args.store) as r:
        s = r.need_served("pause")
        if args.domain:
            moved = s.domain(args.domain).pause()
        elif args.group:
            moved = s.pause_group_until(args.group, future(args.until, "--until")) if args.until else \
                s.pause_group(args.group)
        else:
            s.pause_all()
            moved = s.snapshot().paused_count
    if args.json:
        print_json({"paused": scope, "tasks": moved})
    else:
        console().print(f"paused {scope}: {moved} task{'s' if moved != 1 else ''} held")
    return 0


def resume(args: argparse.Namespace) -> int:
    scope = _scope(args)
    with open_reading(args.store) as r:
        s = r.need_served("resume")
        if args.domain:
            moved = s.domain(args.domain).resume()
        elif args.group:
            moved = s.resume_group(args.group)
        else:
            s.resume_all()
            moved = None
    if args.json:
        print_json({"resumed": scope, "tasks": moved})
    else:
        console().print(f"resumed {scope}" + ("" if moved is None else
                                               f": {moved} task{'s' if moved != 1 else ''} released"))
    return 0


def prune(args: argparse.Namespace) -> int:
    if (args.keep is None) == (args.older_than_days is None):
        raise CliError("prune takes one of --keep N (newest rows kept) or --older-than-days D")
    with open_reading(args.store) as r:
        s = r.need_served("prune")
        n = s.store.prune_history_by_count(args.keep) if args.keep is not None else \
            s.store.prune_history_by_age(args.older_than_days)
    if args.json:
        print_json({"pruned": n})
    else:
        console().print(f"pruned {n} history row{'s' if n != 1 else ''}")
    return 0

