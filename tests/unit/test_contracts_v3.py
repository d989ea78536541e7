"""Schema v3 (urgent samples): a sample sent at once on a pressure trigger says so, and nothing else changes.

The mark is written only when set, so every regular sample keeps the version and the keys it had (a reader of v1 or
v2, which forbids unknown fields, reads it as before); an urgent sample is v3, and a v1 or v2 message that carries
the mark is malformed.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from shared.codec import BadMessage, Decoder, encode
from shared.messages import SCHEMA_VERSION, URGENT_VERSION, MemoryReading, MetricSample, required_version
from tests.unit.test_contracts_v2 import GIB, V1_FIELDS, sample


def test_a_regular_sample_is_written_as_before() -> None:
    body = json.loads(encode(sample()))
    assert body["v"] == 1 and "urgent" not in body and set(body) <= V1_FIELDS["metric"]
    with_memory = json.loads(encode(sample(MemoryReading(size_bytes=GIB, min_bytes=GIB, max_bytes=2 * GIB))))
    assert with_memory["v"] == 2 and "urgent" not in with_memory


@pytest.mark.parametrize("memory", [None, MemoryReading(size_bytes=GIB, min_bytes=GIB, max_bytes=2 * GIB)])
def test_an_urgent_sample_is_v3_and_read_back(memory: MemoryReading | None) -> None:
    original = msgspec.structs.replace(sample(memory), urgent=True)
    assert required_version(original) == URGENT_VERSION == SCHEMA_VERSION
    data = encode(original)
    body = json.loads(data)
    assert (body["v"], body["urgent"]) == (3, True)
    back = Decoder(MetricSample).decode(data)
    assert back == msgspec.structs.replace(original, v=3)


@pytest.mark.parametrize("v", [1, 2])
def test_an_older_version_carrying_the_mark_is_malformed(v: int) -> None:
    body = {**json.loads(encode(sample())), "v": v, "urgent": True}
    with pytest.raises(BadMessage, match="carries urgent, which needs v=3") as info:
        Decoder(MetricSample).decode(json.dumps(body).encode())
    assert info.value.reason == "malformed"


def test_a_v3_message_without_the_mark_is_read() -> None:
    """A writer may stamp its newest version on every message; the decoder takes it as long as it is one it knows."""
    body = {**json.loads(encode(sample())), "v": 3}
    assert Decoder(MetricSample).decode(json.dumps(body).encode()).urgent is False
