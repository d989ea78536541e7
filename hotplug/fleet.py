"""What ``hotplug up`` knows of the fleet from the bus: per-VM state for the live view, and run totals.

Pure: fed decoded messages, read by the view and the summary.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from evaluation.decisions import Change, applied_changes, undone_changes
from evaluation.memory_tally import MemoryTally
from evaluation.tally import Tally
from hotplug.events import change_text, event_record
from hotplug.waits import job_waits
from services.simulator.host import Outcome
from shared.config.rules import Defaults, resolve
from shared.config.schema import ConfigFile
from shared.messages import HostState, MetricSample, Resource, ScaleCommand, ScaleResult
from shared.sim_api import JobsReply


@dataclass
class VmRow:
    host: str
    vm: str
    online_vcpus: int = 0
    max_vcpus: int = 0
    used_cores: float = 0.0
    pressure_cores: float | None = None
    last_action: str = ""
    last_reason: str = ""
    last_action_time: float = 0.0
    changes: int = 0  # applied resizes (an ok result that moved the vCPU count)
    sampled_at: float = 0.0  # the time of its latest sample, and that sample's interval
    interval_s: float = 0.0
    # Memory, where the source reads it: what the VM has, what its guest uses (None: unknown), its OOM kills.
    memory_bytes: int | None = None
    memory_used_bytes: int | None = None
    oom_kills: int = 0


@dataclass
class RunTotals:
    """What the bus carried: commands and their results. The core-seconds are the run's ``Tally``."""

    commands: int = 0
    results_ok: int = 0
    results_failed: int = 0
    plugs: int = 0
    unplugs: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Fleet:
    def __init__(self, config: ConfigFile | None = None, policy: str = "default") -> None:
        # The run's config file, for the rule each VM falls under (the summary's "VM rules" line).
        self.config = config
        self.policy = policy
        self.rows: dict[tuple[str, str], VmRow] = {}
        self.totals = RunTotals()
        # Core-seconds allocated, used (served) and waiting (unmet), as the samples measured them; actions are the
        # applied changes. The same tally replay and the decisions bench score with.
        self.tally = Tally()
        self.memory = MemoryTally()  # memory's own: byte-seconds against the guests' use, swap, OOM kills
        self._reasons: dict[str, str] = {}
        self.changes: list[Change] = []
        self.hosts: dict[str, HostState] = {}  # each host's latest state
        self.latest_sample = 0.0
        # The simulated host's jobs at the end of the run, and the same arrivals with fixed sizes.
        self.jobs: JobsReply | None = None
        self.fixed: Outcome | None = None

    def _row(self, host: str, vm: str) -> VmRow:
        key = (host, vm)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = VmRow(host, vm)
        return row

    def on_sample(self, sample: MetricSample) -> None:
        row = self._row(sample.host, sample.vm)
        row.online_vcpus = sample.online_vcpus
        row.max_vcpus = sample.max_vcpus
        row.used_cores = sample.cpu_used_cores
        row.pressure_cores = sample.pressure_cores
        row.sampled_at = max(row.sampled_at, sample.time)
        row.interval_s = sample.interval_s
        self.latest_sample = max(self.latest_sample, sample.time)
        self.tally.add_sample(sample)
        if sample.memory is not None:
            row.memory_bytes, row.memory_used_bytes = sample.memory.size_bytes, sample.memory.used_bytes
            row.oom_kills = max(row.oom_kills, sample.memory.oom_kills or 0)
            self.memory.add_sample(sample)

    # A VM not sampled for this many of its intervals has left its host (a job that ended): out of the live view.
    GONE_AFTER_INTERVALS = 5

    def live_rows(self) -> dict[tuple[str, str], VmRow]:
        """The rows of VMs still sampled (all of them stay in the totals and the summary)."""
        return {
            key: row
            for key, row in self.rows.items()
            if row.sampled_at == 0.0
            or row.sampled_at >= self.latest_sample - self.GONE_AFTER_INTERVALS * row.interval_s
        }

    def on_host_state(self, state: HostState) -> None:
        self.hosts[state.host] = state

    def on_jobs(self, live: JobsReply, fixed: Outcome | None) -> None:
        """What became of the simulated host's jobs, and (``fixed``) of the same arrivals with fixed sizes."""
        self.jobs = live
        self.fixed = fixed

    def on_command(self, command: ScaleCommand) -> None:
        self.totals.commands += 1
        self._reasons[command.id] = command.reason

    @property
    def unanswered(self) -> int:
        """Commands seen without their result yet."""
        return len(self._reasons)

    def on_result(self, result: ScaleResult) -> None:
        t = self.totals
        row = self._row(result.host, result.vm)
        row.last_action_time = result.time
        row.last_reason = self._reasons.pop(result.command_id, "")
        if result.resource is Resource.MEMORY:
            self.memory.add_result(result)
        if result.ok and result.resource is Resource.MEMORY:
            t.results_ok += 1
            row.last_action = "memory " + change_text(event_record(result))
        elif result.ok:
            t.results_ok += 1
            before, after = result.vcpus_before or 0, result.vcpus_after or 0
            t.plugs += max(0, after - before)
            t.unplugs += max(0, before - after)
            row.last_action = f"{before}→{after}"
            applied = applied_changes([result])
            row.changes += len(applied)
            self.tally.actions += len(applied)
            self.changes.extend(applied)
        else:
            t.results_failed += 1
            code = result.error_code.value if result.error_code else "unknown"
            t.errors[code] = t.errors.get(code, 0) + 1
            row.last_action = f"failed: {code}"

    def summary_lines(self) -> list[str]:
        t, cores = self.totals, self.tally
        ratio = cores.served_core_s / cores.alloc_core_s if cores.alloc_core_s else 0.0
        lines = [
            f"VMs: {len(self.rows)}",
            f"commands: {t.commands}; results: {t.results_ok} ok, {t.results_failed} failed; "
            f"vCPUs plugged: {t.plugs}, unplugged: {t.unplugs}",
            f"core-hours allocated: {cores.alloc_core_s / 3600:.3f}; used: {cores.served_core_s / 3600:.3f} "
            f"({ratio:.0%} of allocated); unmet demand: {cores.unmet_core_s / 3600:.3f} core-hours",
        ]
        lines.append(self._changes_line())
        if self.memory.vm_seconds:
            lines.append(self._memory_line())
        # Every failed result is a refused command; by code, so a user sees at once whether it was the rate
        # limit, a guest that would not unplug, or bounds.
        refused = f"refused commands: {t.results_failed}"
        if t.errors:
            refused += " (" + ", ".join(f"{k}={v}" for k, v in sorted(t.errors.items())) + ")"
        lines.append(refused)
        lines.extend(self._jobs_lines())
        if self.config is not None:
            lines.append(self._rules_line(self.config))
        return lines

    def _memory_line(self) -> str:
        """ "memory: 41.2 GiB-hours allocated, 1.62× what the guests used; given back 12.0 GiB in 9 changes; swapping
        0.00 % of VM time; OOM kills 0"."""
        s = self.memory.scores()
        return (
            f"memory: {s['memory_alloc_gib_hours']:.2f} GiB-hours allocated, {s['memory_ratio_to_oracle']:.2f}× "
            f"what the guests used; given back {s['memory_given_back_gib']:.1f} GiB in {self.memory.changes} "
            f"changes; swapping {s['swap_pct']:.2f} % of VM time; OOM kills {self.memory.oom_kills}"
        )

    def _jobs_lines(self) -> list[str]:
        """The jobs' waits with hot-plug, against the same arrivals with fixed sizes."""
        live = self.jobs
        if live is None:
            return []
        span = live.time - live.origin
        host = live.host
        lines = [
            f"host: {host.cores} cores, capacity {host.capacity_vcpus} vCPUs; host wait "
            f"{host.host_wait_core_seconds / 3600:.3f} core-hours"
            + (f" (fixed sizes: {self.fixed.host.host_wait_core_seconds / 3600:.3f})" if self.fixed else ""),
            f"jobs with hot-plug: {job_waits(live.jobs, span).line()}",
        ]
        if self.fixed is not None:
            lines.append(f"jobs with fixed sizes (same arrivals): {job_waits(self.fixed.jobs, span).line()}")
        return lines

    def _rules_line(self, config: ConfigFile) -> str:
        """Each rule with its settings and the VMs under it: "VM rules: #1 vm-01 (off): vm-01; default: ..."."""
        actuator = config.actuator
        defaults = Defaults(self.policy, {}, actuator.min_vcpus, actuator.max_vcpus)
        under: dict[str, list[str]] = {}
        for host, vm in sorted(self.rows):
            s = resolve(config.vm, host, vm, defaults)
            label = "default" if s.rule_index is None else f"#{s.rule_index + 1} {s.rule}"
            bounds = (
                ""
                if s.min_vcpus is None and s.max_vcpus is None
                else f", {s.min_vcpus or 1}-{s.max_vcpus if s.max_vcpus is not None else 'max'} vCPUs"
            )
            detail = "off" if s.autoscale == "off" else f"{s.autoscale}, {s.policy}{bounds}"
            under.setdefault(f"{label} ({detail})", []).append(vm)
        if not under:
            return "VM rules: no VM seen"
        return "VM rules: " + "; ".join(f"{rule}: {', '.join(vms)}" for rule, vms in under.items())

    # Beyond this many VMs the per-VM list would flood the terminal; a spread says as much.
    MAX_LISTED_VMS = 12

    def _changes_line(self) -> str:
        one_host = len({host for host, _ in self.rows}) <= 1
        counts = {vm if one_host else f"{host}/{vm}": row.changes for (host, vm), row in sorted(self.rows.items())}
        if not counts:
            return "changes per VM: no VM seen"
        undone = len(undone_changes(self.changes))
        tail = f"; {undone} of {len(self.changes)} undone within 60 s"
        if len(counts) <= self.MAX_LISTED_VMS:
            return "changes per VM: " + ", ".join(f"{vm} {n}" for vm, n in counts.items()) + tail
        busiest = max(counts, key=lambda vm: counts[vm])
        return (
            f"changes per VM: min {min(counts.values())}, median {statistics.median(counts.values()):g}, "
            f"max {counts[busiest]} ({busiest}){tail}"
        )
