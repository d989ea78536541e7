"""The acknowledgement the host waits for on the test guest's control channel (``shared.qemu.vm.Acknowledgement``):
only the whole line ``GOT <command>`` counts, however the stream is cut. The channel itself, against a fake QEMU:
``tests/component/test_guest_channel.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.qemu.vm import Acknowledgement, send_line


def test_a_multi_line_command_is_refused() -> None:
    with pytest.raises(ValueError, match="one line"):
        send_line(Path("/nonexistent"), "echo a\necho b")


def test_the_acknowledgement_counts_only_whole_lines_however_the_stream_is_cut() -> None:
    heard = Acknowledgement("  cat /sys/devices/system/cpu/online ")  # the guest's read drops the outer blanks
    # the connection opened in the middle of a STAT line; the GOT comes in pieces
    assert not heard.feed(b"=0 swap_out=0\nGOT cat /sys/devices/sys")
    assert not heard.feed(b"tem/cpu/online")  # not yet a whole line
    assert heard.feed(b"\r\nOUT 0\n")
    assert not Acknowledgement("echo a").feed(b"GOT echo ab\nGOT cho a\n")
