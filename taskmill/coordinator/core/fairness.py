"""Fair share between groups and priority aging (F21). Plain code, no I/O.

**Aging.** A task pending longer than the grace period gains one level per
interval (its effective priority goes down by one, lower being more urgent), no
further than ``max_effective_priority``; time spent paused does not count, and
a task already more urgent than the cap keeps its own level. The stored
priority never changes.

**Fair share**, on once any group weight or minimum is set. Dispatches, not
running slots, are shared by weight: each group (tasks without a group form one
more, the "ungrouped" virtual group, with the default weight) has a virtual
time that grows by ``1 / weight`` per dispatch; the backlogged group furthest
behind goes next. A group that was idle rejoins at the current virtual time, so
it cannot bank a burst. Shares of dispatches then follow the weights whatever
the number of slots (with two slots and three groups weighted 1:2:3, a split of
running slots would starve the first group). A group below its minimum slots
goes before any weighing; a task aged to ``urgent_threshold`` goes before both.
A paused group has nothing ready, so it gives up its turn; caps stay the gate's.

``allocations`` turns the weights into the slot split shown in snapshots
(``GroupAllocationInfo.allocated_slots``): minimums first, the rest by weight
among groups with work, largest remainders rounded up, no group above its cap
or its demand.
"""

from __future__ import annotations

import math
from typing import Iterable

from taskmill.config import DEFAULT_GROUP_WEIGHT, AdmissionConfig

__all__ = ["Aging", "FairShare", "effective_priority", "make_fairness"]


class Aging:
    """An ``AgingConfig`` as the coordinator holds it (seconds and priority levels)."""

    __slots__ = ("grace", "interval", "cap", "urgent")

    def __init__(self, grace: float, interval: float, cap: int, urgent: int | None) -> None:
        self.grace = grace
        self.interval = interval
        self.cap = cap
        self.urgent = urgent


def effective_priority(base: int, waited: float, aging: Aging | None) -> int:
    """``base`` aged by ``waited`` seconds of pending time (paused time already left out)."""
    if aging is None or waited <= aging.grace or base <= aging.cap:
        return base
    steps = int((waited - aging.grace) // aging.interval)
    return max(base - steps, aging.cap)


class FairShare:
    """Group weights, minimum slots and the virtual times of dispatch."""

    def __init__(self, weights: dict[str, float] | None = None, default_weight: float = DEFAULT_GROUP_WEIGHT,
                 min_slots: dict[str, int] | None = None) -> None:
        self.weights = dict(weights or {})
        self.default_weight = default_weight
        self.min_slots = dict(min_slots or {})
        self.vt: dict[str | None, float] = {}
        self.floor = 0.0  # the virtual time of the last dispatch: where an idle group rejoins

    @property
    def configured(self) -> bool:
        return bool(self.weights or self.min_slots)

    def minimum(self, group: str | None) -> int:
        """Slots ``group`` gets before any weighing (none for the ungrouped tasks)."""
        return self.min_slots.get(group, 0) if group is not None else 0

    def weight(self, group: str | None) -> float:
        return self.weights.get(group, self.default_weight) if group is not None else self.default_weight

    def order(self, backlogged: Iterable[str | None], running: dict[str | None, int]) -> list[str | None]:
        """Backlogged groups in the order they may dispatch: those below their minimum slots
        first (the furthest below first), then by virtual time (ties: the heavier first)."""
        below, rest = [], []
        for g in backlogged:
            vt = max(self.vt.get(g, self.floor), self.floor)
            need = self.minimum(g)
            if running.get(g, 0) < need:
                below.append((running.get(g, 0) / need, vt, g))
            else:
                rest.append((vt, -self.weight(g), g))
        below.sort(key=lambda t: (t[0], t[1], str(t[2])))
        rest.sort(key=lambda t: (t[0], t[1], str(t[2])))
        return [g for *_, g in below] + [g for *_, g in rest]

    def dispatched(self, group: str | None, weighed: bool = True) -> None:
        """``group`` started a task: it moves on by one dispatch's worth of its weight. Only a
        weighed turn (not one for a minimum or an urgent task) moves the shared floor."""
        vt = max(self.vt.get(group, self.floor), self.floor)
        if weighed:
            self.floor = vt
        self.vt[group] = vt + 1.0 / self.weight(group)

    def allocations(self, total: int, demand: dict[str | None, int], caps: dict[str | None, int | None]
                    ) -> dict[str | None, int]:
        """Slots per group for ``total`` slots: minimums (up to demand), then the rest by weight
        among groups with demand left, largest remainders first; never above a cap or the demand."""
        out = {g: 0 for g in demand}
        limit = {g: min(d, caps.get(g) or d) for g, d in demand.items()}
        left = total
        for g in sorted(demand, key=str):
            give = min(self.minimum(g), limit[g], left)
            out[g] += give
            left -= give
        # water-filling: groups whose weighted share would pass their limit get the limit, groups
        # already holding more than their share (a minimum) keep it, the others share the rest
        # by weight; then whole slots by largest remainder, and any slot still free to whoever can use it
        open_ = {g for g in demand if out[g] < limit[g]}
        share: dict[str | None, float] = {}
        while open_ and left > 0:
            weight = sum(self.weight(g) for g in open_)
            pool = left + sum(out[g] for g in open_)
            share = {g: pool * self.weight(g) / weight for g in open_}
            over = {g for g in open_ if share[g] < out[g]}
            if over:  # they keep what they hold; the shares of the others are computed again
                open_ -= over
                share = {}
                continue
            capped = {g for g in open_ if share[g] >= limit[g]}
            if not capped:
                break
            for g in capped:
                left -= limit[g] - out[g]
                out[g] = limit[g]
            open_ -= capped
            share = {}
        if share:
            for g in sorted(open_, key=str):
                give = max(0, min(math.floor(share[g]) - out[g], left))
                out[g] += give
                left -= give
            for g in sorted(open_, key=lambda g: (-(share[g] - math.floor(share[g])), -self.weight(g), str(g))):
                if left <= 0:
                    break
                if out[g] < limit[g]:
                    out[g] += 1
                    left -= 1
        for g in sorted(demand, key=lambda g: (-self.weight(g), str(g))):  # work-conserving
            give = min(left, limit[g] - out[g])
            out[g] += give
            left -= give
        return out


def make_fairness(admission: AdmissionConfig) -> tuple[FairShare, Aging | None]:
    """Fair share and aging from a coordinator's admission config (the host checked it)."""
    fair = FairShare(dict(admission.group_weights), admission.default_group_weight,
                     dict(admission.group_minimum_slots))
    aging = admission.aging
    return fair, (Aging(*aging) if aging is not None else None)
