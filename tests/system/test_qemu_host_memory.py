"""The actuator holds a memory grow to the host's memory on a real QEMU guest (TCG), not on the simulator alone (issue
21): an actuator process with ``--driver qemu``, whose host view now gives the host's memory and what each guest
holds, on a host whose ``[[host]]`` rule says it has 1 GiB. A guest of 512 MiB boot RAM and a 1 GiB virtio-mem device
asks for 1.5 GiB: it gets the 512 MiB that fit (``host-full``, cut on virtio-mem's block), and a second grow gets
nothing and no request. Needs what ``test_qemu.py`` needs; skipped outside CI only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from hotplug.harness.recorder import Recorder
from services.actuator.drivers.qemu import QemuDriver
from shared import bus, subjects
from shared.broker import EmbeddedBroker
from shared.codec import encode
from shared.messages import ErrorCode, Resource, ScaleCommand, ScaleResult
from shared.qemu.image import GuestImage
from shared.qemu.vm import DIR_ENV, QemuVm
from shared.units import GIB, MIB
from tests.conftest import ServiceProcess
from tests.system.test_qemu import image  # noqa: F401 (image: the guest image fixture, shared)

pytestmark = pytest.mark.external  # needs a tool from the OS
# Under `-n` (bin/test) this module is in xdist group "qemu" with the other QEMU modules: see XDIST_GROUPS.

HOST = "qemu-room"
VM = "hm1"
BOOT_MB = 512
MAX_MB = 1536


@pytest.fixture
def root() -> Iterator[Path]:
    # unix socket paths must stay short: not under pytest's deep tmp_path
    path = Path(f"/tmp/hq-hm-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    yield path
    for d in path.glob("*"):
        QemuVm(d.name, path).stop()
    shutil.rmtree(path, ignore_errors=True)


async def order(nc: Client, recorder: Recorder, driver: QemuDriver, name: str, target: int) -> ScaleResult:
    """One memory order for the guest, decided on its size now, and its one result."""
    seen = (await driver.read_memory(VM)).size_bytes
    now = time.time()  # the shared clock runs at speed 1 from the epoch the services were given: wall time
    command = ScaleCommand(
        id=f"test-{name}", time=now, host=HOST, vm=VM, resource=Resource.MEMORY, target_memory_bytes=target,
        seen_memory_bytes=seen, decider="test", reason=name, expires_at=now + 600,
    )  # fmt: skip
    await bus.publish_durable(nc.jetstream(), subjects.commands(HOST, VM), encode(command), msg_id=command.id)
    result = await recorder.result_of(command.id, timeout_s=90)
    assert result is not None, f"no result for {name}"
    return result


async def test_a_memory_grow_of_a_qemu_guest_is_held_to_the_hosts_memory(
    image: GuestImage,  # noqa: F811 (the imported fixture)
    root: Path,
    broker: EmbeddedBroker,
    nc: Client,
    start_service: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    await asyncio.to_thread(QemuVm.start, VM, image, max_vcpus=1, memory_mb=BOOT_MB, max_memory_mb=MAX_MB, root=root)
    config = tmp_path / "hotplug.toml"
    config.write_text(f'[[host]]\nmatch = "{HOST}"\nmemory = "1GiB"\n')  # in place of this machine's MemTotal
    recorder = Recorder()
    await recorder.attach(nc, samples=False)
    common = ["--nats", broker.url, "--host", HOST, "--epoch", repr(time.time())]
    start_service("actuator", *common, "--driver", "qemu", "--config", str(config), env={DIR_ENV: str(root)})
    driver = QemuDriver(root)

    cut = await order(nc, recorder, driver, "grow-cut", MAX_MB * MIB)  # 1 GiB asked, 512 MiB of room
    assert cut.error_code is ErrorCode.HOST_FULL, cut
    assert (cut.memory_before_bytes, cut.memory_after_bytes) == (BOOT_MB * MIB, GIB), cut
    assert (cut.host_capacity_memory_bytes, cut.host_committed_memory_bytes) == (GIB, BOOT_MB * MIB)
    view = await driver.read_memory(VM)
    assert view.requested_bytes == GIB  # QEMU was asked for what fit, not for what the order wanted

    full = await order(nc, recorder, driver, "grow-full", MAX_MB * MIB)  # no room left: no request at all
    assert full.error_code is ErrorCode.HOST_FULL, full
    assert full.memory_after_bytes == full.memory_before_bytes == GIB
    assert full.host_committed_memory_bytes == GIB
    assert len({r.command_id for r in recorder.results}) == len(recorder.results) == 2  # one result each
