"""The task lifecycle, driven directly (no processes) by hypothesis against a small model.

Rules submit (every duplicate strategy), dispatch, complete, fail (retryable,
permanent, a worker death), cancel, interrupt and let time pass. After every
step the lifecycle's own invariants hold (``Lifecycle.check``: a key is held by
at most one active task, every task is in exactly one place, counts equal a
recount) and it agrees with the model: same active tasks with the same status,
and exactly one terminal history row per task that left, never two rows for
one execution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskmill import protocol
from taskmill.coordinator.lifecycle import Ended, Lifecycle
from taskmill.records import RetryPolicy

DOMAINS = ("a", "b")
KEYS = tuple(f"k{i}" for i in range(6))
PRIORITIES = st.sampled_from([0, 64, 128, 128, 255])
CAPS = {"a": 1, "b": None}


def item(domain: str, key: str, priority: int, duplicate: str, max_retries: int, delay: float) -> protocol.SubmitItem:
    retry = json.dumps(RetryPolicy.constant(max_retries, delay).to_dict())
    return protocol.SubmitItem(f"{domain}::t", domain, f"{domain}:{key}", key, priority, "{}", max_retries, retry,
                               None, 1.0, 0, 0, 0, 0, 0, None, None, duplicate)


@dataclass
class Model:
    key: str
    domain: str
    priority: int
    max_retries: int
    delay: float
    status: str = "pending"
    retries: int = 0
    due: float | None = None  # pending but delayed until this time
    requeue: bool = False
    requeue_priority: int | None = None
    executions: int = 0
    rows: list[str] = field(default_factory=list)


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lc = Lifecycle(domain_caps=dict(CAPS), default_retry=RetryPolicy.constant(2, 1.0))
        self.now = 1000.0
        self.model: dict[int, Model] = {}
        self.gone: dict[int, Model] = {}
        self.rows_seen = 0

    # ------------------------------------------------------------------ helpers

    def active(self) -> dict[int, Model]:
        return {tid: m for tid, m in self.model.items()}

    def by_key(self, key: str) -> tuple[int, Model] | None:
        for tid, m in self.model.items():
            if m.key == key:
                return tid, m
        return None

    def collect_rows(self) -> None:
        """Read the history rows the lifecycle wrote since the last step into the model."""
        rows = self.lc.batch.finished[self.rows_seen:]
        self.rows_seen = len(self.lc.batch.finished)
        for r in rows:
            m = self.model.get(r.id) or self.gone[r.id]
            m.rows.append(r.status)
            if not r.keep_active:
                self.gone[r.id] = self.model.pop(r.id)

    def finish_step(self) -> None:
        self.collect_rows()
        self.lc.finished.clear()
        self.lc.to_signal.clear()

    def worker_returns(self, tid: int) -> Any:
        e = self.lc.running[tid]
        self.lc.run_ended(e)
        return e

    # ------------------------------------------------------------------ rules

    @rule(domain=st.sampled_from(DOMAINS), key=st.sampled_from(KEYS), priority=PRIORITIES,
          duplicate=st.sampled_from(["skip", "skip", "supersede", "reject"]), max_retries=st.integers(0, 2),
          delay=st.sampled_from([0.0, 0.0, 5.0]))
    def submit(self, domain: str, key: str, priority: int, duplicate: str, max_retries: int, delay: float) -> None:
        full_key = f"{domain}:{key}"
        existing = self.by_key(full_key)
        (out,) = self.lc.submit([item(domain, key, priority, duplicate, max_retries, delay)], self.now, self.now)
        if existing is None:
            assert out[0] == "i"
            self.model[out[1]] = Model(full_key, domain, priority, max_retries, delay)
        else:
            tid, m = existing
            if duplicate == "reject":
                assert out == ("r", tid)
            elif duplicate == "supersede":
                assert out[0] == "s" and out[2] == tid
                self.model[out[1]] = Model(full_key, domain, priority, max_retries, delay)
            elif m.status == "pending" and priority < m.priority:
                assert out == ("u", tid)
                m.priority = priority
            elif m.status == "running" and not m.requeue:
                assert out == ("q", tid)
                m.requeue, m.requeue_priority = True, min(priority, m.priority)
            else:
                assert out == ("d", tid)
        self.finish_step()
        if existing is not None and duplicate == "supersede":
            assert self.gone[existing[0]].rows[-1] == "superseded"

    @rule()
    def dispatch(self) -> None:
        e = self.lc.pick()
        ready = [(m.priority, tid) for tid, m in self.model.items()
                 if m.status == "pending" and m.due is None
                 and not (CAPS[m.domain] is not None
                          and sum(1 for x in self.model.values() if x.status == "running" and x.domain == m.domain)
                          + sum(1 for x in self.lc.running.values() if x.cancelled and x.domain == m.domain)
                          >= CAPS[m.domain])]
        if not ready:
            assert e is None
            return
        assert e is not None and (e.priority, e.id) == min(ready)
        self.lc.started(e, object(), self.now, self.now)
        m = self.model[e.id]
        m.status = "running"
        m.executions += 1
        self.finish_step()

    @precondition(lambda self: any(m.status == "running" for m in self.model.values()))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(t for t, m in self.model.items() if m.status == "running")))
        e = self.worker_returns(tid)
        self.lc.completed(e, '{"ok":1}', Ended(self.now, self.now, 1.0, (0, 0, 0, 0)), self.now, self.now)
        m = self.model[tid]
        self.finish_step()
        assert m.rows[-1] == "completed"
        if m.requeue:
            assert tid in self.model
            m.status, m.retries, m.requeue = "pending", 0, False
            m.priority = m.requeue_priority if m.requeue_priority is not None else m.priority
        else:
            assert tid not in self.model

    @precondition(lambda self: any(m.status == "running" for m in self.model.values()))
    @rule(data=st.data(), how=st.sampled_from(["retryable", "permanent", "worker died"]))
    def fail(self, data: st.DataObject, how: str) -> None:
        tid = data.draw(st.sampled_from(sorted(t for t, m in self.model.items() if m.status == "running")))
        e = self.worker_returns(tid)
        ended = None if how == "worker died" else Ended(self.now, self.now, 1.0, (0, 0, 0, 0))
        self.lc.failed(e, f"boom ({how})", permanent=how == "permanent", retry_after=None, ended=ended,
                       now=self.now, wall=self.now)
        m = self.model[tid]
        self.finish_step()
        if how == "permanent":
            assert m.rows[-1] == "failed" and tid not in self.model
        elif m.retries >= m.max_retries:
            assert m.rows[-1] == "dead_letter" and tid not in self.model
        else:
            m.retries += 1
            m.status = "pending"
            m.due = self.now + m.delay if m.delay > 0 else None
            assert self.lc.tasks[tid].retry_count == m.retries

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(self.model)))
        m = self.model[tid]
        was_running = m.status == "running"
        assert self.lc.cancel(tid, None, self.now, self.now)
        signalled = [e.id for e in self.lc.to_signal]
        self.finish_step()
        assert self.gone[tid].rows[-1] == "cancelled"
        assert signalled == ([tid] if was_running else [])
        assert not self.lc.cancel(tid, None, self.now, self.now)  # twice: not found

    @precondition(lambda self: any(e.cancelled for e in self.lc.running.values()))
    @rule(data=st.data())
    def cancelled_worker_returns(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(t for t, e in self.lc.running.items() if e.cancelled)))
        self.worker_returns(tid)  # its outcome is ignored: it is in history already
        self.finish_step()

    @precondition(lambda self: any(m.status == "running" for m in self.model.values()))
    @rule(data=st.data())
    def interrupt(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(t for t, m in self.model.items() if m.status == "running")))
        e = self.worker_returns(tid)
        self.lc.interrupted(e, self.now)
        self.model[tid].status = "pending"  # no retry counted
        self.finish_step()

    @rule(seconds=st.sampled_from([0.5, 2.0, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.lc.fire(self.now)
        for m in self.model.values():
            if m.due is not None and m.due <= self.now:
                m.due = None
        self.finish_step()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def lifecycle_is_consistent(self) -> None:
        self.lc.check()

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert set(self.lc.tasks) == set(self.model)
        for tid, m in self.model.items():
            e = self.lc.tasks[tid]
            assert (e.status, e.priority, e.retry_count) == (m.status, m.priority, m.retries), (tid, e, m)
            assert (e.timer is not None) == (m.due is not None)

    @invariant()
    def one_terminal_row_per_task_and_none_per_execution_twice(self) -> None:
        for tid, m in self.gone.items():
            terminal = [r for r in m.rows if r != "completed"] or m.rows[-1:]
            assert len(m.rows) <= m.executions + 1, (tid, m.rows, m.executions)
            assert len(terminal) == 1 or (m.rows and m.rows[-1] == "completed"), (tid, m.rows)
        for tid, m in self.model.items():
            assert len(m.rows) <= m.executions, (tid, m.rows, m.executions)  # only requeued runs so far


LifecycleMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestLifecycle = LifecycleMachine.TestCase
