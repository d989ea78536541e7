"""``shared.inbox``: every message a service takes off the bus is decoded strictly and agrees with its subject,
or it is counted and logged with its reason and dropped. The metrics are a private in-memory registry. Pure."""

from __future__ import annotations

import logging

import msgspec
import pytest

from shared import inbox as inbox_module
from shared import subjects
from shared.codec import MAX_MESSAGE_BYTES, encode
from shared.inbox import DROP_REASONS, Inbox
from shared.messages import SCHEMA_VERSION, MetricSample
from shared.telemetry import ServiceMetrics


def _sample(host: str = "h1", vm: str = "web 1") -> MetricSample:
    return MetricSample(
        time=100.0,
        host=host,
        vm=vm,
        online_vcpus=2,
        min_vcpus=1,
        max_vcpus=4,
        cpu_used_cores=1.5,
        interval_s=1.0,
        source="test",
    )


def _newer_version() -> bytes:
    body = msgspec.json.decode(encode(_sample()))
    body["v"] = SCHEMA_VERSION + 1
    return msgspec.json.encode(body)


def _counts(metrics: ServiceMetrics) -> dict[str, float | None]:
    """Drops by reason and ``received``, as the service's metrics report them (None: no such series)."""
    labels = {"service": "svc", "kind": "metric"}
    counts = {
        r: metrics.registry.get_sample_value("hotplug_messages_dropped_total", {**labels, "reason": r})
        for r in DROP_REASONS
    }
    counts["received"] = metrics.registry.get_sample_value("hotplug_messages_received_total", labels)
    return counts


def test_a_message_that_agrees_with_its_subject_is_received() -> None:
    metrics = ServiceMetrics("svc")
    inbox = Inbox("metric", MetricSample, metrics)
    assert _counts(metrics) == dict.fromkeys([*DROP_REASONS, "received"], 0.0)  # every series exists from the start
    assert inbox.open(subjects.metrics("h1", "web 1"), encode(_sample())) == _sample()
    assert inbox.open("direct", encode(_sample())) == _sample()  # not a per-VM subject: the body alone
    assert _counts(metrics) == {**dict.fromkeys(DROP_REASONS, 0.0), "received": 2.0}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{" + b" " * MAX_MESSAGE_BYTES + b"}", "oversized"),
        (b"not json", "malformed"),
        (encode(_sample()).replace(b'"cpu_used_cores":1.5', b'"cpu_used_cores":-1'), "malformed"),
        (_newer_version(), "unknown-version"),
        (encode(_sample(host="h2")), "subject-mismatch"),
        (encode(_sample(vm="web 2")), "subject-mismatch"),
    ],
    ids=["oversized", "not-json", "out-of-range", "unknown-version", "other-host", "other-vm"],
)
def test_every_drop_is_counted_and_logged_with_its_reason(
    data: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ServiceMetrics("svc")
    inbox = Inbox("metric", MetricSample, metrics)
    subject = subjects.metrics("h1", "web 1")
    with caplog.at_level(logging.WARNING, logger="shared.inbox"):
        assert inbox.open(subject, data) is None
    assert _counts(metrics) == {**dict.fromkeys(DROP_REASONS, 0.0), reason: 1.0, "received": 0.0}
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"dropped metric on {subject}: {reason}: " in record.getMessage()
    assert len(record.getMessage()) < 500  # the detail is cut short: a 64-KiB body is not logged whole


def test_a_body_naming_another_host_or_vm_than_its_subject_is_dropped() -> None:
    """Authority comes from who may publish on a subject: host h2 may not speak for h1's VM, nor one VM for
    another on the same host, whatever the body says."""
    metrics = ServiceMetrics("svc")
    inbox = Inbox("metric", MetricSample, metrics)
    assert inbox.open(subjects.metrics("h1", "web 1"), encode(_sample(host="h2"))) is None
    assert inbox.open(subjects.metrics("h1", "web 1"), encode(_sample(vm="web 2"))) is None
    assert inbox.open(subjects.metrics("h2", "web 2"), encode(_sample())) is None  # both differ
    assert inbox.open(subjects.stored_metrics("h1", "web 1"), encode(_sample(host="h2"))) is None  # as stored
    assert inbox.open(subjects.stored_metrics("h1", "web 1"), encode(_sample())) == _sample()
    assert _counts(metrics) == {**dict.fromkeys(DROP_REASONS, 0.0), "subject-mismatch": 4.0, "received": 1.0}


def test_a_subjects_origin_is_kept_and_still_holds_every_body_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each subject's origin is parsed once and kept (emptied when full): a body that disagrees with a subject seen
    before is dropped as it was the first time, whatever came on that subject in between."""
    monkeypatch.setattr(inbox_module, "ORIGINS_SIZE", 2)
    metrics = ServiceMetrics("svc")
    inbox = Inbox("metric", MetricSample, metrics)
    for _ in range(3):
        for vm in ("web 1", "web 2", "web 3"):
            assert inbox.open(subjects.metrics("h1", vm), encode(_sample(vm=vm))) == _sample(vm=vm)
            assert inbox.open(subjects.metrics("h1", vm), encode(_sample(vm="other"))) is None
        assert inbox.open("direct", encode(_sample(vm="other"))) == _sample(vm="other")  # no origin: the body
    assert len(inbox._origins) <= 2
    assert _counts(metrics) == {**dict.fromkeys(DROP_REASONS, 0.0), "subject-mismatch": 9.0, "received": 12.0}


def test_judging_a_shed_message_drops_a_bad_one_and_takes_in_none(caplog: pytest.LogCaptureFixture) -> None:
    """What the decider's intake does with a sample a newer one replaced: a malformed one is dropped as malformed
    (counted, logged), a good one counts as nothing here (its caller counts it as shed)."""
    metrics = ServiceMetrics("svc")
    inbox = Inbox("metric", MetricSample, metrics)
    subject = subjects.metrics("h1", "web 1")
    with caplog.at_level(logging.WARNING, logger="shared.inbox"):
        assert inbox.judge(subject, encode(_sample())) is True
        assert inbox.judge(subject, b"not json") is False
        assert inbox.judge(subject, encode(_sample(vm="web 2"))) is False
    assert _counts(metrics) == {
        **dict.fromkeys(DROP_REASONS, 0.0),
        "malformed": 1.0,
        "subject-mismatch": 1.0,
        "received": 0.0,
    }
    assert [r.getMessage().split(":")[1].strip() for r in caplog.records] == ["malformed", "subject-mismatch"]
