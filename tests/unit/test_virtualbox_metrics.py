"""VirtualBox's guest memory metrics without VirtualBox: ``metrics query`` output read into the newest kB figures
(whatever the VM's name holds), and those figures with the driver's sizes made into the collector's counters."""

from __future__ import annotations

from services.collector.sources.base import MemoryCounters
from services.collector.sources.guest_memory import virtualbox_counters
from shared.units import MIB
from shared.virtualbox import (
    GUEST_RAM_BALLOON,
    GUEST_RAM_CACHE,
    GUEST_RAM_FREE,
    GUEST_RAM_METRICS,
    GUEST_RAM_TOTAL,
    VmInfo,
    balloon_sizes,
    parse_metrics_query,
)

HEADER = (
    "Object          Metric                                   Values\n"
    "--------------- ---------------------------------------- --------------------------------------------\n"
)


def line(vm: str, metric: str, *values: str) -> str:
    return f"{vm:<15} {metric:<40} " + ", ".join(values) + "\n"


def test_the_newest_value_of_each_metric_is_read_in_kb() -> None:
    text = HEADER + "".join(
        [
            line("web1", GUEST_RAM_TOTAL, "2097152 kB"),
            line("web1", GUEST_RAM_FREE, "900000 kB", "800000 kB", "700000 kB"),  # oldest first
            line("web1", GUEST_RAM_BALLOON, "0 kB"),
            line("web1", "Guest/RAM/Usage/Shared", "0 kB"),
            line("web1", GUEST_RAM_CACHE, "131072 kB"),
        ]
    )
    assert parse_metrics_query(text, GUEST_RAM_METRICS) == {
        GUEST_RAM_TOTAL: 2097152,
        GUEST_RAM_FREE: 700000,
        GUEST_RAM_BALLOON: 0,
        GUEST_RAM_CACHE: 131072,
    }


def test_a_name_with_spaces_or_a_metrics_name_overflows_its_column_and_is_still_read() -> None:
    long_name = "a VM whose name runs past fifteen characters"
    text = HEADER + line(long_name, GUEST_RAM_TOTAL, "1024 kB") + line(GUEST_RAM_FREE, GUEST_RAM_FREE, "512 kB")
    assert parse_metrics_query(text, GUEST_RAM_METRICS) == {GUEST_RAM_TOTAL: 1024, GUEST_RAM_FREE: 512}


def test_metrics_without_values_of_another_unit_or_aggregates_are_left_out() -> None:
    text = HEADER + "".join(
        [
            line("web1", GUEST_RAM_TOTAL),  # no data yet: the line, no values
            line("web1", GUEST_RAM_FREE, "12.50%"),
            line("web1", f"{GUEST_RAM_CACHE}:avg", "100 kB"),
        ]
    )
    assert parse_metrics_query(text, GUEST_RAM_METRICS) == {}
    assert parse_metrics_query(HEADER, GUEST_RAM_METRICS) == {}  # a VM not running: the header alone
    assert parse_metrics_query("", GUEST_RAM_METRICS) == {}


def info(memory_mb: int, balloon_mb: int) -> VmInfo:
    return VmInfo("web1", "u", "running", 1, False, (0,), "/x.vbox", memory_mb=memory_mb, balloon_mb=balloon_mb)


def test_the_driver_sizes_are_ram_less_the_configured_balloon() -> None:
    sizes = balloon_sizes(info(2048, 512))
    assert (sizes.size_bytes, sizes.min_bytes, sizes.max_bytes) == (1536 * MIB, 512 * MIB, 2048 * MIB)


def test_used_is_total_less_free_and_balloon_as_free_already_holds_the_cache() -> None:
    guest = {GUEST_RAM_TOTAL: 2048 * 1024, GUEST_RAM_FREE: 836 * 1024, GUEST_RAM_BALLOON: 512 * 1024}
    got = virtualbox_counters(balloon_sizes(info(2048, 512)), guest | {GUEST_RAM_CACHE: 300 * 1024})
    assert got == MemoryCounters(
        size_bytes=1536 * MIB,
        min_bytes=512 * MIB,
        max_bytes=2048 * MIB,
        used_bytes=700 * MIB,
        available_bytes=836 * MIB,
    )


def test_used_stays_within_zero_and_the_total() -> None:
    sizes = balloon_sizes(info(1024, 0))
    stale = {GUEST_RAM_TOTAL: 1000, GUEST_RAM_FREE: 900, GUEST_RAM_BALLOON: 400}  # figures from two moments
    assert (got := virtualbox_counters(sizes, stale)) is not None and got.used_bytes == 0
    odd = {GUEST_RAM_TOTAL: 1000, GUEST_RAM_FREE: 0, GUEST_RAM_BALLOON: 0}
    assert (got := virtualbox_counters(sizes, odd)) is not None and got.used_bytes == 1000 * 1024
    no_balloon = virtualbox_counters(sizes, {GUEST_RAM_TOTAL: 1000, GUEST_RAM_FREE: 400})
    assert no_balloon is not None and no_balloon.used_bytes == 600 * 1024


def test_without_the_guests_total_or_free_there_is_no_memory() -> None:
    sizes = balloon_sizes(info(1024, 0))
    assert virtualbox_counters(sizes, {}) is None
    assert virtualbox_counters(sizes, {GUEST_RAM_TOTAL: 1000}) is None
    assert virtualbox_counters(sizes, {GUEST_RAM_FREE: 1000}) is None
