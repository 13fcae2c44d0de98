"""Domains, task types and submissions (F1–F3, F5 subset).

A ``Domain`` groups task types and their defaults; ``@domain.task`` turns a
plain function into a ``TaskType``. Submissions are resolved on the host into
``protocol.SubmitItem`` tuples: every default applied, every value normalised to a
plain builtin and bounded (``taskmill.validation``), the payload checked against the
task function's signature and encoded, the dedup key computed, so the coordinator
only stores and schedules. Imports only leaves (errors, records, protocol, validation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Concatenate, Generic, Mapping, ParamSpec, TypeVar, overload

from taskmill.config import DEFAULT_PRIORITY
from taskmill.errors import ConfigError
from taskmill.options import LIFECYCLE_OPTIONS, check_ttl_from, lifecycle_fields
from taskmill.payload import dedup_key, encode_payload, read_keywords
from taskmill.protocol import SubmitItem
from taskmill.records import DuplicateStrategy, IoBudget, Priority, RetryPolicy
from taskmill.validation import (
    INT32_MAX,
    INT64_MAX,
    MAX_DELAY_SECONDS,
    as_float,
    as_int,
    as_opt_str,
    as_seconds,
    as_str,
    describe,
    usable_cpus,
)

#: The payload keywords of a task function (its parameters after the context) and its result.
P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["Domain", "Submission", "TaskOptions", "TaskType", "as_submission", "dedup_key", "keywords_only"]

#: Tag limits (SPEC F5).
MAX_TAGS = 32
MAX_TAG_KEY_BYTES = 64
MAX_TAG_VALUE_BYTES = 256

_NOT_GIVEN: Any = object()
_OVERRIDES = frozenset(
    {"priority", "key", "label", "tags", "group", "expected_io", "cpus", "memory", "retry", "timeout", "duplicate"}
) | LIFECYCLE_OPTIONS


def _check_priority(value: Any, what: str) -> int:
    try:
        return int(Priority(value))
    except (TypeError, ValueError) as e:
        raise type(e)(f"{what}: {e}") from None


def _check_tags(tags: Any) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise TypeError(f"tags must be a mapping of str to str, got {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"tags: at most {MAX_TAGS} tags, got {len(tags)}")
    out = {}
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"tags must map str to str, got {describe(k)} {k!r}: {describe(v)} {v!r}")
        k = as_str(k, "tag key")  # StrEnum members and other subclasses travel as plain str
        v = as_str(v, f"tag value for {k!r}")
        if len(k.encode()) > MAX_TAG_KEY_BYTES:
            raise ValueError(f"tag key {k[:20]!r}… is over {MAX_TAG_KEY_BYTES} bytes")
        if len(v.encode()) > MAX_TAG_VALUE_BYTES:
            raise ValueError(f"tag value for {k!r} is over {MAX_TAG_VALUE_BYTES} bytes")
        out[k] = v
    return out


def _check_cpus(value: Any, what: str) -> float:
    # nan/inf are a TypeError ("must be a finite number"), as this module always had it.
    return as_float(value, what, lo=0.0, lo_open=True, nonfinite=TypeError)


def check_timeout(value: Any, what: str = "timeout") -> float:
    """A task timeout: finite seconds (or a ``timedelta``) in (0, ``MAX_DELAY_SECONDS``].

    Raises:
        TypeError: not a number, or nan/infinite.
        ValueError: <= 0 or over ``MAX_DELAY_SECONDS``.
    """
    return as_seconds(value, what, lo_open=True, hi=MAX_DELAY_SECONDS, nonfinite=TypeError)


def _check_memory(value: Any, what: str) -> int:
    # A ValueError for any bad memory (wrong types too), as this module always had it.
    return as_int(value, what, hi=INT64_MAX, wrong_type=ValueError)


def _check_group(value: Any, what: str = "group") -> str | None:
    return as_opt_str(value, what)


def _check_retry(value: Any, what: str = "retry") -> RetryPolicy | None:
    if value is not None and not isinstance(value, RetryPolicy):
        raise TypeError(f"{what} must be a RetryPolicy or None, got {describe(value)}")
    return value


def _check_duplicate(value: Any) -> DuplicateStrategy:
    if isinstance(value, DuplicateStrategy):
        return value
    choices = [d.value for d in DuplicateStrategy]
    if not isinstance(value, str):
        raise TypeError(f"duplicate must be one of {choices}, got {describe(value)} {value!r}")
    try:
        return DuplicateStrategy(str.__str__(value))
    except ValueError:
        raise ValueError(f"duplicate must be one of {choices}, got {value!r}") from None


def _check_task_name(name: Any) -> str:
    name = as_str(name, "task name")
    if not name or "::" in name:
        raise ValueError(f"task name must be a non-empty str without '::', got {name!r}")
    return name


class Domain:
    """A named group of task types with shared defaults (F1).

    Args:
        name: Unique among the scheduler's domains; task types are stored as
            ``"<name>::<task>"``.
        max_concurrency: Cap on this domain's running tasks (None: no cap).
        default_priority: Priority for its tasks unless the type or submission says
            otherwise; None falls back to the scheduler's default.
        retry: Default retry policy for its task types.
        timeout: Default per-task timeout in seconds.
        ttl: Default time to live in seconds (F16): a task not started in time expires.
        group: Default group key.
        tags: Default tags merged under each submission's tags.
        state: Objects handed to task functions through ``ctx.state(name)``.

    Example:
        >>> media = Domain("media", max_concurrency=4)
        >>> @media.task(cpus=1)
        ... def thumbnail(ctx, path: str) -> str:
        ...     return path + ".thumb"
    """

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int | None = None,
        default_priority: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        ttl: float | None = None,
        group: str | None = None,
        tags: Mapping[str, str] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or "::" in name:  # ValueError for any bad name, as always
            raise ValueError(f"domain name must be a non-empty str without '::', got {name!r}")
        name = str.__str__(name)
        if max_concurrency is not None:
            max_concurrency = as_int(max_concurrency, "max_concurrency (an int >= 1 or None)", lo=1, hi=INT32_MAX,
                                     wrong_type=ValueError)
        if state is not None and not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping of names to objects or None, got {describe(state)}")
        self.name = name
        self.max_concurrency = max_concurrency
        self.default_priority = (None if default_priority is None
                                 else _check_priority(default_priority, f"domain {name!r} default_priority"))
        self.retry = _check_retry(retry)
        self.timeout = None if timeout is None else check_timeout(timeout, f"domain {name!r} timeout")
        self.ttl = None if ttl is None else as_seconds(ttl, f"domain {name!r} ttl", lo_open=True)
        self.group = _check_group(group, f"domain {name!r} group")
        self.tags = _check_tags(tags)
        self.state: dict[str, Any] = {as_str(k, "state key"): v for k, v in (state or {}).items()}
        self.tasks: dict[str, TaskType] = {}

    def __repr__(self) -> str:
        return f"Domain({self.name!r}, tasks={sorted(self.tasks)})"

    @overload
    def task(
        self,
        fn: Callable[Concatenate[Any, P], R],
        *,
        name: str | None = None,
        expected_io: IoBudget | None = None,
        cpus: float = 1,
        memory: int = 0,
        priority: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        ttl: float | None = None,
        ttl_from: str = "submission",
        group: str | None = None,
        key: str | Callable[..., str] | None = None,
        duplicate: str | DuplicateStrategy = DuplicateStrategy.SKIP,
        tags: Mapping[str, str] | None = None,
    ) -> TaskType[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        expected_io: IoBudget | None = None,
        cpus: float = 1,
        memory: int = 0,
        priority: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        ttl: float | None = None,
        ttl_from: str = "submission",
        group: str | None = None,
        key: str | Callable[..., str] | None = None,
        duplicate: str | DuplicateStrategy = DuplicateStrategy.SKIP,
        tags: Mapping[str, str] | None = None,
    ) -> Callable[[Callable[Concatenate[Any, P], R]], TaskType[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        expected_io: IoBudget | None = None,
        cpus: float = 1,
        memory: int = 0,
        priority: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        ttl: float | None = None,
        ttl_from: str = "submission",
        group: str | None = None,
        key: str | Callable[..., str] | None = None,
        duplicate: str | DuplicateStrategy = DuplicateStrategy.SKIP,
        tags: Mapping[str, str] | None = None,
    ) -> Any:
        """Register a function as a task type of this domain (F2).

        The function is called as ``fn(ctx, **payload)``. Usable bare
        (``@domain.task``) or with options (``@domain.task(cpus=2)``). The result is a
        ``TaskType[P, R]``: type checkers check ``submit(task, ...)`` and
        ``task.call(...)`` keywords against the function's own parameters.

        Raises:
            ConfigError: a task of the same name is already registered here, a
                lambda has no ``name=``, or the function cannot take the
                TaskContext as its first positional argument.
            ValueError: an empty name or one containing ``::``; an option out of range.
            TypeError: an option of the wrong type (the message names it).
        """
        if name is not None:
            name = _check_task_name(name)

        def register(f: Callable[..., Any]) -> TaskType[Any, Any]:
            tname = name or getattr(f, "__name__", None)
            if not tname or tname == "<lambda>":
                raise ConfigError("a lambda task needs name=…")
            tname = _check_task_name(tname)
            if tname in self.tasks:
                raise ConfigError(f"task {tname!r} is already registered in domain {self.name!r}")
            tt: TaskType[Any, Any] = TaskType(
                domain=self,
                name=tname,
                fn=f,
                expected_io=expected_io if expected_io is not None else IoBudget(),
                cpus=cpus,
                memory=memory,
                priority=priority,
                retry=retry,
                timeout=timeout,
                group=group,
                key=key,
                duplicate=duplicate,
                tags=tags,
                ttl=ttl,
                ttl_from=ttl_from,
            )
            self.tasks[tname] = tt
            return tt

        return register(fn) if fn is not None else register


class TaskType(Generic[P, R]):
    """A registered task function with its per-type configuration (F2).

    Calling it runs the function directly (handy in tests); ``call(**payload)``
    builds a submission and ``options(**overrides)`` a variant with
    per-submission overrides.
    """

    def __init__(
        self,
        *,
        domain: Domain,
        name: str,
        fn: Callable[..., Any],
        expected_io: IoBudget,
        cpus: float,
        memory: int,
        priority: int | None,
        retry: RetryPolicy | None,
        timeout: float | None,
        group: str | None,
        key: str | Callable[..., str] | None,
        duplicate: str | DuplicateStrategy,
        tags: Mapping[str, str] | None,
        ttl: float | None = None,
        ttl_from: str = "submission",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"task function must be callable, got {fn!r}")
        if not isinstance(expected_io, IoBudget):
            raise TypeError(f"expected_io must be an IoBudget, got {type(expected_io).__name__}")
        name = _check_task_name(name)
        self.domain = domain
        self.name = name
        self.qualified = f"{domain.name}::{name}"
        self.fn = fn
        self._keywords = read_keywords(fn, self.qualified)
        self.expected_io = expected_io
        self.cpus = _check_cpus(cpus, f"{self.qualified} cpus")
        self.memory = _check_memory(memory, f"{self.qualified} memory")
        self.priority = None if priority is None else _check_priority(priority, f"{self.qualified} priority")
        self.retry = _check_retry(retry, f"{self.qualified} retry")
        self.timeout = None if timeout is None else check_timeout(timeout, f"{self.qualified} timeout")
        self.group = _check_group(group, f"{self.qualified} group")
        if key is not None and not callable(key):
            key = as_str(key, f"{self.qualified} key (a str, a function of the payload, or None)")
        self.key = key
        self.duplicate = _check_duplicate(duplicate)
        self.tags = _check_tags(tags)
        self.ttl = None if ttl is None else as_seconds(ttl, f"{self.qualified} ttl", lo_open=True)
        self.ttl_from = check_ttl_from(ttl_from, f"{self.qualified} ttl_from")
        self.finalizer: Callable[..., Any] | None = None
        self.cancel_hook: Callable[..., Any] | None = None
        self._resolved: tuple[Defaults, SubmitItem] | None = None  # resolve()'s per-type cache
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<TaskType {self.qualified}>"

    def __call__(self, ctx: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(ctx, *args, **kwargs)

    def call(self, *args: P.args, **payload: P.kwargs) -> Submission:
        """Build a submission of this task with ``payload`` as keyword arguments."""
        keywords_only(args, f"{self.qualified}.call()")
        return Submission(task=self, payload=payload, overrides={})

    def finalize(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Register this task's finalize step (F14), as a decorator: ``fn(ctx, memo, **payload)``.

        It runs once every child the task spawned has finished, with ``memo`` the
        task's own return value; its return value becomes the task's result.
        """
        if not callable(fn):
            raise TypeError(f"finalize takes a function, got {describe(fn)}")
        self.finalizer = fn
        return fn

    def on_cancel(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Register a hook run when a running task of this type is cancelled (F23), as a
        decorator: ``fn(ctx, **payload)``, bounded by the scheduler's ``cancel_hook_timeout``."""
        if not callable(fn):
            raise TypeError(f"on_cancel takes a function, got {describe(fn)}")
        self.cancel_hook = fn
        return fn

    def options(self, **overrides: Any) -> TaskOptions[P, R]:
        """This task with per-submission overrides (F5): priority, key, label, tags, group,
        expected_io, cpus, memory, retry, timeout, duplicate, ttl, ttl_from, run_after, run_at,
        depends_on, on_dependency_failure, parent, fail_fast, recurring."""
        unknown = set(overrides) - _OVERRIDES
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; allowed: {sorted(_OVERRIDES)}")
        return TaskOptions(task=self, overrides=dict(overrides))

    def effective_retry(self, default: RetryPolicy) -> RetryPolicy:
        return self.retry or self.domain.retry or default


@dataclass(frozen=True, slots=True)
class TaskOptions(Generic[P, R]):
    """A task type with per-submission overrides; submit it or ``.call(...)`` it."""

    task: TaskType[P, R]
    overrides: dict[str, Any] = field(default_factory=dict)

    def call(self, *args: P.args, **payload: P.kwargs) -> Submission:
        keywords_only(args, f"{self.task.qualified}.call()")
        return Submission(task=self.task, payload=payload, overrides=self.overrides)

    def options(self, **more: Any) -> TaskOptions[P, R]:
        merged = self.task.options(**{**self.overrides, **more})
        return merged


def keywords_only(args: tuple[Any, ...], what: str) -> None:
    """Refuse a positional payload (``what`` names the call): its values are stored as JSON by name."""
    if args:
        raise TypeError(f"{what}: the payload is keyword arguments only (its values are stored as JSON by name), "
                        f"got {len(args)} positional")


@dataclass(frozen=True, slots=True)
class Submission:
    """One task to submit: the type, its payload and per-submission overrides."""

    task: TaskType[Any, Any]
    payload: dict[str, Any]
    overrides: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Defaults:
    """Scheduler-wide defaults, the last level before built-ins, and the limits a submission must fit.

    ``cpu_capacity`` and ``memory_capacity`` are the most cores and bytes one task may
    ask for (SPEC §6): the scheduler's ``Capacity``.
    """

    priority: int = DEFAULT_PRIORITY
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = None
    cpu_capacity: float = field(default_factory=usable_cpus)
    ttl: float | None = None
    memory_capacity: int = INT64_MAX


def as_submission(task: Any, payload: dict[str, Any], what: str = "submit()") -> Submission:
    """``task`` (a TaskType, ``task.options(...)`` or ``task.call(...)``) with ``payload`` as a Submission."""
    if isinstance(task, Submission):
        if payload:
            raise TypeError("pass the payload either to .call(...) or to submit(), not both")
        return task
    if isinstance(task, (TaskOptions, TaskType)):
        return task.call(**payload)
    raise TypeError(f"{what} takes a task (decorated function), task.options(...) or task.call(...), "
                    f"got {type(task).__name__}")


def resolve(sub: Submission, defaults: Defaults) -> SubmitItem:
    """Apply the configuration order submission > type > domain > scheduler > built-in,
    validate, encode the payload and compute the dedup key.

    Every value of the result is a plain builtin within the store's column types.

    Raises:
        InvalidPayload: the payload is not JSON-serializable (the place is named) or over 1 MiB.
        TypeError: a payload that does not fit the task function's signature, or an
            option of the wrong type.
        ValueError: an option out of range (e.g. ``cpus`` over the scheduler's CPU capacity).
    """
    t, o = sub.task, sub.overrides
    if not o and t.key is None:
        # Fast path (batches): everything but the payload and its key is fixed per type.
        cached = t._resolved
        if cached is None or cached[0] is not defaults:
            template = _resolve_options(t, {"label": t.qualified}, {}, "{}", defaults)
            cached = t._resolved = (defaults, template)
        payload = encode_payload(t, sub.payload)
        return cached[1]._replace(key=dedup_key(t.qualified, payload), payload=payload)
    return _resolve_options(t, o, sub.payload, encode_payload(t, sub.payload), defaults)


def _resolve_options(t: TaskType, o: Mapping[str, Any], raw_payload: Mapping[str, Any], payload: str,
                     defaults: Defaults) -> SubmitItem:
    """The full resolution of one submission whose payload is already checked and encoded."""
    prio = o.get("priority", _NOT_GIVEN)
    if prio is _NOT_GIVEN:
        prio = next(p for p in (t.priority, t.domain.default_priority, defaults.priority) if p is not None)
    priority = _check_priority(prio, "priority")

    explicit = o.get("key", None)
    if explicit is None and t.key is not None:
        explicit = t.key(**raw_payload) if callable(t.key) else t.key
    if explicit is not None:
        explicit = as_str(explicit, "key")
    key = dedup_key(t.qualified, explicit if explicit is not None else payload)
    label = o.get("label")
    if label is not None:
        label = as_str(label, "label")
    label = label or explicit or t.qualified

    retry = _check_retry(o.get("retry", None))
    policy = retry or t.effective_retry(defaults.retry)

    timeout = o.get("timeout", _NOT_GIVEN)
    if timeout is _NOT_GIVEN:
        timeout = t.timeout if t.timeout is not None else (t.domain.timeout or defaults.timeout)
    elif timeout is not None:
        timeout = check_timeout(timeout)

    io = o.get("expected_io", t.expected_io)
    if not isinstance(io, IoBudget):
        raise TypeError(f"expected_io must be an IoBudget, got {type(io).__name__}")
    cpus = _check_cpus(o["cpus"], "cpus") if "cpus" in o else t.cpus
    if cpus > defaults.cpu_capacity:
        raise ValueError(f"{t.qualified}: cpus={cpus:g} is more than the scheduler's CPU capacity of "
                         f"{defaults.cpu_capacity:g} cores")
    memory = _check_memory(o["memory"], "memory") if "memory" in o else t.memory
    if memory > defaults.memory_capacity:
        raise ValueError(f"{t.qualified}: memory={memory} bytes is more than the scheduler's memory capacity of "
                         f"{defaults.memory_capacity} bytes")

    tags = {**t.domain.tags, **t.tags, **_check_tags(o.get("tags"))}
    group = _check_group(o["group"]) if "group" in o else (t.group if t.group is not None else t.domain.group)
    duplicate = _check_duplicate(o.get("duplicate", t.duplicate))
    lifecycle = lifecycle_fields(o, t.ttl, t.ttl_from, t.domain.ttl, defaults.ttl)

    return SubmitItem(
        task_type=t.qualified,
        domain=t.domain.name,
        key=key,
        label=label,
        priority=priority,
        payload=payload,
        max_retries=policy.max_retries,
        retry=json.dumps(retry.to_dict()) if retry is not None else None,
        timeout=timeout,
        cpus=cpus,
        memory=memory,
        io_read=io.disk_read,
        io_write=io.disk_write,
        io_rx=io.net_rx,
        io_tx=io.net_tx,
        group=group,
        tags=json.dumps(tags, sort_keys=True) if tags else None,
        duplicate=duplicate.value,
        **lifecycle,
    )
