"""``hotplug config check`` against a real nats-server: the VMs it lists are those in the metrics stream (each
once, whatever the number of samples), and an unreachable broker is said, not fatal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client

from hotplug.cli import main
from shared import bus, subjects
from shared.broker import EmbeddedBroker, free_port
from shared.codec import encode
from shared.messages import MetricSample


def sample(host: str, vm: str, t: float) -> MetricSample:
    return MetricSample(
        time=t,
        host=host,
        vm=vm,
        online_vcpus=2,
        min_vcpus=1,
        max_vcpus=4,
        cpu_used_cores=1.0,
        interval_s=1.0,
        source="t",
    )


async def test_config_check_lists_the_vms_of_the_metrics_stream(
    broker: EmbeddedBroker, nc: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    js = nc.jetstream()
    for t in (1.0, 2.0, 3.0):
        for host, vm in (("node1", "vm-01"), ("node1", "db-1"), ("node2", "vm-01")):
            await bus.publish_durable(js, subjects.metrics(host, vm), encode(sample(host, vm, t)), f"{host}-{vm}-{t}")
    path = tmp_path / "hotplug.toml"
    path.write_text('[[vm]]\nmatch = "node1/vm-*"\nautoscale = "recommend"\n[[vm]]\nmatch = "gpu-*"\n')

    code = await asyncio.to_thread(main, ["config", "check", str(path), "--nats", broker.url, "--vm", "extra"])

    assert code == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    listed = [row[:3] for row in rows if row and row[0] in ("node1", "node2", "local")]
    assert listed == [
        ["local", "extra", "default"],
        ["node1", "db-1", "default"],
        ["node1", "vm-01", "#1"],
        ["node2", "vm-01", "default"],
    ]
    assert ["rule", "#2", "(match", "gpu-*)", "matches", "none", "of", "these", "VMs"] in rows


def test_config_check_without_a_reachable_broker_still_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hotplug.toml"
    path.write_text('[[vm]]\nmatch = "vm-01"\nautoscale = "off"\n')
    url = f"nats://127.0.0.1:{free_port()}"
    assert main(["config", "check", str(path), "--nats", url, "--vm", "vm-01"]) == 0
    out = capsys.readouterr().out
    assert f"broker at {url} not reachable" in out
    assert "vm-01  #1 vm-01  off" in out
