"""Schema v2 (memory): what it adds, and that v1 readers and writers are served as before.

A message is written with the lowest version that holds it, so a build from before v2 (which forbids unknown
fields) still reads every vCPU message; v2 fields under v1, or a command whose fields do not match its resource,
are malformed.
"""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.codec import BadMessage, Decoder, encode
from shared.messages import (
    Deferral,
    DeferralAction,
    ErrorCode,
    HostState,
    MemoryReading,
    MetricSample,
    Resource,
    ScaleCommand,
    ScaleResult,
    required_version,
)

GIB = 1024**3

# The fields each message had in schema v1 (at the last v1 build): what an old reader accepts, and no more.
V1_FIELDS = {
    "metric": {"type", "v", "time", "host", "vm", "online_vcpus", "min_vcpus", "max_vcpus", "cpu_used_cores",
               "interval_s", "source", "per_vcpu_busy", "pressure_cores", "psi_some"},
    "command": {"type", "v", "id", "time", "host", "vm", "target_vcpus", "seen_vcpus", "decider", "reason",
                "expires_at", "sample_time", "term"},
}  # fmt: skip


def sample(memory: MemoryReading | None = None) -> MetricSample:
    return MetricSample(
        time=1000.0,
        host="h1",
        vm="vm-1",
        online_vcpus=2,
        min_vcpus=1,
        max_vcpus=8,
        cpu_used_cores=1.5,
        interval_s=1.0,
        source="test",
        memory=memory,
    )


def command(**fields: object) -> ScaleCommand:
    base: dict[str, object] = dict(
        id="c-1", time=1000.0, host="h1", vm="vm-1", decider="d", reason="r", expires_at=1010.0
    )
    base.update(fields)
    return ScaleCommand(**base)  # type: ignore[arg-type]


def reading(**fields: int) -> MemoryReading:
    return MemoryReading(**{"size_bytes": 4 * GIB, "min_bytes": GIB, "max_bytes": 16 * GIB, **fields})


def test_a_vcpu_message_is_written_as_v1_with_v1_fields_only() -> None:
    for message, kind in ((sample(), "metric"), (command(target_vcpus=3, seen_vcpus=2), "command")):
        body = json.loads(encode(message))
        assert body["v"] == 1
        assert set(body) <= V1_FIELDS[kind], set(body) - V1_FIELDS[kind]


def test_a_memory_sample_is_written_as_v2_and_read_back() -> None:
    original = sample(reading(used_bytes=GIB, available_bytes=3 * GIB, oom_kills=0))
    data = encode(original)
    assert json.loads(data)["v"] == 2
    back = Decoder(MetricSample).decode(data)
    assert back.memory == original.memory and back.v == 2


def test_a_memory_command_is_written_as_v2_and_read_back() -> None:
    original = command(resource=Resource.MEMORY, target_memory_bytes=6 * GIB, seen_memory_bytes=4 * GIB)
    back = Decoder(ScaleCommand).decode(encode(original))
    assert back.resource is Resource.MEMORY and back.memory_change() == (4 * GIB, 6 * GIB) and back.v == 2
    with pytest.raises(ValueError, match="not vCPUs"):
        back.vcpu_change()


