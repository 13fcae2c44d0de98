"""Runs queued on busy workers, driven through the lifecycle by hypothesis (no processes).

The local backend (``backends/local.py``) queues runs behind each busy worker's run with
``Lifecycle.queue_next`` (several in one message behind short runs), starts the
first when the run before it ends (the rest stay queued behind it), puts them
back with ``unqueue`` when the worker dies first, and takes every queued run back
before any change (a submission, cancel, pause, a timer firing) and whenever a
more urgent task became ready (``ReadyQueues.outranked``). This machine plays
the loop's part with three worker slots and checks after every step:

- the lifecycle's own invariants (a queued task is pending, in no lane, once);
- a queued run is never less urgent than a ready task unless ``outranked`` says so
  (tasks made ready by completions: retries, unblocked dependents);
- a queued run takes its runner's place exactly (same domain, group, cores, memory),
  never starts in a paused scope, never starts twice, and every task runs once per
  attempt;
- after a dispatch no slot is free while a queued run that would fit there waits
  behind another run (``stealable``: the loop takes it back and starts it there).
"""

from __future__ import annotations

from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from taskmill import protocol
from taskmill.coordinator.core.entry import Ended
from taskmill.coordinator.core.gate import Gate
from taskmill.coordinator.core.lifecycle import Lifecycle
from taskmill.records import RetryPolicy

SLOTS = 3
DOMAINS = ("a", "b")
GROUPS = (None, "g1")
ENDED = Ended(0.0, 0.0, 1.0, (0, 0, 0, 0))


def item(domain: str, key: str, priority: int, group: str | None = None, run_after: float | None = None,
         deps: tuple[int, ...] = ()) -> protocol.SubmitItem:
    """A plain submission (one core, no memory or IO) as the host sends it."""
    return protocol.SubmitItem(
        f"{domain}::t", domain, f"{domain}:{key}", key, priority, "{}", 1, None, None, 1.0, 0, 0, 0, 0, 0, group, None,
        "skip", None, "submission", run_after, deps or None, "cancel", None, True, None)


class QueuedRunsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lc = Lifecycle(gate=Gate(SLOTS, domain_caps={"a": 1}), default_retry=RetryPolicy.constant(1, 1.0))
        self.now, self.wall = 1000.0, 5000.0
        self.queued: dict[int, list[Any]] = {}  # running task id -> the entries queued behind it, in order
        self.keys = 0

    # ------------------------------------------------------------------ the loop's part

    def take_back(self) -> None:
        for runs in self.queued.values():
            for q in runs:
                self.lc.unqueue(q)
        self.queued.clear()
        self.lc.ready.outranked = False

    def start(self, e: Any) -> None:
        assert e.id not in self.lc.running, f"task {e.id} started twice"
        assert not self.lc._scope_bits(e), f"task {e.id} started in a paused scope"
        self.lc.started(e, object(), self.now, self.wall)

    def clear_effects(self) -> None:
        self.lc.fx.finished.clear()
        self.lc.fx.signals.clear()
        self.lc.fx.hooks.clear()

    def running(self) -> list[int]:
        return sorted(t for t, e in self.lc.running.items() if not e.cancelled)

    # ------------------------------------------------------------------ rules

    @initialize(n=st.integers(SLOTS, 3 * SLOTS))
    def a_queue_of_plain_tasks(self, n: int) -> None:
        """Start from a queue deeper than the slots: what runs are queued from."""
        self._submit("b", None, 128, n, None, ())

    @rule(domain=st.sampled_from(DOMAINS), group=st.sampled_from(GROUPS), priority=st.sampled_from([64, 128, 128, 192]),
          n=st.integers(1, 3), delay=st.sampled_from([None, None, 1.0]), data=st.data())
    def submit(self, domain: str, group: str | None, priority: int, n: int, delay: float | None,
               data: st.DataObject) -> None:
        active = sorted(self.lc.tasks)
        deps = tuple(data.draw(st.lists(st.sampled_from(active), max_size=1))) if active else ()
        self._submit(domain, group, priority, n, delay, deps)

    def _submit(self, domain: str, group: str | None, priority: int, n: int, delay: float | None,
                deps: tuple[int, ...]) -> None:
        self.take_back()
        items = []
        for _ in range(n):
            self.keys += 1
            items.append(item(domain, f"k{self.keys}", priority, group, None if delay is None else self.wall + delay,
                              deps))
        self.lc.submit(items, self.now, self.wall, outcomes={}, completed={})
        self.clear_effects()

    @rule(depth=st.integers(1, 3))
    def dispatch(self, depth: int) -> None:
        """As the loop's dispatch: fill free slots, then queue up to ``depth`` runs behind every busy
        worker (in one message, as the loop does behind short runs)."""
        if self.lc.ready.outranked:
            self.take_back()
        while len(self.lc.running) < SLOTS:
            e = self.lc.pick(self.now, self.wall)
            if e is None:
                stolen = self.lc.stealable()
                if stolen is None:
                    break
                runner = next(t for t, runs in self.queued.items() if any(q is stolen for q in runs))
                for q in self.queued.pop(runner):  # the worker's queue is taken back; a free slot takes it
                    self.lc.unqueue(q)
                event("a queued run moved to a free slot")
                continue
            self.start(e)
        assert len(self.lc.running) == SLOTS or all(not self.lc.gate.fits(q) for q in self.lc.reserved.values()), \
            "a slot is free while a queued run that fits waits behind another run"
        self.clear_effects()
        if not self.lc.may_queue():
            return
        for tid in self.running():
            runner = self.lc.running[tid]
            if tid in self.queued:
                continue
            runs = []
            while len(runs) < depth and (q := self.lc.queue_next(runner)) is not None:
                assert q.status == "pending" and not q.queued and q.id in self.lc.reserved
                assert (q.domain, q.group, q.cpus, q.memory) == (runner.domain, runner.group, runner.cpus, runner.memory)
                assert not runs or (runs[-1].priority, runs[-1].id) < (q.priority, q.id)  # in dispatch order
                runs.append(q)
            if runs:
                self.queued[tid] = runs
                event(f"{len(runs)} run(s) queued behind one")

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data(), how=st.sampled_from(["completed", "completed", "retryable", "died"]))
    def worker_returns(self, data: st.DataObject, how: str) -> None:
        tid = data.draw(st.sampled_from(self.running()))
        e = self.lc.running[tid]
        self.lc.run_ended(e)
        runs = self.queued.pop(tid, None)
        if runs and how == "died":  # never claimed: ready again
            for q in runs:
                self.lc.unqueue(q)
            event("queued runs went back")
        elif runs:
            q = runs.pop(0)
            self.start(q)
            if runs:
                self.queued[q.id] = runs  # the rest stay queued behind the run that just started
            event("a queued run started")
        if how == "completed":
            self.lc.completed(e, "1", ENDED, self.now, self.wall)
        else:
            self.lc.failed(e, how, permanent=False, retry_after=None, ended=None if how == "died" else ENDED,
                           now=self.now, wall=self.wall)
        if self.lc.ready.outranked:
            event("outranked")
        self.clear_effects()

    @precondition(lambda self: bool(self.lc.tasks))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.take_back()
        self.lc.cancel(data.draw(st.sampled_from(sorted(self.lc.tasks))), None, self.now, self.wall)
        self.clear_effects()

    @rule(kind=st.sampled_from(["global", "domain", "group"]), resume=st.booleans())
    def pause_or_resume(self, kind: str, resume: bool) -> None:
        self.take_back()
        scope = {"global": "", "domain": "a", "group": "g1"}[kind]
        if resume:
            self.lc.resume_scope(kind, scope, self.now)
        else:
            self.lc.pause_scope(kind, scope, self.now, self.wall)
        self.clear_effects()

    @rule(seconds=st.sampled_from([0.5, 1.5]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds
        due = self.lc.next_due()
        if due is not None and due <= self.now:
            self.take_back()
        self.lc.fire(self.now, self.wall)
        self.clear_effects()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def lifecycle_is_consistent(self) -> None:
        self.lc.check()
        assert sorted(self.lc.reserved) == sorted(q.id for runs in self.queued.values() for q in runs)
        assert set(self.queued) <= set(self.lc.running)

    @invariant()
    def queued_runs_go_first_unless_outranked(self) -> None:
        if self.lc.reserved and not self.lc.ready.outranked:
            worst = max((q.priority, q.id) for q in self.lc.reserved.values())
            best = self.lc.ready.best()
            assert best is None or (best.priority, best.id) > worst, (best, worst)


QueuedRunsMachine.TestCase.settings = settings(max_examples=500, stateful_step_count=40, deadline=None)
TestQueuedRuns = QueuedRunsMachine.TestCase


def test_under_pressure_only_what_the_throttle_lets_through_is_queued() -> None:
    """Pressure does not stop runs being sent ahead; the throttle policy decides per task, as the
    gate would when the task starts (default: BACKGROUND waits above 0.5, NORMAL above 0.75)."""
    lc = Lifecycle(gate=Gate(SLOTS))
    now, wall = 1000.0, 5000.0
    lc.submit([item("b", "run", 128), item("b", "bg", 192), item("b", "normal", 128)], now, wall, outcomes={},
              completed={})
    runner = lc.pick(now, wall)
    assert runner is not None
    lc.started(runner, object(), now, wall)
    lc.gate.set_pressure(0.6, [("test", 0.6)])
    assert lc.may_queue()
    queued = lc.queue_next(runner)
    assert queued is not None and queued.key == "b:normal"  # NORMAL passes at 0.6
    lc.unqueue(queued)
    lc.gate.set_pressure(0.8, [("test", 0.8)])
    assert lc.queue_next(runner) is None  # at 0.8 NORMAL waits too
    lc.check()
