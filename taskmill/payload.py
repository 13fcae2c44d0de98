"""What a submission's payload becomes: canonical JSON, its dedup key, checked against the task
function's signature.

``read_keywords`` inspects a task function once (its first parameter receives
the TaskContext; the rest are the payload's keywords); ``encode_payload``
checks a payload against that and encodes it as canonical JSON (sorted keys, no
spaces, no NaN, at most ``MAX_PAYLOAD_BYTES``); ``dedup_key`` hashes the type
and the key material. Imports leaves only.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import json.encoder
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from taskmill.errors import ConfigError, InvalidPayload
from taskmill.validation import check_json, describe, did_you_mean

if TYPE_CHECKING:
    from taskmill.domain import TaskType

__all__ = ["CONTEXT_KEYWORD", "MAX_PAYLOAD_BYTES", "canonical_json", "dedup_key", "encode_payload",
           "explain_keywords", "read_keywords"]

#: Largest accepted payload, as UTF-8 JSON bytes (SPEC F3).
MAX_PAYLOAD_BYTES = 1024 * 1024
#: The name reserved for the context argument, whatever the function calls its first parameter.
CONTEXT_KEYWORD = "ctx"

_STR = frozenset({str})


def canonical_json(payload: Mapping[str, Any]) -> str:
    """Encode a payload as canonical JSON (sorted keys, no spaces, no NaN).

    Raises:
        InvalidPayload: a value JSON cannot carry faithfully, named by its place
            (``payload['a'][2]['b']: float nan is not allowed …``): a non-JSON type,
            nan/infinity, a non-str dict key, a circular reference, or nesting
            deeper than ``MAX_PAYLOAD_DEPTH``.
    """
    if type(payload) is not dict:
        if not isinstance(payload, Mapping):
            raise InvalidPayload(f"payload must be a dict of keyword arguments, got {describe(payload)}")
        payload = dict(payload)
    if not _STR.issuperset(map(type, payload)):
        check_json(payload)  # json.dumps would turn a non-str key into a string silently
    return _encode_json(payload)


def _json_default(value: Any) -> Any:
    raise TypeError(f"{describe(value)} is not JSON-serializable")


def _make_dumps() -> Callable[[Any], str]:
    """``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)``, built once.

    ``json.dumps`` with options constructs a new encoder on every call, two thirds of its
    cost for a small payload; this is the very encoder it would build, made once.
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # no C accelerator: the pure-Python encoder, same output
        return json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                                default=_json_default).encode
    # markers=None skips the circular-reference bookkeeping: any payload with a container is walked by
    # check_json (which finds cycles), and a cycle that reaches the encoder ends in a caught RecursionError.
    encode = c_make_encoder(None, _json_default, json.encoder.encode_basestring, None, ":", ",", True, False, False)
    return lambda value: "".join(encode(value, 0))


_dumps = _make_dumps()


def _encode_json(payload: dict[str, Any]) -> str:
    """``canonical_json`` for a dict whose top-level keys are known to be str."""
    try:
        text = _dumps(payload)
    except (TypeError, ValueError, RecursionError) as e:
        check_json(payload)  # names the place (a nan, a Path, a cycle …)
        raise InvalidPayload(f"payload is not JSON-serializable: {e}") from None
    # A flat payload (the common case) encodes to text with no "[" and no "{" after the first character,
    # and the encoder has checked all of it. Otherwise (nested containers, or brackets inside a string)
    # walk it for what the encoder lets through: non-str keys in nested dicts, nesting depth.
    if "[" in text or text.find("{", 1) != -1:
        check_json(payload)
    return text


