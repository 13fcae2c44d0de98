"""Admission settings changed at runtime (F17, F20, F21): caps, token buckets, group weights.

A ``Lifecycle`` mixin, plain code. The call's arguments were checked already
(``routes``); this applies them to the gate and fair share, so the next
dispatch round obeys them. They last until the coordinator stops.
"""

from __future__ import annotations

from typing import Any

from taskmill.config import DEFAULT_GROUP_WEIGHT
from taskmill.coordinator.core.table import TaskTable

__all__ = ["SETTINGS", "Settings"]

#: The settings ``change_admission`` knows (besides ``max_concurrency``, which also sizes the pool).
SETTINGS = frozenset({"domain_cap", "group_cap", "default_group_cap", "type_rate", "group_rate", "group_weight",
                      "reset_weights", "group_min_slots"})


class Settings(TaskTable):
    """Runtime admission changes (mixed into ``Lifecycle``)."""

    def change_admission(self, what: str, scope: str, value: Any, now: float) -> None:
        """Set (or with ``value`` None, remove) one admission setting of ``scope``."""
        gate, fair = self.gate, self.fair
        if what in ("domain_cap", "group_cap"):
            caps = gate.domain_caps if what == "domain_cap" else gate.group_caps
            if value is None:
                caps.pop(scope, None)
            else:
                caps[scope] = value
        elif what == "default_group_cap":
            gate.default_group_cap = value
        elif what in ("type_rate", "group_rate"):
            gate.set_rate_limit("type" if what == "type_rate" else "group", scope, value, now)
        elif what == "group_weight":
            before = fair.weight(scope)
            if value is None:
                fair.weights.pop(scope, None)
            else:
                fair.weights[scope] = value
            self._weight_changed(scope, before)
        elif what == "reset_weights":
            weights = {g: fair.weight(g) for g in fair.weights}
            fair.weights.clear()
            fair.default_weight = DEFAULT_GROUP_WEIGHT
            for group, weight in sorted(weights.items()):
                self._weight_changed(group, weight)
        elif what == "group_min_slots":
            if value:
                fair.min_slots[scope] = value
            else:
                fair.min_slots.pop(scope, None)
        else:
            raise ValueError(f"unknown admission setting {what!r}")

    def _weight_changed(self, group: str, before: float) -> None:
        after = self.fair.weight(group)
        if after != before and self.fx.listening:
            self._emit_about("GroupWeightChanged", None, group, before, after)
