"""Real vCPU hot-plug on real QEMU guests (TCG): a Debian kernel and busybox initramfs built by the project.

These tests need qemu-system-x86_64 (QEMU ≥ 8; .ci/install-debian-packages installs 10.0 from
bookworm-backports) and apt-get/dpkg-deb to build the guest. In CI they must run; elsewhere they skip and
say what to install.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotplug.harness.poll import a_window, wait_until
from hotplug.harness.processes import OutputProcess, run_hotplug
from services.actuator.drivers.base import DriverError
from services.actuator.drivers.qemu import QemuDriver
from services.collector.rates import sample_from
from services.collector.sources.base import Reading
from services.collector.sources.qemu import QemuSource
from shared.clock import Clock
from shared.host_memory import read_host_memory
from shared.messages import ErrorCode
from shared.qemu.image import GuestImage, ImageError, ensure_image
from shared.qemu.vm import QemuVm, connect_qmp, parse_stat
from shared.units import MIB
from tests.conftest import GUEST_LOOP_DECIDER, roomy_host_config

pytestmark = pytest.mark.external  # needs a tool from the OS (see require_tool)
# Under `-n` (bin/test) this module is in xdist group "guests": see XDIST_GROUPS in tests/conftest.py.


@pytest.fixture(scope="module")
def image() -> GuestImage:
    missing = [tool for tool in ("qemu-system-x86_64", "apt-get", "dpkg-deb") if shutil.which(tool) is None]
    reason = ""
    if missing:
        reason = (
            f"{', '.join(missing)} not found: install QEMU 10 from bookworm-backports and Debian's apt "
            "(.ci/install-debian-packages does both)"
        )
    else:
        try:
            return ensure_image()
        except ImageError as exc:
            reason = f"cannot build the guest image: {exc}"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def root() -> Iterator[Path]:
    # unix socket paths must stay short: not under pytest's deep tmp_path
    path = Path(f"/tmp/hq-test-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    yield path
    for d in path.glob("*"):
        QemuVm(d.name, path).stop()
    shutil.rmtree(path, ignore_errors=True)


def guest_says(vm: QemuVm, command: str, timeout: float = 60.0) -> str:
    """Run a command in the guest over its control channel; its first output line (a roomy deadline: a starved TCG
    guest may take over 10 s, and a command sent before the last is answered reaches its console mixed with it)."""
    mark = vm.guest_log_size()
    vm.send(command)
    answers: list[str] = []

    def answered() -> bool:
        answers.extend(line[4:].strip() for line in vm.guest_lines_since(mark) if line.startswith("OUT "))
        return bool(answers)

    if not wait_until(answered, timeout, 0.05):
        raise AssertionError(f"no answer from the guest to {command!r}")
    return answers[0]


def test_stat_lines_parse() -> None:
    stat = parse_stat("STAT up=12.07 online=0-1,3 running=3 cpu0=315 cpu1=185 cpu3=7 hz=100")
    assert stat is not None
    assert (stat.online, stat.running, stat.busy_ticks, stat.hz) == ((0, 1, 3), 3, {0: 315, 1: 185, 3: 7}, 100)
    assert parse_stat("STAT up=x") is None
    assert parse_stat("HP onlined cpu1") is None


GREETING = {"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": []}}
STALE_EVENT = {
    "timestamp": {"seconds": 1, "microseconds": 0},
    "event": "ACPI_DEVICE_OST",
    "data": {"info": {"device": "hp1", "source": 3, "status": 132, "slot": "1", "slot-type": "CPU"}},
}


@pytest.mark.parametrize("event_before", ["greeting", "capabilities-answer"])
async def test_a_qmp_connection_that_hears_an_event_in_its_handshake_is_made_again(
    tmp_path: Path, event_before: str
) -> None:
    """A stand-in QMP server (QEMU's documented handshake: greeting, ``qmp_capabilities``, replies echoing ``id``)
    that on the first connection writes an ``ACPI_DEVICE_OST`` event before the greeting, as QEMU 10 did in CI right
    after a ``device_del`` on the previous connection, or before its answer to ``qmp_capabilities``, as a CI run
    saw an actuator's connection fail its negotiation right after another client's."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        first = len(connections) == 1
        if first and event_before == "greeting":
            writer.write(json.dumps(STALE_EVENT).encode() + b"\r\n")
        writer.write(json.dumps(GREETING).encode() + b"\r\n")
        await writer.drain()
        pending = ""
        while chunk := await reader.read(4096):  # clients need not end a request with a newline
            pending += chunk.decode()
            while pending.strip():
                try:
                    request, end = json.JSONDecoder().raw_decode(pending.lstrip())
                except json.JSONDecodeError:
                    break  # the rest of this request is still on its way
                pending = pending.lstrip()[end:]
                negotiating = request["execute"] == "qmp_capabilities"
                if first and negotiating and event_before == "capabilities-answer":
                    writer.write(json.dumps(STALE_EVENT).encode() + b"\r\n")
                answer = {"return": {} if negotiating else [{"cpu-index": 0}]}
                writer.write(json.dumps({**answer, "id": request.get("id")}).encode() + b"\r\n")
                await writer.drain()
        writer.close()

    path = tmp_path / "qmp.sock"
    server = await asyncio.start_unix_server(serve, path=str(path))
    async with server:
        client = await connect_qmp("stand-in", path)
        try:
            assert await client.execute("query-cpus-fast") == [{"cpu-index": 0}]
        finally:
            await client.disconnect()
    assert connections == [1, 2]


async def test_plug_is_seen_online_by_the_guest_and_unplug_completes(image: GuestImage, root: Path) -> None:
    vm = await asyncio.to_thread(QemuVm.start, "g1", image, max_vcpus=3, vcpus=1, root=root)
    driver = QemuDriver(root)
    assert (await driver.read("g1")).online_vcpus == 1
    assert guest_says(vm, "cat /sys/devices/system/cpu/online") == "0"
    await driver.plug("g1")
    await driver.plug("g1")
    assert (await driver.read("g1")).online_vcpus == 3
    assert guest_says(vm, "cat /sys/devices/system/cpu/online") == "0-2"  # the guest's own view
    host = await driver.host_view()  # counted by its vCPU threads, as the actuator judges a grow
    assert (host.cpus, host.vms) == (os.cpu_count(), {"g1": 3})
    await driver.unplug("g1")
    assert (await driver.read("g1")).online_vcpus == 2
    assert guest_says(vm, "cat /sys/devices/system/cpu/online") == "0-1"
    await driver.unplug("g1")
    with pytest.raises(DriverError) as info:
        await driver.unplug("g1")
    assert info.value.code is ErrorCode.CPU0  # the boot vCPU stays
    assert guest_says(vm, "cat /sys/devices/system/cpu/online") == "0"


async def test_the_lifetime_hotadd_budget_is_refused_before_qemu_aborts(image: GuestImage, root: Path) -> None:
    await asyncio.to_thread(QemuVm.start, "g2", image, max_vcpus=2, vcpus=1, root=root, maxcpus=3)
    driver = QemuDriver(root)
    for _ in range(2):  # 2 hot-adds allowed: maxcpus 3 - 1 boot vCPU
        await driver.plug("g2")
        await driver.unplug("g2")
    with pytest.raises(DriverError) as info:
        await driver.plug("g2")
    assert info.value.code is ErrorCode.HOTPLUG_BUDGET
    assert QemuVm("g2", root).running()  # QEMU was never asked, so it did not abort
    assert (await driver.read("g2")).online_vcpus == 1


async def test_source_measures_vcpu_threads_and_guest_run_queue(image: GuestImage, root: Path) -> None:
    vm = await asyncio.to_thread(QemuVm.start, "g3", image, max_vcpus=2, vcpus=1, root=root)
    vm.send("busy 2")  # two loops on one vCPU: one waits
    source = QemuSource(Clock(), root)

    async def read() -> dict[str, Reading]:
        return {r.vm: r for r in await source.read()}

    def running(first: dict[str, Reading], second: dict[str, Reading]) -> bool:
        """The loops ran over the window: on a loaded machine a window may find them starved."""
        s = sample_from(first["g3"], second["g3"], "h", source.name) if "g3" in first and "g3" in second else None
        return s is not None and s.cpu_used_cores > 0.5 and (s.pressure_cores or 0) > 0.3

    first, second = await a_window(read, 2.5, running, timeout=90, what="a window with the guest's loops running")
    sample = sample_from(first["g3"], second["g3"], "h", source.name)
    assert sample is not None
    assert sample.online_vcpus == 1
    assert sample.cpu_used_cores > 0.5  # its one vCPU thread is busy on the host
    assert sample.pressure_cores is not None
    assert sample.pressure_cores > 0.3  # the guest reports runnable work beyond its vCPU
    host = await source.host()  # this machine, the guest's one vCPU, that vCPU thread's host run-queue wait
    assert host is not None
    assert (host.cpus, dict(host.vms)) == (os.cpu_count(), {"g3": 1})
    assert host.host_wait_seconds is not None and len(host.host_wait_seconds) == 1
    # the machine's MemTotal, and the guest's boot RAM (it has no memory device): what it holds on the host
    assert (host.memory_bytes, host.vm_memory) == (read_host_memory(), {"g3": 256 * MIB})


# The busy guest must get its cores from a shared machine (other tests, other work): roomy deadlines, each wait
# ending as soon as the guest reports its count.
@pytest.mark.timeout(480)
def test_whole_loop_takes_a_real_guest_from_1_to_3_vcpus_and_back(image: GuestImage, tmp_path: Path) -> None:
    data_dir = Path(f"/tmp/hq-up-{os.getpid()}")
    shutil.rmtree(data_dir, ignore_errors=True)
    env = {"HOTPLUG_QEMU_DIR": str(data_dir / "qemu")}
    out = OutputProcess.hotplug(
        "up",
        "--hypervisor",
        "qemu",
        "--vms",
        "1",
        "--max-vcpus",
        "3",
        "--data-dir",
        str(data_dir),
        "--no-view",
        "--config",
        str(roomy_host_config(tmp_path)),
        *GUEST_LOOP_DECIDER,
        env=env,
    )

    def guest_online() -> int | None:
        """The guest's own count, from its latest STAT line, read here as `hotplug qemu status` reads it (a status
        process at every look took CPU the guest's vCPUs needed; the command itself is run once, below)."""
        stat = QemuVm("vm-01", data_dir / "qemu").guest_stat()
        return len(stat.online) if stat is not None else None

    def wait_guest(count: int, timeout: float) -> None:
        if not wait_until(lambda: guest_online() == count, timeout, 0.5):
            raise AssertionError(f"the guest never reported {count} CPUs online; output:\n{out.text()}")

    try:
        out.wait_for(r"^actuator metrics: ", timeout=90)
        wait_guest(1, 30)
        load = run_hotplug("qemu", "load", "vm-01", "--busy", "3", timeout=30, env=env)
        assert load.returncode == 0, load.stderr
        wait_guest(3, 180)
        out.wait_for(r"^vm-01: 2 -> 3 ok$", timeout=5)
        status = run_hotplug("qemu", "status", "--json", timeout=30, env=env)
        assert [row["guest_online_vcpus"] for row in json.loads(status.stdout or "[]")] == [3], status.stdout
        unload = run_hotplug("qemu", "load", "vm-01", "--busy", "0", timeout=30, env=env)
        assert unload.returncode == 0, unload.stderr
        wait_guest(1, 180)
    finally:
        code = out.interrupt(timeout_s=60)
        shutil.rmtree(data_dir, ignore_errors=True)
    assert code == 0, out.text()
    assert "vm-01: 1 -> 2 ok" in out.text()
    assert "vm-01: 2 -> 1 ok" in out.text()
