"""``hotplug chaos``: faults injected one at a time into a live loop, and a report of what survived.

The loop runs as a careful operator would run it: a three-node NATS cluster on loopback with every stream on
all three nodes, one NATS user per service (``hotplug auth init``), services supervised (restarted when they
die), the simulated mini-cloud, and the actuator holding ``vm-01`` to at most 2 vCPUs. Each fault has a window:
it is injected, its own checks run (the service came back, the broker refused, the loop acted again), and the
loop keeps running for at least ``window_s``. At the end the decider is stopped, every command is given time
to get its result, and the event log is audited (``evaluation.audit``) per window and as a whole, against what
was seen live on the bus and what the simulated hypervisor itself did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client

from evaluation.audit import Audit, audit
from hotplug import auth
from hotplug.harness import faults
from hotplug.harness.poll import within
from hotplug.harness.processes import sigkill
from hotplug.harness.recorder import Recorder, hypervisor_ops, settle
from hotplug.harness.scrape import metric_or_zero
from hotplug.supervisor import Supervisor
from hotplug.up import UpOptions, child_argv
from shared import bus, eventlog, subjects, topology
from shared.broker import free_port
from shared.clock import Clock
from shared.cluster import EmbeddedCluster
from shared.codec import encode
from shared.messages import ErrorCode, ScaleCommand, ScaleResult

CHAOS_POLICY = ("threshold", ("guard.warmup_s=0",))
HOST = "local"
BOUNDED_VM, BOUNDS = "vm-01", (1, 2)
SERVICE_USERS = {
    "simulator": topology.host_user("simulator", HOST),
    "collector": topology.host_user("collector", HOST),
    "actuator": topology.host_user("actuator", HOST),
    "decider": topology.DECIDER_USER,
}


class FaultReport(msgspec.Struct, kw_only=True):
    fault: str
    injected: str
    survived: dict[str, bool]
    commands: int = 0
    results: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_bounds: int = 0
    seconds: float = 0.0  # wall time of the fault and its window
    ok: bool = False


class ChaosReport(msgspec.Struct, kw_only=True):
    faults: list[FaultReport]
    totals: Audit
    hypervisor_ops: int
    restarts: dict[str, int]
    seconds: float
    ok: bool


@dataclass(frozen=True)
class ChaosOptions:
    vms: int = 4
    speed: float = 4.0
    window_s: float = 5.0
    nodes: int = 3
    data_dir: Path | None = None
    only: tuple[str, ...] = ()


Check = dict[str, bool]


class Chaos:
    """One live loop and the faults that can be injected into it."""

    def __init__(self, options: ChaosOptions, root: Path) -> None:
        self.options = options
        self.root = root
        self.cluster = EmbeddedCluster(root / "nats", options.nodes, config_file=root / "auth" / "nats.conf")
        auth.write(root / "auth", [HOST], "127.0.0.1", [node.port for node in self.cluster.nodes], tls=False)
        self.clock = Clock(speed=options.speed, epoch=time.time())
        self.supervisor = Supervisor(root / "logs", initial_backoff_s=0.2, max_backoff_s=2.0)
        self.observer = Recorder()
        self._clients: dict[str, Client] = {}

    def url_of(self, user: str) -> str:
        lines = (self.root / "auth" / "credentials" / f"{user}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line)[bus.DEFAULT_URL_ENV]

    async def client(self, user: str) -> Client:
        if user not in self._clients:
            self._clients[user] = await bus.connect(self.url_of(user), f"chaos-{user}")
        return self._clients[user]

    # --- the loop -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        os.environ[bus.REPLICAS_ENV] = str(self.cluster.replicas)
        await asyncio.to_thread(self.cluster.start)
        admin = await self.client(topology.ADMIN_USER)
        # A replicated stream's set-up round trip in a just-elected cluster can take longer than nats-py's 5-s
        # default on a loaded machine (seen beside a CPU hog): a roomier deadline for this one-time call.
        await bus.ensure_streams(admin.jetstream(timeout=30), reconcile=True, patience_s=120)
        await self.observer.attach(admin)
        # Chaos tests the plumbing, not the decisions: the seed's threshold rule, which acts every few seconds,
        # makes sure every fault meets a loop in motion (the calm default may not act for minutes).
        up = UpOptions(
            vms=self.options.vms,
            speed=self.options.speed,
            host=HOST,
            log_level="INFO",
            policy=CHAOS_POLICY[0],
            params=CHAOS_POLICY[1],
        )
        extra = {
            "simulator": ["--max-vcpus", "4", "--hotplug-delay", "0.2"],
            "actuator": ["--vm-bounds", f"{BOUNDED_VM}={BOUNDS[0]}:{BOUNDS[1]}", "--ack-wait", "10"],
            "collector": [],
            "decider": [],
        }
        for service, user in SERVICE_USERS.items():
            port = free_port()
            argv = child_argv(service, up, None, self.clock.epoch, port) + extra[service]
            await self.supervisor.start(service, argv, port, env={bus.DEFAULT_URL_ENV: self.url_of(user)})
        if not await self.loop_acts(self.clock.now(), timeout_s=60):
            raise RuntimeError(f"the loop did not act within a minute; see the logs in {self.root / 'logs'}")

    async def stop(self) -> None:
        await self.supervisor.stop()
        for nc in self._clients.values():
            with contextlib.suppress(Exception):  # the broker may be gone already
                await nc.close()
        await asyncio.to_thread(self.cluster.stop)

    async def loop_acts(self, since: float, timeout_s: float = 45.0) -> bool:
        """Whether a command of the loop gets its result (any outcome) after clock time ``since``, seen on the
        bus and then found in the event log (a result is seen before the stream has stored it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = [r for r in self.observer.results if r.time >= since and not r.command_id.startswith("chaos-")]
            for result in live[-3:]:
                if await self._result_stored_since(result.host, result.vm, since):
                    return True
            await asyncio.sleep(0.2)
        return False

    async def _result_stored_since(self, host: str, vm: str, since: float) -> bool:
        admin = await self.client(topology.ADMIN_USER)
        try:
            result = await eventlog.last_result(admin.jetstream(), host, vm)
            return result is not None and result.time >= since
        except (nats.errors.Error, TimeoutError):
            return False  # not stored yet, or the stream is electing its leader

    async def metric(self, service: str, name: str, **labels: str) -> float:
        """A service's metric (0 while it restarts), scraped on a thread: the loop keeps recording meanwhile."""
        port = self.supervisor.children[service].metrics_port
        return await asyncio.to_thread(metric_or_zero, f"http://127.0.0.1:{port}/metrics", name, **labels)

    def order(self, vm: str, target: int, seen: int, *, ttl_s: float = 30.0) -> ScaleCommand:
        return faults.order(
            HOST,
            vm,
            target,
            seen,
            now=self.clock.now(),
            ttl_s=ttl_s,
            decider="chaos",
            reason="injected by hotplug chaos",
            prefix="chaos",
        )

    async def send(self, command: ScaleCommand) -> None:
        """Store a command as the decider user would (the only user allowed to)."""
        await faults.store_durably(await self.client(topology.DECIDER_USER), command)

    async def result_of(self, command: ScaleCommand) -> ScaleResult | None:
        return await self.observer.result_of(command.id, timeout_s=30)

    # --- faults ---------------------------------------------------------------------------------------------

    async def kill_and_await_restart(self, service: str) -> tuple[int, bool]:
        """SIGKILL ``service``; its pid, and whether the supervisor started it again within 30 s."""
        child = self.supervisor.children[service]
        assert child.process is not None
        pid, restarts = child.process.pid, child.restarts
        sigkill(pid)
        return pid, await within(30, lambda: child.restarts > restarts)

    async def kill(self, service: str) -> tuple[str, Check]:
        mid_action = False
        if service == "actuator":  # best when the hypervisor is in the middle of a hot-plug it was asked for

            async def plugging() -> bool:
                return await self.metric("simulator", "hotplug_sim_hotplugs_in_progress") > 0

            mid_action = await within(10, plugging, interval_s=0.02)
        since = self.clock.now()
        pid, restarted = await self.kill_and_await_restart(service)
        note = " while a hot-plug was under way" if mid_action else ""
        return f"SIGKILL to the {service} (pid {pid}){note}", {
            "restarted": restarted,
            "loop acted after": await self.loop_acts(since),
        }

    async def node_loss(self) -> tuple[str, Check]:
        admin = await self.client(topology.ADMIN_USER)
        info = await admin.jetstream().stream_info(topology.EVENTS_STREAM)
        leader = info.cluster.leader if info.cluster and info.cluster.leader else "n1"
        index = int(leader.removeprefix("n")) - 1
        since = self.clock.now()
        await asyncio.to_thread(self.cluster.kill, index)
        acted = await self.loop_acts(since)
        await asyncio.to_thread(self.cluster.restart, index)
        return f"SIGKILL to node {leader}, the event log's stream leader; restarted after the loop acted", {
            "loop acted on the other nodes": acted
        }

    async def broker_restart(self) -> tuple[str, Check]:
        await asyncio.to_thread(self.cluster.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.cluster.start)
        since = self.clock.now()
        return "every node stopped, then started again on the same stores", {
            "loop acted after": await self.loop_acts(since, timeout_s=90)
        }

    async def answered_command(self) -> ScaleCommand | None:
        """A decider's command the actuator has carried out, the latest one."""
        await self.loop_acts(self.clock.now())
        done = [r for r in self.observer.results if r.ok and not r.command_id.startswith("chaos-")]
        return next((c for r in reversed(done) for c in self.observer.commands if c.id == r.command_id), None)

    async def duplicate_command(self) -> tuple[str, Check]:
        command = await self.answered_command()
        if command is None:
            return "no executed command to repeat", {"a command to repeat": False}
        nc = await self.client(topology.DECIDER_USER)
        retry_was_duplicate = await faults.store(nc, command, retry_id=True)
        await faults.store(nc, command)
        await asyncio.sleep(self.clock.wall_seconds(4.0))
        return f"command {command.id} sent again: once as a retry (same Nats-Msg-Id), once as a new message", {
            "retry stored once": retry_was_duplicate,
            "one result": len(self.observer.results_of(command.id)) == 1,
        }

    async def duplicate_after_restart(self) -> tuple[str, Check]:
        command = await self.answered_command()
        if command is None:
            return "no executed command to repeat", {"a command to repeat": False}
        _, restarted = await self.kill_and_await_restart("actuator")
        await faults.store(await self.client(topology.DECIDER_USER), command)

        async def counted_as_duplicate() -> bool:
            return (
                await self.metric("actuator", "hotplug_messages_dropped_total", kind="command", reason="duplicate") >= 1
            )

        counted = await within(30, counted_as_duplicate)
        return f"SIGKILL to the actuator, then command {command.id}, answered before, stored again", {
            "restarted": restarted,
            "the new actuator knew it as answered": counted,
            "one result": len(self.observer.results_of(command.id)) == 1,
        }

    async def reordered_commands(self) -> tuple[str, Check]:
        vm = "vm-02"
        seen = self.observer.online.get(vm, 2)
        older = self.order(vm, max(1, seen - 1), seen)
        newer = self.order(vm, min(4, seen + 1), seen)
        await self.send(newer)
        await self.send(older)
        a, b = await self.result_of(newer), await self.result_of(older)
        undone = bool(a and b and a.ok and b.ok and a.vcpus_before != a.vcpus_after and b.vcpus_before != b.vcpus_after)
        return f"two orders for {vm} seen at {seen} vCPUs, the newer ({newer.target_vcpus}) stored first", {
            "one result each": all(len(self.observer.results_of(c.id)) == 1 for c in (newer, older)),
            "the older did not undo the newer": not undone,
        }

    async def late_command(self) -> tuple[str, Check]:
        vm = "vm-03"
        seen = self.observer.online.get(vm, 2)
        late = self.order(vm, 1 if seen > 1 else 2, seen, ttl_s=-1.0)
        await self.send(late)
        result = await self.result_of(late)
        return f"an order for {vm} that expired before it was sent", {
            "refused as expired": result is not None and result.error_code is ErrorCode.EXPIRED
        }

    async def out_of_bounds_command(self) -> tuple[str, Check]:
        seen1 = self.observer.online.get(BOUNDED_VM, 2)
        above_own = self.order(BOUNDED_VM, BOUNDS[1] + 1, seen1)
        seen2 = self.observer.online.get("vm-02", 2)
        above_vm = self.order("vm-02", 9, seen2)
        for command in (above_own, above_vm):
            await self.send(command)
        results = [await self.result_of(c) for c in (above_own, above_vm)]
        return (
            f"{BOUNDED_VM} to {above_own.target_vcpus} (actuator bound {BOUNDS[1]}), vm-02 to 9 (its maximum 4)",
            {
                "both refused as out of bounds": all(
                    r is not None and r.error_code is ErrorCode.OUT_OF_BOUNDS for r in results
                )
            },
        )

    async def malformed_messages(self) -> tuple[str, Check]:
        async def dropped(service: str, kind: str) -> float:
            return sum(
                [
                    await self.metric(service, "hotplug_messages_dropped_total", kind=kind, reason=reason)
                    for reason in ("malformed", "oversized", "unknown-version")
                ]
            )

        before = await dropped("decider", "metric"), await dropped("actuator", "command")
        restarts = {name: c.restarts for name, c in self.supervisor.children.items()}
        future = faults.future_version(faults.sample(HOST, "chaos-future", self.clock.now(), source="chaos"))
        # One VM each, and VMs no collector samples: the decider's intake keeps only a VM's newest sample, undecoded
        # until its turn, so a bad sample on a real VM's subject is replaced unjudged when the VM's next sample
        # comes first (as it did on a loaded machine), and these must all be judged.
        bad = {"chaos-garbage": faults.GARBAGE, "chaos-oversized": faults.OVERSIZED, "chaos-future": future}
        agent = await self.client(topology.host_user("agent", HOST))
        for vm, body in bad.items():
            await agent.publish(subjects.metrics(HOST, vm), body)
        await agent.flush()
        decider = await self.client(topology.DECIDER_USER)
        for vm, body in bad.items():
            await decider.jetstream().publish(
                subjects.commands(HOST, vm), body.replace(b'"type":"metric"', b'"type":"command"')
            )
        since = self.clock.now()

        async def all_counted() -> bool:
            return (
                await dropped("decider", "metric") >= before[0] + 3
                and await dropped("actuator", "command") >= before[1] + 3
            )

        counted = await within(20, all_counted)
        acted = await self.loop_acts(since)
        return "garbage, a 100 kB body and schema version 99, as metrics and as stored commands", {
            "all six counted and dropped": counted,
            "no service died": restarts == {name: c.restarts for name, c in self.supervisor.children.items()},
            "loop acted after": acted,
        }

    async def metric_flood(self) -> tuple[str, Check]:
        async def shed() -> float:
            return await self.metric("decider", "hotplug_messages_dropped_total", kind="metric", reason="shed")

        shed_before = await shed()
        agent = await self.client(topology.host_user("agent", HOST))
        ghosts = faults.ghosts(1000)
        sent = await faults.flood(agent, HOST, ghosts, 50, source="chaos-flood", now=self.clock.now)
        since = self.clock.now()
        more_shed = await within(20, lambda: _above(shed(), shed_before))
        return f"{sent} samples of {len(ghosts)} made-up VMs as fast as the broker took them", {
            "oldest samples shed": more_shed,
            "loop acted after": await self.loop_acts(since),
        }

    async def unauthorised_publish(self) -> tuple[str, Check]:
        users = (topology.host_user("collector", HOST), topology.VIEWER_USER)
        checks = {f"{user} refused": await self._refused(user) for user in users}
        return "a command and a purge of the event log, published as the collector and as the viewer", checks

    async def _refused(self, user: str) -> bool:
        """Whether the broker refuses ``user`` a command and a purge of the event log, and stores nothing."""
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(bus.servers(self.url_of(user)), error_cb=on_error, max_reconnect_attempts=1)
        command = self.order("vm-01", 1, 2)
        await nc.publish(subjects.commands(HOST, "vm-01"), encode(command))
        await nc.publish(f"$JS.API.STREAM.PURGE.{topology.EVENTS_STREAM}", b"")
        await nc.flush()
        refused = await within(5, lambda: sum("permissions violation" in e.lower() for e in errors) >= 2)
        await nc.close()
        await asyncio.sleep(0.5)
        return refused and command.id not in self.observer.seen


FAULTS: dict[str, Callable[[Chaos], Awaitable[tuple[str, Check]]]] = {
    "malformed-messages": Chaos.malformed_messages,
    "unauthorised-publish": Chaos.unauthorised_publish,
    "duplicate-command": Chaos.duplicate_command,
    "reordered-commands": Chaos.reordered_commands,
    "late-command": Chaos.late_command,
    "out-of-bounds-command": Chaos.out_of_bounds_command,
    "metric-flood": Chaos.metric_flood,
    "kill-collector": lambda chaos: chaos.kill("collector"),
    "kill-decider": lambda chaos: chaos.kill("decider"),
    "kill-actuator": lambda chaos: chaos.kill("actuator"),
    "duplicate-after-restart": Chaos.duplicate_after_restart,
    "node-loss": Chaos.node_loss,
    "broker-restart": Chaos.broker_restart,
}


async def _above(value: Awaitable[float], floor: float) -> bool:
    return await value > floor


def _window_report(
    name: str,
    injected: str,
    survived: Check,
    window: tuple[float, float],
    seconds: float,
    commands: list[ScaleCommand],
    results: list[ScaleResult],
    observer: Recorder,
) -> FaultReport:
    start, end = window
    mine = [c for c in commands if start <= c.time < end]
    ids = {c.id for c in mine}
    seen_commands = {c.id for c in observer.commands if start <= c.time < end}
    seen = seen_commands | {f"result-{i}" for i in seen_commands | ids} & observer.seen
    judged = audit(
        mine,
        [r for r in results if r.command_id in ids],
        seen_live=seen,
        live_results=[r for r in observer.results if r.command_id in ids],
        bounds={BOUNDED_VM: BOUNDS},
        samples=[s for s in observer.samples if start <= s.time < end],
    )
    return FaultReport(
        fault=name,
        injected=injected,
        survived=survived,
        commands=judged.commands,
        results=judged.results,
        lost=judged.lost,
        duplicated=judged.duplicated,
        out_of_bounds=judged.out_of_bounds,
        seconds=round(seconds, 1),
        ok=judged.clean and all(survived.values()),
    )


async def run_chaos(options: ChaosOptions, progress: Callable[[str], None] = lambda _: None) -> ChaosReport:
    unknown = set(options.only) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(sorted(unknown))}; choose from {', '.join(FAULTS)}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hotplug-chaos-") as tmp:
        root = (options.data_dir or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        chaos = Chaos(options, root)
        try:
            progress(f"starting a {options.nodes}-node cluster and the loop in {root}")
            await chaos.start()
            windows: list[tuple[str, str, Check, tuple[float, float], float]] = []
            for name, inject in FAULTS.items():
                if options.only and name not in options.only:
                    continue
                progress(f"fault: {name}")
                began, wall = chaos.clock.now(), time.monotonic()
                injected, survived = await inject(chaos)
                await asyncio.sleep(max(0.0, options.window_s - (time.monotonic() - wall)))
                windows.append((name, injected, survived, (began, chaos.clock.now()), time.monotonic() - wall))
                progress(f"  {injected}: {survived}")
            progress("stopping the decider; waiting for every command's result")
            await chaos.supervisor.retire("decider")
            admin = await chaos.client(topology.ADMIN_USER)
            commands, results = await settle(admin, timeout_s=90)
            ops = await hypervisor_ops(admin, HOST)
            restarts = {name: c.restarts for name, c in chaos.supervisor.children.items()}
        finally:
            await chaos.stop()
    totals = audit(
        commands,
        results,
        seen_live=chaos.observer.seen,
        live_results=chaos.observer.results,
        ops_by_vm=ops,
        bounds={BOUNDED_VM: BOUNDS},
        samples=chaos.observer.samples,
    )
    faults = [
        _window_report(name, injected, survived, window, seconds, commands, results, chaos.observer)
        for name, injected, survived, window, seconds in windows
    ]
    return ChaosReport(
        faults=faults,
        totals=totals,
        hypervisor_ops=sum(ops.values()),
        restarts=restarts,
        seconds=round(time.monotonic() - started, 1),
        ok=totals.clean and all(f.ok for f in faults),
    )


def print_report(report: ChaosReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hotplug chaos: {'all survived' if report.ok else 'DAMAGE FOUND'} ({report.seconds:.0f} s)")
    for column in ("fault", "injected", "survived", "commands", "results", "lost", "duplicated", "out of bounds"):
        table.add_column(column, overflow="fold")
    for f in report.faults:
        checks = ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in f.survived.items())
        table.add_row(
            f.fault,
            f.injected,
            checks,
            str(f.commands),
            str(f.results),
            str(f.lost),
            str(f.duplicated),
            str(f.out_of_bounds),
            style=None if f.ok else "bold red",
        )
    t = report.totals
    table.add_row(
        "whole run",
        f"{report.hypervisor_ops} hot-plug operations on the hypervisor",
        f"restarts: {report.restarts}",
        str(t.commands),
        str(t.results),
        str(t.lost),
        str(t.duplicated),
        str(t.out_of_bounds),
        style="bold",
    )
    Console().print(table)
