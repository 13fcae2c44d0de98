"""Preemption (F12): urgent work takes the workers of running lower-priority work. Plain code.

A ``Lifecycle`` mixin. A task at or above ``preempt_priority`` (numerically at
or below it) is a *preemptor*; when it is ready (at once when submitted, or
when its delay ends, its prerequisites complete or its pause lifts) every
running task of lower priority becomes a *victim*, with the pause reason
``preempted``. Victims stay held while any preemptor is active (in the table,
whatever its status) and are let go together when the last one leaves, so
work is not stopped and restarted over and over (no thrashing).

Two modes:

- ``"cancel"``: the victim's ``ctx.cancelled`` turns true; when its run ends
  it goes back to ``paused`` (no retry counted) and runs again from the start
  once let go;
- ``"suspend"``: the victim's worker is stopped (SIGSTOP, the loop sends it)
  and keeps its task; the victim is ``paused`` and gives back its slot, cores,
  memory and IO budget at once. Once let go, it continues (SIGCONT) as soon as
  the gate has room for it again, before any new task starts: it loses nothing.

A preemption does not outlive the coordinator: a restart drops the reason.
"""

from __future__ import annotations

from taskmill.coordinator.core.entry import PAUSE_REASONS, Entry
from taskmill.coordinator.core.pauses import reason_names
from taskmill.coordinator.core.table import TaskTable
from taskmill.records import TaskStatus

__all__ = ["PREEMPTED", "Preemption"]

PREEMPTED = PAUSE_REASONS["preempted"]
_RUNNING = TaskStatus.RUNNING.value
_PAUSED = TaskStatus.PAUSED.value


class Preemption(TaskTable):
    """Preemptors, victims and suspended runs (mixed into ``Lifecycle``)."""

    def _init_preemption(self, priority: int | None, mode: str) -> None:
        self.preempt_priority = priority  # None: preemption off
        self.preempt_mode = mode  # "cancel" | "suspend"
        self.let_go: list[int] = []  # suspended victims waiting for room to continue

    @property
    def suspending(self) -> bool:
        """Preemption is on and stops its victims' workers (the pool keeps a spare worker)."""
        return self.preempt_priority is not None and self.preempt_mode == "suspend"

    def _maybe_preempt(self, e: Entry, now: float) -> None:
        """``e`` was submitted (or upgraded): at or above ``preempt_priority`` it is a preemptor,
        and if it is ready now it stops running lower-priority work (else when it becomes ready)."""
        if self.preempt_priority is None or e.priority > self.preempt_priority:
            return
        self.preemptors.add(e.id)
        if e.queued:
            self._preempt_for(e, now)

    def _preempt_for(self, e: Entry, now: float) -> None:
        """Preemptor ``e`` is ready: every running task of lower priority becomes a victim."""
        for r in list(self.running.values()):
            if r.priority <= e.priority or r.cancelled or r.id in self.victims:
                continue
            if r.x is not None and r.x.stop is not None:  # already asked to stop
                continue
            self.victims.add(r.id)
            self.counters["preempted"] += 1
            if self.fx.listening:
                self._emit("Preempted", r)
            r.paused |= PREEMPTED
            if self.suspending:
                self._suspend(r, now)
            else:
                r.extra().stop = "pause"
                self.fx.signals.append(r)  # ctx.cancelled; it comes back paused
        self.fx.touch(now)

    def _suspend(self, r: Entry, now: float) -> None:
        del self.running[r.id]
        self.gate.give(r)
        self.suspended[r.id] = r
        self._move(r, _PAUSED)
        self.fx.update(r.id, status=_PAUSED, pause_reasons=reason_names(r.paused))
        self.fx.suspends.append(r)

    def _release_preempted(self, now: float) -> None:
        """No preemptor is left: every victim is let go (suspended ones continue when they fit)."""
        victims, self.victims = self.victims, set()
        for tid in sorted(victims):
            e = self.tasks.get(tid)
            if e is None:
                continue
            if tid in self.suspended:  # keeps its reason until it continues (it waits for room)
                self.let_go.append(tid)
                continue
            e.paused &= ~PREEMPTED
            if e.status == _PAUSED:
                self._settle(e, now)
            self.fx.touch(now)

    def resume_suspended(self, now: float) -> list[Entry]:
        """Suspended runs that may continue now (the gate has room again; most urgent first):
        they hold their slot and resources again and are running. The loop continues their workers."""
        if not self.let_go:
            return []
        out = []
        waiting = []
        for tid in sorted(self.let_go, key=lambda t: (self.tasks[t].priority, t) if t in self.tasks else (0, t)):
            e = self.suspended.get(tid)
            if e is None or self.tasks.get(tid) is not e:
                continue
            if e.paused & ~PREEMPTED or not self.gate.fits(e):  # paused for another reason, or no room yet
                waiting.append(tid)
                continue
            e.paused = 0
            del self.suspended[tid]
            self.gate.take(e, now, tokens=False)
            self.running[tid] = e
            self._move(e, _RUNNING)
            self.fx.update(tid, status=_RUNNING, pause_reasons=[])
            out.append(e)
        self.let_go = waiting
        if out:
            self.fx.touch(now)
        return out
