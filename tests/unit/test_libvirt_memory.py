"""libvirt guest memory without a daemon: the live XML's memory parts read into data (shapes as libvirt 11.3 wrote
them, shared/docs/memory.md §5), the virtio-mem update element, libvirt's memory errors mapped to codes, the
balloon statistics for the collector, the test guest's XML with and without memory, and the driver's plan of
calls for each kind of request."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hotplug import cli
from services.actuator.drivers.base import DriverError
from services.actuator.drivers.libvirt_memory import LiveMemory, memory_view, plan_resize
from shared.libvirt.domain import Settings
from shared.libvirt.guest import check_memory, domain_xml
from shared.libvirt.memory import MemoryXmlError, classify_memory, parse_memory, to_kib, with_requested
from shared.libvirt.memstats import MemoryStats, from_domain_stats, from_memory_stats
from shared.messages import ErrorCode
from shared.qemu.image import GuestImage
from shared.units import GIB, KIB, MIB

# A running domain's live XML (cut to the memory parts): 512 MiB boot RAM, a 2 GiB device, 128 MiB plugged of
# 1 GiB requested (the guest is still plugging, or libvirt's <current> lags).
LIVE = """<domain type='qemu' id='4'>
  <name>mem 1</name>
  <maxMemory slots='4' unit='KiB'>2621440</maxMemory>
  <memory unit='KiB'>2621440</memory>
  <currentMemory unit='KiB'>655360</currentMemory>
  <vcpu placement='static' current='1'>32</vcpu>
  <devices>
    <memballoon model='virtio' autodeflate='on' freePageReporting='on'>
      <stats period='2'/>
      <alias name='balloon0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </memballoon>
    <memory model='virtio-mem'>
      <target>
        <size unit='KiB'>2097152</size>
        <node>0</node>
        <block unit='KiB'>2048</block>
        <requested unit='KiB'>1048576</requested>
        <current unit='KiB'>131072</current>
        <address base='0x100000000'/>
      </target>
      <alias name='virtiomem0'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </memory>
  </devices>
