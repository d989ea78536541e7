"""The harm steers' store (``services.decider.steer_store``) without a broker: its keys stay apart from the per-VM
states', a stored state that does not decode is ignored, and what is kept in memory is what a new steer of the same
policy and target resumes from (a rule reload); the bucket's part runs on a real nats-server in
tests/system/test_decider_process.py."""

from __future__ import annotations

import logging

import pytest

from services.decider.harm import HarmSteer, SteerSettings
from services.decider.policies.base import Observation
from services.decider.sharding import memory_state_key, state_key
from services.decider.steer_store import SteerStore, decode_state, steer_key

SETTINGS = SteerSettings(gain=1.0, half_life_s=3600.0, settle_s=600.0, max_error=2.0, range=4.0, period_s=60.0)


def _demand(obs: Observation) -> tuple[float, bool]:
    return obs.used_cores + (obs.pressure_cores or 0.0), False


def _starved_steer(target: float = 0.01) -> HarmSteer:
    steer = HarmSteer(target, SETTINGS, _demand)
    for t in range(0, 3600, 60):
        steer.advance(float(t))
        steer.observe(
            Observation(
                time=float(t), vcpus=2, min_vcpus=1, max_vcpus=8, used_cores=2.0, interval_s=60.0, pressure_cores=1.0
            )
        )
    return steer


def test_keys_name_owner_policy_and_target_in_tokens_no_vm_state_has() -> None:
    assert steer_key("decider", "default", 0.0025) == "_steer.decider.default.0_25"
    assert steer_key("lease-a", "default", 0.01) == "_steer.lease-a.default.1"
    vm_keys = {state_key("_steer", "decider", "default"), memory_state_key("g", "decider", "default")}
    assert steer_key("decider", "default", 0.01) not in vm_keys
    assert not any(key.startswith("_") for key in (state_key("g", "h", "vm"), memory_state_key("g", "h", "vm")))


def test_a_stored_state_that_does_not_decode_is_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert decode_state("_steer.d.default.1", b"\x93not a steer") is None
    assert "_steer.d.default.1 ignored" in caplog.text


def test_a_kept_state_is_resumed_by_a_new_steer_of_the_same_policy_and_target_only() -> None:
    store = SteerStore("decider")
    steer = _starved_steer()
    assert steer.factor > 1.5
    store.keep("default", steer)  # no bucket open: kept in memory, nothing to save
    again = HarmSteer(0.01, SETTINGS, _demand)
    assert store.resume("default", again, 3600.0) and again.factor == steer.factor
    assert not store.resume("other", HarmSteer(0.01, SETTINGS, _demand), 3600.0)
    tighter = HarmSteer(0.005, SETTINGS, _demand)
    assert not store.resume("default", tighter, 3600.0) and tighter.factor == 1.0
