"""Domains, task types and submissions (F1–F3, F5 subset).

A ``Domain`` groups task types and their defaults; ``@domain.task`` turns a
plain function into a ``TaskType``. Submissions are resolved on the host into
``protocol.SubmitItem`` tuples: every default applied, the payload checked and
encoded, the dedup key computed, so the coordinator only stores and schedules.
Imports only leaves (errors, records, protocol).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from taskmill.errors import ConfigError, InvalidPayload
from taskmill.protocol import SubmitItem
from taskmill.records import DuplicateStrategy, IoBudget, Priority, RetryPolicy

__all__ = ["Domain", "Submission", "TaskOptions", "TaskType", "dedup_key"]

#: Largest accepted payload, as UTF-8 JSON bytes (SPEC F3).
MAX_PAYLOAD_BYTES = 1024 * 1024
#: Tag limits (SPEC F5).
MAX_TAGS = 32
MAX_TAG_KEY_BYTES = 64
MAX_TAG_VALUE_BYTES = 256

_NOT_GIVEN: Any = object()
_OVERRIDES = frozenset(
    {"priority", "key", "label", "tags", "group", "expected_io", "cpus", "memory", "retry", "timeout", "duplicate"}
)


def canonical_json(payload: Mapping[str, Any]) -> str:
    """Encode a payload as canonical JSON (sorted keys, no spaces, no NaN)."""
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidPayload(f"payload is not JSON-serializable: {e}") from None


def dedup_key(task_type: str, key_material: str) -> str:
    """SHA-256 hex of ``task_type + ":" + key_material`` (an explicit key or the canonical payload)."""
    return hashlib.sha256(f"{task_type}:{key_material}".encode()).hexdigest()


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
            raise TypeError(f"tags must map str to str, got {k!r}: {v!r}")
        if len(k.encode()) > MAX_TAG_KEY_BYTES:
            raise ValueError(f"tag key {k[:20]!r}… is over {MAX_TAG_KEY_BYTES} bytes")
        if len(v.encode()) > MAX_TAG_VALUE_BYTES:
            raise ValueError(f"tag value for {k!r} is over {MAX_TAG_VALUE_BYTES} bytes")
        out[k] = v
    return out


def _check_positive_number(value: Any, what: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{what} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


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
        group: str | None = None,
        tags: Mapping[str, str] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or "::" in name:
            raise ValueError(f"domain name must be a non-empty str without '::', got {name!r}")
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
        ):
            raise ValueError(f"max_concurrency must be an int >= 1 or None, got {max_concurrency!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self.name = name
        self.max_concurrency = max_concurrency
        self.default_priority = (None if default_priority is None
                                 else _check_priority(default_priority, f"domain {name!r} default_priority"))
        self.retry = retry
        self.timeout = None if timeout is None else _check_positive_number(timeout, "timeout")
        self.group = group
        self.tags = _check_tags(tags)
        self.state: dict[str, Any] = dict(state or {})
        self.tasks: dict[str, TaskType] = {}

    def __repr__(self) -> str:
        return f"Domain({self.name!r}, tasks={sorted(self.tasks)})"

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
        group: str | None = None,
        key: str | Callable[..., str] | None = None,
        duplicate: str | DuplicateStrategy = DuplicateStrategy.SKIP,
        tags: Mapping[str, str] | None = None,
    ) -> Any:
        """Register a function as a task type of this domain (F2).

        The function is called as ``fn(ctx, **payload)``. Usable bare
        (``@domain.task``) or with options (``@domain.task(cpus=2)``).

        Raises:
            ConfigError: a task of the same name is already registered here.
        """

        def register(f: Callable[..., Any]) -> TaskType:
            tname = name or getattr(f, "__name__", None)
            if not tname or tname == "<lambda>":
                raise ConfigError("a lambda task needs name=…")
            if tname in self.tasks:
                raise ConfigError(f"task {tname!r} is already registered in domain {self.name!r}")
            tt = TaskType(
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
            )
            self.tasks[tname] = tt
            return tt

        return register(fn) if fn is not None else register


class TaskType:
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
    ) -> None:
        if not callable(fn):
            raise TypeError(f"task function must be callable, got {fn!r}")
        if not isinstance(expected_io, IoBudget):
            raise TypeError(f"expected_io must be an IoBudget, got {type(expected_io).__name__}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self.domain = domain
        self.name = name
        self.qualified = f"{domain.name}::{name}"
        self.fn = fn
        self.expected_io = expected_io
        self.cpus = _check_positive_number(cpus, f"{self.qualified} cpus")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
            raise ValueError(f"{self.qualified} memory must be an int >= 0, got {memory!r}")
        self.memory = memory
        self.priority = None if priority is None else _check_priority(priority, f"{self.qualified} priority")
        self.retry = retry
        self.timeout = None if timeout is None else _check_positive_number(timeout, "timeout")
        self.group = group
        self.key = key
        self.duplicate = DuplicateStrategy(duplicate)
        self.tags = _check_tags(tags)
        self._resolved: tuple[Defaults, SubmitItem] | None = None  # resolve()'s per-type cache
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<TaskType {self.qualified}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def call(self, **payload: Any) -> Submission:
        """Build a submission of this task with ``payload`` as keyword arguments."""
        return Submission(task=self, payload=payload, overrides={})

    def options(self, **overrides: Any) -> TaskOptions:
        """This task with per-submission overrides (priority, key, label, tags, group,
        expected_io, cpus, memory, retry, timeout, duplicate)."""
        unknown = set(overrides) - _OVERRIDES
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; allowed: {sorted(_OVERRIDES)}")
        return TaskOptions(task=self, overrides=dict(overrides))

    def effective_retry(self, default: RetryPolicy) -> RetryPolicy:
        return self.retry or self.domain.retry or default


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task type with per-submission overrides; submit it or ``.call(...)`` it."""

    task: TaskType
    overrides: dict[str, Any] = field(default_factory=dict)

    def call(self, **payload: Any) -> Submission:
        return Submission(task=self.task, payload=payload, overrides=self.overrides)

    def options(self, **more: Any) -> TaskOptions:
        merged = self.task.options(**{**self.overrides, **more})
        return merged


