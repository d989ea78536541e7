"""``hotplug bench decisions``: how good each policy's decisions are, live, through the whole loop.

For each policy and seed: an embedded nats-server, then the simulator, actuator, decider (with that policy) and
collector (1 s sampling) as real processes on one shared clock running ``speed`` times faster than the wall. A
recorder on the bus keeps every sample, command and result; once the samples span ``duration_s`` simulated
seconds the collector and decider stop, the actuator answers what is in flight, and the run is scored by the
pure ``evaluation.decisions``. Each seed runs on its own host name, so seeds pool into one score per policy without
their VMs mixing.

Whether the loop kept up at this speed is reported with the figures: samples received against expected, late
samples (the collector skipped a tick), how far behind the clock samples reached the bus, and the samples the
decider dropped as stale or shed. A run whose samples go missing or lag measures the machine, not the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.bench.common import machine, percentile, ready_service
from evaluation.decisions import UNDO_WINDOW_S, in_window, sample_health, score_run
from hotplug.harness.processes import ServiceProcess
from hotplug.harness.recorder import Recorder
from hotplug.harness.scrape import metric_async
from shared import bus
from shared.broker import EmbeddedBroker
from shared.clock import Clock
from shared.messages import MetricSample, ScaleCommand, ScaleResult

# Seeds no test uses, so the figures are not of a case anyone tuned against.
DEFAULT_SEEDS = (11, 12)
DEFAULT_VMS = 8
INTERVAL_S = 1.0
# Wall seconds the actuator gets, after the decider stops, to answer the commands still in flight.
DRAIN_S = 10.0


@dataclass(frozen=True)
class DecisionsOptions:
    policies: tuple[str, ...] = ("default",)
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    duration_s: float = 3600.0
    speed: float = 30.0
    vms: int | None = None  # None: DEFAULT_VMS seeded VMs, or every VM of the trace
    trace: Path | None = None
    data_dir: Path | None = None  # keep each run's event log and logs here (default: a temporary directory)
    params: tuple[str, ...] = ()  # ``--param NAME.KEY=VALUE``: each goes to the deciders of policy NAME (guard: all)
    # The collector's urgent rounds when a simulated guest's PSI trigger fires; False: regular samples only (the
    # collector's --no-urgent), to measure what event-driven pressure buys.
    urgent: bool = True


class LagRecorder(Recorder):
    """Everything the bus carried during one run, and how late each sample arrived on the run's clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.lags: list[float] = []

    def on_sample(self, sample: MetricSample) -> None:
        self.lags.append(self.clock.now() - sample.time)
        super().on_sample(sample)


async def _dropped(decider: ServiceProcess) -> dict[str, int]:
    """Samples the decider dropped, by reason (stale: older than --max-sample-age; shed: its intake was full)."""
    out = {}
    for reason in ("stale", "shed", "malformed"):
        with contextlib.suppress(OSError):
            out[reason] = int(
                await metric_async(decider.metrics_url, "hotplug_messages_dropped_total", kind="metric", reason=reason)
            )
    return out


@dataclass
class Run:
    """One policy on one seed: its score, and what it did in the window (pooled over seeds later)."""

    score: dict[str, object]
    samples: list[MetricSample] = field(default_factory=list)
    commands: list[ScaleCommand] = field(default_factory=list)
    results: list[ScaleResult] = field(default_factory=list)


def params_for(policy: str, params: tuple[str, ...]) -> list[str]:
    """The decider's ``--param`` arguments for ``policy``: those of its own scope, ``guard`` and ``memory``."""
    return [arg for item in params if item.split(".", 1)[0] in (policy, "guard", "memory") for arg in ("--param", item)]


