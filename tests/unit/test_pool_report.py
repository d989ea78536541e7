"""``hotplug pool``'s report (hotplug/pool_report.py): which grows are deferred now, their age on the shared clock,
the JSON document and the text; and a Deferral event as ``hotplug events`` shows it."""

from __future__ import annotations

import json

import pytest

from hotplug.events import CSV_FIELDS, change_text, event_record, format_csv
from hotplug.pool_report import age, deferral_detail, deferred_now, pool_report, render_text
from shared.messages import Deferral, DeferralAction, HostState, Resource

T0 = 1_800_000_000.0


def deferral(
    vm: str, action: DeferralAction, t: float, *, host: str = "h1", since: float = T0, **kw: object
) -> Deferral:
    fields: dict[str, object] = {"vcpus": 2, "wanted_vcpus": 6, "granted_vcpus": 3, "reason": ""} | kw
    return Deferral(time=t, host=host, vm=vm, action=action, decider="d1", since=since, **fields)  # type: ignore[arg-type]


def state(host: str = "h1", t: float = T0 + 200, **kw: object) -> HostState:
    fields: dict[str, object] = {"cpus": 16, "capacity_vcpus": 16, "committed_vcpus": 14, "free_vcpus": 2} | kw
    return HostState(time=t, host=host, source="simulator", **fields)  # type: ignore[arg-type]


DEFERRED, GRANTED, DROPPED = DeferralAction.DEFERRED, DeferralAction.GRANTED, DeferralAction.DROPPED


def test_a_grow_is_deferred_now_while_its_vms_newest_deferral_says_so() -> None:
    events = [
        deferral("a", DEFERRED, T0),
        deferral("b", DEFERRED, T0 + 5, since=T0 + 5),
        deferral("a", GRANTED, T0 + 50),  # a got its cores
        deferral("c", DEFERRED, T0 + 60, since=T0 + 60),
        deferral("c", DROPPED, T0 + 70, since=T0 + 60),
        deferral("c", DEFERRED, T0 + 80, since=T0 + 80),  # c wants more again
        deferral("x", DEFERRED, T0 + 1, host="h0", since=T0 + 1),
    ]
    assert [(d.host, d.vm) for d in deferred_now(events)] == [("h0", "x"), ("h1", "b"), ("h1", "c")]
    assert [(d.host, d.vm) for d in deferred_now(reversed(events))] == [("h0", "x"), ("h1", "b"), ("h1", "c")]
    assert deferred_now([]) == []


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (44.6, "45s"), (200, "3m20s"), (3900, "1h05m"), (2 * 86400 + 3 * 3600, "2d03h")]
)
def test_ages_read_as_an_operator_reads_them(seconds: float, text: str) -> None:
    assert age(seconds) == text


def test_the_report_gives_each_host_its_state_and_its_deferred_grows_aged_on_the_hosts_clock() -> None:
    states = {"h1": state(used_cores=9.25, host_wait_cores=0.5, waiting_vms=2, waiting_vcpus=6, next_waiting_vcpus=4)}
    events = [
        deferral("a", DEFERRED, T0 + 10, since=T0 + 10, priority=5, reason="host full: 3 of 6"),
        deferral("b", DEFERRED, T0, host="h9", since=T0),  # a host that sent no HostState
    ]
    report = pool_report(states, events, expected=["h1", "h2"], wait_s=2.5, waited_s=2.5004, now=T0 + 1000)
    assert json.loads(json.dumps(report)) == report  # plain JSON
    assert (report["wait_s"], report["waited_s"]) == (2.5, 2.5)
    h1, h2, h9 = report["hosts"]
    assert (h1["host"], h1["reported"], h1["source"], h1["time"]) == ("h1", True, "simulator", T0 + 200)
    assert (h1["cpus"], h1["capacity_vcpus"], h1["committed_vcpus"], h1["free_vcpus"]) == (16, 16, 14, 2)
    assert (h1["used_cores"], h1["host_wait_cores"], h1["watermark"]) == (9.25, 0.5, 1.0)
    assert (h1["waiting_vms"], h1["waiting_vcpus"], h1["next_waiting_vcpus"]) == (2, 6, 4)
    assert h1["deferred"] == [
        {
            "vm": "a",
            "resource": "vcpu",
            "vcpus": 2,
            "wanted_vcpus": 6,
            "granted_vcpus": 3,
            "memory_bytes": None,
            "wanted_memory_bytes": None,
            "granted_memory_bytes": None,
            "since": T0 + 10,
            "age_s": 190.0,  # at the host's newest state, not the wall clock of whoever asks
            "priority": 5,
            "decider": "d1",
            "reason": "host full: 3 of 6",
        }
    ]
    # expected but silent: there, with nothing known; a host with a deferral and no state is aged on "now"
    assert (h2["host"], h2["reported"], h2["capacity_vcpus"], h2["deferred"]) == ("h2", False, None, [])
    assert (h9["reported"], [d["age_s"] for d in h9["deferred"]]) == (False, [1000.0])


