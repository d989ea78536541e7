"""The QEMU guest's memory, in pure code: the modules' load order read from their ELF ``.modinfo``, QEMU's memory
arguments and the layouts refused, the STAT line's memory fields (old lines still parse), old state files, the
``--memory``/``--max-memory`` type and the balloon's floor."""

from __future__ import annotations

import argparse
import struct

import msgspec
import pytest

from hotplug.cli.common import mebibytes
from services.actuator.drivers.qemu_memory import balloon_floor
from shared.qemu.memory import MemoryLayoutError, memory_options
from shared.qemu.modules import ModuleError, depends, load_order, modinfo
from shared.qemu.vm import VmState, parse_stat
from shared.units import MIB


def elf_with_sections(sections: dict[str, bytes]) -> bytes:
    """A minimal little-endian ELF64 file holding ``sections`` (and the section-name table), as a .ko has them."""
    names = b"\0" + b"".join(name.encode() + b"\0" for name in [*sections, ".shstrtab"])
    bodies = [*sections.values(), names]
    offsets, data = [], b""
    for body in bodies:
        offsets.append(64 + len(data))
        data += body
    shoff = 64 + len(data)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, len(bodies) + 1, len(bodies))
    table = bytes(64)  # the null section
    name_at = 1
    for (name, body), offset in zip([*sections.items(), (".shstrtab", names)], offsets, strict=True):
        table += struct.pack("<IIQQQQIIQQ", name_at, 1, 0, 0, offset, len(body), 0, 0, 1, 0)
        name_at += len(name) + 1
    return bytes(header) + data + table


def test_modinfo_is_read_from_the_modules_own_elf_section() -> None:
    info = b"license=GPL\0depends=virtio_ring,virtio\0vermagic=6.1.0-57-cloud-amd64 SMP preempt\0name=virtio_mem\0"
    ko = elf_with_sections({".text": b"\x90" * 16, ".modinfo": info})
    got = modinfo(ko)
    assert got["vermagic"] == "6.1.0-57-cloud-amd64 SMP preempt"
    assert depends(got) == ["virtio_ring", "virtio"]
    assert depends(modinfo(elf_with_sections({".modinfo": b"depends=\0"}))) == []
    with pytest.raises(ModuleError, match=r"no \.modinfo"):
        modinfo(elf_with_sections({".text": b""}))
    with pytest.raises(ModuleError, match="ELF"):
        modinfo(b"#!/bin/sh\n" + bytes(64))


def test_modules_load_after_what_they_depend_on() -> None:
    # as read from 6.1.0-57: virtio itself needs virtio_ring, so a fixed order of names would not load
    deps = {
        "virtio": ["virtio_ring"],
        "virtio_ring": [],
        "virtio_pci_modern_dev": [],
        "virtio_pci_legacy_dev": [],
        "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"],
        "virtio_balloon": ["virtio", "virtio_ring"],
        "virtio_mem": ["virtio", "virtio_ring"],
    }
    order = load_order(["virtio_pci", "virtio_balloon", "virtio_mem"], deps)
    assert order == [
        "virtio_ring",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio",
        "virtio_pci",
        "virtio_balloon",
        "virtio_mem",
    ]
    with pytest.raises(ModuleError, match="virtio_mem needs module virtio_x"):
        load_order(["virtio_mem"], {"virtio_mem": ["virtio_x"]})
    with pytest.raises(ModuleError, match="cycle"):
        load_order(["a"], {"a": ["b"], "b": ["a"]})


def test_memory_arguments_follow_the_recipe() -> None:
    assert memory_options(256, None, 0, False) == ["-m", "256M"]  # as before: no device unless asked
    assert memory_options(512, 2560, 0, True) == [
        "-m",
        "512M,maxmem=2560M",
        "-object",
        "memory-backend-ram,id=vmem0mem,size=2048M",
        "-device",
        "virtio-mem-pci,id=vmem0,memdev=vmem0mem,node=0,requested-size=0M",
        "-device",
        "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=on",
    ]
    assert memory_options(512, 1024, 128, False)[-1].endswith("requested-size=128M")