async def run_one(policy: str, seed: int, options: DecisionsOptions, work: Path) -> Run:
    host = f"seed-{seed}"
    logs = work / "logs"
    started = time.monotonic()
    with EmbeddedBroker(work / "nats") as broker:
        nc = await bus.connect(broker.url, "bench-decisions", forever=False)
        services: dict[str, ServiceProcess] = {}
        try:
            await bus.ensure_streams(nc.jetstream())
            epoch = time.time()
            clock = Clock(speed=options.speed, epoch=epoch)
            recorder = LagRecorder(clock)
            await recorder.attach(nc)
            common = ["--nats", broker.url, "--host", host, "--speed", repr(options.speed), "--epoch", repr(epoch)]
            sim = ["simulator", *common, "--seed", str(seed)]
            if options.vms is not None or options.trace is None:
                sim += ["--vms", str(options.vms or DEFAULT_VMS)]
            if options.trace is not None:
                sim += ["--trace", str(options.trace)]
            # The collector last, so the decider and actuator are listening from the first sample.
            for name, argv in (
                ("simulator", sim),
                ("actuator", ["actuator", *common]),
                ("decider", ["decider", *common, "--policy", policy, *params_for(policy, options.params)]),
                (
                    "collector",
                    [
                        "collector",
                        *common,
                        "--interval",
                        repr(INTERVAL_S),
                        *([] if options.urgent else ["--no-urgent"]),
                    ],
                ),
            ):
                services[name] = await ready_service(argv, logs)

            # Measure from the first sample, for duration_s of the shared clock; a loop that cannot keep up fails
            # here instead of reporting a short run.
            wall_limit = time.monotonic() + options.duration_s / options.speed * 2 + 60
            while not recorder.samples or recorder.samples[-1].time < recorder.samples[0].time + options.duration_s:
                if time.monotonic() > wall_limit:
                    raise RuntimeError(
                        f"{policy}, seed {seed}: the samples did not span {options.duration_s:g} "
                        f"simulated seconds in time; the loop fell behind at --speed "
                        f"{options.speed:g}"
                    )
                await asyncio.sleep(0.2)
            start = recorder.samples[0].time
            end = start + options.duration_s
            dropped = await _dropped(services["decider"])
            read_failures = int(
                await metric_async(services["collector"].metrics_url, "hotplug_collector_read_failures_total")
            )
            for name in ("collector", "decider"):  # no new samples, no new commands
                await services.pop(name).stop_async()
            ids = {c.id for c in recorder.commands if start <= c.time <= end}
            for _ in range(int(DRAIN_S / 0.1)):  # until each is answered, or DRAIN_S
                if not ids - {r.command_id for r in recorder.results}:
                    break
                await asyncio.sleep(0.1)
            samples, commands, results = in_window(recorder.samples, recorder.commands, recorder.results, start, end)
        finally:
            for service in services.values():
                await service.stop_async()
            with contextlib.suppress(Exception):
                await nc.close()
    score = score_run(samples, commands, results)
    score["health"] = {
        **sample_health(samples, INTERVAL_S, options.duration_s),
        "lag_p50_s": round(percentile(recorder.lags, 0.5), 3),
        "lag_p95_s": round(percentile(recorder.lags, 0.95), 3),
        "collector_read_failures": read_failures,
        "decider_dropped": dropped,
    }
    # The window on the run's clock: the commands given in it are the ones counted (`hotplug events` on the kept
    # data dir shows the same, and a few given after it while the decider stopped).
    score["window"] = [start, end]
    score["wall_s"] = round(time.monotonic() - started, 1)
    return Run(score, samples, commands, results)


Progress = Callable[[str], None]


