"""Bad input for the lifecycle options (SPEC §6, issue 6 §4): dependencies, parents,
siblings, TTL, delays, recurring schedules, strategies and policies.

Each is a clear exception naming the argument, and nothing is written, also when
the bad item is one of a batch. One scheduler (a real coordinator) serves the module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import taskmill as tm

DEADLINE = 60.0

lc = tm.Domain("lc")


@lc.task
def echo(ctx: tm.TaskContext, x: Any = None) -> Any:
    return x


@lc.task(retry=tm.RetryPolicy.none())
def boom(ctx: tm.TaskContext) -> None:
    raise tm.Permanent("boom")


@lc.task
def sibling_from_root(ctx: tm.TaskContext, out: str) -> str:
    try:
        ctx.spawn_sibling(echo, x=1)
    except Exception as e:  # the error the user sees, written where the test can read it
        Path(out).write_text(f"{type(e).__name__}: {e}")
        return "refused"
    return "spawned"


@pytest.fixture(scope="module")
def s(tmp_path_factory: Any) -> Iterator[tm.Scheduler]:
    with tm.Scheduler(str(tmp_path_factory.mktemp("lc") / "store.duckdb"), [lc], max_concurrency=1) as sched:
        yield sched


def counts(s: tm.Scheduler) -> tuple[int, int, int]:
    """Rows in tasks, task_history and task_deps: what a refused call must leave alone."""
    row = s.sql("SELECT (SELECT count(*) FROM tasks) AS t, (SELECT count(*) FROM task_history) AS h, "
                "(SELECT count(*) FROM task_deps) AS d")[0]
    return row["t"], row["h"], row["d"]


@pytest.fixture(scope="module")
def failed_id(s: tm.Scheduler) -> int:
    """A task that has already failed for good."""
    tid = s.domain(lc).submit(boom).id
    assert s.wait(tid, timeout=DEADLINE).status == "failed"
    return tid


BAD: list[Any] = [
    ("ttl-negative", lambda f: echo.options(ttl=-1), ValueError, "ttl"),
    ("ttl-nan", lambda f: echo.options(ttl=float("nan")), ValueError, "ttl"),
    ("ttl-from", lambda f: echo.options(ttl=5, ttl_from="later"), ValueError, "ttl_from"),
    ("run-after-negative", lambda f: echo.options(run_after=-3), ValueError, "run_after"),
    ("run-after-inf", lambda f: echo.options(run_after=float("inf")), ValueError, "run_after"),
    ("run-after-text", lambda f: echo.options(run_after="soon"), TypeError, "run_after"),
    ("recurring-zero", lambda f: echo.options(recurring=tm.Recurring(0)), ValueError, "interval"),
    ("recurring-negative", lambda f: echo.options(recurring=tm.Recurring(-1)), ValueError, "interval"),
    ("recurring-max-zero", lambda f: echo.options(recurring=tm.Recurring(1, max_executions=0)), ValueError,
     "max_executions"),
    ("recurring-not-a-schedule", lambda f: echo.options(recurring=5), TypeError, "recurring"),
    ("duplicate-unknown", lambda f: echo.options(duplicate="skip_all"), ValueError, "duplicate"),
    ("policy-unknown", lambda f: echo.options(on_dependency_failure="retry"), ValueError,
     "on_dependency_failure"),
    ("depends-unknown-id", lambda f: echo.options(depends_on=[10**9]), tm.InvalidSubmission, "depends_on"),
    ("depends-not-ids", lambda f: echo.options(depends_on=["a"]), TypeError, "depends_on"),
    ("depends-on-failed", lambda f: echo.options(depends_on=[f]), tm.InvalidSubmission, "already ended as failed"),
    ("parent-unknown", lambda f: echo.options(parent=10**9), tm.InvalidSubmission, "parent"),
    ("parent-finished", lambda f: echo.options(parent=f), tm.InvalidSubmission, "parent"),
    ("recurring-child", lambda f: echo.options(recurring=tm.Recurring(5), parent=f), ValueError, "parent"),
    ("tags-too-many", lambda f: echo.options(tags={f"k{i}": "v" for i in range(33)}), ValueError, "tags"),
    ("tag-key-long", lambda f: echo.options(tags={"k" * 65: "v"}), ValueError, "tag key"),
    ("tag-value-long", lambda f: echo.options(tags={"k": "v" * 257}), ValueError, "tag value"),
]


@pytest.mark.parametrize("make,exc,fragment", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_a_bad_lifecycle_option_is_refused_and_nothing_is_written(
        s: tm.Scheduler, failed_id: int, make: Callable[[int], Any], exc: type[Exception], fragment: str) -> None:
    before = counts(s)
    with pytest.raises(exc, match=fragment):
        s.domain(lc).submit(make(failed_id), x=1)
    assert counts(s) == before


@pytest.mark.parametrize("make,exc,fragment", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_a_batch_with_one_bad_lifecycle_item_writes_nothing(
        s: tm.Scheduler, failed_id: int, make: Callable[[int], Any], exc: type[Exception], fragment: str) -> None:
    h = s.domain(lc)
    before = counts(s)
    try:
        bad = make(failed_id).call(x="c")
    except exc as e:  # refused while the value was built: it never reaches a batch
        assert fragment in str(e)
        return
    with pytest.raises((exc, tm.InvalidSubmission), match=fragment) as info:
        h.submit_batch([echo.call(x="a"), echo.call(x="b"), bad])
    assert "item 2" in str(info.value)
    assert counts(s) == before
    assert s.store.pending_count() == 0


def test_a_dependency_on_a_task_of_the_same_batch_is_refused(s: tm.Scheduler) -> None:
    """A batch item may not name an id the batch itself would create: ids do not exist until
    the batch commits, so neither forward references nor cycles can be expressed."""
    h = s.domain(lc)
    before = counts(s)
    nxt = s.sql("SELECT CAST(value AS BIGINT) AS v FROM meta WHERE key = 'next_id'")
    guess = nxt[0]["v"] if nxt else 10**6
    with pytest.raises(tm.InvalidSubmission, match="depends_on"):
        h.submit_batch([echo.options(depends_on=[guess + 1]).call(x="p"), echo.options(depends_on=[guess]).call(x="q")])
    assert counts(s) == before


def test_a_sibling_from_a_root_task_is_a_clear_error_inside_the_task(s: tm.Scheduler, tmp_path: Path) -> None:
    out = tmp_path / "err.txt"
    rec = s.wait(s.domain(lc).submit(sibling_from_root, out=str(out)).id, timeout=DEADLINE)
    assert (rec.status, rec.result) == ("completed", "refused")
    text = out.read_text()
    assert "sibling" in text and "parent" in text, text
    assert s.store.pending_count() == 0


def test_the_scheduler_still_works_after_every_refusal(s: tm.Scheduler) -> None:
    rec = s.wait(s.domain(lc).submit(echo, x="still here").id, timeout=DEADLINE)
    assert (rec.status, rec.result) == ("completed", "still here")
