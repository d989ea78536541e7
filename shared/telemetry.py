"""Prometheus metrics shared by every service, and the HTTP endpoint that serves them.

Each service builds its own registry (so tests may run several in one process) with the common series
below, and adds its own. Names follow Prometheus conventions: ``hotplug_`` prefix, base units, counters
ending in ``_total`` (added by the client), low-cardinality labels.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


@dataclass
class ServiceMetrics:
    service: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.dropped = Counter(
            "hotplug_messages_dropped",
            "Messages dropped on receipt, by message kind and reason",
            ["service", "kind", "reason"],
            registry=self.registry,
        )
        self.received = Counter(
            "hotplug_messages_received",
            "Messages received and decoded, by message kind",
            ["service", "kind"],
            registry=self.registry,
        )
        self.nats_connected = Gauge(
            "hotplug_nats_connected",
            "1 while the service is connected to NATS",
            ["service"],
            registry=self.registry,
        )
        self.nats_errors = Counter(
            "hotplug_nats_errors",
            "Errors reported by the NATS client, by kind",
            ["service", "kind"],
            registry=self.registry,
        )
        self.up = Gauge("hotplug_service_up", "1 while the service runs", ["service"], registry=self.registry)
        self.up.labels(self.service).set(1)


class MetricsServer:
    """Serves a registry on ``http://<addr>:<port>/metrics`` from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> None:
        self.registry = registry
        self.addr = addr
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        self._server, self._thread = start_http_server(self.port, addr=self.addr, registry=self.registry)
        self.port = self._server.server_port
        return self.url

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/metrics"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
