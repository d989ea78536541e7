"""A host's memory capacity from its ``[[host]]`` rule (shared.pool.memory_capacity): ``(memory - reserve_memory) ×
memory_overcommit`` floored to bytes, the rule's sizes read as people write them, and a bad value refused at the
rule with the key it is in."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from shared.config.load import ConfigError, parse
from shared.config.schema import HostRule
from shared.pool import memory_capacity, memory_capacity_of
from shared.units import GIB, MIB

FILE = Path("hotplug.toml")


def test_memory_capacity_is_memory_less_reserve_times_overcommit_floored_to_bytes() -> None:
    assert memory_capacity_of(64 * GIB, 0, 1.0) == 64 * GIB
    assert memory_capacity_of(64 * GIB, 4 * GIB, 1.0) == 60 * GIB
    assert memory_capacity_of(64 * GIB, 4 * GIB, 1.5) == 90 * GIB
    assert memory_capacity_of(3, 0, 1.5) == 4  # 4.5 bytes: floored, never rounded up
    assert memory_capacity_of(GIB, 2 * GIB, 1.0) == 0  # never negative


def test_the_rule_sets_memory_reserve_and_overcommit_and_a_host_without_one_keeps_its_source() -> None:
    rules = [
        HostRule(match="big-*", memory="512GiB", reserve_memory="16GiB", memory_overcommit=1.25),
        HostRule(match="lab", reserve_memory=2048),  # a bare number is MiB
    ]
    big = memory_capacity(rules, "big-1", 64 * GIB)
    assert big is not None
    assert (big.memory_bytes, big.reserve_bytes, big.overcommit, big.rule_index) == (512 * GIB, 16 * GIB, 1.25, 0)
    assert big.capacity_bytes == 620 * GIB
    lab = memory_capacity(rules, "lab", 32 * GIB)
    assert lab is not None and (lab.capacity_bytes, lab.rule_index) == (30 * GIB, 1)
    plain = memory_capacity(rules, "other", 8 * GIB + 3 * MIB)
    assert plain is not None and (plain.capacity_bytes, plain.overcommit, plain.rule_index) == (
        8 * GIB + 3 * MIB,
        1.0,
        None,
    )


def test_a_host_whose_memory_nobody_knows_is_not_arbitrated() -> None:
    assert memory_capacity([], "h", None) is None
    # the rule's size stands in for a source that knows none
    named = memory_capacity([HostRule(match="h", memory="8GiB")], "h", None)
    assert named is not None and named.capacity_bytes == 8 * GIB


def test_a_reserve_of_nothing_is_no_reserve() -> None:
    capacity = memory_capacity([HostRule(match="*", reserve_memory="0GiB")], "h", 4 * GIB)
    assert capacity is not None and (capacity.reserve_bytes, capacity.capacity_bytes) == (0, 4 * GIB)


def test_a_vcpu_rule_leaves_memory_alone() -> None:
    rule = HostRule(match="*", cpus=8, overcommit=4)
    assert (rule.memory_bytes, rule.reserve_memory_bytes, rule.memory_overcommit) == (None, None, 1.0)
    capacity = memory_capacity([rule], "h", 16 * GIB)
    assert capacity is not None and capacity.capacity_bytes == 16 * GIB


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"match": "*", "memory": 0}, "memory: '0' is no memory"),
        ({"match": "*", "memory": "-8GiB"}, "memory: '-8GiB' is not a memory size"),
        ({"match": "*", "memory": "lots"}, "memory: 'lots' is not a memory size"),
        ({"match": "*", "memory": "8 parsecs"}, "unknown unit"),
        ({"match": "*", "memory": "900TiB"}, "a unit missed or doubled"),
        ({"match": "*", "reserve_memory": "-1GiB"}, "reserve_memory: '-1GiB' is not a memory size"),
        ({"match": "*", "reserve_memory": "x"}, "reserve_memory: 'x' is not a memory size"),
        ({"match": "*", "memory": "8GiB", "reserve_memory": "8GiB"}, "leaves nothing of memory 8GiB"),
        ({"match": "*", "memory_overcommit": 0}, "Expected `float` >"),
        ({"match": "*", "memory_overcommit": -1.0}, "Expected `float` >"),
        ({"match": "*", "memory_overcommit": 65}, "<= 64"),
        ({"match": "*", "memory_overcommit": "lots"}, "Expected `float`"),
        ({"match": "*", "memory": True}, "Expected `int | str | null`, got `bool`"),
    ],
)
def test_a_bad_memory_value_is_refused_at_the_rule_naming_its_key(bad: dict[str, object], says: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(bad, HostRule)
    assert says in str(caught.value)


def test_a_bad_memory_in_the_file_names_its_rule_and_key() -> None:
    error = error_of('[[host]]\nmatch = "h"\nmemory = "lots"\n')
    assert error.line == 1 and "memory: 'lots' is not a memory size" in error.reason
    error = error_of('[[host]]\nmatch = "h"\nmemory_overcommit = 0\n')
    assert error.line == 3 and "host[0].memory_overcommit" in error.reason


def test_the_simulators_memory_settings_are_read_from_its_section() -> None:
    config = parse('[simulator]\nhost_memory = "64GiB"\nhost_memory_overcommit = 1.5\n', FILE).config
    assert (config.simulator.host_memory, config.simulator.host_memory_overcommit) == ("64GiB", 1.5)
    assert "simulator.host_memory_overcommit" in error_of("[simulator]\nhost_memory_overcommit = 0\n").reason


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(text, FILE)
    return caught.value
