"""The public surface and the import direction between taskmill's modules.

Imports are read from the source with ``ast`` (every ``import`` anywhere in a
module, including lazy imports inside functions and ``TYPE_CHECKING`` blocks),
so a violation is caught even on a code path no other test runs.

The leaves are errors, records, protocol, shm and validation (the host-side bounds
and normalisers): validation imports only errors, and records only errors and
validation, so every process may import any leaf.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import taskmill

PACKAGE_DIR = Path(taskmill.__file__).resolve().parent
ROOT = PACKAGE_DIR.parent

LEAVES = {"taskmill.errors", "taskmill.records", "taskmill.outcomes", "taskmill.protocol", "taskmill.shm", "taskmill.validation",
          "taskmill.options", "taskmill.metrics", "taskmill.batch", "taskmill.config", "taskmill.auth"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def taskmill_imports(path: Path) -> set[str]:
    """Every taskmill module ``path`` imports, as dotted names (``from taskmill import x`` → ``taskmill.x``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if is_module(sub) else target)
    return {n for n in found if n == "taskmill" or n.startswith("taskmill.")}


def all_modules() -> dict[str, set[str]]:
    return {module_name(p): taskmill_imports(p) for p in sorted(PACKAGE_DIR.rglob("*.py"))}


MODULES = all_modules()


def test_the_import_scanner_sees_the_package() -> None:
    assert {"taskmill", "taskmill.errors", "taskmill.store.store", "taskmill.workers.main"} <= set(MODULES)
    # sanity: it resolves `from taskmill import protocol` and relative-free dotted imports
    assert "taskmill.protocol" in MODULES["taskmill.workers.main"]
    assert "taskmill.errors" in MODULES["taskmill.store.store"]


# =========================================================================== public surface


def test_all_is_sorted() -> None:
    assert taskmill.__all__ == sorted(taskmill.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(taskmill.__all__) == len(set(taskmill.__all__))


@pytest.mark.parametrize("name", taskmill.__all__)
def test_every_name_in_all_resolves(name: str) -> None:
    assert getattr(taskmill, name) is not None


def test_every_public_exception_is_exported_and_under_the_root() -> None:
    from taskmill import errors

    for name in errors.__all__:
        exc = getattr(errors, name)
        assert issubclass(exc, taskmill.TaskmillError)
        assert getattr(taskmill, name) is exc
        assert name in taskmill.__all__


def test_version_is_exported() -> None:
    assert isinstance(taskmill.__version__, str) and taskmill.__version__


# =========================================================================== layering


LEAF_ALLOWED = {
    "taskmill.errors": set(),
    "taskmill.records": {"taskmill.errors", "taskmill.validation"},
    "taskmill.validation": {"taskmill.errors"},  # records imports validation: the reverse would be a cycle
    "taskmill.protocol": {"taskmill.errors"},
    "taskmill.shm": {"taskmill.errors"},
    "taskmill.outcomes": {"taskmill.records"},
    "taskmill.metrics": {"taskmill.records"},
    "taskmill.options": {"taskmill.errors", "taskmill.records", "taskmill.outcomes", "taskmill.validation"},
    "taskmill.batch": set(),
    "taskmill.config": {"taskmill.records"},
    "taskmill.auth": set(),
}


@pytest.mark.parametrize("leaf", sorted(LEAF_ALLOWED))
def test_leaf_modules_import_no_other_taskmill_module(leaf: str) -> None:
    assert MODULES[leaf] <= LEAF_ALLOWED[leaf], f"{leaf} imports {sorted(MODULES[leaf] - LEAF_ALLOWED[leaf])}"


STORE_MODULES = sorted(m for m in MODULES if m == "taskmill.store" or m.startswith("taskmill.store."))


@pytest.mark.parametrize("mod", STORE_MODULES)
def test_the_store_imports_only_errors_records_and_itself(mod: str) -> None:
    bad = {n for n in MODULES[mod]
           if n not in {"taskmill.errors", "taskmill.records", "taskmill.batch"} and not n.startswith("taskmill.store")}
    assert not bad, f"{mod} imports {sorted(bad)}"


FORBIDDEN_FOR_HOST = ("taskmill.coordinator", "taskmill.store", "taskmill.workers")


@pytest.mark.parametrize("mod", ["taskmill.scheduler", "taskmill.client", "taskmill.channel", "taskmill.domain",
                                 "taskmill.handles", "taskmill.session", "taskmill.controls", "taskmill.monitor",
                                 "taskmill.admission", "taskmill.connect", "taskmill.serve", "taskmill.retrieval"])
def test_the_host_api_never_imports_the_coordinator_store_or_workers(mod: str) -> None:
    bad = {n for n in MODULES[mod] if n.startswith(FORBIDDEN_FOR_HOST)}
    assert not bad, f"{mod} imports {sorted(bad)}"


def test_the_worker_main_imports_only_leaves_context_preload_and_domain() -> None:
    # domain (itself leaves only) resolves submissions made from inside tasks (ctx.spawn_child …)
    allowed = LEAVES | {"taskmill.context", "taskmill.workers.preload", "taskmill.domain"}
    bad = MODULES["taskmill.workers.main"] - allowed
    assert not bad, f"taskmill.workers.main imports {sorted(bad)}"


INTERNAL_PACKAGES = ("taskmill.coordinator", "taskmill.store", "taskmill.workers")
INTERNAL = sorted(m for m in MODULES if m in LEAVES or m == "taskmill.context" or m.startswith(INTERNAL_PACKAGES))


@pytest.mark.parametrize("mod", INTERNAL)
def test_internal_modules_never_import_the_package_root(mod: str) -> None:
    # `import taskmill` pulls in the whole host API; only front ends (cli, demo) may use it
    assert "taskmill" not in MODULES[mod]


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if m.startswith("taskmill.coordinator")))
def test_the_coordinator_never_imports_the_host_api(mod: str) -> None:
    bad = MODULES[mod] & {"taskmill.scheduler", "taskmill.client", "taskmill.channel", "taskmill"}
    assert not bad, f"{mod} imports {sorted(bad)}"


