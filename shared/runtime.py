"""The imperative shell common to every service process: logging, NATS, metrics endpoint, clean stop.

A service is an ``async def body(ctx)``; :func:`run_service` connects, serves ``/metrics``, runs the body
until SIGINT/SIGTERM or until it returns, then drains the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext

from shared import bus
from shared.clock import Clock
from shared.telemetry import MetricsServer, ServiceMetrics

log = logging.getLogger(__name__)

# A service's own metrics type: the context carries it typed, so a service needs no isinstance check to use it.
M = TypeVar("M", bound=ServiceMetrics)


@dataclass(frozen=True)
class ServiceOptions:
    name: str
    nats_url: str
    host: str = "local"
    metrics_port: int = 0
    metrics_addr: str = "127.0.0.1"
    clock: Clock = field(default_factory=Clock)


@dataclass
class ServiceContext(Generic[M]):
    options: ServiceOptions
    nc: Client
    js: JetStreamContext
    metrics: M

    @property
    def clock(self) -> Clock:
        return self.options.clock

    @property
    def host(self) -> str:
        return self.options.host


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def resolve_nats_url(url: str | None) -> str | None:
    return url or os.environ.get(bus.DEFAULT_URL_ENV) or None


async def run_service(
    options: ServiceOptions,
    body: Callable[[ServiceContext[M]], Awaitable[None]],
    metrics: M,
) -> None:
    server = MetricsServer(metrics.registry, options.metrics_port, options.metrics_addr)
    url = server.start()
    log.info("%s metrics: %s", options.name, url)

    async def count_error(exc: Exception) -> None:
        metrics.nats_errors.labels(options.name, type(exc).__name__).inc()

    nc = await bus.connect(options.nats_url, options.name, on_error=count_error)
    metrics.nats_connected.labels(options.name).set_function(lambda: 1.0 if nc.is_connected else 0.0)
    ctx = ServiceContext(options=options, nc=nc, js=nc.jetstream(), metrics=metrics)

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(body(ctx))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("%s stopping", options.name)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        # flush + close rather than drain: drain waits on pull subscriptions and cannot be bounded cleanly.
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await nc.close()
        server.stop()
