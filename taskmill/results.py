"""What ``sql()`` returns: rows (dicts), a pandas DataFrame or a pyarrow Table.

The coordinator sends column names, rows and which columns are JSON
(``payload``, ``tags``, ``result`` and anything cast to JSON); this side decodes
those to Python values and builds the asked format. pandas and pyarrow are
optional extras (``taskmill[pandas]``, ``taskmill[arrow]``), imported only when
asked for. Imports the standard library only (plus the extras, lazily).
"""

from __future__ import annotations

import importlib
import json
from typing import Any, Sequence

__all__ = ["SQL_FORMATS", "decode_json", "sql_result"]

#: The formats ``sql(format=...)`` accepts, and the extra each needs.
SQL_FORMATS = {"rows": None, "pandas": ("pandas", "pandas"), "arrow": ("pyarrow", "arrow")}


def _extra(fmt: str) -> Any:
    module, extra = SQL_FORMATS[fmt]  # type: ignore[misc]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"sql(format={fmt!r}) needs {module}, which is not installed: "
                          f"pip install 'taskmill[{extra}]'") from e


def decode_json(rows: Sequence[Sequence[Any]], json_columns: Sequence[int]) -> list[list[Any]]:
    """``rows`` with the JSON text of ``json_columns`` decoded (NULL stays None)."""
    out = [list(r) for r in rows]
    for r in out:
        for i in json_columns:
            if r[i] is not None:
                r[i] = json.loads(r[i])
    return out


def sql_result(names: Sequence[str], rows: Sequence[Sequence[Any]], json_columns: Sequence[int], fmt: str) -> Any:
    """The result of one query in the format asked for (already checked against ``SQL_FORMATS``)."""
    decoded = decode_json(rows, json_columns)
    if fmt == "rows":
        return [dict(zip(names, r)) for r in decoded]
    if fmt == "pandas":
        pd = _extra("pandas")
        return pd.DataFrame.from_records(decoded, columns=list(names))
    pa = _extra("arrow")
    columns = []
    for i, _name in enumerate(names):
        values = [r[i] for r in decoded]
        try:
            columns.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            if i not in json_columns:
                raise
            # JSON whose values do not share one type (an int here, a str there): keep its text
            columns.append(pa.array([r[i] for r in rows], type=pa.string()))
    return pa.table(columns, names=list(names))