# =========================================================================== the decision core


def runtime_imports(path: Path) -> set[str]:
    """Every module ``path`` imports at run time (not under ``if TYPE_CHECKING:``), as dotted names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if is_module(sub) else target)
    return found


CORE = sorted(m for m in MODULES if m.startswith("taskmill.coordinator.core"))
#: What reads clocks, files, sockets, processes or threads, or the store: none of it in the core.
IO_MODULES = {"os", "io", "time", "select", "selectors", "socket", "signal", "subprocess", "threading", "queue",
              "multiprocessing", "mmap", "shutil", "tempfile", "pathlib", "duckdb", "psutil", "structlog", "logging"}
#: The taskmill modules the core may import at run time besides itself: leaves of plain values.
CORE_MAY_IMPORT = {"taskmill.errors", "taskmill.records", "taskmill.validation", "taskmill.metrics", "taskmill.batch",
                   "taskmill.admission", "taskmill.config"}


def test_the_core_package_is_the_decision_modules() -> None:
    names = {m.rpartition(".")[2] for m in CORE}
    assert {"lifecycle", "gate", "dispatch", "queues", "entry"} <= names


@pytest.mark.parametrize("mod", CORE)
def test_the_decision_core_imports_no_io_module_and_nothing_of_the_shell(mod: str) -> None:
    path = ROOT / Path(*mod.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = runtime_imports(path)
    io = {n for n in found if n.split(".")[0] in IO_MODULES}
    assert not io, f"{mod} imports I/O modules {sorted(io)}"
    ours = {n for n in found if n == "taskmill" or n.startswith("taskmill.")}
    bad = {n for n in ours if not n.startswith("taskmill.coordinator.core") and n not in CORE_MAY_IMPORT}
    assert not bad, f"{mod} imports {sorted(bad)} (the core may import itself and {sorted(CORE_MAY_IMPORT)})"


def test_the_import_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\nimport os\nif TYPE_CHECKING:\n    import socket\n")
    assert runtime_imports(bad) == {"typing", "os"}
