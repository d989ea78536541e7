"""A host's capacity from its ``[[host]]`` rule (shared.pool) and the subjects per-host messages travel on."""

from __future__ import annotations

import msgspec
import pytest

from shared import subjects
from shared.config.schema import HostRule
from shared.pool import capacity_of, host_capacity


def test_capacity_is_cpus_less_reserve_times_overcommit_floored() -> None:
    assert capacity_of(16, 0, 1.0) == 16
    assert capacity_of(16, 2, 1.0) == 14
    assert capacity_of(16, 1.5, 2.0) == 29
    assert capacity_of(3, 0, 1.0) == 3  # no float dust below a whole vCPU
    assert capacity_of(2, 4, 1.0) == 0  # a reserve above the host leaves nothing, not a negative capacity


def test_the_first_matching_rule_sets_a_host_and_others_keep_their_source() -> None:
    rules = [HostRule(match="gpu-*", cpus=64, reserve_cpus=4, overcommit=1.0), HostRule(match="*", overcommit=4)]
    gpu = host_capacity(rules, "gpu-1", detected_cpus=8)
    assert (gpu.cpus, gpu.capacity_vcpus, gpu.rule_index) == (64, 60, 0)
    lab = host_capacity(rules, "lab", detected_cpus=8)
    assert (lab.cpus, lab.capacity_vcpus, lab.rule_index) == (8, 32, 1)
    bare = host_capacity([], "lab", detected_cpus=8)
    assert (bare.capacity_vcpus, bare.watermark, bare.rule_index) == (8, 1.0, None)


def test_the_watermark_bounds_what_insurance_may_take() -> None:
    cap = host_capacity([HostRule(match="*", watermark=0.9)], "h", detected_cpus=20)
    assert cap.insurance_vcpus == 18


@pytest.mark.parametrize(
    "bad",
    [
        {"match": "*", "overcommit": 0},
        {"match": "*", "reserve_cpus": -1},
        {"match": ""},
        {"match": "*", "watermark": 1.5},
    ],
)
def test_a_bad_host_rule_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(bad, HostRule)


def test_a_host_subject_names_its_host_and_no_vm() -> None:
    assert subjects.origin(subjects.hosts("node-1")) == ("node-1", None)
    assert subjects.origin(subjects.deferrals("node-1", "a.b c")) == ("node-1", "a.b c")
    assert subjects.origin("hotplug.hosts") is None
