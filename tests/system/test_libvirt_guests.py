"""Real libvirt (libvirtd 11.3, ``qemu:///system``) with real QEMU TCG guests booted from the project's image.

Needs root, libvirt-python (the ``libvirt`` extra: bin/bootstrap adds it where libvirt-dev is installed), a running
libvirtd and QEMU: ``.ci/install-debian-packages`` then ``.ci/libvirt-daemons start`` (as root) provide them, as
.ci/run does. In CI (CI=true) they must run; elsewhere they skip and say what is missing. At most two guests run at
once; every test destroys (and undefines) what it made.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from hotplug.harness import faults
from hotplug.harness.poll import a_window, wait_until
from hotplug.harness.processes import OutputProcess, ServiceProcess, run_hotplug
from hotplug.harness.recorder import Recorder
from services.actuator.drivers.base import DriverError
from shared.broker import EmbeddedBroker
from shared.messages import ErrorCode, ScaleResult
from tests.conftest import GUEST_LOOP_DECIDER, REPO, eventually, roomy_host_config

pytestmark = pytest.mark.external  # needs a tool from the OS (see require_tool)
# Under `-n` (bin/test) this module is in xdist group "guests": see XDIST_GROUPS in tests/conftest.py.

URI = os.environ.get("HOTPLUG_LIBVIRT_URI", "qemu:///system")
DAEMONS = REPO / ".ci" / "libvirt-daemons"
# Names as users give them: spaces, quotes, shell syntax. Nothing may ever run them.
HOSTILE = f"hp t{os.getpid()} \"q\" 'x' $(touch pwned) `id`; ls"


def _missing() -> str | None:
    try:
        from shared.libvirt.connection import Connection, LibvirtMissing
    except ImportError as exc:  # pragma: no cover - the package itself is importable without libvirt
        return str(exc)
    try:
        conn = Connection(URI)
    except LibvirtMissing as exc:
        return str(exc)
    try:
        conn.run(lambda c: c.getVersion())
    except Exception as exc:
        return (
            f"libvirtd does not answer at {URI} ({exc}): start it as root with .ci/libvirt-daemons start "
            f"(after .ci/install-debian-packages)"
        )
    finally:
        conn.close()
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not found: .ci/install-debian-packages installs QEMU 10 from bookworm-backports"
    try:
        from shared.qemu.image import ensure_image

        ensure_image()
    except Exception as exc:
        return f"cannot build the guest image: {exc}"
    return None


@pytest.fixture(scope="module")
def ready() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(f"/tmp/hl-test-{os.getpid()}")  # short: unix socket paths
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Guests:
    """Starts test domains and destroys (and undefines) every one of them at the end."""

    def __init__(self, root: Path) -> None:
        from shared.libvirt.connection import Connection

        self.root = root
        self.conn = Connection(URI)
        self.libvirt = self.conn.libvirt
        self.names: list[str] = []

    def start(self, name: str, *, max_vcpus: int = 3, vcpus: int = 1) -> None:
        from hotplug.hypervisors import libvirt as libvirt_admin

        self.names.append(name)
        libvirt_admin.start(self.conn, name, max_vcpus, vcpus, 256, self.root)

    def define(self, name: str, *, vcpus: int, maximum: int, metadata: bool = True) -> Any:
        """A persistent, shut-off domain booting the test guest (a user's VM stands in for)."""
        from shared.libvirt.guest import domain_xml, guest_dir
        from shared.qemu.image import ensure_image

        directory = guest_dir(name, self.root)
        directory.mkdir(parents=True, exist_ok=True)
        root = ET.fromstring(
            domain_xml(name, ensure_image(), directory, max_vcpus=maximum, vcpus=vcpus, maximum=maximum)
        )
        if not metadata:
            element = root.find("metadata")
            assert element is not None
            root.remove(element)
        self.names.append(name)
        return self.conn.run(lambda c: c.defineXML(ET.tostring(root, encoding="unicode")))

    def channel(self, name: str) -> Any:
        from shared.libvirt.guest import GuestChannel, guest_dir

        directory = guest_dir(name, self.root)
        return GuestChannel(directory / "ctl.log", directory / "ctl.sock")

    def online(self, name: str) -> str | None:
        """The guest's own answer: its online CPU list."""
        # A deadline for a starved TCG guest (beside a CPU hog one took over 10 s to answer)
        answer: str | None = self.channel(name).ask("cat /sys/devices/system/cpu/online", timeout_s=60)
        return answer

    def running(self, name: str) -> bool:
        from shared.libvirt.connection import is_connection_error

        for _ in range(2):  # a second try on a new connection if libvirtd restarted under the first
            try:
                return bool(self.conn.run(lambda c: c.lookupByName(name).isActive()))
            except self.libvirt.libvirtError as exc:
                if not is_connection_error(exc):
                    return False
        return False

    @staticmethod
    def _lookup(name: str) -> Callable[[Any], Any]:
        return lambda conn: conn.lookupByName(name)

    def close(self) -> None:
        for name in self.names:
            try:
                dom = self.conn.run(self._lookup(name))
            except self.libvirt.libvirtError:
                continue
            persistent = dom.isPersistent()  # a transient domain is gone once destroyed
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()
        self.conn.close()


@pytest.fixture
def guests(ready: None, root: Path) -> Iterator[Guests]:
    g = Guests(root)
    try:
        yield g
    finally:
        g.close()


def hotplug(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_hotplug(*args, timeout=timeout, env=env)


def driver() -> Any:
    from services.actuator.drivers.libvirt import LibvirtDriver

    return LibvirtDriver(URI)


async def test_plug_and_unplug_one_at_a_time_and_the_guest_reports_each_count(guests: Guests) -> None:
    await asyncio.to_thread(guests.start, HOSTILE, max_vcpus=3)
    d = driver()
    try:
        view = await d.read(HOSTILE)
        assert (view.online_vcpus, view.min_vcpus, view.max_vcpus) == (1, 1, 3)
        seen = []
        for _ in range(2):
            await d.plug(HOSTILE)
            seen.append(((await d.read(HOSTILE)).online_vcpus, await asyncio.to_thread(guests.online, HOSTILE)))
        with pytest.raises(DriverError) as full:
            await d.plug(HOSTILE)
        assert full.value.code is ErrorCode.CPU_ID_OUT_OF_RANGE  # the project's bound (3), below libvirt's 32
        for _ in range(2):
            await d.unplug(HOSTILE)  # under TCG libvirt says "timed out" each time; the vCPU did leave
            seen.append(((await d.read(HOSTILE)).online_vcpus, await asyncio.to_thread(guests.online, HOSTILE)))
        assert seen == [(2, "0-1"), (3, "0-2"), (2, "0-1"), (1, "0")]
        with pytest.raises(DriverError) as last:
            await d.unplug(HOSTILE)
        assert last.value.code is ErrorCode.CPU0  # vCPU 0 never leaves
        assert not Path("pwned").exists() and not (REPO / "pwned").exists()  # noqa: ASYNC240 (one stat)
    finally:
        await d.close()


async def test_a_refusing_guest_ends_as_guest_refused_and_keeps_its_vcpu(guests: Guests) -> None:
    name = f"hp-refuse-{os.getpid()}"
    await asyncio.to_thread(guests.start, name, max_vcpus=2)
    d = driver()
    try:
        await d.plug(name)
        # The guest disables ACPI CPU eject: its kernel then declines the unplug request.
        said = await asyncio.to_thread(
            guests.channel(name).ask, "echo 0 > /sys/firmware/acpi/hotplug/processor/enabled; echo done", 60
        )
        assert said == "done", said  # eject is off before the unplug is asked for
        with pytest.raises(DriverError) as refused:
            await asyncio.wait_for(d.unplug(name), timeout=60)  # bounded: one libvirt timeout and a thread check
        assert refused.value.code is ErrorCode.GUEST_REFUSED
        assert "vcpu unplug request timed out" in refused.value.message  # libvirt's own words are kept
        assert await asyncio.to_thread(guests.online, name) == "0-1"  # the guest still has it
        assert guests.running(name)
    finally:
        await d.close()


async def test_the_tcg_hotadd_budget_is_refused_before_qemu_aborts(guests: Guests) -> None:
    name = f"hp-budget-{os.getpid()}"
    dom = await asyncio.to_thread(guests.define, name, vcpus=1, maximum=3)  # 3 - 1 boot vCPU = 2 hot-adds
    await asyncio.to_thread(dom.create)
    await eventually(lambda: guests.channel(name).ready(), timeout=60, what="the guest booting")
    d = driver()
    try:
        await d.plug(name)
        await d.unplug(name)
        await d.plug(name)
        with pytest.raises(DriverError) as spent:
            await d.plug(name)  # a third add would abort QEMU
        assert spent.value.code is ErrorCode.HOTPLUG_BUDGET
        assert guests.running(name)
        assert (await d.read(name)).online_vcpus == 2
        assert await asyncio.to_thread(guests.online, name) == "0-1"
    finally:
        await d.close()


async def test_each_error_case_gives_its_code_with_libvirts_message(guests: Guests) -> None:
    from shared.libvirt.connection import Connection
    from shared.libvirt.domain import classify

    running, stopped = f"hp-err {os.getpid()}", f"hp-off '{os.getpid()}'"
    await asyncio.to_thread(guests.start, running, max_vcpus=2)
    await asyncio.to_thread(guests.define, stopped, vcpus=1, maximum=4)

    # through the command users run
    cases = {
        ("nope-" + str(os.getpid()), "2"): "vm-not-found",
        (stopped, "2"): "vm-not-running",
        (running, "3"): "out-of-bounds",
        (running, "0"): "cpu0",
    }
    for (name, count), want in cases.items():
        done = await asyncio.to_thread(hotplug, "libvirt", "--uri", URI, "set", name, "--vcpus", count)
        assert done.returncode == 1, done.stdout
        assert done.stderr.startswith(f"{want}: "), (name, count, done.stderr)
    stopped_text = (await asyncio.to_thread(hotplug, "libvirt", "set", stopped, "--vcpus", "2")).stderr
    assert "not running" in stopped_text

    # libvirt's own refusals, each through the mapping the driver uses
    libvirt = guests.libvirt
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom = guests.conn.run(lambda c: c.lookupByName(running))
    off = guests.conn.run(lambda c: c.lookupByName(stopped))
    calls: list[tuple[Callable[[], object], str, int, str, ErrorCode]] = [
        (lambda: guests.conn.run(lambda c: c.lookupByName("nope")), "", 42, "Domain not found", ErrorCode.VM_NOT_FOUND),
        (lambda: off.setVcpusFlags(2, live), "plug", 55, "domain is not running", ErrorCode.VM_NOT_RUNNING),
        (lambda: dom.setVcpusFlags(33, live), "plug", 8, "greater than max allowable", ErrorCode.OUT_OF_BOUNDS),
        (lambda: dom.setVcpusFlags(0, live), "unplug", 8, "must not be zero", ErrorCode.CPU0),
        (lambda: dom.setVcpu("0", 0, live), "unplug", 84, "can't be unplugged", ErrorCode.CPU0),
        (lambda: dom.setVcpu("0", 1, live), "plug", 8, "already in requested state", ErrorCode.ALREADY_ATTACHED),
    ]
    for call, op, code, words, expected in calls:
        with pytest.raises(libvirt.libvirtError) as info:
            await asyncio.to_thread(call)
        assert (info.value.get_error_code(), classify(info.value.get_error_code(), str(info.value), op)) == (
            code,
            expected,
        ), str(info.value)
        assert words in str(info.value)
    reader = Connection(URI, read_only=True)
    try:
        with pytest.raises(libvirt.libvirtError) as denied:
            reader.run(lambda c: c.lookupByName(running).setVcpusFlags(2, live))
        assert denied.value.get_error_code() == 29 and "read only" in str(denied.value)
    finally:
        reader.close()
    nowhere = Connection("qemu:///system?socket=/nonexistent/libvirt-sock")
    with pytest.raises(libvirt.libvirtError) as down:
        nowhere.run(lambda c: c.getVersion())
    assert down.value.get_error_code() == 38 and "Failed to connect socket" in str(down.value)
    assert classify(38, str(down.value)) is ErrorCode.UNKNOWN
    # nothing of it changed the guest
    assert await asyncio.to_thread(guests.online, running) == "0"

    # an admin opts the running domain out in its metadata: the actuator's driver refuses it from then on
    from shared.libvirt.domain import SETTINGS_NS, SETTINGS_PREFIX, Settings, settings_xml

    await asyncio.to_thread(
        dom.setMetadata,
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        settings_xml(Settings(enabled=False)),
        SETTINGS_PREFIX,
        SETTINGS_NS,
        live,
    )
    done = await asyncio.to_thread(hotplug, "libvirt", "--uri", URI, "set", running, "--vcpus", "2")
    assert done.returncode == 1 and done.stderr.startswith("hotplug-disabled: "), done.stderr


async def test_the_collector_reads_a_busy_guests_vcpu_time_and_its_run_queue(guests: Guests) -> None:
    from prometheus_client import CollectorRegistry

    from services.collector.rates import sample_from
    from services.collector.sources.libvirt import LibvirtSource
    from shared.clock import Clock

    name = f'hp-busy "{os.getpid()}" '
    await asyncio.to_thread(guests.start, name, max_vcpus=2)
    guests.channel(name).send("busy 2")  # two loops on one vCPU: one of them waits
    registry = CollectorRegistry()
    source = LibvirtSource(Clock(), URI, domains=[name], registry=registry)

    async def read() -> dict[str, Any]:
        return {r.vm: r for r in await source.read()}

    def running(first: dict[str, Any], second: dict[str, Any]) -> bool:
        """The loops ran over the window: on a loaded machine a window may find them starved."""
        s = sample_from(first[name], second[name], "h", source.name) if name in first and name in second else None
        return s is not None and s.cpu_used_cores > 0.5 and (s.pressure_cores or 0) > 0.3

    try:
        first, second = await a_window(read, 2.5, running, timeout=90, what="a window with the guest's loops running")
    finally:
        await source.close()
    assert set(second) == {name}  # only the selected domain
    sample = sample_from(first[name], second[name], "h", source.name)
    assert sample is not None
    assert (sample.online_vcpus, sample.min_vcpus, sample.max_vcpus) == (1, 1, 2)
    assert sample.cpu_used_cores > 0.5  # its vCPU thread is busy on the host
    assert sample.pressure_cores is not None and sample.pressure_cores > 0.3  # the guest's own run queue
    assert registry.get_sample_value("hotplug_collector_host_wait_seconds", {"vm": name}) is not None


async def test_a_libvirtd_restart_mid_run_is_survived(guests: Guests) -> None:
    from services.collector.sources.libvirt import LibvirtSource
    from shared.clock import Clock

    if not Path("/run/hotplug-heaven-libvirt/libvirtd").exists():  # noqa: ASYNC240 (one stat)
        reason = "libvirtd was not started by .ci/libvirt-daemons start, so this test may not restart it"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"hp-restart-{os.getpid()}"
    await asyncio.to_thread(guests.start, name, max_vcpus=2)
    d = driver()
    source = LibvirtSource(Clock(), URI, domains=[name])
    try:
        assert (await d.read(name)).online_vcpus == 1
        assert [r.vm for r in await source.read()] == [name]
        done = await asyncio.to_thread(
            subprocess.run, [str(DAEMONS), "restart-libvirtd"], capture_output=True, text=True, timeout=180, check=False
        )
        assert done.returncode == 0, done.stderr
        assert guests.running(name)  # guests outlive their daemon
        # the same driver and source, their connections now broken: they reconnect
        await d.plug(name)
        assert (await d.read(name)).online_vcpus == 2
        assert await asyncio.to_thread(guests.online, name) == "0-1"
        assert [r.vm for r in await source.read()] == [name]
    finally:
        await d.close()
        await source.close()


async def test_prepare_sets_up_a_shut_off_domain_and_refuses_a_running_one(guests: Guests) -> None:
    from shared.libvirt.domain import parse_domain

    name = f"hp-prep $(x) {os.getpid()}"
    dom = await asyncio.to_thread(guests.define, name, vcpus=2, maximum=2, metadata=False)
    done = await asyncio.to_thread(hotplug, "libvirt", "prepare", name, "--max-vcpus", "3", "--start-vcpus", "2")
    assert done.returncode == 0, done.stderr
    info = parse_domain(dom.XMLDesc(guests.libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert (info.maximum, info.online, info.settings.max_vcpus, info.settings.enabled) == (32, 2, 3, True)
    assert [(v.id, v.enabled, v.hotpluggable) for v in info.vcpus[:3]] == [
        (0, True, False),
        (1, True, True),
        (2, False, True),
    ]  # boot vCPU 1 may leave later
    await asyncio.to_thread(dom.create)
    await eventually(lambda: guests.channel(name).ready(), timeout=60, what="the guest booting")
    again = await asyncio.to_thread(hotplug, "libvirt", "prepare", name, "--max-vcpus", "4")
    assert again.returncode == 1 and "shut it down first" in again.stderr
    d = driver()
    try:
        view = await d.read(name)
        assert (view.online_vcpus, view.min_vcpus, view.max_vcpus) == (2, 1, 3)
        await d.unplug(name)  # a vCPU it booted with
        assert await asyncio.to_thread(guests.online, name) == "0"
    finally:
        await d.close()


async def test_the_actuator_keeps_two_guests_within_a_host_of_3_vcpus(
    guests: Guests, broker: EmbeddedBroker, nc: Client, start_service: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    first, second = f"hp-cap-a-{os.getpid()}", f"hp-cap-b-{os.getpid()}"
    for name in (first, second):
        await asyncio.to_thread(guests.start, name, max_vcpus=4)
    d = driver()
    try:
        host = await d.host_view()
    finally:
        await d.close()
    assert (host.vms[first], host.vms[second]) == (1, 1)
    # Every running domain takes cores, ours or not: any other on this libvirtd is given its own CPUs on top of 3.
    others = sum(n for vm, n in host.vms.items() if vm not in (first, second))
    capacity = 3 + others
    config = tmp_path / "host.toml"
    config.write_text(f'[[host]]\nmatch = "lv"\ncpus = {capacity}\n')
    watch = Recorder()
    await watch.attach(nc, samples=False, commands=False)
    common = ["--nats", broker.url, "--host", "lv"]
    start_service("actuator", *common, "--driver", "libvirt", "--libvirt-uri", URI, "--config", str(config))

    async def resize(vm: str, target: int, seen: int) -> ScaleResult:
        command = faults.order("lv", vm, target, seen, ttl_s=120.0)
        await faults.store_durably(nc, command)
        result = await watch.result_of(command.id, timeout_s=90)  # a TCG unplug takes 5 s, and its resync
        assert result is not None, f"no result for {vm} {seen} -> {target}"
        return result

    grown = await resize(first, 2, 1)  # fits: 3 committed
    assert (grown.ok, grown.vcpus_after, grown.host_capacity_vcpus, grown.host_committed_vcpus) == (
        True,
        2,
        capacity,
        2 + others,
    ), grown
    refused = await resize(second, 3, 1)
    assert (refused.ok, refused.error_code, refused.vcpus_after) == (False, ErrorCode.HOST_FULL, 1), refused
    assert refused.error == f"granted 0 of 2 vCPUs asked: host lv has capacity {capacity}, {capacity} committed"
    assert refused.retry_after == 2.0
    shrunk = await resize(first, 1, 2)  # a shrink always passes
    assert (shrunk.ok, shrunk.vcpus_after) == (True, 1), shrunk
    part = await resize(second, 3, 1)  # room for one of the two now
    assert (part.ok, part.error_code, part.vcpus_before, part.vcpus_after) == (False, ErrorCode.HOST_FULL, 1, 2), part
    assert part.error == f"granted 1 of 2 vCPUs asked: host lv has capacity {capacity}, {capacity - 1} committed"
    assert await asyncio.to_thread(guests.online, second) == "0-1"  # the guest's own view of the grant
    assert await asyncio.to_thread(guests.online, first) == "0"


# The busy guest must get its cores from a shared machine (other tests, other work): roomy deadlines, each wait
# ending as soon as the guest reports its count.
@pytest.mark.timeout(720)
def test_whole_loop_scales_two_real_domains_up_and_down_with_one_result_per_command(
    ready: None, tmp_path: Path
) -> None:
    data_dir = Path(f"/tmp/hl-up-{os.getpid()}")
    shutil.rmtree(data_dir, ignore_errors=True)
    out = OutputProcess.hotplug(
        "up",
        "--hypervisor",
        "libvirt",
        "--libvirt-uri",
        URI,
        "--vms",
        "2",
        "--max-vcpus",
        "3",
        "--data-dir",
        str(data_dir),
        "--no-view",
        "--config",
        str(roomy_host_config(tmp_path)),
        *GUEST_LOOP_DECIDER,
    )

    from shared.libvirt.connection import Connection
    from shared.libvirt.domain import parse_domain
    from shared.libvirt.guest import GuestChannel

    conn = Connection(URI)

    def guest_online(vm: str) -> int | None:
        """The guest's own count, from its latest STAT line, read here as `hotplug libvirt status` reads it (a
        status process at every look took CPU the guests' vCPUs needed; the command itself is run at the end)."""
        try:
            xml: str = conn.run(lambda c: c.lookupByName(vm).XMLDesc(0))
        except conn.libvirt.libvirtError:
            return None
        log = parse_domain(xml).control_log
        stat = GuestChannel(log).last_stat() if log is not None else None
        return len(stat.online) if stat is not None else None

    def wait_guest(vm: str, count: int, timeout: float) -> None:
        if not wait_until(lambda: guest_online(vm) == count, timeout, 0.5):
            raise AssertionError(f"{vm} never reported {count} CPUs online; output:\n{out.text()}")

    try:
        out.wait_for(r"^actuator metrics: ", timeout=120)
        wait_guest("vm-01", 1, 30)
        load = hotplug("libvirt", "--uri", URI, "load", "vm-01", "--busy", "3")
        assert load.returncode == 0, load.stderr
        wait_guest("vm-01", 3, 240)
        out.wait_for(r"^vm-01: 2 -> 3 ok$", timeout=10)
        hotplug("libvirt", "--uri", URI, "load", "vm-01", "--busy", "0")
        wait_guest("vm-01", 1, 240)
        assert guest_online("vm-02") == 1  # idle: left alone
    finally:
        code = out.interrupt(timeout_s=90)
    try:
        assert code == 0, out.text()
        text = out.text()
        assert "vm-01: 1 -> 2 ok" in text
        assert "vm-01: 2 -> 1 ok" in text
        events = hotplug("events", "--data-dir", str(data_dir), "--format", "jsonl")
        assert events.returncode == 0, events.stderr
        records = [json.loads(line) for line in events.stdout.splitlines() if line]
        commands = {r["id"] for r in records if r["kind"] == "command"}
        results = [r["command_id"] for r in records if r["kind"] == "result"]
        assert commands and sorted(results) == sorted(commands)  # every command exactly one result
        listed = hotplug("libvirt", "--uri", URI, "status", "--json")
        assert not {"vm-01", "vm-02"} & {r["name"] for r in json.loads(listed.stdout or "[]")}  # stopped at the end
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.timeout(300)
async def test_a_load_step_in_a_libvirt_guest_is_met_by_a_plug_made_on_an_urgent_sample(
    guests: Guests, root: Path, tmp_path: Path
) -> None:
    """The ``libvirt`` source follows the test guest's PSI lines, as the ``qemu`` source does: with the collector
    sampling every 5 s, a load step right after a regular sample is met by a grow made on an urgent sample, before
    the next regular one, and its pressure is the load's (the PSI line's runnable tasks). Services as ``hotplug bench
    loop --guest libvirt`` starts them, sampling only this domain."""
    from evaluation.bench.loop import loop_services
    from hotplug.hypervisors.libvirt import DIR_ENV
    from shared import bus

    vm, interval_s = "hl-urgent", 5.0
    await asyncio.to_thread(guests.start, vm, max_vcpus=2)
    with EmbeddedBroker(tmp_path / "nats") as broker:
        nc = await bus.connect(broker.url, "test", forever=False)
        recorder = Recorder()
        await recorder.attach(nc)
        env = {DIR_ENV: str(root), "HOTPLUG_LIBVIRT_URI": URI}
        only = ["--libvirt-domain", vm]
        services = await loop_services(broker.url, "libvirt", 1, tmp_path, env, interval_s, source_args=only)
        try:

            def regular_after(since: float) -> list[Any]:
                return [s for s in recorder.samples if s.vm == vm and not s.urgent and s.time > since]

            def grows() -> list[Any]:
                return [c for c in recorder.commands if c.vm == vm and (c.target_vcpus or 0) > (c.seen_vcpus or 0)]

            await eventually(lambda: regular_after(0.0), timeout=60, what="a regular sample")
            before = regular_after(0.0)[-1]
            assert before.online_vcpus == 1 and not grows()
            # three loops, not two: see test_qemu_urgent.BUSY_LOOPS (the PSI line counts runnable tasks at once)
            await asyncio.to_thread(guests.channel(vm).send, "busy 3")
            seen: dict[str, object] = {}

            def grown() -> bool:
                if grows() and not seen:
                    seen["regular"] = regular_after(before.time)
                return bool(seen)

            await eventually(grown, timeout=interval_s * 4, what="a grow command")
            command = grows()[0]
            assert seen["regular"] == [], "the next regular sample came before the grow"
            [driving] = [s for s in recorder.samples if s.vm == vm and s.time == command.sample_time]
            assert driving.urgent and (driving.pressure_cores or 0.0) > 0, driving
            result = await recorder.result_of(command.id, timeout_s=60)
            assert result is not None and result.ok and result.vcpus_after == 2, result
        finally:
            for service in services:
                await service.stop_async()
            await nc.close()
