"""``taskmill dashboard`` in a real browser: headless Chromium driven over the DevTools protocol.

A served scheduler runs held tasks, a dead letter and a failure; the dashboard
runs as ``python -m taskmill dashboard``; Chromium loads the printed URL. The
test reads the rendered DOM, watches it change without a reload when the tasks
end, clicks Pause all and Retry, and keeps a screenshot as an artefact
(``test-artifacts/dashboard.png``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websocket

import taskmill as tm
from tests.polling import DEADLINE, poll_until
from tests.serving import Served, module_of

pytestmark = pytest.mark.timeout(300)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Browser:
    """Headless Chromium with one page, and the DevTools calls this test needs."""

    def __init__(self, url: str, profile: Path) -> None:
        port = _free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--remote-debugging-port={port}", f"--remote-allow-origins=http://127.0.0.1:{port}",
             f"--user-data-dir={profile}", "--window-size=1280,1700", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        target = poll_until(lambda: self._page(port), what="the browser's page target")
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=DEADLINE,
                                              origin=f"http://127.0.0.1:{port}")
        self._id = 0

    @staticmethod
    def _page(port: int) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as r:
                return next((t for t in json.load(r) if t.get("type") == "page"), None)
        except OSError:
            return None

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return dict(msg["result"])

    def js(self, expression: str) -> Any:
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in out, out
        return out["result"].get("value")

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(DEADLINE)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (.ci/run installs it)")
def test_the_dashboard_shows_the_scheduler_live_and_its_buttons_act(served: Served, tmp_path: Path) -> None:
    flag = served.dir / "release"
    with tm.connect(served.store) as c:
        jobs = module_of(served)
        h = c.domain("media")
        dead = h.submit(jobs.boom, n=7).id
        c.wait(dead, timeout=DEADLINE)
        held = [h.submit(jobs.hold.options(group="g1"), flag=str(flag), n=i).id for i in range(2)]
        h.submit(jobs.hold.options(group="g2"), flag=str(flag), n=9)
        poll_until(lambda: c.snapshot().running_count == 2, what="two tasks running")

        dash = subprocess.Popen([sys.executable, "-m", "taskmill", "dashboard", "--store", served.store],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        browser = None
        try:
            assert dash.stdout is not None
            line = dash.stdout.readline()
            url = line[line.index("http://"):].strip()
            base = url.split("/?")[0]
            for bad in (base + "/", base + "/api/state", url.replace("token=", "token=x")):
                with pytest.raises(urllib.error.HTTPError, match="403"):
                    urllib.request.urlopen(bad, timeout=DEADLINE)
            browser = Browser(url, tmp_path / "profile")
            rows = "document.querySelectorAll('#running tbody tr[data-id]')"
            poll_until(lambda: browser.js(f"{rows}.length") == 2, what="two running rows rendered")
            running = browser.js(f"[...{rows}].map(r => r.innerText)")
            assert all("media::hold" in r and "50%" in r for r in running), running
            assert browser.js("document.querySelector('#dead-letters tbody').innerText").count("boom 7") == 1
            assert "boom 7" in browser.js("document.querySelector('#failures tbody').innerText")
            assert "media::boom" in browser.js("document.querySelector('#types tbody').innerText")
            assert browser.js("document.querySelectorAll('#denials .row').length") == \
                len(c.metrics_snapshot().gate_denials_by_reason)
            assert "g2" in browser.js("document.querySelector('#queue tbody').innerText")
            first = browser.js("document.body.dataset.updated")

            # live: the held tasks end and the page follows without a reload
            flag.touch()
            for i in held:
                c.wait(i, timeout=DEADLINE)
            poll_until(lambda: browser.js(f"{rows}.length") == 0
                       and browser.js("document.querySelector('[data-key=completed] b').innerText") == "3",
                       what="the page showing the tasks completed")
            assert browser.js("document.body.dataset.updated") != first
            assert browser.js("performance.getEntriesByType('navigation').length") == 1  # never reloaded
            shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "dashboard.png").write_bytes(shot)
            assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000

            # the buttons do what the command line does
            browser.js("document.querySelector('#pause-all').click()")
            poll_until(c.is_paused, what="Pause all pausing the scheduler")
            poll_until(lambda: browser.js("document.querySelector('#status').innerText") == "all paused",
                       what="the page showing it")
            browser.js("document.querySelector('#resume-all').click()")
            poll_until(lambda: not c.is_paused(), what="Resume all")
            before = c.sql("SELECT count(*) AS n FROM task_history WHERE task_type = 'media::boom'")[0]["n"]
            browser.js(f"document.querySelector('#dead-letters tr[data-id=\"{dead}\"] button').click()")
            poll_until(lambda: c.sql("SELECT count(*) AS n FROM task_history WHERE task_type = 'media::boom'")[0]["n"]
                       == before + 1, what="Retry running the dead letter again")
        finally:
            if browser is not None:
                browser.close()
            dash.send_signal(signal.SIGINT)
            try:
                dash.communicate(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                dash.kill()
                dash.communicate(timeout=DEADLINE)
        assert dash.returncode in (0, 130), dash.returncode
