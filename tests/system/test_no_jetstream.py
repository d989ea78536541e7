"""A NATS server without JetStream (nats-server started without ``-js``): every command that needs it stops at once
with one line that says so and a non-zero exit, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hotplug.harness.processes import run_hotplug
from shared.broker import EmbeddedBroker
from shared.bus import NO_JETSTREAM


@pytest.fixture
def plain_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path / "nats", jetstream=False) as b:
        yield b


@pytest.mark.parametrize("command", ["actuator", "decider", "up"])
def test_a_server_without_jetstream_is_one_clear_line(
    plain_broker: EmbeddedBroker, tmp_path: Path, command: str
) -> None:
    extra = ["--no-view", "--duration", "5", "--data-dir", str(tmp_path / "run")] if command == "up" else []
    done = run_hotplug(command, "--nats", plain_broker.url, *extra, timeout=60)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith(f"hotplug {command}:")]
    assert said == [f"hotplug {command}: {NO_JETSTREAM}"], done.stderr
