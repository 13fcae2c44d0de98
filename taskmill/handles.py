"""``DomainHandle``: submit to and query one domain (``sched.domain(media)``).

A thin proxy like the rest of the host API: submissions are resolved and
checked here (``domain.resolve``), calls go to the coordinator by name with
plain, bounded arguments, scoped to this domain. It holds the scheduler's
``Session``, never the scheduler. Imports leaves, ``domain``, ``controls`` and
the session only.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, overload

from taskmill import protocol
from taskmill.admission import RateLimit
from taskmill.controls import GroupControls, rate_wire, task_type_name
from taskmill.domain import Domain, P, Submission, TaskOptions, TaskType, as_submission, keywords_only, resolve
from taskmill.errors import InvalidSubmission, UnknownTaskType
from taskmill.events import Event
from taskmill.outcomes import BatchOutcome, SubmitOutcome, outcomes_from_wire
from taskmill.records import (
    EstimatedProgress,
    ModuleSnapshot,
    TaskHistoryRecord,
    TaskProgress,
    TaskRecord,
    TaskStatus,
)
from taskmill.session import Session
from taskmill.stream import EventStream
from taskmill.validation import INT32_MAX, as_int, as_str, describe

__all__ = ["DomainHandle"]


def _status(status: Any) -> str | None:
    """A status filter of the tag queries: None, or one of the active statuses."""
    if status is None:
        return None
    s = as_str(status, "status")
    if s not in TaskStatus._value2member_map_:
        raise ValueError(f"status must be one of {[t.value for t in TaskStatus]} or None, got {s!r}")
    return s


class DomainHandle(GroupControls):
    """Submit to and query one domain (``sched.domain(media)``).

    Groups span domains: the group calls (``pause_group``, ``set_group_weight`` …) act on the
    group in every domain, as the Scheduler's do.
    """

    def __init__(self, session: Session, domain: Domain) -> None:
        self._session = session
        self.domain = domain
        self.name = domain.name
        self._cap = domain.max_concurrency

    def __repr__(self) -> str:
        return f"<DomainHandle {self.name}>"

    def _submission(self, task: TaskType | TaskOptions | Submission, payload: dict[str, Any]) -> Submission:
        sub = as_submission(task, payload)
        t = sub.task
        if t.domain is not self.domain and t.domain.name != self.name:
            raise UnknownTaskType(f"task {t.qualified} belongs to domain {t.domain.name!r}, not {self.name!r}")
        if t.qualified not in self._session.registered:
            raise UnknownTaskType(f"task {t.qualified} was not registered when the scheduler started")
        return sub

    @overload
    def submit(self, task: TaskType[P, Any] | TaskOptions[P, Any], /, *args: P.args,
               **payload: P.kwargs) -> SubmitOutcome: ...

    @overload
    def submit(self, task: Submission, /) -> SubmitOutcome: ...

    def submit(self, task: Any, /, *args: Any, **payload: Any) -> SubmitOutcome:
        """Submit one task; returns once it is durable.

        The payload is keyword arguments only; type checkers check them against the
        task function's parameters (``TaskType[P, R]``).

        Example:
            >>> h.submit(thumbnail, path="/a.jpg", size=256)          # doctest: +SKIP
            Inserted(task_id=1, group_paused=False)

        Raises:
            InvalidPayload: payload not JSON-serializable or over 1 MiB.
            UnknownTaskType: the task is not this domain's.
            ValueError, TypeError: an option breaks its rule, or the payload does
                not fit the task function's signature (named in the message).
            SchedulerClosed: the scheduler is closed or not started.
        """
        self._check_open()
        keywords_only(args, "submit()")
        item = resolve(self._submission(task, payload), self._session.defaults)
        try:
            wire = self._session.submit_one(tuple(item))
        except InvalidSubmission as e:  # the coordinator numbers items; one submission has no number
            text = str(e)
            raise InvalidSubmission(text[len("item 0: "):] if text.startswith("item 0: ") else text,
                                    index=e.index) from None
        return outcomes_from_wire([wire])[0]

    def submit_batch(self, submissions: Iterable[Submission | TaskType[Any, Any] | TaskOptions[Any, Any]]
                     ) -> BatchOutcome:
        """Submit many tasks in one transaction; dedup applies inside the batch too.

        A batch with one invalid item writes nothing; ``InvalidSubmission.index`` names it.

        Raises:
            InvalidSubmission: an item is invalid (``index`` names it).
            TypeError: ``submissions`` is not an iterable of submissions (e.g. a single one).
        """
        self._check_open()
        if isinstance(submissions, (Submission, TaskType, TaskOptions, str, bytes, Mapping)) or not isinstance(
                submissions, Iterable):
            raise TypeError(f"submit_batch() takes a list of submissions (task.call(...)), got {describe(submissions)}")
        items = []
        for i, sub in enumerate(submissions):
            try:
                items.append(resolve(self._submission(sub, {}), self._session.defaults))
            except (ValueError, TypeError, LookupError) as e:
                raise InvalidSubmission(f"batch item {i} is invalid: {e}", index=i) from e
        if not items:
            return BatchOutcome(())
        wire = self._session.proc().request(protocol.Submit([tuple(it) for it in items], batch=True))
        return BatchOutcome(outcomes_from_wire(wire))

    def cancel(self, task_id: int) -> bool:
        """Cancel one of this domain's tasks; True if it was found and cancelled."""
        self._check_open()
        task_id = as_int(task_id, "task_id")
        return bool(self._session.proc().call("cancel", task_id, self.name))

    # ------------------------------------------------------------------ cancellation (F23)

    def cancel_all(self) -> list[int]:
        """Cancel every active task of this domain (children elsewhere go with their parents); their ids."""
        return self._call("cancel_all", self.name)

    def cancel_where(self, predicate: Callable[[TaskRecord], bool]) -> list[int]:
        """Cancel this domain's active tasks for which ``predicate(record)`` is true; their ids.

        The predicate runs here, on the host, over a snapshot of the active tasks.
        """
        if not callable(predicate):
            raise TypeError(f"cancel_where() takes a function of a TaskRecord, got {describe(predicate)}")
        ids = [r.id for r in self._call("active_tasks_in", self.name) if predicate(r)]
        return self._call("cancel_ids", ids, self.name) if ids else []

    def cancel_by_tag_key_prefix(self, prefix: str) -> list[int]:
        """Cancel this domain's active tasks with any tag key starting with ``prefix``; their ids."""
        return self._call("cancel_by_tag_key_prefix", as_str(prefix, "prefix"), self.name)

    # ------------------------------------------------------------------ pause and resume (F22)

    def pause(self) -> int:
        """Pause this domain: pending tasks become paused, running ones are asked to stop and come
        back paused, new ones arrive paused. Returns how many tasks it moved."""
        return self._call("pause", "domain", self.name)

    def resume(self) -> int:
        """Lift this domain's pause; returns how many tasks became pending (0 while the whole
        scheduler is paused, or another reason still holds them)."""
        return self._call("resume", "domain", self.name)

    def is_paused(self) -> bool:
        """Whether this domain is paused (by itself; see ``Scheduler.is_paused`` for a global pause)."""
        return self._call("is_paused", "domain", self.name)

    # ------------------------------------------------------------------ recurring schedules (F15)

    def pause_recurring(self, task_id: int) -> bool:
        """Stop new occurrences of this domain's recurring task; False if there is no such schedule."""
        return self._call("recurring", "pause", as_int(task_id, "task_id"), self.name)

    def resume_recurring(self, task_id: int) -> bool:
        """Let a paused schedule go on from its grid (a time already passed runs at once)."""
        return self._call("recurring", "resume", as_int(task_id, "task_id"), self.name)

    def cancel_recurring(self, task_id: int) -> bool:
        """End a schedule for good: a waiting occurrence is cancelled, a running one is its last."""
        return self._call("recurring", "cancel", as_int(task_id, "task_id"), self.name)

    # ------------------------------------------------------------------ queries (seed)

    # ------------------------------------------------------------------ admission (F17, F20)

    @property
    def max_concurrency(self) -> int | None:
        """This domain's cap on running tasks (None: none), as last set."""
        return self._cap

    def set_max_concurrency(self, n: int | None) -> None:
        """Cap this domain's running tasks at ``n`` at runtime (None: no cap)."""
        cap = None if n is None else as_int(n, "max_concurrency", lo=1, hi=INT32_MAX)
        self._set_admission("domain_cap", self.name, cap)
        self._cap = cap

    def _type_name(self, task: Any) -> str:
        name = getattr(task, "qualified", None)
        if name is None:
            name = as_str(task, "task")
            if "::" not in name:
                name = f"{self.name}::{name}"
        if not name.startswith(self.name + "::"):
            raise UnknownTaskType(f"task {name} belongs to another domain than {self.name!r}")
        return name

    def set_rate_limit(self, task: TaskType | str, limit: RateLimit) -> None:
        """Give one of this domain's task types (a ``TaskType`` or its name) a token bucket."""
        name = task_type_name(self._type_name(task), self._session.registered)
        self._set_admission("type_rate", name, rate_wire(limit))

    def remove_rate_limit(self, task: TaskType | str) -> None:
        """Remove a task type's token bucket."""
        self._set_admission("type_rate", task_type_name(self._type_name(task), self._session.registered), None)

    # ------------------------------------------------------------------ events (F27)

    def events(self, buffer: int | None = None) -> EventStream[Event]:
        """This domain's task events (and the events routed to its tasks: ``Waiting``,
        ``TaskUnblocked``, ``DependencyFailed``, its batches), plus the global ``Paused`` and
        ``Resumed``. See ``Scheduler.subscribe``."""
        return self._session.subscribe(domain=self.name, buffer=buffer)

    def task_events(self, task: TaskType | str, buffer: int | None = None) -> EventStream[Event]:
        """The events of one of this domain's task types (a ``TaskType`` or its name)."""
        name = self._type_name(task)
        if name not in self._session.registered:
            raise UnknownTaskType(f"task {name} was not registered when the scheduler started")
        return self._session.subscribe(domain=self.name, task_type=name, buffer=buffer)

    def subscribe_progress(self, buffer: int | None = None) -> EventStream[TaskProgress]:
        """``TaskProgress`` of this domain's running tasks that report bytes, every ``progress_interval``.

        Raises:
            ConfigError: the scheduler has no ``progress_interval``.
        """
        return self._session.subscribe_progress(domain=self.name, buffer=buffer)

    def snapshot(self) -> ModuleSnapshot:
        """Running tasks, counts, progress and pause state for this domain."""
        return self._call("snapshot", self.name)

    def estimated_progress(self) -> list[EstimatedProgress]:
        """Progress of this domain's running tasks: reported, else extrapolated (at most 99 %)."""
        return self._call("estimated_progress", self.name)

    def byte_progress(self) -> list[TaskProgress]:
        """Byte progress of this domain's running tasks: bytes, EWMA throughput, ETA."""
        return self._call("byte_progress", self.name)

    def task_ids_by_tags(self, filters: Mapping[str, str], status: str | None = None) -> list[int]:
        """Ids of this domain's active tasks carrying every ``key: value`` of ``filters``."""
        if not isinstance(filters, Mapping):
            raise TypeError(f"filters must be a dict of tag keys to values, got {describe(filters)}")
        plain = {as_str(k, "filter key"): as_str(v, f"filter value of {k!r}") for k, v in filters.items()}
        return self._call("task_ids_by_tags", self.name, plain, _status(status))

    def count_by_tag(self, key: str, status: str | None = None) -> list[tuple[str, int]]:
        """(value, count) of tag ``key`` over this domain's active tasks, most common first."""
        return self._call("count_by_tag", self.name, as_str(key, "key"), _status(status))

    def tag_values(self, key: str) -> list[tuple[str, int]]:
        """Distinct values of tag ``key`` in this domain, with counts."""
        return self._call("tag_values", self.name, as_str(key, "key"))

    def tag_keys_by_prefix(self, prefix: str) -> list[str]:
        """Distinct tag keys starting with ``prefix`` (literally) in this domain, sorted."""
        return self._call("tag_keys_by_prefix", self.name, as_str(prefix, "prefix"))

    def task_ids_by_tag_key_prefix(self, prefix: str, status: str | None = None) -> list[int]:
        """Ids of this domain's active tasks with any tag key starting with ``prefix``."""
        return self._call("task_ids_by_tag_key_prefix", self.name, as_str(prefix, "prefix"), _status(status))

    def count_by_tag_key_prefix(self, prefix: str, status: str | None = None) -> int:
        """How many of this domain's active tasks have a tag key starting with ``prefix``."""
        return self._call("count_by_tag_key_prefix", self.name, as_str(prefix, "prefix"), _status(status))

    def active_tasks(self) -> list[TaskRecord]:
        """This domain's running tasks, from the coordinator's memory."""
        return self._session.proc().call("active_tasks", self.name)

    def dead_letter_tasks(self, limit: int = 100, offset: int = 0) -> list[TaskHistoryRecord]:
        """This domain's dead-letter executions, newest first."""
        self._check_open()
        limit, offset = as_int(limit, "limit"), as_int(offset, "offset")
        return self._session.proc().call("dead_letter_tasks", self.name, limit, offset)

    def retry_dead_letter(self, task_id: int) -> SubmitOutcome:
        """Resubmit a dead-letter task of this domain with a fresh retry budget."""
        self._check_open()
        task_id = as_int(task_id, "task_id")
        return outcomes_from_wire([self._session.proc().call("retry_dead_letter", task_id, self.name)])[0]
