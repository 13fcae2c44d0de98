"""The ``taskmill`` command line (F30): serve, status, top, history, sql, cancel, pause, resume,
dead-letter, prune, export, dashboard, demo and version.

Every command takes ``--store PATH`` (default ``./taskmill.duckdb``) and
``--json`` where its output is a table. Errors are one line naming the fix:
exit code 2 for usage, 1 for failures, never a traceback. The CLI chooses log
rendering; the library itself never configures handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable

__all__ = ["main"]

DEFAULT_STORE = "taskmill.duckdb"


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (and exit code 2), without the usage block."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=DEFAULT_STORE, metavar="PATH",
                   help="the store file (default: ./taskmill.duckdb)")


def _tabular(p: argparse.ArgumentParser, csv: bool = False) -> None:
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if csv:
        fmt.add_argument("--csv", action="store_true", help="print CSV instead of a table")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="taskmill", description="A persistent, priority-aware task scheduler for one host.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run a scheduler as a service that other processes connect to",
                           description="Run MODULE:SCHEDULER (a Scheduler, or a function returning one) in the "
                                       "foreground until SIGTERM or Ctrl-C; other processes of this user attach "
                                       "with taskmill.connect(store) or the commands below.")
    serve.add_argument("target", metavar="MODULE:SCHEDULER")
    serve.add_argument("--store", default=None, metavar="PATH", help="serve this store instead of the scheduler's own")
    serve.add_argument("--log-format", choices=("console", "json"), default="console",
                       help="log lines on stderr: readable (default) or one JSON object a line")
    serve.add_argument("--metrics-port", type=int, metavar="PORT",
                       help="serve Prometheus metrics on this port of 127.0.0.1 (0: any free one; needs the "
                            "prometheus extra)")

    status = sub.add_parser("status", help="one screen: running, waiting by domain/group, paused, pressure, "
                                           "capacity, last failures")
    _store(status)
    status.add_argument("--json", action="store_true", help="print one JSON document")

    top = sub.add_parser("top", help="a live screen of a served scheduler (q quits)")
    _store(top)

    dash = sub.add_parser("dashboard", help="a live page in the browser for a served scheduler")
    _store(dash)
    dash.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    dash.add_argument("--open", action="store_true", help="open the page in the default browser")

    history = sub.add_parser("history", help="finished tasks, newest first")
    _store(history)
    history.add_argument("--type", help="a task type (qualified, domain::name, or its name)")
    history.add_argument("--status", help="completed, failed, cancelled, superseded, expired, dead_letter or "
                                          "dependency_failed")
    history.add_argument("--since", help="an ISO time, or a span back from now (10m, 2h, 7d)")
    history.add_argument("--limit", type=_positive, default=20, help="rows shown (default 20)")
    _tabular(history)

    sql = sub.add_parser("sql", help="one read-only SELECT over tasks and task_history")
    _store(sql)
    sql.add_argument("query", metavar="SELECT…")
    _tabular(sql, csv=True)

    cancel = sub.add_parser("cancel", help="cancel a task, or every task of a tag, type or group")
    _store(cancel)
    cancel.add_argument("id", nargs="?", type=int, help="a task id")
    cancel.add_argument("--tag", metavar="KEY=VALUE")
    cancel.add_argument("--type", metavar="TYPE", help="a qualified task type (domain::name)")
    cancel.add_argument("--group", metavar="GROUP")
    cancel.add_argument("--json", action="store_true")

    for name, verb in (("pause", "pause"), ("resume", "resume")):
        c = sub.add_parser(name, help=f"{verb} everything, a domain or a group")
        _store(c)
        c.add_argument("--domain")
        c.add_argument("--group")
        if name == "pause":
            c.add_argument("--until", help="with --group: resume by itself at an ISO time or after a span (30m)")
        c.add_argument("--json", action="store_true")

    dead = sub.add_parser("dead-letter", help="list dead-lettered tasks, or submit one again")
    _store(dead)
    dead.add_argument("action", choices=("list", "retry"))
    dead.add_argument("id", nargs="?", type=int, help="with retry: the task id")
    dead.add_argument("--limit", type=_positive, default=20)
    _tabular(dead)

    prune = sub.add_parser("prune", help="delete old history rows")
    _store(prune)
    keep = prune.add_mutually_exclusive_group(required=True)
    keep.add_argument("--keep", type=int, metavar="N", help="keep the newest N rows")
    keep.add_argument("--older-than-days", type=float, metavar="D", help="delete rows older than D days")
    prune.add_argument("--json", action="store_true")

    export = sub.add_parser("export", help="write the task history to a Parquet file")
    _store(export)
    export.add_argument("path", metavar="PATH.parquet")
    export.add_argument("--since", help="only rows completed since an ISO time, or a span back from now (7d)")
    export.add_argument("--json", action="store_true")

    demo = sub.add_parser("demo", help="run a real CPU + disk batch on the embedded default store")
    demo.add_argument("--store", default=None, help="store file (default: taskmill.duckdb in the current directory)")
    demo.add_argument("--tasks", type=int, default=300, help="number of tasks (default 300)")
    demo.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    sub.add_parser("version", help="print the version")
    return p


def _serve(args: argparse.Namespace) -> int:
    from taskmill.errors import TaskmillError
    from taskmill.serve import ServeError, configure_logging, load_target, serve

    configure_logging(args.log_format)
    try:
        sched = load_target(args.target)
    except ServeError as e:
        print(f"taskmill serve: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the user's module failed to import or build: one line, no traceback
        print(f"taskmill serve: {args.target} cannot be loaded: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.store is not None:
        sched.store_path = os.path.abspath(args.store)
    if args.metrics_port is not None:
        from taskmill.prometheus import metrics_settings

        try:
            sched._metrics = metrics_settings(sched._metrics.prefix, dict(sched._metrics.labels), args.metrics_port)
        except (ImportError, ValueError) as e:
            print(f"taskmill serve: {e}", file=sys.stderr)
            return 2
    try:
        return serve(sched, log_format=args.log_format)
    except TaskmillError as e:
        print(f"taskmill serve: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _dashboard(args: argparse.Namespace) -> int:
    from taskmill.cli.reading import open_reading
    from taskmill.dashboard import run_dashboard

    with open_reading(args.store) as r:
        sched = r.need_served("dashboard", "shows a running scheduler live")

        def announce(url: str) -> None:
            print(f"taskmill dashboard of {r.store}: {url}", flush=True)
            print("(Ctrl-C stops it; the scheduler goes on)", flush=True)

        run_dashboard(sched, port=args.port, open_browser=args.open, announce=announce)
    return 0


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    if name == "top":
        from taskmill.cli.top import top

        return top
    if name == "dashboard":
        return _dashboard
    from taskmill.cli import commands

    return getattr(commands, name.replace("-", "_"))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``taskmill`` console script."""
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "version":
        import taskmill

        print(taskmill.__version__)
        return 0
    if args.command == "demo":
        from taskmill.demo import run_demo
        from taskmill.scheduler import DEFAULT_STORE as EMBEDDED_STORE

        if args.tasks < 1:
            print("taskmill demo: --tasks must be >= 1", file=sys.stderr)
            return 2
        return run_demo(args.store or EMBEDDED_STORE, tasks=args.tasks, workers=args.workers)
    from taskmill.errors import TaskmillError

    try:
        return _command(args.command)(args)
    except (TaskmillError, ValueError, TypeError, ImportError) as e:
        print(f"taskmill {args.command}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `taskmill history | head`: the reader left
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
