"""The ``taskmill`` command line (F30 subset: ``serve``, ``demo`` and ``version``).

The CLI chooses log rendering; the library itself never configures handlers.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskmill", description="A persistent, priority-aware task scheduler for one host.")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a real CPU + disk batch on the embedded default store")
    demo.add_argument("--store", default=None, help="store file (default: taskmill.duckdb in the current directory)")
    demo.add_argument("--tasks", type=int, default=300, help="number of tasks (default 300)")
    demo.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    serve = sub.add_parser("serve", help="run a scheduler as a service that other processes connect to",
                           description="Run MODULE:SCHEDULER (a Scheduler, or a function returning one) in the "
                                       "foreground until SIGTERM or Ctrl-C; other processes of this user attach "
                                       "with taskmill.connect(store).")
    serve.add_argument("target", metavar="MODULE:SCHEDULER")
    serve.add_argument("--store", default=None, help="serve this store instead of the scheduler's own")
    serve.add_argument("--log-format", choices=("console", "json"), default="console",
                       help="log lines on stderr: readable (default) or one JSON object a line")
    sub.add_parser("version", help="print the version")
    return p


def _serve(args: argparse.Namespace) -> int:
    import os

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
    try:
        return serve(sched, log_format=args.log_format)
    except TaskmillError as e:
        print(f"taskmill serve: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


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
        from taskmill.scheduler import DEFAULT_STORE

        if args.tasks < 1:
            print("taskmill demo: --tasks must be >= 1", file=sys.stderr)
            return 2
        return run_demo(args.store or DEFAULT_STORE, tasks=args.tasks, workers=args.workers)
    return 2  # unreachable: argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
