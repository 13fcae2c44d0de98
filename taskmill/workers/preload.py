"""The task registry, loaded once in the fork server so each worker costs one fork.

The coordinator points ``TASKMILL_REGISTRY`` at a file holding the
cloudpickled registry before it starts the fork server, which imports this
module (``set_forkserver_preload``). A failure here is kept, not raised: the
fork server swallows import errors, and the worker reports ours instead.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import cloudpickle

ENV_VAR = "TASKMILL_REGISTRY"
#: JSON list: the host's sys.path. Python 3.11's fork server ignores the sys_path
#: multiprocessing hands it, so the registry's by-reference imports need it here.
SYS_PATH_VAR = "TASKMILL_SYS_PATH"

_registry: dict[str, Any] | None = None
_error: BaseException | None = None


def _read() -> None:
    global _registry, _error
    path = os.environ.get(ENV_VAR)
    if not path:
        return
    try:
        extra = json.loads(os.environ.get(SYS_PATH_VAR, "[]"))
        sys.path[:0] = [p for p in extra if p not in sys.path]
        with open(path, "rb") as f:
            _registry = cloudpickle.load(f)
    except BaseException as e:  # noqa: BLE001 - reported by the worker
        _error = e


def load() -> dict[str, Any]:
    """The registry, preloaded if possible; raises what loading raised."""
    if _registry is None and _error is None:
        _read()
    if _error is not None:
        raise RuntimeError(f"cannot load the task registry in the worker: {type(_error).__name__}: {_error}") from _error
    if _registry is None:
        raise RuntimeError(f"no task registry: {ENV_VAR} is not set")
    return _registry


_read()
