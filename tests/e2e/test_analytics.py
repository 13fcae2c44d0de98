"""``sql(format=...)`` and ``export_history``: history as rows, DataFrames, Arrow tables and Parquet.

A real scheduler runs real tasks; what ``sql`` returns in every format, and
what the exported Parquet file reads back as, is compared with the history
records the store keeps.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import taskmill as tm

pytestmark = pytest.mark.timeout(180)

an = tm.Domain("an")


@an.task
def shape(ctx: tm.TaskContext, n: int, label: str) -> dict[str, Any]:
    return {"n": n, "squares": [i * i for i in range(n)], "label": label}


def _run(s: tm.Scheduler, n: int = 6) -> list[int]:
    h = s.domain(an)
    ids = [h.submit(shape.options(tags={"kind": "even" if i % 2 == 0 else "odd"}), n=i, label=f"l{i}").id
           for i in range(n)]
    for i in ids:
        s.wait(i, timeout=60)
    return ids


def test_sql_decodes_json_columns_in_rows_pandas_and_arrow(tmp_path: Path) -> None:
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [an], max_concurrency=2) as s:
        ids = _run(s)
        query = "SELECT id, payload, tags, result, completed_at FROM task_history ORDER BY id"
        rows = s.sql(query)
        assert [r["id"] for r in rows] == ids
        assert rows[3]["payload"] == {"n": 3, "label": "l3"} and rows[3]["tags"] == {"kind": "odd"}
        assert rows[3]["result"] == {"n": 3, "squares": [0, 1, 4], "label": "l3"}
        assert isinstance(rows[0]["completed_at"], datetime)

        df = s.sql(query, format="pandas")
        assert isinstance(df, pd.DataFrame) and list(df.columns) == ["id", "payload", "tags", "result", "completed_at"]
        assert df["id"].tolist() == ids and df["result"].tolist() == [r["result"] for r in rows]
        assert pd.api.types.is_datetime64_any_dtype(df["completed_at"])

        table = s.sql(query, format="arrow")
        assert isinstance(table, pa.Table) and table.num_rows == len(ids)
        assert pa.types.is_struct(table.schema.field("result").type)  # a proper column, not JSON text
        assert table.column("result").to_pylist()[3] == {"n": 3, "squares": [0, 1, 4], "label": "l3"}
        assert table.column("tags").to_pylist()[2] == {"kind": "even"}

        # JSON whose values differ in type across rows stays text in Arrow (and decoded in rows)
        mixed = "SELECT CASE WHEN id % 2 = 0 THEN '1'::JSON ELSE '\"one\"'::JSON END AS v FROM task_history ORDER BY id"
        assert [r["v"] for r in s.sql(mixed)][:2] == ["one", 1]  # (ids 1, 2)
        assert pa.types.is_string(s.sql(mixed, format="arrow").schema.field("v").type)

        with pytest.raises(ValueError, match="format must be one of"):
            s.sql(query, format="polars")


def test_a_missing_extra_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [an], max_concurrency=1) as s:
        _run(s, 1)
        monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        with pytest.raises(ImportError, match=r"pip install 'taskmill\[pandas\]'"):
            s.sql("SELECT 1 AS x", format="pandas")
        with pytest.raises(ImportError, match=r"pip install 'taskmill\[arrow\]'"):
            s.sql("SELECT 1 AS x", format="arrow")
        assert s.sql("SELECT 1 AS x") == [{"x": 1}]


def test_export_history_writes_parquet_that_reads_back_with_the_same_rows(tmp_path: Path) -> None:
    out = tmp_path / "out" / "history.parquet"
    out.parent.mkdir()
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [an], max_concurrency=2) as s:
        ids = _run(s)
        assert s.export_history(out) == len(ids)
        expected = s.sql("SELECT id, status, payload, result FROM task_history ORDER BY seq")
        with pytest.raises(ValueError, match="does not exist"):
            s.export_history(tmp_path / "nowhere" / "h.parquet")
        with pytest.raises(ValueError, match="timezone-aware"):
            s.export_history(out, since=datetime.now())
        assert s.export_history(tmp_path / "none.parquet", since=datetime.now(timezone.utc) + timedelta(hours=1)) == 0
        runtime = os.path.dirname(s._process.socket_path)  # type: ignore[union-attr]
        assert os.listdir(os.path.join(runtime, "export")) == []  # nothing left behind
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    df = pd.read_parquet(out)
    assert df["id"].tolist() == [r["id"] for r in expected] and set(df["status"]) == {"completed"}
    assert sorted(ids) == sorted(df["id"])  # (two workers: the order they finished in is theirs)
    table = pq.read_table(out)
    assert table.num_rows == len(ids)
    back = duckdb.sql(f"SELECT id, status, payload, result FROM read_parquet('{out}') ORDER BY seq").fetchall()
    assert [(i, st) for i, st, _p, _r in back] == [(r["id"], r["status"]) for r in expected]
    assert [json.loads(r) for _i, _s, _p, r in back] == [r["result"] for r in expected]
