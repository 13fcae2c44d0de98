"""How commands print: a rich table for people, ``--json`` (one document) or ``--csv`` for programs."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime, timedelta
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

__all__ = ["cell", "console", "plain", "print_json", "print_rows"]


def console() -> Console:
    """Standard output as rich sees it: no colour codes and 160 columns when it is not a terminal;
    lines are not wrapped, tables fit the width."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def plain(v: Any) -> Any:
    """``v`` as JSON can carry it: times as ISO text, bytes as hex, NaN as null, containers walked."""
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def print_json(doc: Any) -> None:
    """One JSON document on standard output."""
    json.dump(plain(doc), sys.stdout, indent=None)
    sys.stdout.write("\n")


def cell(v: Any, width: int = 60) -> str:
    """A value as a table cell: short, one line."""
    if v is None:
        return ""
    if isinstance(v, float):
        text = f"{v:.3f}".rstrip("0").rstrip(".") if v == v else "nan"
    elif isinstance(v, datetime):
        text = v.strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(v, (dict, list)):
        text = json.dumps(plain(v))
    else:
        text = str(v)
    first, newline, _rest = text.strip().partition("\n")  # an error's first line says what it was
    text = " ".join(first.split()) + (" …" if newline else "")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_rows(names: Sequence[str], rows: Sequence[Sequence[Any]], *, fmt: str = "table", title: str | None = None) -> None:
    """Rows under their column names: ``table`` (rich), ``json`` (a list of objects) or ``csv``."""
    if fmt == "json":
        print_json([dict(zip(names, r)) for r in rows])
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(names)
        for r in rows:
            w.writerow(["" if v is None else (json.dumps(plain(v)) if isinstance(v, (dict, list)) else plain(v))
                        for v in r])
    else:
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        for n in names:
            table.add_column(n, overflow="fold")
        for r in rows:
            table.add_row(*(cell(v) for v in r))
        out = console()
        out.print(table)
        if not rows:
            out.print("(no rows)")
