"""The Prometheus exporter (F29): ``metrics_snapshot()`` over HTTP, on loopback only.

``Scheduler(metrics_port=...)`` (or ``taskmill serve --metrics-port``) starts
it in the host process with ``prometheus-client`` (the ``prometheus`` extra).
Each scrape reads the shared-memory counters once (no call to the
coordinator) and reports every counter and gauge of ``MetricsSnapshot`` under
``metrics_prefix``, with the constant ``metrics_labels`` on each series. Label
sets are bounded: the only other label is ``reason`` of the gate's denials,
whose values are the gate's fixed checks; never a task id or type.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterator

from taskmill.metrics import MetricsSnapshot
from taskmill.shm import SegmentReader
from taskmill.validation import as_int, as_str, describe

__all__ = ["COUNTERS", "GAUGES", "Exporter", "MetricsSettings", "metrics_settings", "read_metrics"]

#: ``MetricsSnapshot`` fields exported as counters (``<prefix>_<name>_total``) and as gauges.
COUNTERS = ("submitted", "dispatched", "completed", "failed", "failed_retryable", "retried", "dead_lettered",
            "superseded", "cancelled", "expired", "preempted", "gate_denials", "rate_limit_throttles",
            "group_pauses", "group_resumes", "batches_submitted", "dependency_failures", "recurring_skipped")
GAUGES = ("pending", "running", "blocked", "paused", "waiting", "pressure", "max_concurrency", "groups_paused",
          "cpu_usage", "io_read_bytes_per_sec", "io_write_bytes_per_sec", "net_rx_bytes_per_sec",
          "net_tx_bytes_per_sec", "cpus_total", "cpus_in_use", "memory_total", "memory_in_use")

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """The exporter's prefix, constant labels and port (None: no exporter; 0: any free port)."""

    prefix: str = "taskmill"
    labels: tuple[tuple[str, str], ...] = ()
    port: int | None = None


def metrics_settings(prefix: Any, labels: Any, port: Any) -> MetricsSettings:
    """The checked ``metrics_prefix``, ``metrics_labels`` and ``metrics_port`` of a Scheduler.

    Raises ``ValueError``/``TypeError`` naming the argument, and ``ImportError`` naming the
    extra when a port is asked for without ``prometheus-client`` installed.
    """
    prefix = as_str(prefix, "metrics_prefix")
    if not _METRIC_NAME.match(prefix):
        raise ValueError(f"metrics_prefix must be a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*), got {prefix!r}")
    if labels is None:
        labels = {}
    if not isinstance(labels, dict):
        raise TypeError(f"metrics_labels must be a dict of str to str, got {describe(labels)}")
    pairs = []
    for k, v in labels.items():
        k, v = as_str(k, "a metrics_labels name"), as_str(v, f"metrics_labels[{k!r}]")
        if not _LABEL_NAME.match(k) or k.startswith("__") or k == "reason":
            raise ValueError(f"metrics_labels name {k!r} is not a Prometheus label name (or is reserved: "
                             "'reason' labels the gate's denials)")
        pairs.append((k, v))
    if port is not None:
        port = as_int(port, "metrics_port", lo=0, hi=65535)
        _client()
    return MetricsSettings(prefix, tuple(sorted(pairs)), port)


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as e:
        raise ImportError("metrics_port needs prometheus-client, which is not installed: "
                          "pip install 'taskmill[prometheus]'") from e
    return prometheus_client


def read_metrics(shm_name: str) -> MetricsSnapshot:
    """``metrics_snapshot()`` of the coordinator whose segment is ``shm_name``."""
    reader = SegmentReader(shm_name)
    try:
        return MetricsSnapshot.from_counters(reader.counters())
    finally:
        reader.close()


class Exporter:
    """An HTTP server on 127.0.0.1 answering scrapes with ``read()``'s figures."""

    def __init__(self, read: Callable[[], MetricsSnapshot], settings: MetricsSettings) -> None:
        client = _client()
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self._read, self._settings = read, settings
        self._counter, self._gauge = CounterMetricFamily, GaugeMetricFamily
        registry = client.CollectorRegistry(auto_describe=False)
        registry.register(self)
        assert settings.port is not None
        self._server, self._thread = client.start_http_server(settings.port, addr="127.0.0.1", registry=registry)
        #: The port it listens on (the one asked for, or the free one found for 0).
        self.port: int = self._server.server_address[1]

    def collect(self) -> Iterator[Any]:
        """One family per figure, read once per scrape."""
        snap, p = self._read(), self._settings.prefix
        names = [k for k, _ in self._settings.labels]
        values = [v for _, v in self._settings.labels]
        for name in COUNTERS:
            family = self._counter(f"{p}_{name}", f"taskmill {name.replace('_', ' ')}", labels=names)
            family.add_metric(values, getattr(snap, name))
            yield family
        family = self._counter(f"{p}_gate_denials_by_reason", "admission denials by the check that said no",
                               labels=[*names, "reason"])
        for reason, n in sorted(snap.gate_denials_by_reason.items()):
            family.add_metric([*values, reason], n)
        yield family
        for name in GAUGES:
            gauge = self._gauge(f"{p}_{name}", f"taskmill {name.replace('_', ' ')}", labels=names)
            gauge.add_metric(values, getattr(snap, name))
            yield gauge

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