</domain>"""

PLAIN = """<domain type='qemu' id='5'><name>plain</name><memory unit='MiB'>256</memory>
  <devices><memballoon model='none'/></devices></domain>"""

BALLOON_ONLY = """<domain type='kvm' id='6'><name>b</name><memory unit='GiB'>1</memory>
  <currentMemory unit='KiB'>786432</currentMemory><devices><memballoon model='virtio'/></devices></domain>"""


def test_the_live_layout_is_read_with_boot_ram_device_and_balloon() -> None:
    layout = parse_memory(LIVE)
    assert (layout.max_memory_kib, layout.memory_kib, layout.current_memory_kib) == (2621440, 2621440, 655360)
    assert layout.boot_kib == 524288  # <memory> counts the device in
    assert (layout.balloon, layout.has_balloon) == ("virtio", True)
    device = layout.virtio_mem
    assert device is not None
    assert (device.alias, device.size_kib, device.block_kib) == ("virtiomem0", 2097152, 2048)
    assert (device.requested_kib, device.current_kib) == (1048576, 131072)
    assert device.element.startswith('<memory model="virtio-mem">') and device.element.endswith("</memory>")


def test_a_domain_without_memory_devices_and_other_units() -> None:
    plain = parse_memory(PLAIN)
    assert (plain.memory_kib, plain.boot_kib, plain.current_memory_kib) == (262144, 262144, 262144)
    assert (plain.has_balloon, plain.virtio_mem, plain.max_memory_kib) == (False, None, None)
    # no <memballoon> at all: libvirt adds a virtio one, so there is a balloon
    assert parse_memory("<domain><memory>1024</memory><devices/></domain>").has_balloon
    assert parse_memory(BALLOON_ONLY).boot_kib == 1048576


@pytest.mark.parametrize(
    ("xml", "kib"),
    [
        ("<memory unit='b'>2048</memory>", 2),
        ("<memory unit='KB'>1024</memory>", 1000),
        ("<memory>512</memory>", 512),
        ("<memory unit='M'>3</memory>", 3072),
        ("<memory unit='GB'>1</memory>", 976562),
        ("<memory unit='TiB'>1</memory>", 1024**3),
    ],
)
def test_sizes_in_every_libvirt_unit(xml: str, kib: int) -> None:
    assert to_kib(ET.fromstring(xml)) == kib


@pytest.mark.parametrize("xml", ["<memory unit='parsec'>1</memory>", "<memory unit='KiB'>1.5</memory>"])
def test_a_size_libvirt_would_not_write_is_an_error(xml: str) -> None:
    with pytest.raises(MemoryXmlError):
        to_kib(ET.fromstring(xml))


def test_the_update_element_is_the_whole_live_element_with_only_requested_changed() -> None:
    device = parse_memory(LIVE).virtio_mem
    assert device is not None
    updated = ET.fromstring(with_requested(device.element, 262144))
    original = ET.fromstring(device.element)
    assert updated.findtext("target/requested") == "262144"
    assert updated.find("target/requested").get("unit") == "KiB"  # type: ignore[union-attr]
    # everything libvirt matches the device by is kept: alias, addresses, size, block, node, current
    for path in ("alias", "address", "target/address", "target/size", "target/block", "target/node"):
        assert ET.tostring(updated.find(path)) == ET.tostring(original.find(path)), path  # type: ignore[arg-type]
    assert updated.findtext("target/current") == "131072"
    # a device written without <requested> gets one
    bare = "<memory model='virtio-mem'><target><size>2048</size></target></memory>"
    assert ET.fromstring(with_requested(bare, 2048)).findtext("target/requested") == "2048"


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (35, "unsupported configuration: requested size must be an integer multiple of block size", "out-of-bounds"),
        (
            35,
            "unsupported configuration: requested size must be smaller than or equal to @size (2097152KiB)",
            "out-of-bounds",
        ),
        (8, "invalid argument: cannot set memory higher than max memory", "out-of-bounds"),
        (8, "memory in virDomainSetMemoryFlags must not be zero", "out-of-bounds"),
        (
            35,
            "unsupported configuration: cannot use/hotplug a memory device when domain 'maxMemory' is not defined",
            "hotplug-disabled",
        ),
        (67, "unsupported configuration: memory 'virtiomem0' not found", "unknown"),
        (42, "Domain not found: no domain with matching name 'x'", "vm-not-found"),
        (55, "Requested operation is not valid: domain is not running", "vm-not-running"),
    ],
)
def test_libvirts_memory_errors_have_their_codes(code: int, message: str, expected: str) -> None:
    assert classify_memory(code, message) == ErrorCode(expected)


def test_balloon_stats_from_both_calls_and_absent_figures() -> None:
    domain = from_domain_stats(
        {
            "balloon.current": 655360,
            "balloon.maximum": 2621440,
            "balloon.available": 600000,
            "balloon.usable": 400000,
            "balloon.swap_in": 0,
            "balloon.rss": 330000,
        }
    )
    assert domain == MemoryStats(655360 * KIB, 600000 * KIB, 400000 * KIB, 0)
    assert domain.used_bytes == 200000 * KIB
    # before the guest's driver reports: actual only; a figure the guest does not send reads 2^64 − 1
    early = from_memory_stats({"actual": 524288, "rss": 320308, "swap_in": 2**64 - 1, "usable": "x"})
    assert early == MemoryStats(524288 * KIB, None, None, None)
    assert early.used_bytes is None
    assert from_domain_stats({}) == MemoryStats(None, None, None, None)


def _image(tmp_path: Path) -> GuestImage:
    return GuestImage(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd")


def test_the_test_guest_gets_memory_devices_only_when_a_maximum_is_asked(tmp_path: Path) -> None:
    before = domain_xml("g", _image(tmp_path), tmp_path, max_vcpus=2, vcpus=1, memory_mb=256)
    root = ET.fromstring(before)
    assert root.find("maxMemory") is None and root.find("devices/memory") is None
    assert root.find("devices/memballoon").get("model") == "none"  # type: ignore[union-attr]
    assert "memhp_default_state" not in (root.findtext("os/cmdline") or "")
    xml = domain_xml("g", _image(tmp_path), tmp_path, max_vcpus=2, vcpus=1, memory_mb=512, max_memory_mb=2560)
    root = ET.fromstring(xml)
    assert "memhp_default_state=online_movable" in (root.findtext("os/cmdline") or "")
    balloon = root.find("devices/memballoon")
    assert balloon is not None and balloon.attrib == {
        "model": "virtio",
        "autodeflate": "on",
        "freePageReporting": "on",
    }
    assert balloon.find("stats").get("period") == "2"  # type: ignore[union-attr]
    layout = parse_memory(xml)
    assert (layout.max_memory_kib, layout.memory_kib, layout.current_memory_kib) == (2560 * 1024,) * 2 + (512 * 1024,)
    assert layout.boot_kib == 512 * 1024
    device = layout.virtio_mem
    assert device is not None
    assert (device.size_kib, device.block_kib, device.requested_kib, device.current_kib) == (2048 * 1024, 2048, 0, None)


@pytest.mark.parametrize(("boot", "maximum"), [(512, 512), (512, 256), (512, 1025)])
def test_a_maximum_libvirt_would_refuse_is_refused_first(boot: int, maximum: int) -> None:
    with pytest.raises(ValueError, match="maximum"):
        check_memory(boot, maximum)
    assert check_memory(512, None) == 0


def _live(xml: str = LIVE, actual_kib: int | None = 524288, target: int | None = None, **stats: int) -> LiveMemory:
    return LiveMemory(
        layout=parse_memory(xml),
        stats=MemoryStats(actual_kib * KIB if actual_kib is not None else None, stats.get("total"), None, None),
        settings=Settings(),
        balloon_target_bytes=target,
    )


def test_the_view_reports_requested_against_size_and_the_limits() -> None:
    view = memory_view("mem 1", _live(total=700 * MIB))
    assert view.size_bytes == 512 * MIB + 128 * MIB  # balloon actual + virtio-mem <current>
    assert view.requested_bytes == 512 * MIB + 1 * GIB
    assert (view.min_bytes, view.max_bytes, view.step_bytes) == (256 * MIB, 2560 * MIB, 2 * MIB)
    assert (view.method, view.guest_total_bytes) == ("virtio-mem+balloon", 700 * MIB)
    trimmed = memory_view("mem 1", _live(actual_kib=400 * 1024, target=384 * MIB))
    assert trimmed.requested_bytes == 384 * MIB + 1 * GIB  # the balloon's target, not its actual on the way
    balloon = memory_view("b", _live(BALLOON_ONLY, actual_kib=786432))
    assert (balloon.method, balloon.size_bytes, balloon.max_bytes, balloon.step_bytes) == (
        "balloon",
        768 * MIB,
        GIB,
        MIB,
    )


def test_a_domain_without_a_memory_device_is_hotplug_disabled() -> None:
    with pytest.raises(DriverError) as caught:
        memory_view("plain", _live(PLAIN))
    assert caught.value.code is ErrorCode.HOTPLUG_DISABLED
    with pytest.raises(DriverError) as caught:
        plan_resize("plain", _live(PLAIN), 512 * MIB)
    assert caught.value.code is ErrorCode.HOTPLUG_DISABLED


@pytest.mark.parametrize(
    ("live", "target", "steps"),
    [
        # grow: the device to target − boot; the balloon first let out if it had trimmed boot RAM
        (_live(), 2 * GIB, (("device", 1536 * 1024),)),
        (_live(actual_kib=400 * 1024), 2 * GIB, (("balloon", 512 * 1024), ("device", 1536 * 1024))),
        (_live(target=384 * MIB), 1024 * MIB, (("balloon", 512 * 1024), ("device", 512 * 1024))),
        # what is already requested is not sent again (QEMU ignores a repeated value anyway)
        (_live(), 1536 * MIB, ()),
        (_live(actual_kib=400 * 1024), 1536 * MIB, (("balloon", 512 * 1024),)),
        # within boot RAM: the device to 0 first, then the balloon trims
        (_live(), 384 * MIB, (("device", 0), ("balloon", 384 * 1024))),
        (_live(), 512 * MIB, (("device", 0),)),
        # past the device, or off its block: sent to libvirt alone, whose refusal says which
        (_live(), 4 * GIB, (("device", (4096 - 512) * 1024),)),
        (_live(), 515 * MIB, (("device", 3 * 1024),)),
        # balloon only: past boot RAM goes to libvirt, which refuses it
        (_live(BALLOON_ONLY, actual_kib=786432), 2 * GIB, (("balloon", 2 * 1024 * 1024),)),
        (_live(BALLOON_ONLY, actual_kib=786432), 640 * MIB, (("balloon", 640 * 1024),)),
    ],
)
def test_each_request_becomes_its_calls_in_order(live: LiveMemory, target: int, steps: tuple[object, ...]) -> None:
    assert plan_resize("vm", live, target).steps == steps


@pytest.mark.parametrize(
    ("live", "target", "needle"),
    [
        (_live(), 255 * MIB, "the balloon's floor"),
        (_live(), 300 * MIB + 1, "whole number of MiB"),
        (_live(LIVE.replace("model='virtio' autodeflate", "model='none' autodeflate")), 384 * MIB, "boot RAM"),
    ],
)
def test_requests_under_the_floor_are_refused_before_any_call(live: LiveMemory, target: int, needle: str) -> None:
    with pytest.raises(DriverError) as caught:
        plan_resize("vm", live, target)
    assert caught.value.code is ErrorCode.OUT_OF_BOUNDS
    assert needle in caught.value.message


@pytest.mark.parametrize(("text", "mib"), [("2GiB", 2048), ("1536", 1536), ("1.5G", 1536), (None, None)])
def test_libvirt_start_takes_a_maximum_memory_as_people_write_it(text: str | None, mib: int | None) -> None:
    extra = ["--max-memory", text] if text is not None else []
    args = cli.build_parser().parse_args(["libvirt", "start", "g", "--max-vcpus", "2", *extra])
    assert (args.max_memory, args.memory) == (mib, 256)


@pytest.mark.parametrize("text", ["1.5MiB", "lots", "0"])
def test_libvirt_start_refuses_a_maximum_that_is_no_whole_mib(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["libvirt", "start", "g", "--max-vcpus", "2", "--max-memory", text])
    assert "--max-memory" in capsys.readouterr().err