async def run(options: DecisionsOptions, work: Path, progress: Progress | None = None) -> dict[str, object]:
    policies: dict[str, object] = {}
    for policy in options.policies:
        per_seed: dict[str, object] = {}
        pooled = Run({})
        for seed in options.seeds:
            one = await run_one(policy, seed, options, work / f"{policy}-seed{seed}")
            pooled.samples += one.samples
            pooled.commands += one.commands
            pooled.results += one.results
            per_seed[str(seed)] = one.score
            if progress is not None:
                progress(
                    f"{policy}, seed {seed}: {one.score['commands']} commands, {one.score['changes']} changes, "
                    f"{one.score['wall_s']} wall s"
                )
        policies[policy] = {
            **score_run(pooled.samples, pooled.commands, pooled.results),
            # what the guests' PSI triggers brought: urgent samples among all the collector sent
            "urgent_samples": sum(1 for s in pooled.samples if s.urgent),
            "seeds": per_seed,
        }
    return {
        "bench": "decisions",
        "duration_s": options.duration_s,
        "speed": options.speed,
        "interval_s": INTERVAL_S,
        "vms": options.vms if options.trace else options.vms or DEFAULT_VMS,
        "trace": str(options.trace) if options.trace else None,
        "seeds": list(options.seeds),
        "undo_window_s": UNDO_WINDOW_S,
        "urgent": options.urgent,
        "policies": policies,
        **machine(),
    }


def bench_decisions(options: DecisionsOptions, progress: Progress | None = None) -> dict[str, object]:
    if options.data_dir is not None:
        options.data_dir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(run(options, options.data_dir.resolve(), progress))
    with tempfile.TemporaryDirectory(prefix="hp-bench-decisions-") as tmp:
        return asyncio.run(run(options, Path(tmp), progress))


def render_table(report: dict[str, object]) -> None:
    """The report as a rich table: one row per policy (all seeds pooled), then one per seed."""
    from rich.console import Console
    from rich.table import Table

    title = (
        f"decisions, live: {report['duration_s']} simulated s per seed at x{report['speed']}, "
        f"{report['trace'] or str(report['vms']) + ' seeded VMs'}"
    )
    table = Table(title=title)
    for column in (
        "policy",
        "seed",
        "commands",
        "refused %",
        "refused by code",
        "changes",
        "undone ≤60 s %",
        "changes/VM-h",
        "×oracle",
        "unmet %",
        "samples missing %",
        "lag p95 s",
        "dropped",
    ):
        table.add_column(column, justify="left" if column in ("policy", "seed", "refused by code") else "right")
    policies = report["policies"]
    assert isinstance(policies, dict)

    def row(policy: str, seed: str, s: dict[str, object]) -> list[str]:
        codes = s["refused_by_code"]
        assert isinstance(codes, dict)
        health = s.get("health")
        missing = lag = dropped = ""
        if isinstance(health, dict):
            missing, lag = f"{health['missing_pct']}", f"{health['lag_p95_s']}"
            dropped = str(sum(health["decider_dropped"].values()))
        return [
            policy,
            seed,
            str(s["commands"]),
            f"{s['refused_pct']}",
            ", ".join(f"{k}={v}" for k, v in codes.items()),
            str(s["changes"]),
            f"{s['undone_pct']}",
            f"{s['changes_per_vm_hour']}",
            f"{s['cost_x_oracle']}",
            f"{s['unmet_pct']}",
            missing,
            lag,
            dropped,
        ]

    for name, scores in policies.items():
        table.add_row(*row(name, "all", scores))
        for seed, one in scores["seeds"].items():
            table.add_row(*row("", seed, one))
    Console().print(table)
    memory = Table(title="memory (the memory rule, beside each policy)")
    columns = (
        "policy",
        "seed",
        "commands",
        "refused %",
        "changes/VM-h",
        "×used",
        "swap %",
        "OOM kills",
        "given back GiB",
    )
    for column in columns:
        memory.add_column(column, justify="left" if column in ("policy", "seed") else "right")

    def memory_row(policy: str, seed: str, m: dict[str, object]) -> list[str]:
        keys = ("commands", "refused_pct", "changes_per_vm_hour", "x_used", "swap_pct", "oom_kills", "given_back_gib")
        return [policy, seed, *(str(m[k]) for k in keys)]

    for name, scores in policies.items():
        if isinstance(scores.get("memory"), dict):
            memory.add_row(*memory_row(name, "all", scores["memory"]))
            for seed, one in scores["seeds"].items():
                if isinstance(one.get("memory"), dict):
                    memory.add_row(*memory_row("", seed, one["memory"]))
    if memory.row_count:
        Console().print(memory)
