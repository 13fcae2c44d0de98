"""Controls a Scheduler and its domain handles share: group pauses and runtime admission settings.

Mixins over a ``Session``: ``GroupControls`` (group pauses, group token
buckets, weights and minimum slots; groups span domains, so a ``DomainHandle``
has the same calls as its ``Scheduler``) and ``AdmissionControls`` (the
Scheduler's: concurrency, group caps, task-type token buckets, timed group
pauses). Each method checks its arguments on the host and sends one call; the
coordinator's next dispatch round obeys the new value. Runtime admission
changes last as long as the scheduler runs: the next start uses the
``Scheduler(...)`` arguments again. Imports leaves and the session only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from taskmill.admission import RateLimit
from taskmill.records import PausedGroupInfo
from taskmill.session import Session
from taskmill.validation import INT32_MAX, as_float, as_int, as_str, describe

__all__ = ["AdmissionControls", "GroupControls", "SessionCalls", "rate_wire", "task_type_name"]


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


class SessionCalls:
    """Calls through the session (``_session``), checked open first."""

    _session: Session

    def _check_open(self) -> None:
        self._session.check_open()

    def _call(self, name: str, *args: Any) -> Any:
        self._session.check_open()
        return self._session.call(name, *args)

    def _set_admission(self, what: str, scope: str, value: Any) -> None:
        self._call("admission", what, scope, value)


class GroupControls(SessionCalls):
    """Group pauses and fair-share and rate settings of groups (every domain).

    A group pause is stored and survives a restart of the scheduler on the same store; the
    settings (token buckets, weights, minimum slots) last until ``close``."""

    def pause_group(self, group: str) -> int:
        """Pause a group in every domain; its tasks (and new ones) wait as paused. Returns how many moved."""
        return self._call("pause", "group", as_str(group, "group"))

    def resume_group(self, group: str) -> int:
        """Lift a group's pause; returns how many tasks became pending."""
        return self._call("resume", "group", as_str(group, "group"))

    def is_group_paused(self, group: str) -> bool:
        """Whether ``group`` is paused."""
        return self._call("is_paused", "group", as_str(group, "group"))

    def paused_groups(self) -> list[PausedGroupInfo]:
        """Every paused group: when, how many tasks it holds, when it resumes by itself."""
        return self._call("paused_groups")

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


class AdmissionControls(GroupControls):
    """Runtime admission settings of a ``Scheduler``.

    They last until ``close``: a restart on the same store starts from the ``Scheduler(...)``
    arguments again (one place says how a job is configured). Pauses are different: they hold
    work, are stored, and survive a restart (``pause_group_until`` keeps its time)."""

    max_concurrency: int

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
        self._set_admission("type_rate", task_type_name(task_type, self._session.registered), rate_wire(limit))

    def remove_rate_limit(self, task_type: Any) -> None:
        """Remove a task type's token bucket."""
        self._set_admission("type_rate", task_type_name(task_type, self._session.registered), None)

    def pause_group_until(self, group: str, when: datetime | float) -> int:
        """Pause a group until ``when`` (a timezone-aware datetime or epoch seconds), then resume it."""
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise ValueError("when must be a timezone-aware datetime (or epoch seconds)")
            until = when.timestamp()
        else:
            until = as_float(when, "when (epoch seconds)")
        return self._call("pause", "group", as_str(group, "group"), until)