def test_the_text_names_every_number_and_says_which_hosts_did_not_report() -> None:
    states = {"h1": state(used_cores=9.25, waiting_vms=2, waiting_vcpus=6, next_waiting_vcpus=4)}
    events = [deferral("web.01", DEFERRED, T0 + 10, since=T0 + 10, reason="host full")]
    text = render_text(pool_report(states, events, expected=["h2"], wait_s=2.5, waited_s=2.6, now=T0))
    lines = text.splitlines()
    assert lines[0].startswith("h1 (simulator, ")
    assert lines[0].endswith("16 CPUs, capacity 16 vCPUs, committed 14, free 2")
    assert lines[1] == "  used 9.25 cores, host wait unknown cores, 2 jobs waiting for 6 vCPUs (next 4)"
    assert lines[2:4] == [
        "  1 grow deferred:",
        "    web.01  2 -> 6 vCPUs wanted, 3 granted, for 3m10s, priority 0: host full",
    ]
    assert lines[4].startswith("h2: no HostState within 2.5 s")
    assert lines[5] == "  no grow deferred"


def test_with_nothing_heard_the_text_says_so() -> None:
    text = render_text(pool_report({}, [], wait_s=2.0, waited_s=2.01, now=T0))
    assert text.startswith("no host reported within 2 s (no HostState on hotplug.hosts.*)")


def test_a_deferral_is_an_event_with_its_own_record_and_detail() -> None:
    event = deferral("vm-01", DEFERRED, T0 + 10, since=T0, priority=2, reason="host full")
    record = event_record(event)
    assert record == {
        "kind": "deferral",
        "action": "deferred",
        "time": T0 + 10,
        "host": "h1",
        "vm": "vm-01",
        "decider": "d1",
        "resource": "vcpu",
        "vcpus": 2,
        "wanted_vcpus": 6,
        "granted_vcpus": 3,
        "memory_bytes": None,
        "wanted_memory_bytes": None,
        "granted_memory_bytes": None,
        "since": T0,
        "priority": 2,
        "reason": "host full",
    }
    assert set(record) <= set(CSV_FIELDS)  # every field has a CSV column
    assert format_csv([record]).splitlines()[1].startswith("deferral,")
    assert deferral_detail(record) == "3 of 6 vCPUs granted, priority 2 (by d1): host full"
    granted = event_record(deferral("vm-01", GRANTED, T0 + 20, since=T0))
    assert deferral_detail(granted).startswith("all 6 vCPUs granted, deferred since 2027-01-15 08:00:00 UTC")
    dropped = event_record(deferral("vm-01", DROPPED, T0 + 20, since=T0))
    assert deferral_detail(dropped).startswith("no longer wants 6 vCPUs")


def test_a_host_that_reports_its_memory_has_a_memory_line_and_fields() -> None:
    gib = 1024**3
    memory: dict[str, object] = {
        "memory_bytes": 10 * gib,
        "capacity_memory_bytes": 7 * gib,
        "committed_memory_bytes": 8 * gib,
    }
    report = pool_report({"h1": state("h1", T0, **memory), "h2": state("h2")}, [], wait_s=2.0, waited_s=2.0, now=T0)
    h1, h2 = report["hosts"]
    assert {k: h1[k] for k in memory} == memory
    assert (h2["memory_bytes"], h2["capacity_memory_bytes"], h2["committed_memory_bytes"]) == (None, None, None)
    lines = render_text(report).splitlines()
    # below the capacity: a capacity lowered under running VMs shows a negative free
    assert lines[2] == "  memory 10GiB, capacity 7GiB, committed 8GiB, free -1GiB"
    assert not any(line.startswith("  memory") for line in lines[4:])  # h2 reports none


def test_a_memory_grow_deferred_is_shown_in_bytes_apart_from_the_vms_vcpu_grow() -> None:
    gib = 1024**3
    sizes: dict[str, object] = {
        "vcpus": None, "wanted_vcpus": None, "granted_vcpus": None, "resource": Resource.MEMORY,
        "memory_bytes": 4 * gib, "wanted_memory_bytes": 8 * gib, "granted_memory_bytes": 6 * gib,
    }  # fmt: skip
    events = [
        deferral("a", DEFERRED, T0 + 10, since=T0 + 10, reason="host full"),
        deferral("a", DEFERRED, T0 + 20, since=T0 + 20, reason="host memory full", **sizes),  # type: ignore[arg-type]
    ]
    assert [(d.vm, d.resource) for d in deferred_now(events)] == [("a", Resource.VCPU), ("a", Resource.MEMORY)]
    text = render_text(pool_report({"h1": state()}, events, wait_s=2.0, waited_s=2.0, now=T0))
    assert text.splitlines()[2:5] == [
        "  2 grows deferred:",
        "    a  2 -> 6 vCPUs wanted, 3 granted, for 3m10s, priority 0: host full",
        "    a  4GiB -> 8GiB of memory wanted, 6GiB granted, for 3m00s, priority 0: host memory full",
    ]
    record = event_record(events[1])
    assert change_text(record) == "4GiB→8GiB"
    assert deferral_detail(record) == "6GiB of 8GiB of memory granted, priority 0 (by d1): host memory full"
