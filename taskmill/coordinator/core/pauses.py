"""Pause and resume: global, per domain and per group, with reasons per task (F22).

A ``Lifecycle`` mixin. A scope holds every task it covers: pending ones
become ``paused`` with the scope's reason bit, running ones are asked to stop
(``ctx.cancelled``) and come back as ``paused`` without a retry counted, and
whatever arrives later (a submission, an unblocked task, the next occurrence of
a schedule, a parent ready to finalize) lands ``paused``. A task resumes only
when none of its reasons is left. Scopes are persisted (``paused_scopes``);
a group may be paused until a time, then resumes by itself. Plain code, no I/O.
"""

from __future__ import annotations

from taskmill.coordinator.core.entry import PAUSE_REASONS, Entry
from taskmill.coordinator.core.queues import Timer
from taskmill.coordinator.core.table import TaskTable
from taskmill.records import TaskStatus

__all__ = ["Pauses", "reason_names"]

GLOBAL, DOMAIN, GROUP, PREEMPTED, RECURRING = (PAUSE_REASONS[k] for k in
                                                ("global", "domain", "group", "preempted", "recurring"))
_BIT_OF_KIND = {"global": GLOBAL, "domain": DOMAIN, "group": GROUP}
_PENDING = TaskStatus.PENDING.value
_PAUSED = TaskStatus.PAUSED.value
_RUNNING = TaskStatus.RUNNING.value


def reason_names(bits: int) -> list[str]:
    """Pause reason bits as the names records carry (``pause_reasons``)."""
    return [name for name, bit in PAUSE_REASONS.items() if bits & bit]


