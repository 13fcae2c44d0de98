"""``taskmill dashboard``: a live page in the browser for a served scheduler.

It attaches with ``connect`` and serves one page on 127.0.0.1 (uvicorn and
starlette, the ``dashboard`` extra): running tasks with live progress and ETA,
the queue by domain, group and priority, paused scopes, pressure and capacity,
the gate's denials by reason, throughput over time, recent failures, dead
letters with a retry button, per-type history (count, duration, failure
rate), and buttons that do what the command line does. Every asset ships in the
package (no CDN); the page polls a JSON state once a second. The URL it prints
carries a random token, needed by every request.
"""

from __future__ import annotations

import secrets
import socket
import webbrowser
from typing import Callable

from taskmill.connect import Connected

__all__ = ["run_dashboard"]


def _extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError("taskmill dashboard needs starlette and uvicorn, which are not installed: "
                          "pip install 'taskmill[dashboard]'") from e


def run_dashboard(sched: Connected, *, port: int = 0, open_browser: bool = False,
                  announce: Callable[[str], None] = print) -> None:
    """Serve the dashboard of ``sched`` until interrupted (Ctrl-C, SIGTERM); ``announce`` gets the URL."""
    _extra()
    import uvicorn

    from taskmill.dashboard.app import Throughput, make_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)  # connections wait in the backlog until the server runs: the URL works once printed
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(18)
    throughput = Throughput(sched).start()
    try:
        app = make_app(sched, token, port, throughput)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        url = f"http://127.0.0.1:{port}/?token={token}"
        announce(url)
        if open_browser:
            webbrowser.open(url)
        server.run(sockets=[sock])
    finally:
        throughput.close()
        sock.close()
