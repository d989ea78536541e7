"""The test guest's PSI lines, read on the host: ``shared.qemu.vm.parse_psi`` and ``LineSplitter`` (pure), the
test guest's sources' ``LogFollower`` (only what a control log gained, from where it ended) and ``PsiLogWatch.look``
over real files. The guest's side (shared/qemu/init.sh) on a real guest: tests/system/test_qemu_urgent.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.collector.sources.psi_lines import LogFollower, PsiLogWatch
from shared.qemu.vm import LineSplitter, PsiReport, latest_running, parse_psi

PSI_LINE = "PSI cpu stall_us=23000 window_ms=100"


def test_a_psi_line_is_read_and_nothing_else_is_one() -> None:
    assert parse_psi(PSI_LINE) == PsiReport(stall_us=23000, window_ms=100)
    assert parse_psi("STAT up=1.00 online=0 running=1 cpu0=3 hz=100") is None
    assert parse_psi("GOT PSI cpu stall_us=1 window_ms=100") is None  # a command echoed is not the guest's word
    assert parse_psi("OUT PSI cpu stall_us=1 window_ms=100") is None
    assert parse_psi("PSI cpu stall_us=12") is None  # cut short
    assert parse_psi("PSI cpu stall_us=x window_ms=100") is None
    assert parse_psi("PSI memory stall_us=1 window_ms=100") is None


def test_a_psi_line_may_say_the_runnable_tasks() -> None:
    assert parse_psi(PSI_LINE + " running=3") == PsiReport(stall_us=23000, window_ms=100, running=3)
    assert parse_psi(PSI_LINE + " running=x") is None
    assert parse_psi(PSI_LINE).running is None  # type: ignore[union-attr]


def test_the_runnable_tasks_are_the_latest_lines_that_say_them() -> None:
    stat = "STAT up=1.00 online=0 running=1 cpu0=3 hz=100"
    # a PSI line said after the STAT line is newer: the load it reports is not in the STAT line yet
    assert latest_running([stat, "GOT busy 2", PSI_LINE + " running=3"]) == 3
    assert latest_running([PSI_LINE + " running=3", stat]) == 1
    assert latest_running([stat, PSI_LINE]) == 1  # a PSI line that does not say them does not count
    assert latest_running(["GOT busy 2"]) is None


def test_the_splitter_gives_whole_lines_however_the_stream_is_cut() -> None:
    lines = LineSplitter()
    assert lines.feed(b"STAT up=1 ") == []
    assert lines.feed(b"online=0\nPSI cpu stall") == ["STAT up=1 online=0"]
    assert lines.feed(b"_us=23000 window_ms=100\n") == [PSI_LINE]


def test_a_splitter_that_starts_mid_line_drops_the_head_it_joined_in() -> None:
    lines = LineSplitter(mid_line=True)
    # the tail of a line that ended in a PSI line's words is not a PSI line
    assert lines.feed(b"xx PSI cpu stall_us=5 window_ms=100") == []
    assert lines.feed(b"\n" + PSI_LINE.encode() + b"\n") == [PSI_LINE]


def test_the_follower_reads_only_what_the_log_gained_since_it_began(tmp_path: Path) -> None:
    log = tmp_path / "ctl.log"
    follower = LogFollower(log)  # no log yet: the guest has not started
    log.write_bytes(b"INIT-READY\nSTAT up=1")
    assert follower.new_lines() == ["INIT-READY"]
    with log.open("ab") as f:
        f.write(b" online=0\n" + PSI_LINE.encode() + b"\n")
    assert follower.new_lines() == ["STAT up=1 online=0", PSI_LINE]
    assert follower.new_lines() == []

    late = LogFollower(log)  # made on a log that already holds a PSI line: that one is old news
    assert late.new_lines() == []
    with log.open("ab") as f:
        f.write(b"STAT up=2\n")
    assert late.new_lines() == ["STAT up=2"]

    log.write_bytes(PSI_LINE.encode() + b"\n")  # shorter: the guest booted again, QEMU began a new log
    assert late.new_lines() == [PSI_LINE]


def test_a_follower_that_joins_a_log_mid_line_waits_for_the_next_line(tmp_path: Path) -> None:
    log = tmp_path / "ctl.log"
    log.write_bytes(b"STAT up=1 onl")
    follower = LogFollower(log)
    with log.open("ab") as f:
        f.write(b"ine=0\n" + PSI_LINE.encode() + b"\n")
    assert follower.new_lines() == [PSI_LINE]


async def test_the_watch_says_a_psi_line_once_and_only_for_the_guests_it_is_given(tmp_path: Path) -> None:
    for name in ("vm-a", "vm-b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ctl.log").write_bytes(PSI_LINE.encode() + b"\n")  # said before the watch began
    guests = ["vm-a"]
    # The watch's own task looks only when this test awaits, which it does not before close: each look is the test's.
    watch = PsiLogWatch(lambda: {name: tmp_path / name / "ctl.log" for name in guests}, lambda: None)
    try:
        assert not watch.look()
        with (tmp_path / "vm-b" / "ctl.log").open("ab") as f:
            f.write(PSI_LINE.encode() + b"\n")
        assert not watch.look()  # vm-b is not among the guests the source read
        with (tmp_path / "vm-a" / "ctl.log").open("ab") as f:
            f.write(b"STAT up=3 online=0 running=3 cpu0=1 hz=100\n")
        assert not watch.look()
        with (tmp_path / "vm-a" / "ctl.log").open("ab") as f:
            f.write(PSI_LINE.encode() + b"\r\n")  # as the serial port may end it
        assert watch.look()
        assert not watch.look()  # said once
        guests.append("vm-b")
        assert not watch.look()  # followed from where its log ended when it joined
        assert watch.window_s == pytest.approx(0.5)  # the guest says one at most every 500 ms
    finally:
        watch.close()
