"""Services run inside the test process: each an asyncio task with its own connection to the test's nats-server,
as its own process would have, so a test can drive it, read its metrics directly and stop it as a crash would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

import pytest
from nats.aio.client import Client

from shared import bus
from shared.broker import EmbeddedBroker
from shared.runtime import ServiceContext, ServiceOptions
from shared.telemetry import ServiceMetrics

M = TypeVar("M", bound=ServiceMetrics)


class InProcess(Generic[M]):
    """One running service: its context (connection, metrics) and the task running its body."""

    def __init__(self, ctx: ServiceContext[M], task: asyncio.Task[None]) -> None:
        self.ctx = ctx
        self.task = task

    @property
    def nc(self) -> Client:
        return self.ctx.nc

    def count(self, name: str, **labels: str) -> float:
        """The sum of the service's samples of metric ``name`` whose labels include ``labels`` (0 when none)."""
        return sum(
            s.value
            for family in self.ctx.metrics.registry.collect()
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    async def stop(self) -> None:
        """Stop it as a crash would: nothing more is sent or acknowledged on its connection."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.nc.close()


class Serve(Protocol):
    def __call__(
        self, metrics: M, body: Callable[[ServiceContext[M]], Coroutine[Any, Any, None]], host: str = ...
    ) -> Awaitable[InProcess[M]]: ...


@pytest.fixture
async def serve(broker: EmbeddedBroker) -> AsyncIterator[Serve]:
    """Start a service body on its own connection; every one still running is stopped after the test."""
    running: list[InProcess[Any]] = []

    async def start(
        metrics: M, body: Callable[[ServiceContext[M]], Coroutine[Any, Any, None]], host: str = "h1"
    ) -> InProcess[M]:
        nc = await bus.connect(broker.url, metrics.service, forever=False)
        options = ServiceOptions(name=metrics.service, nats_url=broker.url, host=host)
        ctx = ServiceContext(options=options, nc=nc, js=nc.jetstream(), metrics=metrics)
        started = InProcess(ctx, asyncio.ensure_future(body(ctx)))
        running.append(started)
        return started

    yield start
    for started in running:
        if not started.task.done():
            await started.stop()