@dataclass(frozen=True, slots=True)
class Submission:
    """One task to submit: the type, its payload and per-submission overrides."""

    task: TaskType
    payload: dict[str, Any]
    overrides: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Defaults:
    """Scheduler-wide defaults, the last level before built-ins."""

    priority: int = int(Priority.NORMAL)
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = None


def _encode_payload(t: TaskType, payload: Mapping[str, Any]) -> str:
    text = canonical_json(payload)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as e:  # a lone surrogate: valid for json.dumps, not UTF-8 text
            raise InvalidPayload(f"payload of {t.qualified} is not valid UTF-8 text: {e}") from None
    if len(text) > MAX_PAYLOAD_BYTES // 4 and len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(f"payload of {t.qualified} is {len(text.encode())} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    return text


def resolve(sub: Submission, defaults: Defaults) -> SubmitItem:
    """Apply the configuration order submission > type > domain > scheduler > built-in,
    validate, encode the payload and compute the dedup key."""
    t, o = sub.task, sub.overrides
    if not o and t.key is None:
        # Fast path (batches): everything but the payload and its key is fixed per type.
        cached = t._resolved
        if cached is None or cached[0] is not defaults:
            template = resolve(Submission(task=t, payload={}, overrides={"label": t.qualified}), defaults)
            cached = t._resolved = (defaults, template)
        payload = _encode_payload(t, sub.payload)
        return cached[1]._replace(key=dedup_key(t.qualified, payload), payload=payload)
    payload = _encode_payload(t, sub.payload)

    prio = o.get("priority", _NOT_GIVEN)
    if prio is _NOT_GIVEN:
        prio = next(p for p in (t.priority, t.domain.default_priority, defaults.priority) if p is not None)
    priority = _check_priority(prio, "priority")

    explicit = o.get("key", None)
    if explicit is None and t.key is not None:
        explicit = t.key(**sub.payload) if callable(t.key) else t.key
    if explicit is not None and not isinstance(explicit, str):
        raise TypeError(f"key must be a str, got {type(explicit).__name__}")
    key = dedup_key(t.qualified, explicit if explicit is not None else payload)
    label = o.get("label") or explicit or t.qualified
    if not isinstance(label, str):
        raise TypeError(f"label must be a str, got {type(label).__name__}")

    retry = o.get("retry", None)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
    policy = retry or t.effective_retry(defaults.retry)

    timeout = o.get("timeout", _NOT_GIVEN)
    if timeout is _NOT_GIVEN:
        timeout = t.timeout if t.timeout is not None else (t.domain.timeout or defaults.timeout)
    elif timeout is not None:
        timeout = _check_positive_number(timeout, "timeout")

    io = o.get("expected_io", t.expected_io)
    if not isinstance(io, IoBudget):
        raise TypeError(f"expected_io must be an IoBudget, got {type(io).__name__}")
    cpus = _check_positive_number(o["cpus"], "cpus") if "cpus" in o else t.cpus
    memory = o.get("memory", t.memory)
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        raise ValueError(f"memory must be an int >= 0, got {memory!r}")

    tags = {**t.domain.tags, **t.tags, **_check_tags(o.get("tags"))}
    group = o.get("group", t.group if t.group is not None else t.domain.group)
    if group is not None and not isinstance(group, str):
        raise TypeError(f"group must be a str or None, got {type(group).__name__}")
    duplicate = DuplicateStrategy(o.get("duplicate", t.duplicate))

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
    )
