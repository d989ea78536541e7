"""Pause and resume, the pure core: durations, keys, expiry, last writer wins, what the decider holds and what the
actuator advises after a ``paused`` refusal."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.actuator.checks import not_paused
from services.actuator.drivers.base import VmView
from services.actuator.retry import LONG_S, Backoff, retry_after
from services.decider import refusals
from services.decider.guard import GuardRails
from services.decider.registry import build_policy, parse_params
from services.decider.service import Decider, DeciderConfig, DeciderMetrics
from shared.codec import BadMessage, Decoder, encode
from shared.messages import MESSAGE_TYPES, ErrorCode, MetricSample, PauseAction, PauseEvent, ScaleCommand, ScaleResult
from shared.pause_bucket import PauseWatch
from shared.pauses import (
    MAX_PAUSE_S,
    TTL_MARGIN_S,
    PauseBook,
    active,
    describe,
    key,
    parse_duration,
    parse_key,
    split_expired,
    ttl_s,
)
from tests.stubs import FixedClock, StubContext, StubOptions
from tests.unit.test_refusals import FREE, busy, engine, first_order_after, idle, result


def pause(
    vm: str = "vm-01", *, at: float = 100.0, until: float | None = 200.0, by: str = "alice", reason: str = ""
) -> PauseEvent:
    return PauseEvent(
        id=f"p-{by}-{at}", time=at, host="h", vm=vm, action=PauseAction.PAUSE, by=by, until=until, reason=reason
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1.5h", 5400), (" 3 M ", 180), ("30d", MAX_PAUSE_S)],
)
def test_durations_take_seconds_minutes_hours_and_days(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "2 hours", "h", "-1h", "0s", "1w", "31d", "1e3s"])
def test_a_bad_or_overlong_duration_is_refused_with_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|more than 0|at most 30d"):
        parse_duration(text)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF), min_size=1, max_size=40))
def test_any_vm_name_has_one_key_of_key_characters_and_comes_back(vm: str) -> None:
    k = key("host-1", vm)
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_=.") for ch in k)
    assert k.count(".") == 1  # one token for the host, one for the VM: a host's keys are "host-1.>"
    assert parse_key(k) == ("host-1", vm)


def test_what_is_not_a_pause_key_is_refused() -> None:
    for bad in ("nodot", ".vm", "h.", "h.a.b"):
        with pytest.raises(ValueError, match="not a pause key"):
            parse_key(bad)


def test_an_expired_pause_is_no_pause() -> None:
    p = pause(until=200.0)
    assert active(p, 100.0) and active(p, 199.999)
    assert not active(p, 200.0) and not active(p, 1e9)
    assert active(pause(until=None), 1e12)  # until resumed
    resumed = msgspec.structs.replace(p, action=PauseAction.RESUME)
    assert not active(resumed, 150.0)


def test_the_broker_keeps_an_entry_past_its_end_and_an_open_ended_one_for_good() -> None:
    assert ttl_s(pause(until=200.0), 100.0) == 100 + TTL_MARGIN_S
    assert ttl_s(pause(until=200.0), 150.5) == 50 + TTL_MARGIN_S  # whole seconds, rounded up
    assert ttl_s(pause(until=200.0), 10_000.0) == 1  # already over: the broker's smallest TTL
    assert ttl_s(pause(until=None), 100.0) is None


def test_the_held_reason_says_who_until_when_and_why() -> None:
    assert describe(pause(until=0.0, reason="kernel upgrade")) == (
        "paused by alice until 1970-01-01 00:00:00 UTC: kernel upgrade"
    )
    assert describe(pause(until=None, by="bob")) == "paused by bob until resumed"


def test_the_last_writer_wins_and_expired_pauses_are_forgotten() -> None:
    book = PauseBook()
    book.put(pause(by="alice", until=300.0))
    book.put(pause(by="bob", at=101.0, until=150.0))
    found = book.paused("h", "vm-01", 120.0)
    assert found is not None and found.by == "bob"
    assert book.count(120.0) == 1
    assert book.paused("h", "vm-01", 150.0) is None  # bob's pause is over; alice's was replaced, not resumed
    assert book.count(120.0) == 0
    assert book.paused("other", "vm-01", 120.0) is None


def test_a_resume_removes_the_pause_and_a_listing_shows_only_those_in_force() -> None:
    book = PauseBook()
    book.put(pause("vm-02", until=None))
    book.put(pause("vm-01", until=500.0))
    book.put(pause("vm-03", until=110.0))
    assert [p.vm for p in book.in_force(120.0)] == ["vm-01", "vm-02"]
    removed = book.remove("h", "vm-02")
    assert removed is not None and removed.vm == "vm-02"
    assert book.remove("h", "vm-02") is None
    assert [p.vm for p in book.in_force(120.0)] == ["vm-01"]
    live, expired = split_expired([pause("b", until=None), pause("a", until=110.0), pause("c", until=999.0)], 120.0)
    assert [p.vm for p in live] == ["b", "c"] and [p.vm for p in expired] == ["a"]


def test_a_pause_event_is_a_strict_bus_message_with_its_schema() -> None:
    p = pause(until=None, reason="benchmark")
    assert Decoder(PauseEvent).decode(encode(p)) == p
    assert b'"type":"pause"' in encode(p)
    with pytest.raises(BadMessage):
        Decoder(PauseEvent).decode(encode(p).replace(b'"action":"pause"', b'"action":"freeze"'))
    with pytest.raises(BadMessage):
        Decoder(PauseEvent).decode(encode(pause(by="x")).replace(b'"by":"x"', b'"by":""'))
    assert PauseEvent in MESSAGE_TYPES
    schema = msgspec.json.schema(PauseEvent)["$defs"]["PauseEvent"]
    assert {"by", "action", "until", "reason", "time", "host", "vm"} <= set(schema["properties"])
    codes = msgspec.json.schema(ScaleResult)["$defs"]["ErrorCode"]["enum"]
    assert "paused" in codes


def test_the_decider_holds_a_paused_vm_counted_as_paused_and_keeps_its_state() -> None:
    """A paused engine and one never paused see the same samples: the paused one orders nothing and says why;
    once resumed it orders what the other does, from the same policy state."""
    paused, free = engine(), engine()
    why = describe(pause(until=None, reason="maintenance"))
    for t in (0.0, 1.0, 2.0):
        assert paused.step(busy(t), paused=why) is None
        assert paused.held is not None
        assert paused.held.label == ErrorCode.PAUSED.value == "paused"
        assert paused.held.reason == "paused by alice until resumed: maintenance"
        free.step(busy(t))
    assert paused.guard.changes == [] and paused.pending_target is None
    assert msgspec.msgpack.encode(paused.policy_state) == msgspec.msgpack.encode(free.policy_state)
    again, other = paused.step(busy(3.0)), free.step(busy(3.0))
    assert again is not None and other is not None and again.target == other.target == 3


def test_a_paused_vm_with_nothing_to_do_is_not_counted_as_held() -> None:
    e = engine()
    steady = busy(0.0, vcpus=8, hi=8)  # wants more, but is at its maximum: no order to hold
    assert e.step(steady, paused="paused by x until resumed") is None
    assert e.held is None


def test_a_paused_refusal_holds_until_the_pause_ends_and_a_resume_lifts_it() -> None:
    e = engine()
    assert e.step(busy(0.0)) is not None
    e.mark_sent(3, until=1000.0, command_id="c1", time=0.0)
    e.learn_result(result(ErrorCode.PAUSED, 10.0, retry_after=120.0), now=10.0)
    assert first_order_after(e, 10.5, 100.0) is None
    assert e.held is not None and e.held.label == "paused"
    e.lift_holds(ErrorCode.PAUSED)  # the decider saw the VM resumed
    assert e.step(busy(101.0)) is not None
    # an actuator that says nothing: the decider's own minimum
    assert refusals.hold_s(result(ErrorCode.PAUSED, 0.0), 0) == refusals.POLL_S


def test_lifting_one_code_keeps_other_holds() -> None:
    e = engine()
    assert e.step(idle(0.0)) is not None
    e.mark_sent(3, until=1000.0, command_id="c1", time=0.0)
    e.learn_result(result(ErrorCode.HOTPLUG_DISABLED, 1.0, before=4, after=4, target=3), now=1.0)
    e.lift_holds(ErrorCode.PAUSED)
    assert e.step(idle(2.0)) is None and e.held is not None and e.held.label == "hotplug-disabled"


def test_the_actuator_advises_asking_again_when_the_pause_ends_and_within_ten_minutes() -> None:
    backoff = Backoff()
    assert retry_after(ErrorCode.PAUSED, "v", now=100.0, backoff=backoff, retry_at=130.0) == 30.0
    assert retry_after(ErrorCode.PAUSED, "v", now=100.0, backoff=backoff, retry_at=100.0 + 7200) == LONG_S
    assert retry_after(ErrorCode.PAUSED, "v", now=100.0, backoff=backoff, retry_at=None) == LONG_S
    assert retry_after(ErrorCode.PAUSED, "v", now=100.0, backoff=backoff, retry_at=50.0) == 0.0


def test_the_actuator_refuses_a_paused_vm_until_the_pause_ends() -> None:
    p = pause(until=200.0, reason="benchmark")
    refusal = not_paused(p, 150.0)
    assert refusal is not None
    assert refusal.code is ErrorCode.PAUSED
    assert refusal.message == "paused by alice until 1970-01-01 00:03:20 UTC: benchmark"
    assert refusal.retry_at == 200.0
    # the pause ends while the command waits: at its turn it is admitted (one result either way)
    assert not_paused(p, 200.0) is None
    assert not_paused(None, 150.0) is None


def _sample(t: float, vm: str = "vm-01", vcpus: int = 2) -> MetricSample:
    return MetricSample(
        time=t,
        host="h",
        vm=vm,
        online_vcpus=vcpus,
        min_vcpus=1,
        max_vcpus=8,
        cpu_used_cores=float(vcpus),
        interval_s=1.0,
        source="t",
    )


def test_the_decider_service_holds_a_paused_vm_counts_it_and_moves_it_once_resumed() -> None:
    policy, rails = build_policy("threshold", parse_params(FREE))
    assert isinstance(rails, GuardRails)
    clock = FixedClock(0.0)
    metrics = DeciderMetrics("decider")
    decider = Decider(StubContext(StubOptions(clock, host="h"), metrics), policy, rails, DeciderConfig(dry_run=True))  # type: ignore[arg-type]
    decider.pauses = PauseWatch(None)  # type: ignore[arg-type]  # fed by hand: no bucket in the unit tier
    decider.pauses.book.put(
        msgspec.structs.replace(pause(until=time.time() + 3600, reason="maintenance"), host="h", time=time.time())
    )

    def held(reason: str) -> float:
        return metrics.registry.get_sample_value("hotplug_decider_held_total", {"reason": reason}) or 0.0

    assert held("paused") == 0.0  # the series is there from the start
    clock.t = 1.0
    assert decider.handle_sample(_sample(1.0, vm="vm-02")) is not None  # another VM is not held
    for t in (1.0, 2.0, 3.0):
        clock.t = t
        assert decider.handle_sample(_sample(t)) is None
    assert held("paused") == 3.0
    engine = decider.engines[("h", "vm-01")]
    assert engine.held is not None and engine.held.reason.startswith("paused by alice until 20")
    assert engine.held.reason.endswith(": maintenance")
    decider.pauses.book.remove("h", "vm-01")
    decider._on_pause_change("h", "vm-01", None)
    clock.t = 4.0
    command = decider.handle_sample(_sample(4.0))
    assert command is not None and command.target_vcpus == 3


class _Driver:
    """Reads a VM at 2 vCPUs and plugs without complaint; counts its calls."""

    name = "fake"

    def __init__(self) -> None:
        self.calls = 0
        self.vcpus = 2

    async def read(self, vm: str) -> VmView:
        self.calls += 1
        return VmView(vm=vm, online_vcpus=self.vcpus, min_vcpus=1, max_vcpus=8)

    async def plug(self, vm: str) -> None:
        self.calls += 1
        self.vcpus += 1


async def test_the_actuator_refuses_a_paused_vm_without_touching_it_and_takes_it_once_the_pause_is_over() -> None:
    from services.actuator.service import Actuator, ActuatorConfig, ActuatorMetrics

    metrics = ActuatorMetrics("actuator")
    driver = _Driver()
    actuator = Actuator(StubContext(StubOptions(FixedClock(1000.0), host="h"), metrics), driver, ActuatorConfig())  # type: ignore[arg-type]
    actuator.progress = _NoProgress()  # type: ignore[assignment]
    order = ScaleCommand(
        id="c1",
        time=1000.0,
        host="h",
        vm="vm-01",
        target_vcpus=3,
        seen_vcpus=2,
        decider="ignorant",
        reason="r",
        expires_at=2000.0,
    )
    now = time.time()
    actuator.pauses.book.put(msgspec.structs.replace(pause(until=now + 30, reason="benchmark"), host="h", time=now))
    assert metrics.registry.get_sample_value("hotplug_actuator_paused_vms") == 1.0
    refused = await _carry_out(actuator, order)
    assert refused.error_code is ErrorCode.PAUSED and not refused.ok
    assert refused.error is not None and refused.error.startswith("paused by alice until ")
    assert refused.error.endswith(": benchmark")
    assert refused.retry_after is not None and 25 < refused.retry_after <= 30  # when the pause ends, clock seconds
    assert driver.calls == 0  # the VM was not even read
    # the pause ends (here: it is replaced by one already over) before the next command's turn: it runs
    actuator.pauses.book.put(msgspec.structs.replace(pause(until=now - 1), host="h", time=now - 2))
    assert metrics.registry.get_sample_value("hotplug_actuator_paused_vms") == 0.0
    done = await _carry_out(actuator, msgspec.structs.replace(order, id="c2"))
    assert done.ok and done.vcpus_after == 3


class _NoProgress:
    async def begin(self, command: ScaleCommand, before: int) -> None:
        return None

    async def end(self, command: ScaleCommand) -> None:
        return None


class _Delivery:
    def __init__(self) -> None:
        self.acks = 0

    async def ack(self) -> None:
        self.acks += 1

    async def in_progress(self) -> None:
        return None


async def _carry_out(actuator: Any, order: ScaleCommand) -> ScaleResult:
    """One command through the actuator's worker (its ledger's actions, carried out), with the event log stubbed:
    the one result it stored, acknowledged once."""
    stored: list[ScaleResult] = []

    async def store(result: ScaleResult) -> None:
        stored.append(result)

    actuator._store = store
    delivery = _Delivery()
    actuator.ledger.receive(order, delivery)
    await actuator._work(order.vm)
    assert delivery.acks == 1 and len(stored) == 1
    return stored[0]


def test_the_ledger_refuses_a_paused_vm_before_raising_the_term_and_advises_on_its_own_clock() -> None:
    from services.actuator.ledger import Ledger
    from tests.unit.test_ledger import command, rules

    ledger: Ledger[str] = Ledger(rules())
    p = msgspec.structs.replace(pause("a", until=1_000_000.0 + 120), host="h")
    # a simulated clock 4x faster, far from the wall clock: the pause ends 120 wall seconds from now
    refused = ledger.admit(command("c1", decider="ha", term=5, at=50.0), 100.0, p, wall=1_000_000.0)
    assert refused is not None and refused.code is ErrorCode.PAUSED
    assert refused.retry_at == 100.0 + 120
    assert ledger.terms == {}  # a refused command raises no term
    result = ledger.refuse(command("c1"), refused, 100.0)
    assert result.error_code is ErrorCode.PAUSED and result.retry_after == 120
    # over: admitted, and now the term is raised
    assert ledger.admit(command("c2", decider="ha", term=5, at=50.0), 100.0, p, wall=1_000_000.0 + 120) is None
    assert ledger.terms == {"ha": 5}
    # other checks come first: an expired command is expired, paused or not
    late = ledger.admit(command("c3", at=0.0, ttl=1.0), 100.0, p, wall=1_000_000.0)
    assert late is not None and late.code is ErrorCode.EXPIRED