@pytest.mark.parametrize(
    ("memory", "maximum", "plugged", "match"),
    [
        (32, None, 0, "at least 64 MiB"),
        (512, 512, 0, "must exceed the boot memory"),
        (512, 513, 0, "multiple of 2 MiB"),
        (512, 1024, 513, "from 0 to 512 MiB"),
        (512, 1024, 3, "multiple of 2 MiB"),
        (512, None, 128, "needs a virtio-mem device"),
    ],
)
def test_layouts_qemu_would_refuse_are_refused_in_plain_words(
    memory: int, maximum: int | None, plugged: int, match: str
) -> None:
    with pytest.raises(MemoryLayoutError, match=match):
        memory_options(memory, maximum, plugged, False)


def test_stat_lines_carry_the_guests_memory_and_old_ones_still_parse() -> None:
    line = (
        "STAT up=5.26 online=0 running=1 cpu0=319 hz=100 mem_total=406228 mem_avail=378320 swap_in=0 swap_out=3 "
        "psi_mem=1.25"
    )
    stat = parse_stat(line)
    assert stat is not None
    assert (stat.mem_total_kb, stat.mem_available_kb, stat.swap_in, stat.swap_out) == (406228, 378320, 0, 3)
    assert stat.psi_memory_some_avg10 == 1.25
    assert (stat.mem_total_bytes, stat.mem_available_bytes) == (406228 * 1024, 378320 * 1024)
    old = parse_stat("STAT up=12.07 online=0-1 running=3 cpu0=315 cpu1=185 hz=100")
    assert old is not None and old.online == (0, 1)
    assert (old.mem_total_kb, old.mem_available_bytes, old.psi_memory_some_avg10) == (None, None, None)
    no_psi = parse_stat(line.rsplit(" ", 1)[0])
    assert no_psi is not None and no_psi.psi_memory_some_avg10 is None and no_psi.mem_total_kb == 406228
    assert parse_stat("STAT up=1 online=0 running=1 mem_total=lots") is None


def test_a_state_file_written_before_memory_was_recorded_still_loads() -> None:
    state = msgspec.json.decode(
        b'{"name":"a","pid":1,"max_vcpus":2,"boot_vcpus":1,"maxcpus":32,"adds":1,"started_at":3.0}', type=VmState
    )
    assert (state.memory_bytes, state.vmem_bytes, state.balloon, state.balloon_target_bytes) == (0, 0, False, 0)


def test_memory_flags_take_sizes_in_whole_mib() -> None:
    assert [mebibytes(t) for t in ("512", "1GiB", "1.5G", "2048MiB")] == [512, 1024, 1536, 2048]
    for bad, match in (("1.5KiB", "whole number of MiB"), ("12parsecs", "unknown unit"), ("0", "no memory")):
        with pytest.raises(argparse.ArgumentTypeError, match=match):
            mebibytes(bad)


def test_the_balloon_keeps_half_of_boot_ram_and_never_under_128_mib() -> None:
    assert balloon_floor(512 * MIB) == 256 * MIB
    assert balloon_floor(200 * MIB) == 128 * MIB
    assert balloon_floor(1001 * MIB + 5) == 501 * MIB  # rounded up to the balloon's 1 MiB step


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--memory", "1.5KiB"], "argument --memory: '1.5KiB' is not a whole number of MiB"),
        (["--max-memory", "2 parsecs"], "argument --max-memory: '2 parsecs': unknown unit 'parsecs'"),
    ],
)
def test_qemu_start_refuses_a_size_it_cannot_read_as_argparse_does(
    flags: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from hotplug.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["qemu", "start", "g", "--max-vcpus", "2", *flags])
    assert info.value.code == 2
    assert error in capsys.readouterr().err


def test_qemu_start_takes_memory_with_units_and_adds_no_device_unless_asked() -> None:
    from hotplug.cli import build_parser

    plain = build_parser().parse_args(["qemu", "start", "g", "--max-vcpus", "2"])
    assert (plain.memory, plain.max_memory, plain.balloon) == (256, None, False)
    sized = build_parser().parse_args(
        ["qemu", "start", "g", "--max-vcpus", "2", "--memory", "1GiB", "--max-memory", "4GiB", "--balloon"]
    )
    assert (sized.memory, sized.max_memory, sized.balloon) == (1024, 4096, True)
