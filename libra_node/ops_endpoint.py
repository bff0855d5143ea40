"""The ops HTTP endpoint: ``/metrics`` for Prometheus, ``/health`` for load balancers.

Binds to ``metrics.host`` (loopback by default). ``/metrics`` holds the
node's own counters and histograms, those of its worker processes when they
share a multiprocess folder, and, computed at scrape time, studies per state
and queue depths. ``/health`` answers 200 when listener, broker, ledger and
model are ready, 503 with the failing parts otherwise.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from libra_node.ledger import Ledger
from libra_node.metrics import METRICS

HealthCheck = Callable[[], str | None]  # None: ready; a string says what is wrong
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class PipelineStateCollector:
    """Studies per state and queue depths, read when Prometheus scrapes."""

    def __init__(self, ledger: Ledger, queue_depths: Callable[[], dict[str, int | None]]) -> None:
        self.ledger = ledger
        self.queue_depths = queue_depths

    def collect(self) -> Iterator[Metric]:
        studies = GaugeMetricFamily("libra_studies", "Studies per state", labels=["state"])
        for state, count in self.ledger.count_by_state().items():
            studies.add_metric([state], count)
        yield studies
        queues = GaugeMetricFamily("libra_queue_depth", "Messages waiting per queue", labels=["queue"])
        for name, depth in self.queue_depths().items():
            if depth is not None:
                queues.add_metric([name], depth)
        yield queues


def metrics_registry(extra: Iterable[Any] = ()) -> CollectorRegistry:
    """The process's metrics, or every process's when they share a multiprocess folder."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = METRICS.registry
    for collector in extra:
        registry.register(collector)
    return registry


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # scrapes every few seconds would drown the node's own log


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class OpsEndpoint:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        checks: dict[str, HealthCheck],
        cache_seconds: float = 2.0,
    ) -> None:
        self.checks = checks
        self.cache_seconds = cache_seconds
        self._metrics_app = make_wsgi_app(registry)
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._server = make_server(host, port, self._app, _ThreadingServer, _QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._cached and now - self._cached[0] < self.cache_seconds:
            return self._cached[1]
        parts = {}
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as exc:  # a check that crashes is a failing check
                problem = f"{type(exc).__name__}: {exc}"
            parts[name] = "ok" if problem is None else problem
        result = {"status": "ok" if all(v == "ok" for v in parts.values()) else "degraded", **parts}
        self._cached = (now, result)
        return result

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/health":
            result = self.health()
            status = "200 OK" if result["status"] == "ok" else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(result).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"try /metrics or /health\n"]