def test_an_old_writers_command_is_read() -> None:
    """A v1 command as builds before v2 wrote it: every field, nulls included."""
    data = json.dumps(
        {"type": "command", "v": 1, "id": "c-9", "time": 1.0, "host": "h1", "vm": "vm-1", "target_vcpus": 3,
         "seen_vcpus": 2, "decider": "d", "reason": "r", "expires_at": 9.0, "sample_time": None, "term": 0}
    ).encode()  # fmt: skip
    back = Decoder(ScaleCommand).decode(data)
    assert back.resource is Resource.VCPU and back.vcpu_change() == (2, 3)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"v": 1, "memory": {"size_bytes": GIB, "min_bytes": 0, "max_bytes": 2 * GIB}}, "need v=2"),
        ({"v": 2, "memory": {"size_bytes": -1, "min_bytes": 0, "max_bytes": 2 * GIB}}, ">= 0"),
        ({"v": 2, "memory": {"size_bytes": "1GiB", "min_bytes": 0, "max_bytes": 2 * GIB}}, "Expected `int"),
        ({"v": 2, "memory": {"size_bytes": 2**70, "min_bytes": 0, "max_bytes": 2 * GIB}}, "<= "),
        ({"v": 2, "memory": {"min_bytes": 0, "max_bytes": 2 * GIB}}, "missing required field `size_bytes`"),
    ],
)
def test_bad_memory_in_a_sample_is_malformed(body: dict[str, object], says: str) -> None:
    data = json.dumps({**json.loads(encode(sample())), **body}).encode()
    with pytest.raises(BadMessage, match=says) as info:
        Decoder(MetricSample).decode(data)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"v": 2, "resource": "memory", "target_memory_bytes": GIB}, "needs target_memory_bytes and seen_memory"),
        ({"v": 2, "resource": "memory", "target_memory_bytes": 0, "seen_memory_bytes": GIB}, "more than 0"),
        (
            {"v": 2, "resource": "memory", "target_memory_bytes": GIB, "seen_memory_bytes": GIB, "target_vcpus": 2},
            "carries no vCPU counts",
        ),
        ({"v": 1, "target_vcpus": 2}, "needs target_vcpus and seen_vcpus"),
        ({"v": 1, "target_vcpus": 2, "seen_vcpus": 1, "target_memory_bytes": GIB}, "carries no memory sizes"),
        ({"v": 1, "resource": "memory", "target_memory_bytes": GIB, "seen_memory_bytes": GIB}, "need v=2"),
        ({"v": 2, "resource": "disk", "target_vcpus": 2, "seen_vcpus": 1}, "Invalid enum value 'disk'"),
    ],
)
def test_a_command_must_match_its_resource(fields: dict[str, object], says: str) -> None:
    body = {"type": "command", "id": "c-1", "time": 1.0, "host": "h1", "vm": "vm-1", "decider": "d", "reason": "r",
            "expires_at": 9.0, **fields}  # fmt: skip
    with pytest.raises(BadMessage, match=says) as info:
        Decoder(ScaleCommand).decode(json.dumps(body).encode())
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"v": 2, "resource": "memory", "memory_bytes": GIB, "wanted_memory_bytes": 2 * GIB}, "needs its three"),
        (
            {"v": 2, "resource": "memory", "memory_bytes": GIB, "wanted_memory_bytes": 2 * GIB,
             "granted_memory_bytes": GIB, "vcpus": 2},
            "carries no sizes of the other",
        ),
        ({"v": 1, "vcpus": 2, "wanted_vcpus": 3}, "needs its three"),
        ({"v": 1, "vcpus": 2, "wanted_vcpus": 3, "granted_vcpus": 2, "resource": "memory"}, "need v=2"),
    ],
)  # fmt: skip
def test_a_deferral_must_match_its_resource(fields: dict[str, object], says: str) -> None:
    body = {"type": "deferral", "time": 1.0, "host": "h1", "vm": "vm-1", "action": "deferred", "decider": "d",
            "since": 1.0, **fields}  # fmt: skip
    with pytest.raises(BadMessage, match=says) as info:
        Decoder(Deferral).decode(json.dumps(body).encode())
    assert info.value.reason == "malformed"


