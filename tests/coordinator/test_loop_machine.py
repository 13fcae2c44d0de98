"""The whole coordinator loop, driven by hypothesis through the stub backend (no process).

A real loop (store file, writer thread, replies, run timers) with the stub
backend holding every run until a rule ends it, and a monotonic clock the
machine moves. Rules submit (plain, keyed duplicates, batches), end held runs
(completed, failed, executor lost), cancel, pause and resume everything, let
time pass (retry backoff, timeouts) and step the loop. After every rule:

- the lifecycle's own invariants hold (``Lifecycle.check``);
- every event released to subscribers is a legal next step of its task's path,
  and an event that ends a task is released only once its history row is durable
  (committed in the store, or in the journal's records the loop counts as durable);
- once the loop is idle, every task that left has exactly one history row per
  ending event, and the released events match the store row for row.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from taskmill.config import CoordinatorConfig
from taskmill.store.queries import journal_seq

from .harness import StubHarness, item, stub_coordinator

ENDING = {"Completed": "completed", "DeadLettered": "dead_letter", "Cancelled": "cancelled",
          "Superseded": "superseded", "TaskExpired": "expired", "DependencyFailed": "dependency_failed"}
#: Events after which a task has no more (after Completed a requeued duplicate runs the same id again).
FINAL = frozenset(ENDING) - {"Completed"} | {"FailedEnd"}


def ok(ctx: Any, n: int) -> int:
    return n


class LoopMachine(RuleBasedStateMachine):
    def __init__(self, tmp: Any) -> None:
        super().__init__()
        config = CoordinatorConfig(store_path=str(tmp / "store.duckdb"), max_concurrency=2, poll_interval=0.01)
        self._cm = stub_coordinator(tmp, {"m::ok": ok}, config=config)
        self.h: StubHarness = self._cm.__enter__()
        self.h.backend.hold = True
        self.released: list[tuple] = []
        coord = self.h.coord
        coord.lc.fx.listening = True
        release = coord.replies.release

        def watch(events: list[tuple]) -> None:  # the fan-out's input, looked at as it is released
            self.check_released(events)
            release(events)

        coord.replies.release = watch
        self.paths: dict[int, list[str]] = {}  # task id -> its released events' kinds
        self.ends: dict[int, list[str]] = {}  # task id -> the statuses its ending events stand for
        self.n = 0

    def teardown(self) -> None:
        self._cm.__exit__(None, None, None)

    # ------------------------------------------------------------------ helpers

    def step(self, times: int = 3) -> None:
        for _ in range(times):
            self.h.coord.step()

    def rows(self, task_id: int) -> list[str]:
        self.h.coord.commit()
        return [r[0] for r in self.h.coord.store.con.execute(
            "SELECT status FROM task_history WHERE id = ? ORDER BY seq", [task_id]).fetchall()]

    def durable(self, task_id: int) -> list[str]:
        """The task's history statuses as a crash now would leave them: the rows the store has
        committed (read on a second connection, beside the writer thread) and the journal's
        records after them, up to the last commit the loop counts as durable."""
        coord = self.h.coord
        cur = coord.store.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            stored = [r[0] for r in cur.execute(
                "SELECT status FROM task_history WHERE id = ? ORDER BY seq", [task_id]).fetchall()]
            applied = journal_seq(cur)
            cur.execute("COMMIT")
        finally:
            cur.close()
        through = coord.replies.durable_through()
        assert coord.journal is not None
        for seq, batch in coord.journal.records():
            if applied < seq <= through:
                stored += [r.status for r in batch.finished if r.id == task_id]
        return stored

    def check_released(self, events: list[tuple]) -> None:
        """Each event a legal next step; an ending one only once its history row is durable (in the
        store or in the journal)."""
        for ev in events:
            kind = ev[0]
            if kind in ("Paused", "Resumed", "BatchSubmitted"):
                continue
            tid = ev[3] if kind in ("Waiting", "TaskUnblocked", "DependencyFailed") else ev[3][0]
            if kind == "Failed":
                kind = "Retry" if ev[5] else "FailedEnd"
            path = self.paths.setdefault(tid, [])
            last = path[-1] if path else None
            assert last not in FINAL, f"{kind} of task {tid} after the event that ended it: {path}"
            if kind in ("Completed", "DeadLettered", "Retry"):
                assert "Dispatched" in path[path_start(path):], f"{kind} of task {tid} without its Dispatched: {path}"
            path.append(kind)
            end = "failed" if kind == "FailedEnd" else ENDING.get(kind)
            if end is not None:
                self.ends.setdefault(tid, []).append(end)
                stored = self.durable(tid)
                assert stored[:len(self.ends[tid])] == self.ends[tid], \
                    f"{kind} of task {tid} released before its row was stored: {stored} vs {self.ends[tid]}"

    # ------------------------------------------------------------------ rules

    @rule(k=st.integers(1, 4), priority=st.sampled_from([0, 64, 128, 192]), timeout=st.sampled_from([None, 5.0]),
          retries=st.integers(0, 2))
    def submit(self, k: int, priority: int, timeout: float | None, retries: int) -> None:
        items = []
        for _ in range(k):
            self.n += 1
            it = list(item("m::ok", {"n": self.n}, timeout=timeout, max_retries=retries))
            it[4] = priority
            items.append(tuple(it))
        self.h.submit(*items)
        self.step()

    @rule(dup=st.sampled_from(["skip", "supersede", "reject"]))
    def submit_a_duplicate(self, dup: str) -> None:
        it = list(item("m::ok", {"n": 0}, key="same"))
        it[17] = dup
        self.h.submit(tuple(it))
        self.step()

    @precondition(lambda self: bool(self.h.backend.running()))
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "retryable", "permanent", "lost"]))
    def a_run_ends(self, data: st.DataObject, outcome: str) -> None:
        tid = data.draw(st.sampled_from(self.h.backend.running()))
        if outcome == "ok":
            self.h.backend.finish(tid, json.dumps(tid))
        elif outcome == "lost":
            self.h.backend.crash(tid, "executor lost")
        else:
            self.h.backend.finish(tid, error=f"{outcome} failure", kind=outcome)
        self.step()

    @precondition(lambda self: bool(self.h.coord.lc.tasks))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.h.call("cancel", data.draw(st.sampled_from(sorted(self.h.coord.lc.tasks))))
        self.step()

    @rule(pause=st.booleans())
    def pause_or_resume(self, pause: bool) -> None:
        self.h.call("pause" if pause else "resume", "global", "")
        self.step()

    @rule(seconds=st.sampled_from([0.5, 2.0, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.h.advance(seconds)
        self.step()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def lifecycle_is_consistent(self) -> None:
        self.h.coord.lc.check()

    @invariant()
    def once_idle_every_row_has_its_released_event(self) -> None:
        lc = self.h.coord.lc
        if lc.tasks or lc.running:
            return
        self.h.coord.commit()
        self.step(2)
        for tid in self.paths:
            assert self.rows(tid) == self.ends.get(tid, []), (tid, self.rows(tid), self.ends.get(tid), self.paths[tid])


def path_start(path: list[str]) -> int:
    """Where the current run of a task's path begins (after its last retry or ending event)."""
    for i in range(len(path) - 1, -1, -1):
        if path[i] in ("Retry", "FailedEnd", *ENDING):
            return i + 1
    return 0


@pytest.mark.timeout(300)
def test_the_loop_through_the_stub_backend(tmp_path_factory: pytest.TempPathFactory) -> None:
    run_state_machine_as_test(lambda: LoopMachine(tmp_path_factory.mktemp("loop")),
                              settings=settings(max_examples=15, stateful_step_count=20, deadline=None,
                                                suppress_health_check=[HealthCheck.too_slow]))

