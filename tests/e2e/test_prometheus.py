"""The Prometheus exporter: scraped over HTTP from an embedded scheduler and from ``taskmill serve``."""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import taskmill as tm
from taskmill.prometheus import COUNTERS, GAUGES
from tests.polling import DEADLINE, poll_until
from tests.serving import Served

pytestmark = pytest.mark.timeout(180)

pm = tm.Domain("pm")


@pm.task
def ok(ctx: tm.TaskContext, n: int) -> int:
    return n


@pm.task(retry=tm.RetryPolicy.none())
def bad(ctx: tm.TaskContext, n: int) -> int:
    raise ValueError(n)


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of one scrape, by name: (labels, value) pairs."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def scrape_once_up(port: int) -> dict[str, list[tuple[dict[str, str], float]]] | None:
    """A scrape, or None while nothing listens on the port yet (the served process starts its
    exporter after its coordinator has written the state file the test waits for)."""
    try:
        return scrape(port)
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionRefusedError):
            return None
        raise


def test_an_embedded_scheduler_exports_every_counter_and_gauge(tmp_path: Path) -> None:
    with tm.Scheduler(str(tmp_path / "s.duckdb"), [pm], max_concurrency=1, metrics_port=0,
                      metrics_prefix="jobs", metrics_labels={"site": "a"}) as s:
        port = s.metrics_port
        assert port is not None and port > 0
        h = s.domain(pm)
        for i in range(3):
            s.wait(h.submit(ok, n=i).id, timeout=DEADLINE)
        s.wait(h.submit(bad, n=1).id, timeout=DEADLINE)
        poll_until(lambda: (lambda m: m["jobs_completed_total"][0][1] == 3 and m["jobs_failed_total"][0][1] == 1)(
            scrape(port)), what="three completions and the failure scraped")
        got, snap = scrape(port), s.metrics_snapshot()  # (nothing runs now: the figures stand still)
        for name in COUNTERS:
            assert got[f"jobs_{name}_total"] == [({"site": "a"}, getattr(snap, name))], name
        for name in GAUGES:
            assert [labels for labels, _ in got[f"jobs_{name}"]] == [{"site": "a"}], name
        assert got["jobs_failed_total"] == [({"site": "a"}, 1.0)]
        reasons = {labels["reason"] for labels, _ in got["jobs_gate_denials_by_reason_total"]}
        assert reasons == set(s.metrics_snapshot().gate_denials_by_reason)  # a fixed, bounded set
        assert all(set(labels) <= {"site", "reason"} for series in got.values() for labels, _ in series)
        # loopback only: bound to 127.0.0.1, and another address of this host is refused
        assert s._exporter is not None and s._exporter._server.server_address[0] == "127.0.0.1"
        other = [a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
                 if not a[4][0].startswith("127.")]
        for addr in other[:1]:
            with pytest.raises(OSError):
                socket.create_connection((addr, port), timeout=5).close()
    with pytest.raises(OSError):  # the port is freed on close
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_bad_metrics_settings_are_refused_at_construction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "s.duckdb")
    with pytest.raises(ValueError, match="metrics_prefix"):
        tm.Scheduler(store, [pm], metrics_prefix="no spaces")
    with pytest.raises(ValueError, match="reserved"):
        tm.Scheduler(store, [pm], metrics_labels={"reason": "x"})
    with pytest.raises(ValueError, match="metrics_port"):
        tm.Scheduler(store, [pm], metrics_port=70000)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"taskmill\[prometheus\]"):
        tm.Scheduler(store, [pm], metrics_port=0)


def test_taskmill_serve_exports_on_its_metrics_port(jobs_dir: tuple[Path, str], no_leaks: object) -> None:
    with socket.socket() as probe:  # a free port, for the command line
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served = Served(jobs_dir[0], jobs_dir[1], no_leaks, extra=["--metrics-port", str(port)]).start()
    try:
        got = poll_until(lambda: scrape_once_up(port), what="a scrape of the served scheduler")
        assert got["taskmill_max_concurrency"] == [({}, 2.0)]
        assert any(e.get("metrics") == f"http://127.0.0.1:{port}/metrics" for e in served.log_events())
    finally:
        served.stop()
