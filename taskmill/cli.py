"""The ``taskmill`` command line (F30 subset: ``demo`` and ``version``).

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
    sub.add_parser("version", help="print the version")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``taskmill`` console script."""
    args = _build_parser().parse_args(argv)
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