class Pauses(TaskTable):
    """Pause scopes of the lifecycle (mixed into ``Lifecycle``)."""

    def _init_pauses(self) -> None:
        self.paused_global: float | None = None  # wall clock it was paused at
        self.paused_domains: dict[str, float] = {}
        self.paused_groups: dict[str, tuple[float, float | None]] = {}  # group -> (paused at, resume at), wall
        self.group_timers: dict[str, Timer] = {}

    # ------------------------------------------------------------------ where a task goes

    def _scope_bits(self, e: Entry) -> int:
        bits = 0
        if self.paused_global is not None:
            bits |= GLOBAL
        if e.domain in self.paused_domains:
            bits |= DOMAIN
        if e.group is not None and e.group in self.paused_groups:
            bits |= GROUP
        if e.x is not None and e.x.schedule is not None and e.x.schedule.held:
            bits |= RECURRING
        if e.id in self.victims:
            bits |= PREEMPTED
        return bits

    def _settle(self, e: Entry, now: float) -> None:
        """``e`` may run again (no worker, no blockers): pending (ready or due), or paused if held."""
        bits = self._scope_bits(e)
        if bits:
            self._hold(e, bits, now)
            return
        x = e.x
        if x is not None and x.paused_since is not None:  # aging: the pause does not count as waiting
            x.paused_for += max(0.0, now - x.paused_since)
            x.paused_since = None
            self.were_paused.add(e.id)
        was = e.status
        e.paused = 0
        due = e.run_after if e.run_after is not None and e.run_after > now else None
        self._make_ready(e, due)
        if due is None and e.id in self.preemptors:
            self._preempt_for(e, now)
        if was == _RUNNING:  # a run that did not finish leaves no start time behind
            self.fx.update(e.id, status=_PENDING, pause_reasons=[], started_at=None)
        elif was not in ("", _PENDING):
            self.fx.update(e.id, status=_PENDING, pause_reasons=[])

    def _hold(self, e: Entry, bits: int, now: float) -> None:
        """``e`` (not running) becomes paused with ``bits``; a delay it had is kept for later."""
        if self.aging is not None and (e.x is None or e.x.paused_since is None):
            e.extra().paused_since = now  # aging does not count the pause
        if e.queued:
            self.ready.discard(e)
        self.timers.cancel(e.timer)
        e.timer = None
        changed = e.status != _PAUSED or e.paused != bits
        was_running = e.status == _RUNNING
        e.paused = bits
        self._move(e, _PAUSED)
        if was_running:
            self.fx.update(e.id, status=_PAUSED, pause_reasons=reason_names(bits), started_at=None)
        elif changed:
            self.fx.update(e.id, status=_PAUSED, pause_reasons=reason_names(bits))

    # ------------------------------------------------------------------ scopes

    def _covers(self, kind: str, scope: str, e: Entry) -> bool:
        return kind == "global" or (kind == "domain" and e.domain == scope) or (kind == "group" and e.group == scope)

    def pause_scope(self, kind: str, scope: str, now: float, wall: float, resume_at: float | None = None) -> int:
        """Pause a scope (``kind`` global/domain/group); returns how many tasks it moved or stopped.

        ``resume_at`` (wall clock, groups only) resumes it by itself.
        """
        bit = _BIT_OF_KIND[kind]
        self.wall_now = wall
        newly = not self.is_paused(kind, scope)
        if kind == "global":
            self.paused_global = self.paused_global or wall
        elif kind == "domain":
            self.paused_domains.setdefault(scope, wall)
        else:
            if scope not in self.paused_groups:
                self.counters["group_pauses"] += 1
            self.paused_groups[scope] = (self.paused_groups.get(scope, (wall, None))[0], resume_at)
            self.timers.cancel(self.group_timers.pop(scope, None))
            if resume_at is not None:
                self.group_timers[scope] = self.timers.add(now + max(resume_at - wall, 0.0), "resume_group", scope)
        paused_at = wall if kind != "group" else self.paused_groups[scope][0]
        self.fx.set_scope((kind, scope), (paused_at, resume_at))
        self.fx.touch(now)
        held = stopped = 0
        for e in list(self.tasks.values()):
            if not self._covers(kind, scope, e):
                continue
            if e.status in (_PENDING, _PAUSED):
                if not e.paused & bit:
                    held += e.status == _PENDING
                    self._hold(e, e.paused | bit, now)
            elif e.status == _RUNNING and not e.cancelled:
                e.paused |= bit
                if e.extra().stop is None:
                    e.extra().stop = "pause"
                    self.fx.signals.append(e)  # its worker sees ctx.cancelled; it comes back paused
                    stopped += 1
        if newly and self.fx.listening and kind != "domain":
            if kind == "global":
                self._emit_about("Paused", None)
            else:
                self._emit_about("GroupPaused", None, scope, held, stopped)
        return held + stopped

    def resume_scope(self, kind: str, scope: str, now: float) -> int:
        """Lift a pause; returns how many tasks became pending (0 while another reason holds them)."""
        bit = _BIT_OF_KIND[kind]
        if kind == "global":
            if self.paused_global is None:
                return 0
            self.paused_global = None
        elif kind == "domain":
            if self.paused_domains.pop(scope, None) is None:
                return 0
        else:
            if self.paused_groups.pop(scope, None) is None:
                return 0
            self.counters["group_resumes"] += 1
            self.timers.cancel(self.group_timers.pop(scope, None))
        self.fx.set_scope((kind, scope), None)
        self.fx.touch(now)
        moved = 0
        for e in list(self.tasks.values()):
            if not e.paused & bit:
                continue
            if e.status == _PAUSED and e.id not in self.suspended:
                self._settle(e, now)
                moved += e.status == _PENDING
            else:  # a running task asked to pause comes back pending instead; a suspended one
                e.paused &= ~bit  # continues once nothing holds it (preemption.resume_suspended)
        if self.fx.listening and kind != "domain":
            if kind == "global":
                self._emit_about("Resumed", None)
            else:
                self._emit_about("GroupResumed", None, scope, moved)
        return moved

    def is_paused(self, kind: str, scope: str = "") -> bool:
        if kind == "global":
            return self.paused_global is not None
        return scope in (self.paused_domains if kind == "domain" else self.paused_groups)

    def paused_group_infos(self) -> list[tuple[str, float, int, float | None]]:
        """(group, paused at, paused task count, resume at) of every paused group, by name."""
        counts: dict[str, int] = {}
        for e in self.tasks.values():
            if e.status == _PAUSED and e.group is not None and e.group in self.paused_groups:
                counts[e.group] = counts.get(e.group, 0) + 1
        return [(g, at, counts.get(g, 0), until) for g, (at, until) in sorted(self.paused_groups.items())]
