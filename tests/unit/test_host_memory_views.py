"""The ``qemu`` and ``libvirt`` sources' host memory without a hypervisor: the host's memory (``/proc/meminfo``'s
MemTotal, ``shared.host_memory``; libvirt's node info), what each running guest holds from the round's own reads
(``shared.qemu.memview.committed_bytes``), and that a host whose memory or any running guest's is unknown reports none;
then the HostState the collector makes of it."""

from __future__ import annotations

from pathlib import Path

from services.collector.hoststate import host_state
from services.collector.sources.libvirt import _Host, _host_side
from shared.config.schema import HostRule
from shared.host_memory import host_memory, meminfo_total_bytes, read_host_memory
from shared.qemu.memview import MemorySizes, committed_bytes
from shared.qemu.vm import VmState
from shared.units import GIB, KIB, MIB

MEMINFO = """MemTotal:       16318812 kB
MemFree:         1204044 kB
MemAvailable:    9815332 kB
Buffers:          545856 kB
"""


def test_meminfo_total_is_read_in_bytes() -> None:
    assert meminfo_total_bytes(MEMINFO) == 16318812 * KIB
    assert meminfo_total_bytes("MemFree: 10 kB\n") is None  # no MemTotal line
    assert meminfo_total_bytes("MemTotal: lots kB\n") is None
    assert meminfo_total_bytes("MemTotal: 10 MB\n") is None  # not the unit the kernel writes
    assert meminfo_total_bytes("") is None


def test_the_hosts_memory_is_read_from_a_file_or_is_unknown(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert read_host_memory(meminfo) == 16318812 * KIB
    assert read_host_memory(tmp_path / "missing") is None


def state(**memory: int | bool) -> VmState:
    return VmState(name="g", pid=1, max_vcpus=2, boot_vcpus=1, maxcpus=32, **memory)  # type: ignore[arg-type]


def sizes(size: int, requested: int) -> MemorySizes:
    return MemorySizes(size, requested, 256 * MIB, 2 * GIB, 2 * MIB, "virtio-mem")


def test_a_qemu_guest_holds_the_larger_of_its_size_and_the_size_asked_for() -> None:
    device = state(memory_bytes=512 * MIB, vmem_bytes=GIB)
    assert committed_bytes(device, sizes(512 * MIB, 1024 * MIB)) == 1024 * MIB  # a grow under way
    assert committed_bytes(device, sizes(1024 * MIB, 512 * MIB)) == 1024 * MIB  # a shrink under way
    assert committed_bytes(device, None) is None  # QEMU did not answer for its device
    assert committed_bytes(state(memory_bytes=512 * MIB), None) == 512 * MIB  # no device: boot RAM
    assert committed_bytes(state(), None) is None  # an older state file: its memory unknown


def test_qemu_host_memory_needs_the_hosts_and_every_running_guests() -> None:
    held = {"a": GIB, "b": 2 * GIB, "gone": 4 * GIB}
    assert host_memory(16 * GIB, ["a", "b"], held) == (16 * GIB, {"a": GIB, "b": 2 * GIB})
    assert host_memory(16 * GIB, [], held) == (16 * GIB, {})  # no guest: nothing committed
    assert host_memory(16 * GIB, ["a", "c"], held) == (None, None)  # c's memory never known
    assert host_memory(None, ["a"], held) == (None, None)


def test_libvirt_host_memory_is_the_nodes_and_every_running_domains_balloon_current() -> None:
    host = _Host(cpus=12, memory_bytes=15_872 * MIB)
    _host_side("web 1", 7, {"vcpu.current": 2, "balloon.current": 655360}, host)
    _host_side("left alone", 8, {"vcpu.current": 1, "balloon.current": 524288}, host)  # not selected: still held
    got = host.reading(5.0)
    assert (got.cpus, dict(got.vms)) == (12, {"web 1": 2, "left alone": 1})
    assert (got.memory_bytes, got.vm_memory) == (15_872 * MIB, {"web 1": 640 * MIB, "left alone": 512 * MIB})
    # the collector's HostState of it: capacity (memory - reserve) x overcommit, committed the domains' sum
    rules = (HostRule(match="*", reserve_memory="872MiB"),)
    hoststate = host_state(None, got, host="h", rules=rules, used_cores=None, source="libvirt")
    assert (hoststate.memory_bytes, hoststate.capacity_memory_bytes, hoststate.committed_memory_bytes) == (
        15_872 * MIB,
        15_000 * MIB,
        1152 * MIB,
    )


def test_libvirt_host_memory_is_unknown_when_a_domains_or_the_nodes_is() -> None:
    host = _Host(cpus=12, memory_bytes=15_872 * MIB)
    _host_side("web 1", 7, {"vcpu.current": 2, "balloon.current": 655360}, host)
    _host_side("other", 9, {"vcpu.current": 1}, host)  # no balloon.current: what it holds is unknown
    assert (host.reading(5.0).memory_bytes, host.reading(5.0).vm_memory) == (None, None)
    assert dict(host.reading(5.0).vms) == {"web 1": 2, "other": 1}  # its vCPUs still count
    nodeless = _Host(cpus=12)
    _host_side("web 1", 7, {"vcpu.current": 2, "balloon.current": 655360}, nodeless)
    assert (nodeless.reading(5.0).memory_bytes, nodeless.reading(5.0).vm_memory) == (None, None)
