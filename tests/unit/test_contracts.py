"""Message contracts: strict decoding, reasons for every drop, subject tokens, JSON Schema."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import subjects
from shared.codec import MAX_MESSAGE_BYTES, BadMessage, Decoder, encode
from shared.messages import (
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    ErrorCode,
    MetricSample,
    ScaleCommand,
    ScaleResult,
    json_schemas,
)


def sample(**overrides: object) -> MetricSample:
    fields: dict[str, object] = dict(
        time=1000.0,
        host="h1",
        vm="vm 1",
        online_vcpus=2,
        min_vcpus=1,
        max_vcpus=8,
        cpu_used_cores=1.5,
        interval_s=1.0,
        source="test",
    )
    fields.update(overrides)
    return MetricSample(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    original = sample(per_vcpu_busy=[0.5, 1.0], pressure_cores=0.25, psi_some=0.1)
    assert Decoder(MetricSample).decode(encode(original)) == original


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "malformed"),
        (b'{"type":"metric","v":1}', "malformed"),
        (json.dumps({**msgspec.to_builtins(sample()), "online_vcpus": -1}).encode(), "malformed"),
        (json.dumps({**msgspec.to_builtins(sample()), "extra": 1}).encode(), "malformed"),
        (json.dumps({**msgspec.to_builtins(sample()), "type": "command"}).encode(), "malformed"),
        (json.dumps({**msgspec.to_builtins(sample()), "v": SCHEMA_VERSION + 1}).encode(), "unknown-version"),
        (
            json.dumps({**msgspec.to_builtins(sample()), "v": SCHEMA_VERSION + 1, "new_field": True}).encode(),
            "unknown-version",
        ),
        (json.dumps({**msgspec.to_builtins(sample()), "v": 0}).encode(), "unknown-version"),
        (b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "oversized"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadMessage) as info:
        Decoder(MetricSample).decode(data)
    assert info.value.reason == reason


def test_vm_names_with_control_characters_are_refused() -> None:
    with pytest.raises(BadMessage):
        Decoder(MetricSample).decode(encode(sample(vm="evil\nname")))


def test_shell_metacharacters_are_plain_text_in_a_name() -> None:
    name = "web 1; rm -rf / $(reboot) `id` \"quoted\" 'single'"
    assert Decoder(MetricSample).decode(encode(sample(vm=name))).vm == name


@given(st.text(min_size=1, max_size=60))
def test_subject_token_is_one_safe_token_and_reversible(name: str) -> None:
    token = subjects.vm_token(name)
    assert token and all(c.isascii() and (c.isalnum() or c in "_-%") for c in token)
    assert subjects.vm_from_token(token) == name
    assert subjects.split(subjects.metrics("h1", name)) == ("metrics", "h1", name)


def refused(error: str, code: ErrorCode | None = None) -> ScaleResult:
    """A grow of v from 1 to 2 vCPUs that did not happen, for ``error``."""
    return ScaleResult(
        command_id="c1",
        time=1.0,
        host="h",
        vm="v",
        ok=False,
        vcpus_before=1,
        vcpus_after=1,
        target_vcpus=2,
        duration_s=0.1,
        actuator="a",
        error_code=code,
        error=error,
    )


def test_error_codes_decode_and_unknown_codes_do_not() -> None:
    result = refused("x", ErrorCode.CPU0)
    assert Decoder(ScaleResult).decode(encode(result)).error_code is ErrorCode.CPU0
    bad = encode(result).replace(b'"cpu0"', b'"no-such-code"')
    with pytest.raises(BadMessage):
        Decoder(ScaleResult).decode(bad)


def test_json_schema_describes_each_message() -> None:
    for message_type in MESSAGE_TYPES:
        schema = msgspec.json.schema(message_type)
        definition = schema["$defs"][message_type.__name__]
        assert "v" in definition["properties"]
        assert "type" in definition["required"]
    command_schema = msgspec.json.schema(ScaleCommand)["$defs"]["ScaleCommand"]
    branches = command_schema["properties"]["target_vcpus"]["anyOf"]
    assert [b.get("minimum") for b in branches if b.get("type") == "integer"] == [1]


def _description(prop: dict[str, object]) -> str:
    """A property's description, on it or on one branch of its ``anyOf`` (msgspec puts it on either)."""
    branches = prop.get("anyOf")
    found = [prop.get("description")] + ([b.get("description") for b in branches] if isinstance(branches, list) else [])
    return next((str(text) for text in found if text), "")


def test_every_field_of_every_message_is_described_in_its_schema() -> None:
    """A decider author in another language reads the fields' meaning from ``hotplug schema`` alone."""
    schemas = json_schemas()
    assert set(schemas) == {t.__name__ for t in MESSAGE_TYPES}
    for name, schema in schemas.items():
        definition = schema["$defs"][name]  # type: ignore[index]
        assert definition.get("description"), f"{name} has no description"
        for field, prop in definition["properties"].items():
            assert _description(prop), f"{name}.{field} has no description in its JSON Schema"
    command = schemas["ScaleCommand"]["$defs"]["ScaleCommand"]["properties"]  # type: ignore[index]
    assert "stale-view" in _description(command["seen_vcpus"])
    assert "stale-term" in _description(command["term"])
    assert "Nats-Msg-Id" in _description(command["id"])
    assert '"command"' in _description(command["type"])


def test_results_say_when_to_ask_again_and_the_actuators_rate_limit_in_their_schema() -> None:
    result = ScaleResult(
        command_id="c1",
        time=1.0,
        host="h",
        vm="v",
        ok=False,
        vcpus_before=2,
        vcpus_after=2,
        target_vcpus=3,
        duration_s=0.0,
        actuator="a",
        error_code=ErrorCode.RATE_LIMITED,
        retry_after=12.5,
        rate_limit_changes=6,
        rate_limit_window_s=60.0,
    )
    assert Decoder(ScaleResult).decode(encode(result)) == result
    properties = msgspec.json.schema(ScaleResult)["$defs"]["ScaleResult"]["properties"]
    for name in ("retry_after", "rate_limit_changes", "rate_limit_window_s"):
        described = [branch for branch in properties[name]["anyOf"] if branch.get("description")]
        assert described, f"{name} carries no description in the JSON Schema"
        assert name not in msgspec.json.schema(ScaleResult)["$defs"]["ScaleResult"].get("required", [])
    assert "seconds after this result's time" in properties["retry_after"]["anyOf"][0]["description"]
    with pytest.raises(BadMessage):
        Decoder(ScaleResult).decode(encode(result).replace(b'"retry_after":12.5', b'"retry_after":-1'))
    # a result of an older actuator, without the new fields, still decodes
    old = json.dumps(
        {
            k: v
            for k, v in msgspec.to_builtins(result).items()
            if k not in ("retry_after", "rate_limit_changes", "rate_limit_window_s")
        }
    ).encode()
    assert Decoder(ScaleResult).decode(old).retry_after is None


def test_a_long_reason_is_cut_to_what_the_message_takes_never_refused() -> None:
    from shared.messages import MAX_TEXT, short_text

    long = "host full: " + "x" * 5000
    assert short_text(long) == long[:MAX_TEXT]
    assert short_text("ok") == "ok"
    result = refused(short_text(long))
    assert msgspec.json.decode(msgspec.json.encode(result), type=ScaleResult).error == long[:MAX_TEXT]
