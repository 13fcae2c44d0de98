"""The whole task lifecycle, driven directly (no processes) by hypothesis against a small model.

Rules submit (every duplicate strategy, dependencies with each failure policy,
children of running tasks with and without fail_fast, TTLs, delays, recurring
schedules), dispatch, complete, fail (retryable, permanent, a worker death),
cancel (one task, a whole group), pause and resume (global, domain, group,
one schedule), interrupt, and let time pass (delays, TTL sweeps, group
auto-resume).

After every step the lifecycle's own invariants hold (``Lifecycle.check``:
one active task per key, every task in exactly one place, counts equal a
recount, edges and families consistent) and it agrees with the model: the
same active ids; one terminal history row for each task that left and none
for one that did not; never more rows than executions; a task only ever
started once all its prerequisites completed, outside every paused scope,
before its TTL ran out; a cancelled task took its descendants with it; a
fail-fast parent ended with its first failing child.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskmill import protocol
from taskmill.coordinator.core.entry import Ended
from taskmill.coordinator.core.fairness import Aging, FairShare
from taskmill.coordinator.core.gate import Gate
from taskmill.coordinator.core.lifecycle import Lifecycle
from taskmill.errors import InvalidSubmission
from taskmill.records import RetryPolicy

DOMAINS = ("a", "b")
GROUPS = (None, "g1", "g2")
KEYS = tuple(f"k{i}" for i in range(8))
CAPS = {"a": 1, "b": None}
FINALIZERS = frozenset({"a::t"})  # type "a::t" has a finalize step, "b::t" none
FAILURES = {"failed", "dead_letter", "dependency_failed", "expired"}
ENDED = Ended(0.0, 0.0, 1.0, (0, 0, 0, 0))


@dataclass
class Model:
    key: str
    domain: str
    group: str | None
    deps: tuple[int, ...] = ()
    policy: str = "cancel"
    parent: int | None = None
    fail_fast: bool = True
    ttl: float | None = None
    recurring: tuple[float, int | None, float] | None = None
    executions: int = 0
    rows: list[str] = field(default_factory=list)
    active: bool = True
    ends: list[str] = field(default_factory=list)  # the history status each ending event stands for, in order
    dispatched: bool = False  # a Dispatched event since its last failed attempt or history row


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # fair share and aging on: the weighed pick is the one under test (the plain one is the
        # same minus the ranking; test_gate drives it)
        self.lc = Lifecycle(gate=Gate(2**31 - 1, domain_caps={d: c for d, c in CAPS.items() if c is not None}),
                            fair=FairShare({"g1": 2.0}, min_slots={"g2": 1}), aging=Aging(3.0, 1.0, 64, 100),
                            default_retry=RetryPolicy.constant(1, 1.0), finalizers=FINALIZERS, sweep_interval=5.0)
        self.now = 1000.0
        self.wall = 5000.0  # the wall clock runs alongside the monotonic one
        self.m: dict[int, Model] = {}
        self.rows_seen = 0
        self.newest: dict[str, tuple[int, str]] = {}  # key -> (id, status) of its newest history row
        self.lc.fx.trace = []  # every status move the outbox is told of
        self.lc.fx.listening = True  # and every event recorded (checked in ``collect``)
        self.events_seen = 0
        self.replayed: dict[int, str] = {}  # task id -> its status, replayed from the trace alone
        self.entries: dict[int, Any] = {}  # every entry ever seen, also after it left the table

    # ------------------------------------------------------------------ helpers

    def active(self) -> list[int]:
        return sorted(t for t, m in self.m.items() if m.active)

    def running(self) -> list[int]:
        return sorted(t for t, e in self.lc.running.items() if not e.cancelled)

    def descendants(self, tid: int) -> set[int]:
        out: set[int] = set()
        stack = [tid]
        while stack:
            p = stack.pop()
            for c, m in self.m.items():
                if m.parent == p and m.active and c not in out:
                    out.add(c)
                    stack.append(c)
        return out

    def collect(self) -> None:
        """History rows written since the last step, into the model; effects the loop would carry out."""
        rows = self.lc.fx.batch.finished[self.rows_seen:]
        self.rows_seen = len(self.lc.fx.batch.finished)
        events = self.lc.fx.events[self.events_seen:]
        self.events_seen = len(self.lc.fx.events)
        left = {}
        for r in rows:
            m = self.m[r.id]
            m.rows.append(r.status)
            self.newest[m.key] = (r.id, r.status)
            if not r.keep_active:
                assert m.active, f"task {r.id} left twice"
                m.active = False
                left[r.id] = len(m.rows)
        for ev in events:
            self.follow(ev, left)
        self.lc.fx.finished.clear()
        self.lc.fx.signals.clear()
        self.lc.fx.hooks.clear()

    def follow(self, ev: tuple, left: dict[int, int]) -> None:
        """One event: a legal next step on its task's path (``taskmill.events``: no Completed without a
        Dispatched of that run, a retry only of a run that was dispatched, one ending event per history
        row with the row's status, in order, and nothing after the row that ends the task)."""
        kind = ev[0]
        if kind in ("Paused", "Resumed", "GroupPaused", "GroupResumed", "GroupWeightChanged", "BatchSubmitted"):
            return
        tid = ev[3] if kind in ("Waiting", "TaskUnblocked", "DependencyFailed") else ev[3][0]
        m = self.m[tid]
        gone = len(m.ends) == left.get(tid, -1) or (not m.active and tid not in left)
        assert not gone, f"{kind} for task {tid} after the event that ended it ({m.ends})"
        if kind not in ("Waiting", "TaskUnblocked", "DependencyFailed"):  # a task event: its header
            h = ev[3]
            assert (h[1], h[2], h[3]) == (f"{m.domain}::t", m.domain, m.key), (h, m)
            assert 0 <= h[7] <= h[6] <= 255, h  # aging only ever makes it more urgent
        end = {"Completed": "completed", "DeadLettered": "dead_letter", "Cancelled": "cancelled",
               "Superseded": "superseded", "TaskExpired": "expired", "DependencyFailed": "dependency_failed"}.get(kind)
        if kind == "Failed":
            if ev[5]:  # will_retry: a retry of a run that was dispatched
                assert m.dispatched, f"a retry of task {tid} that was never dispatched"
                m.dispatched = False
                return
            end = "failed"
        if kind == "Dispatched":
            m.dispatched = True
        elif kind in ("Completed", "DeadLettered"):
            assert m.dispatched, f"{kind} for task {tid} without a Dispatched of that run"
        if end is not None:
            m.ends.append(end)
            assert m.ends == m.rows[:len(m.ends)], (tid, m.ends, m.rows)
            m.dispatched = False

    def worker_returns(self, tid: int) -> Any:
        e = self.lc.running[tid]
        self.lc.run_ended(e)
        return e

    def outcomes(self) -> dict[int, str]:
        return {t: m.rows[-1] for t, m in self.m.items() if not m.active and m.rows}

    def completed_keys(self) -> dict[str, int]:
        return {k: tid for k, (tid, status) in self.newest.items() if status == "completed"}

    # ------------------------------------------------------------------ rules

    def _submit(self, domain: str, key: str, *, group: str | None = None, priority: int = 128,
                duplicate: str = "skip", deps: tuple[int, ...] = (), policy: str = "cancel",
                parent: int | None = None, fail_fast: bool = True, ttl: float | None = None,
                delay: float | None = None, recurring: tuple[float, int | None, float] | None = None) -> tuple | None:
        full_key = f"{domain}:{key}"
        it = protocol.SubmitItem(
            f"{domain}::t", domain, full_key, key, priority, "{}", 1, None, None, 1.0, 0, 0, 0, 0, 0, group, None,
            duplicate, ttl, "submission", None if delay is None else self.wall + delay, deps or None, policy,
            parent, fail_fast, recurring)
        ids, keys = self.lc.lookups([it])
        outcomes = {i: s for i, s in self.outcomes().items() if i in ids}
        completed = {k: v for k, v in self.completed_keys().items() if k in keys}
        refused = [d for d in deps if d not in self.lc.tasks and (
            d not in outcomes or outcomes[d] != "completed")]
        existing = self.lc.by_key.get(full_key)
        try:
            (out,) = self.lc.submit([it], self.now, self.wall, outcomes=outcomes, completed=completed)
        except InvalidSubmission:
            assert refused, "a valid submission was refused"
            self.collect()
            return None
        assert not refused, f"depends on {refused}, which are unknown or failed, yet accepted"
        event(f"submit: out={out[0]}{' child' if parent else ''}{' deps' if deps else ''}")
        if existing is not None and duplicate == "reject":
            assert out == ("r", existing.id)
        elif existing is not None and duplicate != "supersede":
            assert out[0] in "duq"
        elif existing is None and duplicate == "skip_completed" and full_key in completed:
            assert out == ("d", completed[full_key])
        else:
            assert out[0] in "is"
            self.m[out[1]] = Model(full_key, domain, group, tuple(d for d in deps if d in self.lc.tasks), policy,
                                   parent, fail_fast, ttl, recurring)
            if out[0] == "s":
                assert out[2] == existing.id  # type: ignore[union-attr]
                for other in self.m.values():  # a superseded prerequisite hands its dependents on
                    if out[2] in other.deps:
                        other.deps = tuple(out[1] if d == out[2] else d for d in other.deps)
        self.collect()
        return out

    @rule(domain=st.sampled_from(DOMAINS), group=st.sampled_from(GROUPS), key=st.sampled_from(KEYS),
          priority=st.sampled_from([0, 128, 128, 255]),
          duplicate=st.sampled_from(["skip", "skip", "supersede", "reject", "skip_completed"]),
          ttl=st.sampled_from([None, None, 3.0, 20.0]), delay=st.sampled_from([None, None, 2.0]))
    def submit(self, domain: str, group: str | None, key: str, priority: int, duplicate: str, ttl: float | None,
               delay: float | None) -> None:
        self._submit(domain, key, group=group, priority=priority, duplicate=duplicate, ttl=ttl, delay=delay)

    @precondition(lambda self: bool(self.m))
    @rule(domain=st.sampled_from(DOMAINS), key=st.sampled_from(KEYS), policy=st.sampled_from(["cancel", "fail", "ignore"]),
          data=st.data())
    def submit_dependent(self, domain: str, key: str, policy: str, data: st.DataObject) -> None:
        deps = data.draw(st.lists(st.sampled_from(sorted(self.m)), min_size=1, max_size=2, unique=True))
        self._submit(domain, key, deps=tuple(deps), policy=policy)

    @rule(domain=st.sampled_from(DOMAINS), key=st.sampled_from(KEYS))
    def submit_on_an_unknown_task(self, domain: str, key: str) -> None:
        assert self._submit(domain, key, deps=(10_000,)) is None

    @precondition(lambda self: bool(self.running()))
    @rule(domain=st.sampled_from(DOMAINS), key=st.sampled_from(KEYS), fail_fast=st.booleans(),
          ttl=st.sampled_from([None, 3.0]), data=st.data())
    def spawn_child(self, domain: str, key: str, fail_fast: bool, ttl: float | None, data: st.DataObject) -> None:
        parent = data.draw(st.sampled_from(self.running()))
        self.m[parent].fail_fast = fail_fast  # the parent's flag decides (set as when it was submitted)
        self.lc.tasks[parent].extra().fail_fast = fail_fast
        self._submit(domain, key, parent=parent, ttl=ttl)

    @rule(domain=st.sampled_from(DOMAINS), key=st.sampled_from(KEYS),
          recurring=st.sampled_from([(4.0, 2, 0.0), (4.0, None, 1.0), (1.0, 3, 0.0)]))
    def submit_recurring(self, domain: str, key: str, recurring: tuple[float, int | None, float]) -> None:
        self._submit(domain, key, recurring=recurring)

    @rule()
    def dispatch(self) -> None:
        e = self.lc.pick(self.now, self.wall)
        self.collect()  # expiries at dispatch write rows
        if e is None:
            for q in self.lc.tasks.values():  # whatever is still queued waits for its domain's cap
                if q.queued:
                    cap = CAPS[q.domain]
                    assert cap is not None and self.lc.gate.by_domain.get(q.domain, 0) >= cap, q
            return
        m = self.m[e.id]
        for d in m.deps:  # started only once every prerequisite completed (or, with "ignore", ended)
            if m.policy == "ignore":
                assert self.m[d].rows, (e.id, d)
            else:
                assert "completed" in self.m[d].rows, (e.id, d, self.m[d].rows)
        assert not self.lc._scope_bits(e), "a task of a paused scope was dispatched"
        assert e.expires is None or e.expires > self.now, "an expired task was dispatched"
        self.lc.started(e, object(), self.now, self.wall)
        m.executions += 1
        event(f"dispatch{' child' if m.parent else ''}{' dependent' if m.deps else ''}")
        if m.recurring is not None:
            event("dispatch recurring")

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(self.running()))
        e = self.worker_returns(tid)
        self.lc.completed(e, '{"ok":1}', ENDED, self.now, self.wall)
        self.collect()

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data(), how=st.sampled_from(["retryable", "permanent", "worker died"]))
    def fail(self, data: st.DataObject, how: str) -> None:
        tid = data.draw(st.sampled_from(self.running()))
        e = self.worker_returns(tid)
        parent = self.m[tid].parent
        self.lc.failed(e, f"boom ({how})", permanent=how == "permanent", retry_after=None,
                       ended=None if how == "worker died" else ENDED, now=self.now, wall=self.wall)
        self.collect()
        m = self.m[tid]
        if parent is not None and not m.active and m.rows[-1] in FAILURES:
            event(f"a child failed for good; fail_fast={self.m[parent].fail_fast}")
        if not m.active and m.rows[-1] in FAILURES and parent is not None and self.m[parent].fail_fast:
            assert not self.m[parent].active, "a fail-fast parent outlived its failed child"

    @precondition(lambda self: any(self.m[t].parent is not None for t in self.running()))
    @rule(data=st.data())
    def a_child_fails_for_good(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from([t for t in self.running() if self.m[t].parent is not None]))
        parent = self.m[tid].parent
        assert parent is not None
        was_active, fail_fast = self.m[parent].active, self.lc.tasks[parent].x.fail_fast  # type: ignore[union-attr]
        e = self.worker_returns(tid)
        self.lc.failed(e, "boom", permanent=True, retry_after=None, ended=ENDED, now=self.now, wall=self.wall)
        self.collect()
        event(f"a child failed for good; parent was active={was_active} fail_fast={fail_fast}")
        if self.m[tid].active:  # it had been asked to pause: it comes back (paused, or pending if the
            e = self.lc.tasks[tid]  # pause was lifted meanwhile) without a failure, whatever it raised
            assert e.status == ("paused" if e.paused else "pending"), (e.status, e.paused)
            assert not self.m[tid].rows or self.m[tid].rows[-1] != "failed"
            return
        if was_active and fail_fast:
            assert not self.m[parent].active, "a fail-fast parent outlived its failed child"
            assert self.m[parent].rows[-1] == "failed"
            assert not [c for c, m in self.m.items() if m.parent == parent and m.active], "siblings left running"

    @precondition(lambda self: any(e.cancelled for e in self.lc.running.values()))
    @rule(data=st.data())
    def cancelled_worker_returns(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(t for t, e in self.lc.running.items() if e.cancelled)))
        self.worker_returns(tid)

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data())
    def interrupt(self, data: st.DataObject) -> None:
        e = self.worker_returns(data.draw(st.sampled_from(self.running())))
        self.lc.interrupted(e, self.now)
        self.collect()

    @precondition(lambda self: bool(self.active()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(self.active()))
        family = self.descendants(tid)
        assert self.lc.cancel(tid, None, self.now, self.wall)
        self.collect()
        assert not self.m[tid].active
        assert not [d for d in family if self.m[d].active], "a cancelled parent left children behind"
        assert not self.lc.cancel(tid, None, self.now, self.wall)

    @rule(group=st.sampled_from(GROUPS[1:]))
    def cancel_group(self, group: str) -> None:
        matched = {t for t, e in self.lc.tasks.items() if e.group == group and not e.cancelled}
        ids = self.lc.cancel_matching(lambda e: e.group == group, self.now, self.wall)
        self.collect()
        assert set(ids) == matched, "the call names every task it matched, cascaded ones too"
        assert all(not self.m[i].active for i in ids)
        assert not [t for t, e in self.lc.tasks.items() if e.group == group and not e.cancelled]

    @rule(kind=st.sampled_from(["global", "domain", "group"]), scope=st.sampled_from(["a", "g1"]),
          until=st.sampled_from([None, None, 3.0]), resume=st.booleans())
    def pause_or_resume(self, kind: str, scope: str, until: float | None, resume: bool) -> None:
        scope = "" if kind == "global" else ("a" if kind == "domain" else "g1")
        if resume:
            self.lc.resume_scope(kind, scope, self.now)
        else:
            self.lc.pause_scope(kind, scope, self.now, self.wall,
                                None if until is None or kind != "group" else self.wall + until)
        self.collect()

    @precondition(lambda self: bool(self.lc.recurring))
    @rule(data=st.data(), op=st.sampled_from(["pause", "resume", "cancel"]))
    def recurring_control(self, data: st.DataObject, op: str) -> None:
        tid = data.draw(st.sampled_from(sorted(self.lc.recurring)))
        schedule = self.lc.tasks[tid].x.schedule  # type: ignore[union-attr]
        live = not schedule.ended  # type: ignore[union-attr]
        if op == "cancel":
            assert self.lc.cancel_recurring(tid, self.now, self.wall) == live
        else:
            assert self.lc.set_recurring_paused(tid, op == "pause", self.now) == live
        self.collect()

    @rule(seconds=st.sampled_from([0.5, 2.5, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds
        self.lc.fire(self.now, self.wall)
        self.collect()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def lifecycle_is_consistent(self) -> None:
        self.lc.check()

    @invariant()
    def each_history_row_has_its_ending_event(self) -> None:
        for tid, m in self.m.items():
            assert m.ends == m.rows, (tid, m.ends, m.rows)

    @invariant()
    def every_status_change_was_reported_to_the_outbox(self) -> None:
        """Replaying the outbox's trace of moves gives every entry's status: nothing changed a
        status without going through the one move function."""
        assert self.lc.fx.trace is not None
        for tid, old, new in self.lc.fx.trace:
            assert self.replayed.get(tid, "") == old, (tid, self.replayed.get(tid, ""), old, new)
            self.replayed[tid] = new
        self.lc.fx.trace.clear()
        for e in [*self.lc.tasks.values(), *self.lc.running.values(), *self.lc.suspended.values()]:
            self.entries[e.id] = e
        for tid, e in self.entries.items():
            assert self.replayed.get(tid, "") == e.status, (tid, e.status, self.replayed.get(tid))

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert set(self.lc.tasks) == set(self.active()), (sorted(self.lc.tasks), self.active())
        for tid, m in self.m.items():
            if m.active:
                assert len(m.rows) <= m.executions, (tid, m.rows, m.executions)  # requeued / recurring runs only
            else:
                assert m.rows, f"task {tid} left without a history row"
                assert len(m.rows) <= m.executions + 1, (tid, m.rows, m.executions)
            if m.recurring is not None and m.recurring[1] is not None:
                runs = [r for r in m.rows if r not in ("cancelled", "expired", "superseded")]
                assert len(runs) <= m.recurring[1], (tid, m.rows, m.recurring)
            if "expired" in m.rows:
                assert m.ttl is not None or m.parent is not None, f"task {tid} expired without a TTL"

    @invariant()
    def a_paused_scope_holds_its_tasks(self) -> None:
        for e in self.lc.tasks.values():
            if e.status == "pending":
                assert not self.lc._scope_bits(e), f"pending task {e.id} in a paused scope"

    @invariant()
    def blocked_tasks_wait_on_unfinished_prerequisites(self) -> None:
        for tid, pre in self.lc.prereqs.items():
            for p in pre:
                assert self.m[p].active, (tid, p)


LifecycleMachine.TestCase.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)
TestLifecycle = LifecycleMachine.TestCase


class PreemptingMachine(LifecycleMachine):
    """The same machine with preemption by suspension on (REALTIME submissions are preemptors):
    victims are stopped with their worker, give back what they hold, and continue first."""

    def __init__(self) -> None:
        super().__init__()
        self.lc._init_preemption(0, "suspend")

    def collect(self) -> None:
        super().collect()
        self.lc.fx.suspends.clear()  # the loop would stop those workers

    def running(self) -> list[int]:  # a suspended run's worker does not answer until it continues
        return [t for t in super().running() if t not in self.lc.suspended]

    @precondition(lambda self: bool(self.running()))
    @rule(domain=st.sampled_from(DOMAINS), key=st.sampled_from(KEYS), group=st.sampled_from(GROUPS))
    def submit_a_preemptor(self, domain: str, key: str, group: str | None) -> None:
        self._submit(domain, key, group=group, priority=0)

    @rule()
    def suspended_runs_continue(self) -> None:
        for e in self.lc.resume_suspended(self.now):
            assert e.status == "running" and e.id in self.lc.running and not e.paused
        for e in [e for e in self.lc.suspended.values() if e.cancelled]:  # the loop kills those workers
            self.lc.run_ended(e)
        self.collect()

    @invariant()
    def victims_are_held_while_a_preemptor_is_active(self) -> None:
        if self.lc.preemptors:
            for tid in self.lc.victims:
                e = self.lc.tasks[tid]
                assert e.status != "pending", f"victim {tid} pending while preemptors {self.lc.preemptors} are active"
        for tid, e in self.lc.suspended.items():
            assert tid not in self.lc.running
            assert (e.status == "paused" and e.paused) or e.cancelled, (tid, e.status, e.paused)


PreemptingMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestPreempting = PreemptingMachine.TestCase
