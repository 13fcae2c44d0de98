"""``@domain.task`` is typed: ``mypy --strict`` checks payload keywords against the task function.

``tests/typing/user_code.py`` is code a user would write; every line marked
``# E`` must be an error and no other line may be. The package ships
``py.typed``, so this holds for an installed taskmill too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import taskmill

USER_CODE = Path(__file__).resolve().parent.parent / "typing" / "user_code.py"


def test_the_package_ships_py_typed() -> None:
    assert resources.files("taskmill").joinpath("py.typed").is_file()


@pytest.mark.timeout(300)
def test_mypy_strict_checks_submissions_against_the_task_function(tmp_path: Path) -> None:
    root = Path(taskmill.__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                           "--cache-dir", str(tmp_path / "cache"), str(USER_CODE)],
                          capture_output=True, text=True, timeout=240, env={"MYPYPATH": str(root), "PATH": ""})
    flagged = {int(m.group(1)) for m in re.finditer(r"user_code\.py:(\d+): error:", done.stdout)}
    marked = {i for i, line in enumerate(USER_CODE.read_text().splitlines(), 1) if line.rstrip().endswith("# E")}
    assert marked and flagged == marked, done.stdout


def test_a_positional_payload_is_refused_at_run_time_too() -> None:
    d = taskmill.Domain("typing_rt")

    @d.task
    def job(ctx: taskmill.TaskContext, path: str) -> str:
        return path

    with pytest.raises(TypeError, match="keyword arguments only"):
        job.call("a")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="keyword arguments only"):
        job.options(priority=1).call("a")  # type: ignore[call-arg]
    assert job.call(path="a").payload == {"path": "a"}
