"""The dashboard's assets ship in the package and its script parses (a syntax error would leave the
page blank; the browser test would say so only after a minute of waiting)."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources

import pytest


def test_the_assets_ship_in_the_package_and_need_no_network() -> None:
    static = resources.files("taskmill.dashboard").joinpath("static")
    for name in ("index.html", "app.js", "app.css"):
        text = static.joinpath(name).read_text()
        assert "http://" not in text and "https://" not in text, name  # no CDN, nothing fetched from elsewhere


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to parse the script")
def test_the_script_parses(tmp_path: object) -> None:
    script = resources.files("taskmill.dashboard").joinpath("static").joinpath("app.js")
    done = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