def test_a_memory_deferral_is_v2_and_a_vcpu_one_stays_v1() -> None:
    vcpu = Deferral(time=1.0, host="h1", vm="vm-1", action=DeferralAction.DEFERRED, decider="d", since=1.0, vcpus=2,
                    wanted_vcpus=3, granted_vcpus=2)  # fmt: skip
    assert required_version(vcpu) == 1 and set(json.loads(encode(vcpu))) == {
        "type", "v", "time", "host", "vm", "action", "decider", "since", "vcpus", "wanted_vcpus", "granted_vcpus",
    }  # fmt: skip
    memory = Deferral(time=1.0, host="h1", vm="vm-1", action=DeferralAction.DEFERRED, decider="d", since=1.0,
                      resource=Resource.MEMORY, memory_bytes=GIB, wanted_memory_bytes=2 * GIB,
                      granted_memory_bytes=GIB)  # fmt: skip
    assert required_version(memory) == 2
    decoded = Decoder(Deferral).decode(encode(memory))
    assert decoded == msgspec.structs.replace(memory, v=2) and decoded.sizes() == (GIB, 2 * GIB, GIB)


def test_results_and_host_states_say_memory_in_v2() -> None:
    result = ScaleResult(
        command_id="c-1", time=1.0, host="h1", vm="vm-1", ok=True, vcpus_before=None, vcpus_after=None,
        duration_s=0.5, actuator="a", resource=Resource.MEMORY, target_memory_bytes=2 * GIB,
        memory_before_bytes=GIB, memory_after_bytes=2 * GIB,
    )  # fmt: skip
    assert required_version(result) == 2
    assert Decoder(ScaleResult).decode(encode(result)) == msgspec.structs.replace(result, v=2)
    host = HostState(time=1.0, host="h1", cpus=4, capacity_vcpus=4, committed_vcpus=2, free_vcpus=2)
    assert required_version(host) == 1
    assert required_version(msgspec.structs.replace(host, memory_bytes=8 * GIB)) == 2
    assert required_version(msgspec.structs.replace(host, committed_memory_bytes=8 * GIB)) == 2


def test_a_memory_grow_judged_on_the_host_says_its_memory_capacity_and_committed_in_v2() -> None:
    result = ScaleResult(
        command_id="c-1", time=1.0, host="h1", vm="vm-1", ok=False, vcpus_before=None, vcpus_after=None,
        duration_s=0.5, actuator="a", resource=Resource.MEMORY, target_memory_bytes=4 * GIB,
        memory_before_bytes=GIB, memory_after_bytes=2 * GIB, error_code=ErrorCode.HOST_FULL, retry_after=2.0,
        host_capacity_memory_bytes=16 * GIB, host_committed_memory_bytes=15 * GIB,
    )  # fmt: skip
    back = Decoder(ScaleResult).decode(encode(result))
    assert (back.v, back.host_capacity_memory_bytes, back.host_committed_memory_bytes) == (2, 16 * GIB, 15 * GIB)
    # the fields alone need v2 (a writer that sets them on a vCPU result is not read as v1)
    vcpu = ScaleResult(
        command_id="c-2", time=1.0, host="h1", vm="vm-1", ok=True, vcpus_before=2, vcpus_after=3,
        duration_s=0.5, actuator="a",
    )  # fmt: skip
    assert required_version(vcpu) == 1 and "host_capacity_memory_bytes" not in json.loads(encode(vcpu))
    assert required_version(msgspec.structs.replace(vcpu, host_committed_memory_bytes=GIB)) == 2
    body = {**json.loads(encode(vcpu)), "host_capacity_memory_bytes": GIB}
    with pytest.raises(BadMessage):
        Decoder(ScaleResult).decode(json.dumps(body).encode())  # v1 carrying a v2 key
    with pytest.raises(BadMessage):
        Decoder(ScaleResult).decode(json.dumps({**body, "v": 2, "host_capacity_memory_bytes": -1}).encode())


sizes = st.integers(min_value=0, max_value=64 * 1024**4)


@given(
    st.none()
    | st.builds(MemoryReading, size_bytes=sizes, min_bytes=sizes, max_bytes=sizes, used_bytes=st.none() | sizes)
)
def test_any_sample_round_trips_at_the_version_it_needs(memory: MemoryReading | None) -> None:
    original = sample(memory)
    back = Decoder(MetricSample).decode(encode(original))
    assert back.memory == memory
    assert back.v == (1 if memory is None else 2)
