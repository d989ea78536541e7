"""Memory sizes as people write them: each form read, each bad one refused with its reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.units import GIB, KIB, MAX_MEMORY_BYTES, MIB, SizeError, align_down, align_up, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * MIB),
        ("8GiB", 8 * GIB),
        ("8 gib", 8 * GIB),
        ("1.5G", 3 * GIB // 2),
        ("4096", 4096 * MIB),
        (4096, 4096 * MIB),
        ("2048K", 2048 * KIB),
        ("1GB", 1000**3),
        ("300B", 300),
        (" 1 TiB ", 1024 * GIB),
    ],
)
def test_sizes_are_read(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0", "more than 0"),
        ("0GiB", "more than 0"),
        ("-1GiB", "not a memory size"),
        ("lots", "not a memory size"),
        ("", "not a memory size"),
        ("8 GiBs", "unknown unit"),
        ("8b", "unknown unit"),
        ("nanGiB", "not a memory size"),
        ("100000TiB", "a unit missed or doubled"),
        (True, "not a memory size"),
    ],
)
def test_bad_sizes_say_why(text: str, says: str) -> None:
    with pytest.raises(SizeError, match=says):
        parse_size(text)


def test_zero_only_when_allowed() -> None:
    assert parse_size("0", allow_zero=True) == 0


@given(st.integers(min_value=1, max_value=MAX_MEMORY_BYTES))
def test_format_reads_back_close(size: int) -> None:
    back = parse_size(format_size(size))
    assert abs(back - size) <= max(size // 100, 1)


def test_alignment_to_a_block() -> None:
    block = 2 * MIB
    assert align_down(5 * MIB, block) == 4 * MIB
    assert align_up(5 * MIB, block) == 6 * MIB
    assert align_up(4 * MIB, block) == 4 * MIB
    assert align_down(7, 0) == 7
