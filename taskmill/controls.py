"""Admission settings changed at runtime (F17, F20, F21): the Scheduler's concurrency, group
caps, token buckets and group weights.

A mixin of ``Scheduler``: each method checks its arguments on the host and sends
one ``admission`` call; the coordinator's next dispatch round obeys the new
value. Runtime changes last as long as the scheduler runs: the next start uses
the ``Scheduler(...)`` arguments again. Imports leaves only.
"""

from __future__ import annotations

from typing import Any

from taskmill.admission import RateLimit
from taskmill.validation import INT32_MAX, as_float, as_int, as_str, describe

__all__ = ["AdmissionControls", "rate_wire", "task_type_name"]


def rate_wire(limit: Any) -> tuple[int, float, int]:
    if not isinstance(limit, RateLimit):
        raise TypeError(f"the limit must be a RateLimit (RateLimit.per_second(n) …), got {describe(limit)}")
    return limit.as_wire()


def task_type_name(task_type: Any, known: frozenset[str]) -> str:
    """A task type (a ``TaskType`` or its qualified name) as its qualified name, known to the scheduler."""
    name = getattr(task_type, "qualified", None)
    name = as_str(task_type if name is None else name, "task_type")
    if name not in known:
        raise ValueError(f"unknown task type {name!r}: not registered when the scheduler started "
                         f"(qualified names, such as 'media::thumbnail')")
    return name


class AdmissionControls:
    """Runtime admission settings of a ``Scheduler``."""

    _registered: frozenset[str]
    max_concurrency: int

    def _call(self, name: str, *args: Any) -> Any:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    def _set_admission(self, what: str, scope: str, value: Any) -> None:
        self._check_open()
        self._call("admission", what, scope, value)

    def set_max_concurrency(self, n: int) -> None:
        """Change the most tasks running at once. Raising it starts workers (up to twice the
        starting value plus 16); lowering it lets running tasks finish and starts fewer."""
        n = as_int(n, "max_concurrency", lo=1, hi=INT32_MAX)
        self._set_admission("max_concurrency", "", n)
        self.max_concurrency = n

    def set_group_limit(self, group: str, n: int) -> None:
        """Cap the running tasks of ``group`` (every domain) at ``n``."""
        self._set_admission("group_cap", as_str(group, "group"), as_int(n, "n", lo=1, hi=INT32_MAX))

    def remove_group_limit(self, group: str) -> None:
        """Remove ``group``'s own cap (the default group cap, if any, applies again)."""
        self._set_admission("group_cap", as_str(group, "group"), None)

    def set_default_group_concurrency(self, n: int | None) -> None:
        """Cap every group without a cap of its own at ``n`` (None: no cap)."""
        self._set_admission("default_group_cap", "", None if n is None else as_int(n, "n", lo=1, hi=INT32_MAX))

    def set_rate_limit(self, task_type: Any, limit: RateLimit) -> None:
        """Give a task type (a ``TaskType`` or its qualified name) a token bucket; a new bucket
        starts full."""
        self._set_admission("type_rate", task_type_name(task_type, self._registered), rate_wire(limit))

    def remove_rate_limit(self, task_type: Any) -> None:
        """Remove a task type's token bucket."""
        self._set_admission("type_rate", task_type_name(task_type, self._registered), None)

    def set_group_rate_limit(self, group: str, limit: RateLimit) -> None:
        """Give ``group`` (every domain) a token bucket; a new bucket starts full."""
        self._set_admission("group_rate", as_str(group, "group"), rate_wire(limit))

    def remove_group_rate_limit(self, group: str) -> None:
        """Remove ``group``'s token bucket."""
        self._set_admission("group_rate", as_str(group, "group"), None)

    def set_group_weight(self, group: str, weight: float) -> None:
        """Weigh ``group`` in fair share (relative to the other groups; default 1)."""
        self._set_admission("group_weight", as_str(group, "group"),
                            as_float(weight, "weight", lo=0.0, lo_open=True, hi=1e9))

    def remove_group_weight(self, group: str) -> None:
        """``group`` goes back to the default weight."""
        self._set_admission("group_weight", as_str(group, "group"), None)

    def reset_group_weights(self) -> None:
        """Every group back to weight 1 (minimum slots stay)."""
        self._set_admission("reset_weights", "", None)

    def set_group_minimum_slots(self, group: str, n: int) -> None:
        """Guarantee ``group`` ``n`` running slots whatever the weights (0 removes it)."""
        self._set_admission("group_min_slots", as_str(group, "group"), as_int(n, "n", lo=0, hi=INT32_MAX))
