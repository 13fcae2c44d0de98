"""Domains, task types and submission resolution (F1, F2, F3, F5)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskmill.domain import (
    MAX_TAG_KEY_BYTES,
    MAX_TAG_VALUE_BYTES,
    MAX_TAGS,
    Defaults,
    Domain,
    TaskType,
    resolve,
)
from taskmill.errors import ConfigError
from taskmill.payload import canonical_json, dedup_key
from taskmill.records import DuplicateStrategy, IoBudget, Priority, RetryPolicy

R_DOMAIN = RetryPolicy.constant(7, 2.0)
R_TYPE = RetryPolicy.linear(5, initial=1.0, step=3.0)
R_SCHED = RetryPolicy.exponential(9, initial=0.5)
R_SUB = RetryPolicy.constant(1, 0.25)


def noop(ctx: Any, **payload: Any) -> None:
    return None


def make_task(domain: Domain | None = None, **options: Any) -> TaskType:
    d = domain or Domain("d")
    return d.task(noop, name=options.pop("name", "job"), **options)


# =========================================================================== configuration errors


def test_registering_a_task_name_twice_in_a_domain_is_a_config_error() -> None:
    d = Domain("media")

    @d.task
    def thumbnail(ctx: Any) -> None: ...

    with pytest.raises(ConfigError, match="thumbnail"):
        d.task(noop, name="thumbnail")
    with pytest.raises(ConfigError):

        @d.task
        def thumbnail(ctx: Any) -> None: ...  # noqa: F811

    assert list(d.tasks) == ["thumbnail"]


def test_the_same_task_name_in_two_domains_is_fine() -> None:
    a, b = Domain("a"), Domain("b")
    ta, tb = a.task(noop, name="job"), b.task(noop, name="job")
    assert (ta.qualified, tb.qualified) == ("a::job", "b::job")


def test_a_lambda_task_without_a_name_is_a_config_error() -> None:
    d = Domain("d")
    with pytest.raises(ConfigError, match="name"):
        d.task(lambda ctx: None)
    with pytest.raises(ConfigError):
        d.task(cpus=2)(lambda ctx: None)
    t = d.task(lambda ctx: 41 + 1, name="answer")
    assert t.qualified == "d::answer"
    assert t(None) == 42  # calling the type runs the function


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_task_decorator_works_bare_and_with_options() -> None:
    d = Domain("d")

    @d.task
    def bare(ctx: Any) -> str:
        """Bare docs."""
        return "bare"

    @d.task(cpus=2, memory=1024, priority=Priority.HIGH)
    def configured(ctx: Any) -> str:
        return "configured"

    assert isinstance(bare, TaskType) and isinstance(configured, TaskType)
    assert bare.__doc__ == "Bare docs."
    assert (configured.cpus, configured.memory, configured.priority) == (2.0, 1024, 64)
    assert d.tasks == {"bare": bare, "configured": configured}


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "4"])
def test_a_bad_max_concurrency_is_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        Domain("d", max_concurrency=bad)


def test_max_concurrency_accepts_positive_ints_and_none() -> None:
    assert Domain("d", max_concurrency=1).max_concurrency == 1
    assert Domain("d").max_concurrency is None


@pytest.mark.parametrize("name", ["", "a::b", None, 3])
def test_a_bad_domain_name_is_rejected(name: Any) -> None:
    with pytest.raises(ValueError):
        Domain(name)


@pytest.mark.parametrize("cpus, error", [
    (0, ValueError), (-1, ValueError), (-0.5, ValueError),
    (True, TypeError), ("2", TypeError), (float("nan"), TypeError), (float("inf"), TypeError), (None, TypeError),
])
def test_bad_cpus_are_rejected(cpus: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="cpus"):
        make_task(cpus=cpus)


@pytest.mark.parametrize("memory", [-1, 1.5, True, "1GB", None])
def test_bad_memory_is_rejected(memory: Any) -> None:
    with pytest.raises(ValueError, match="memory"):
        make_task(memory=memory)


@pytest.mark.parametrize("where", ["domain", "type", "submission"])
@pytest.mark.parametrize("retry", [3, "exponential", {"max_retries": 3}])
def test_a_retry_that_is_not_a_retry_policy_is_a_type_error(where: str, retry: Any) -> None:
    with pytest.raises(TypeError, match="RetryPolicy"):
        if where == "domain":
            Domain("d", retry=retry)
        elif where == "type":
            make_task(retry=retry)
        else:
            resolve(make_task().options(retry=retry).call(), Defaults())


@pytest.mark.parametrize("bad", [-1, 256, 1.0, "high", True])
def test_bad_priorities_are_rejected_at_every_level(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        Domain("d", default_priority=bad)
    with pytest.raises((ValueError, TypeError)):
        make_task(priority=bad)
    with pytest.raises((ValueError, TypeError)):
        resolve(make_task().options(priority=bad).call(), Defaults())


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "10", True])
def test_bad_timeouts_are_rejected_at_every_level(timeout: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        Domain("d", timeout=timeout)
    with pytest.raises((ValueError, TypeError)):
        make_task(timeout=timeout)
    with pytest.raises((ValueError, TypeError)):
        resolve(make_task().options(timeout=timeout).call(), Defaults())


def test_a_bad_expected_io_or_duplicate_strategy_is_rejected() -> None:
    with pytest.raises(TypeError):
        make_task(expected_io=(1, 2))
    with pytest.raises(ValueError):
        make_task(duplicate="ignore")
    with pytest.raises(TypeError):
        resolve(make_task().options(expected_io=100).call(), Defaults())


def test_a_non_callable_task_function_is_rejected() -> None:
    with pytest.raises(TypeError):
        Domain("d").task("not a function", name="x")


# =========================================================================== options()


@pytest.mark.parametrize("bad", ["priorty", "run_afterwards", "payload", "retries"])
def test_options_rejects_unknown_option_names(bad: str) -> None:
    t = make_task()
    with pytest.raises(TypeError, match=bad):
        t.options(**{bad: 1})
    with pytest.raises(TypeError, match=bad):
        t.options(priority=1).options(**{bad: 1})


def test_options_chain_and_later_overrides_win() -> None:
    t = make_task()
    o = t.options(priority=10, label="first").options(label="second")
    item = resolve(o.call(x=1), Defaults())
    assert (item.priority, item.label) == (10, "second")
    assert o.overrides == {"priority": 10, "label": "second"}


def test_options_does_not_change_the_task_type() -> None:
    t = make_task(priority=100)
    t.options(priority=1)
    assert resolve(t.call(), Defaults()).priority == 100


# =========================================================================== resolution order


def _levels(levels: set[str]) -> tuple[Domain, TaskType, Defaults]:
    d = Domain(
        "d",
        **({"default_priority": 200} if "domain" in levels else {}),
        **({"timeout": 20.0, "retry": R_DOMAIN} if "domain" in levels else {}),
    )
    t = d.task(
        noop, name="job",
        **({"priority": 100, "timeout": 10.0, "retry": R_TYPE} if "type" in levels else {}),
    )
    defaults = Defaults(priority=250, timeout=40.0, retry=R_SCHED) if "scheduler" in levels else Defaults()
    return d, t, defaults


def _submit(t: TaskType, levels: set[str], defaults: Defaults) -> Any:
    sub = t.options(priority=5, timeout=5.0, retry=R_SUB).call(n=1) if "submission" in levels else t.call(n=1)
    return resolve(sub, defaults)


ALL = {"submission", "type", "domain", "scheduler"}


def test_submission_overrides_win_over_every_other_level() -> None:
    _, t, defaults = _levels(ALL)
    item = _submit(t, ALL, defaults)
    assert (item.priority, item.timeout, item.max_retries) == (5, 5.0, 1)
    assert item.retry is not None and RetryPolicy.from_dict(json.loads(item.retry)) == R_SUB


def test_type_settings_win_over_domain_and_scheduler() -> None:
    levels = ALL - {"submission"}
    _, t, defaults = _levels(levels)
    item = _submit(t, levels, defaults)
    assert (item.priority, item.timeout, item.max_retries, item.retry) == (100, 10.0, 5, None)


def test_domain_settings_win_over_the_scheduler() -> None:
    levels = {"domain", "scheduler"}
    _, t, defaults = _levels(levels)
    item = _submit(t, levels, defaults)
    assert (item.priority, item.timeout, item.max_retries, item.retry) == (200, 20.0, 7, None)


def test_scheduler_defaults_apply_when_nothing_else_is_set_for_timeout_and_retry() -> None:
    _, t, defaults = _levels({"scheduler"})
    item = _submit(t, {"scheduler"}, defaults)
    assert (item.timeout, item.max_retries, item.retry) == (40.0, 9, None)


def test_scheduler_default_priority_applies_when_type_and_domain_set_none() -> None:
    _, t, defaults = _levels({"scheduler"})
    assert _submit(t, {"scheduler"}, defaults).priority == 250


def test_built_in_defaults_apply_when_no_level_sets_anything() -> None:
    _, t, defaults = _levels(set())
    item = _submit(t, set(), defaults)
    assert (item.priority, item.timeout, item.max_retries, item.retry) == (Priority.NORMAL, None, 3, None)
    assert (item.cpus, item.memory, item.group, item.tags, item.duplicate) == (1.0, 0, None, None, "skip")
    assert (item.io_read, item.io_write, item.io_rx, item.io_tx) == (0, 0, 0, 0)


def test_a_submission_can_turn_a_timeout_off() -> None:
    _, t, defaults = _levels(ALL)
    assert resolve(t.options(timeout=None).call(), defaults).timeout is None


def test_a_submission_priority_of_zero_is_not_mistaken_for_unset() -> None:
    _, t, defaults = _levels(ALL)
    assert resolve(t.options(priority=Priority.REALTIME).call(), defaults).priority == 0


def test_submission_overrides_resources_group_io_and_duplicate() -> None:
    d = Domain("d", group="domain-group")
    t = d.task(noop, name="job", cpus=2, memory=100, expected_io=IoBudget.disk(1, 2), duplicate="reject")
    base = resolve(t.call(), Defaults())
    assert (base.cpus, base.memory, base.group, base.duplicate) == (2.0, 100, "domain-group", "reject")
    assert (base.io_read, base.io_write) == (1, 2)

    item = resolve(t.options(cpus=0.5, memory=7, group="g", expected_io=IoBudget.net(3, 4),
                             duplicate=DuplicateStrategy.SUPERSEDE).call(), Defaults())
    assert (item.cpus, item.memory, item.group, item.duplicate) == (0.5, 7, "g", "supersede")
    assert (item.io_read, item.io_write, item.io_rx, item.io_tx) == (0, 0, 3, 4)


def test_the_submit_item_carries_the_qualified_type_domain_and_canonical_payload() -> None:
    t = make_task(Domain("media"), name="thumb")
    item = resolve(t.call(width=300, path="/a.jpg"), Defaults())
    assert (item.task_type, item.domain) == ("media::thumb", "media")
    assert item.payload == '{"path":"/a.jpg","width":300}'
    assert item.key == dedup_key("media::thumb", item.payload)
    assert item.label == "media::thumb"


def test_the_per_type_fast_path_equals_full_resolution() -> None:
    d = Domain("d", default_priority=90, timeout=3.0, tags={"a": "1"}, group="g")
    t = d.task(noop, name="job", cpus=2, retry=R_TYPE, tags={"b": "2"})
    defaults = Defaults(timeout=99.0)
    fast = [resolve(t.call(i=i, s="x" * i), defaults) for i in range(3)]
    # a no-op override forces the full path
    full = [resolve(t.options(duplicate=t.duplicate).call(i=i, s="x" * i), defaults) for i in range(3)]
    assert fast == full
    assert len({f.key for f in fast}) == 3


def test_the_fast_path_follows_a_change_of_scheduler_defaults() -> None:
    t = make_task()
    assert resolve(t.call(), Defaults(timeout=5.0)).timeout == 5.0
    assert resolve(t.call(), Defaults(timeout=9.0)).timeout == 9.0
    assert resolve(t.call(), Defaults(retry=R_SCHED)).max_retries == 9


# =========================================================================== keys and labels


def test_an_explicit_key_becomes_the_label_and_the_key_material() -> None:
    t = make_task(Domain("media"), name="resize")
    item = resolve(t.options(key="/photos/img.jpg").call(path="/photos/img.jpg", width=300), Defaults())
    assert item.label == "/photos/img.jpg"
    assert item.key == dedup_key("media::resize", "/photos/img.jpg")
    other = resolve(t.options(key="/photos/img.jpg").call(path="/photos/img.jpg", width=999), Defaults())
    assert other.key == item.key  # the payload no longer matters


def test_an_explicit_label_wins_over_the_key() -> None:
    t = make_task()
    item = resolve(t.options(key="k", label="nice name").call(), Defaults())
    assert (item.label, item.key) == ("nice name", dedup_key("d::job", "k"))


def test_a_type_level_key_function_computes_the_key_from_the_payload() -> None:
    t = make_task(Domain("media"), name="resize", key=lambda path, width: path)
    a = resolve(t.call(path="/a", width=1), Defaults())
    b = resolve(t.call(path="/a", width=2), Defaults())
    assert a.key == b.key == dedup_key("media::resize", "/a")
    assert a.label == "/a"
    # a submission key still wins
    assert resolve(t.options(key="mine").call(path="/a", width=1), Defaults()).key == dedup_key("media::resize", "mine")


def test_a_type_level_constant_key_is_used_for_every_submission() -> None:
    t = make_task(key="singleton")
    keys = {resolve(t.call(a=a), Defaults()).key for a in (1, 2)}
    assert keys == {dedup_key("d::job", "singleton")}


def test_without_an_explicit_key_the_key_hashes_the_canonical_payload() -> None:
    t = make_task()
    item = resolve(t.call(b=2, a=1), Defaults())
    assert item.key == dedup_key("d::job", canonical_json({"a": 1, "b": 2}))


@pytest.mark.parametrize("key", [3, b"bytes", ["k"]])
def test_a_non_string_key_is_a_type_error(key: Any) -> None:
    with pytest.raises(TypeError, match="key"):
        resolve(make_task().options(key=key).call(), Defaults())


# =========================================================================== tags


def test_tags_merge_domain_then_type_then_submission() -> None:
    d = Domain("d", tags={"team": "media", "tier": "domain"})
    t = d.task(noop, name="job", tags={"tier": "type", "kind": "thumb"})
    item = resolve(t.options(tags={"kind": "override", "req": "42"}).call(), Defaults())
    assert item.tags is not None
    assert json.loads(item.tags) == {"team": "media", "tier": "type", "kind": "override", "req": "42"}


def test_exactly_the_tag_limits_are_accepted() -> None:
    tags = {f"k{i:02d}": "v" for i in range(MAX_TAGS)}
    item = resolve(make_task().options(tags=tags).call(), Defaults())
    assert item.tags is not None and len(json.loads(item.tags)) == MAX_TAGS
    edge = {"k" * MAX_TAG_KEY_BYTES: "v" * MAX_TAG_VALUE_BYTES}
    assert resolve(make_task().options(tags=edge).call(), Defaults()).tags == json.dumps(edge)


@pytest.mark.parametrize("tags, what", [
    ({f"k{i}": "v" for i in range(MAX_TAGS + 1)}, "33 tags"),
    ({"k" * (MAX_TAG_KEY_BYTES + 1): "v"}, "65-byte key"),
    ({"é" * 33: "v"}, "66-byte key of 33 chars"),
    ({"k": "v" * (MAX_TAG_VALUE_BYTES + 1)}, "257-byte value"),
    ({"k": "€" * 86}, "258-byte value of 86 chars"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_tags_over_the_limits_are_a_value_error_at_every_level(tags: dict[str, str], what: str) -> None:
    with pytest.raises(ValueError):
        Domain("d", tags=tags)
    with pytest.raises(ValueError):
        make_task(tags=tags)
    with pytest.raises(ValueError):
        resolve(make_task().options(tags=tags).call(), Defaults())


@pytest.mark.parametrize("tags", [{"k": 1}, {1: "v"}, ["k", "v"], "k=v"])
def test_tags_must_map_str_to_str(tags: Any) -> None:
    with pytest.raises(TypeError):
        resolve(make_task().options(tags=tags).call(), Defaults())