def dedup_key(task_type: str, key_material: str) -> str:
    """SHA-256 hex of ``task_type + ":" + key_material`` (an explicit key or the canonical payload)."""
    return hashlib.sha256(f"{task_type}:{key_material}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Keywords:
    """The payload keywords a task function takes, read once per task type with ``inspect.signature``."""

    allowed: frozenset[str] | None  # None: it takes **kwargs, so any name but the reserved ones
    required: frozenset[str]
    reserved: frozenset[str]  # "ctx" and the name of the parameter that receives the context


def read_keywords(fn: Callable[..., Any], qualified: str) -> _Keywords:
    """Inspect ``fn`` once: it must take the context as its first positional argument.

    Raises:
        ConfigError: no positional parameter for the context, a required
            positional-only parameter after it, or a later parameter named ``ctx``.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some C callables have no signature: check only the reserved name
        return _Keywords(allowed=None, required=frozenset(), reserved=frozenset({CONTEXT_KEYWORD}))
    P = inspect.Parameter
    params = list(sig.parameters.values())
    first = params[0] if params else None
    if first is None or first.kind not in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD, P.VAR_POSITIONAL):
        raise ConfigError(f"{qualified}: the task function's first parameter receives the TaskContext, so it must "
                          f"take one positional argument (def fn(ctx, **payload)); its signature is {sig}")
    allowed: set[str] = set()
    required: set[str] = set()
    var_keyword = False
    for p in params[1:]:
        if p.kind is P.VAR_KEYWORD:
            var_keyword = True
        elif p.kind is P.POSITIONAL_ONLY:
            if p.default is P.empty:
                raise ConfigError(f"{qualified}: parameter {p.name!r} is positional-only and required, but payload "
                                  f"values are passed as keywords; its signature is {sig}")
        elif p.kind is not P.VAR_POSITIONAL:
            if p.name == CONTEXT_KEYWORD:
                raise ConfigError(f"{qualified}: only the first parameter may be named {CONTEXT_KEYWORD!r} (it "
                                  f"receives the TaskContext); its signature is {sig}")
            allowed.add(p.name)
            if p.default is P.empty:
                required.add(p.name)
    reserved = {CONTEXT_KEYWORD} if first.kind is P.VAR_POSITIONAL else {CONTEXT_KEYWORD, first.name}
    return _Keywords(allowed=None if var_keyword else frozenset(allowed), required=frozenset(required),
                     reserved=frozenset(reserved))


def explain_keywords(t: TaskType, payload: dict[str, Any]) -> None:
    """Raise the TypeError that calling ``t``'s function with ``payload`` would raise, on the host.

    Returns only when the payload fits after all: the cheap check refuses str-subclass
    keys for a ``**kwargs`` function, and those are fine (JSON writes them as plain str).
    """
    kw = t._keywords
    for k in payload:
        if not isinstance(k, str):
            raise TypeError(f"{t.qualified}() keywords must be str, got {describe(k)} {k!r}")
    for k in sorted(payload):
        if k in kw.reserved:
            raise TypeError(f"{t.qualified}() got the keyword {k!r}, which is reserved: the task function's first "
                            f"argument receives the TaskContext")
        if kw.allowed is not None and k not in kw.allowed:
            raise TypeError(f"{t.qualified}() got an unexpected keyword {k!r}{did_you_mean(k, kw.allowed)}")
    missing = sorted(kw.required - payload.keys())
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise TypeError(f"{t.qualified}() missing required keyword{'s' if len(missing) > 1 else ''} {names}")


def encode_payload(t: TaskType, payload: Mapping[str, Any]) -> str:
    if type(payload) is not dict:
        if not isinstance(payload, Mapping):
            raise InvalidPayload(f"payload of {t.qualified} must be a dict of keyword arguments, "
                                 f"got {describe(payload)}")
        payload = dict(payload)
    # The payload fits the function (set operations on the signature read once per type).
    kw = t._keywords
    keys = payload.keys()
    if kw.allowed is not None:
        if not (keys <= kw.allowed and kw.required <= keys):
            explain_keywords(t, payload)
    elif not (kw.reserved.isdisjoint(keys) and kw.required <= keys and _STR.issuperset(map(type, keys))):
        explain_keywords(t, payload)
    text = _encode_json(payload)  # the keyword check made every top-level key a str
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as e:  # a lone surrogate: valid for json.dumps, not UTF-8 text
            raise InvalidPayload(f"payload of {t.qualified} is not valid UTF-8 text: {e}") from None
    if len(text) > MAX_PAYLOAD_BYTES // 4 and len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(f"payload of {t.qualified} is {len(text.encode())} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    return text
