"""``hotplug up`` with a simulated host and arriving jobs: the flags reach the simulator, the live view has a host
line, and the summary sets the jobs' waits against the same arrivals with fixed sizes."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from evaluation.counterfactual import fixed_size_run, simulator_config
from hotplug.cli import build_parser, main
from hotplug.cli.services import simulator_config_of
from hotplug.config import apply_file
from hotplug.fleet import Fleet
from hotplug.fleet_view import render
from hotplug.hypervisors.simulator import SimulatorUp, simulator_of
from hotplug.up import UpOptions, child_argv
from hotplug.waits import job_waits
from services.simulator import scenario
from services.simulator.host import Host
from services.simulator.jobs import COLUMNS
from services.simulator.scenario import SimulatorConfig
from shared.config.load import load
from shared.messages import HostState, MetricSample
from shared.sim_api import JobsReply, SimJob


def sim_job(
    name: str,
    arrival: float,
    start: float | None,
    end: float | None = None,
    *,
    work_s: float | None = None,
    rejected: bool = False,
) -> SimJob:
    return SimJob(
        name=name,
        profile="batch",
        requested_vcpus=2,
        max_vcpus=4,
        arrival_s=arrival,
        start_s=start,
        end_s=end,
        work_s=work_s,
        rejected=rejected,
    )


def test_waits_count_a_job_still_waiting_with_what_it_has_waited_and_rejected_ones_apart() -> None:
    jobs = [
        sim_job("a", 0.0, 0.0, 100.0, work_s=50.0),  # wait 0, slowdown 2
        sim_job("b", 10.0, 40.0),  # wait 30, running
        sim_job("c", 20.0, None),  # still waiting at 200: 180 so far
        sim_job("d", 30.0, None, rejected=True),
    ]
    waits = job_waits(jobs, end_s=200.0)
    assert (waits.arrived, waits.started, waits.finished, waits.waiting, waits.rejected) == (4, 2, 1, 1, 1)
    assert (waits.wait_p50_s, waits.wait_p95_s, waits.wait_mean_s) == (30.0, 180.0, 70.0)
    assert (waits.slowdown_p50, waits.slowdown_max) == (2.0, 2.0)
    assert "1 rejected" in waits.line() and "slowdown of finished work p50 2.00" in waits.line()
    empty = job_waits([], end_s=10.0)
    assert math.isnan(empty.slowdown_p50) and "slowdown" not in empty.line()


def test_up_passes_the_host_and_arrivals_to_the_simulator_only() -> None:
    options = UpOptions(own=SimulatorUp(host_cores=12, arrivals_rate=4.5, arrivals_file=None))
    argv = child_argv("simulator", options, "nats://x", 0.0, 1)
    assert argv[argv.index("--host-cores") + 1] == "12"
    assert argv[argv.index("--arrivals-rate") + 1] == "4.5"
    assert "--arrivals-file" not in argv
    assert "--host-cores" not in child_argv("collector", options, "nats://x", 0.0, 1)
    plain = child_argv("simulator", UpOptions(), "nats://x", 0.0, 1)  # no new flag: the simulator as before
    assert not any(a.startswith(("--host-cores", "--arrivals")) for a in plain)
    assert not simulator_of(UpOptions(), None).has_arrivals
    assert simulator_of(options, None) == SimulatorConfig(host_cores=12, arrivals_rate=4.5, trace_vms=6)


def test_a_rate_and_a_file_together_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(",".join(COLUMNS) + "\n0,a,2,4,batch,,600\n")
    assert main(["up", "--arrivals-rate", "2", "--arrivals-file", str(path)]) == 2
    assert "not both" in capsys.readouterr().err
    path.write_text("nonsense\n")
    assert main(["simulator", "--nats", "nats://127.0.0.1:1", "--arrivals-file", str(path)]) == 2
    assert f"{path}:1: the header must be" in capsys.readouterr().err


def test_the_fixed_size_run_is_the_simulators_run_rebuilt_from_ups_options_and_the_file(tmp_path: Path) -> None:
    (tmp_path / "jobs.csv").write_text(",".join(COLUMNS) + "\n0,a,4,8,batch,,600\n5,b,4,8,idle,100,\n")
    config_file = tmp_path / "hotplug.toml"
    config_file.write_text('[simulator]\nprofiles = "idle"\nmax_vcpus = 4\narrivals_file = "jobs.csv"\n')
    file = load(config_file).config
    config = simulator_config(
        vms=2,
        seed=3,
        trace=None,
        host_cores=None,
        arrivals_rate=0.0,
        arrivals_file=None,
        file=file,
        file_dir=tmp_path,
    )
    assert (config.vms, config.seed, config.profiles, config.max_vcpus) == (2, 3, ("idle",), 4)
    assert config.arrivals_file == tmp_path / "jobs.csv"
    # a rate from up and a file from [simulator] reach the child together, which refuses them
    with pytest.raises(ValueError, match="not both"):
        simulator_config(vms=2, seed=3, trace=None, host_cores=None, arrivals_rate=2.0, arrivals_file=None, file=file)
    # the simulator's live run, which resized nothing, is what the fixed-size run rebuilds
    live = Host(8, 8, jobs=scenario.arrivals(config), resident=scenario.resident_vms(config, 0.0))
    live.advance(300.0)
    reply = JobsReply(time=1300.0, origin=1000.0, host=live.state(), jobs=live.jobs())
    fixed = fixed_size_run(config, reply)
    assert fixed.jobs == reply.jobs
    assert fixed.host.host_wait_core_seconds == pytest.approx(reply.host.host_wait_core_seconds)


def test_the_view_has_a_host_line_and_the_summary_sets_waits_against_fixed_sizes() -> None:
    fleet = Fleet()
    assert not any(line.startswith("jobs") for line in fleet.summary_lines())  # no arrivals: as before
    fleet.on_host_state(
        HostState(
            time=1.0,
            host="local",
            cpus=16,
            capacity_vcpus=16,
            committed_vcpus=14,
            free_vcpus=2,
            used_cores=9.5,
            waiting_vms=2,
            waiting_vcpus=6,
        )
    )
    console = Console(width=160, record=True)
    console.print(render(fleet, "title"))
    assert "host local: 16 vCPUs capacity on 16 CPUs, 14 committed, 9.5 cores used; 2 jobs waiting (6 vCPUs)" in (
        console.export_text()
    )
    live = JobsReply(
        time=1100.0,
        origin=100.0,
        host=Host(16, 16).state(),
        jobs=[sim_job("a", 0.0, 0.0), sim_job("b", 10.0, 20.0)],
    )
    fixed = Host(16, 16).outcome()._replace(jobs=[sim_job("a", 0.0, 0.0), sim_job("b", 10.0, None)])
    fleet.on_jobs(live, fixed)
    lines = fleet.summary_lines()
    assert any(line.startswith("host: 16 cores, capacity 16 vCPUs") for line in lines)
    assert "jobs with hot-plug: 2 arrived, 2 started, 0 finished, 0 waiting; wait p50 10 s, p95 10 s" in "\n".join(
        lines
    )
    # with fixed sizes b still waits at the end (1000 s into the run): 990 s so far
    assert "jobs with fixed sizes (same arrivals): 2 arrived, 1 started, 0 finished, 1 waiting; wait p50 990 s" in (
        "\n".join(lines)
    )


def test_a_vm_that_left_its_host_leaves_the_live_view_but_stays_in_the_summary() -> None:
    fleet = Fleet()

    def sample(vm: str, t: float) -> None:
        fleet.on_sample(
            MetricSample(
                time=t,
                host="local",
                vm=vm,
                online_vcpus=2,
                min_vcpus=1,
                max_vcpus=4,
                cpu_used_cores=1.0,
                interval_s=1.0,
                source="simulator",
            )
        )

    for t in range(10):
        sample("stays", float(t))
        if t < 3:
            sample("job-0001", float(t))
    assert list(fleet.live_rows()) == [("local", "stays")]
    assert fleet.summary_lines()[0] == "VMs: 2"
    sample("job-0002", 9.5)
    assert ("local", "job-0002") in fleet.live_rows()


@pytest.mark.parametrize(
    ("options", "section"),
    [
        (UpOptions(), ""),
        (UpOptions(vms=3, own=SimulatorUp(seed=9, host_cores=20, arrivals_rate=6.0)), ""),
        (UpOptions(vms=2), '[simulator]\nprofiles = "batch,idle"\nmax_vcpus = 6\narrivals_file = "jobs.csv"\n'),
        (UpOptions(own=SimulatorUp(arrivals_rate=3.0)), "[simulator]\nhost_cores = 12\narrivals_seed = 5\nvms = 4\n"),
        (UpOptions(own=SimulatorUp(trace="TRACE")), "[simulator]\nvms = 1\n"),
        (UpOptions(), '[simulator]\ntrace = "trace.csv"\n'),
        (UpOptions(own=SimulatorUp(host_memory="64GiB", host_memory_overcommit=1.5)), ""),
        (UpOptions(), '[simulator]\nhost_memory = "8192"\nhost_memory_overcommit = 1.25\n'),
        (UpOptions(own=SimulatorUp(host_memory="4GiB")), "[simulator]\nhost_memory_overcommit = 2.0\n"),
    ],
)
def test_up_rebuilds_exactly_what_its_simulator_child_runs(options: UpOptions, section: str, tmp_path: Path) -> None:
    (tmp_path / "jobs.csv").write_text(",".join(COLUMNS) + "\n0,a,4,8,batch,,600\n")
    (tmp_path / "trace.csv").write_text("time_s,vm,demand_vcpus\n0,a,1\n0,b,2\n")
    config_file = tmp_path / "hotplug.toml"
    config_file.write_text(section)
    if options.own is not None and options.own.trace is not None:
        options = replace(options, own=msgspec.structs.replace(options.own, trace=str(tmp_path / "trace.csv")))
    options = replace(options, config=config_file)
    argv = child_argv("simulator", options, "nats://127.0.0.1:1", 0.0, 1)[3:]  # after "python -m hotplug"
    parser = build_parser()
    loaded = apply_file(parser, argv)
    args = parser.parse_args(argv)
    args.config_file = loaded
    child = replace(simulator_config_of(args), hotplug_delay_s=SimulatorConfig().hotplug_delay_s)
    assert simulator_of(options, load(config_file).config) == child


def test_the_simulated_hosts_memory_reaches_the_simulator_from_up_its_flags_and_the_file(tmp_path: Path) -> None:
    gib = 1024**3
    options = UpOptions(own=SimulatorUp(host_memory="64GiB", host_memory_overcommit=1.5))
    argv = child_argv("simulator", options, "nats://x", 0.0, 1)
    assert argv[argv.index("--host-memory") + 1] == "64GiB"
    assert argv[argv.index("--host-memory-overcommit") + 1] == "1.5"
    config = simulator_of(options, None)
    assert (config.host_memory_bytes, config.memory_overcommit, scenario.memory_capacity(config)) == (
        64 * gib,
        1.5,
        96 * gib,
    )
    plain = child_argv("simulator", UpOptions(), "nats://x", 0.0, 1)  # not given: memory not limited, as before
    assert not any(a.startswith("--host-memory") for a in plain)
    assert scenario.memory_capacity(simulator_of(UpOptions(), None)) is None
    (tmp_path / "hotplug.toml").write_text('[simulator]\nhost_memory = "8GiB"\nhost_memory_overcommit = 1.25\n')
    file = load(tmp_path / "hotplug.toml").config
    from_file = simulator_config(
        vms=2, seed=3, trace=None, host_cores=None, arrivals_rate=0.0, arrivals_file=None, file=file
    )
    assert (from_file.host_memory_bytes, from_file.memory_overcommit) == (8 * gib, 1.25)


def test_a_bad_host_memory_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulator", "--nats", "nats://127.0.0.1:1", "--host-memory", "lots"]) == 2
    assert "--host-memory: 'lots' is not a memory size" in capsys.readouterr().err
    assert main(["up", "--host-memory", "0"]) == 2
    assert "host_memory: '0' is no memory" in capsys.readouterr().err


def test_the_fixed_size_run_waits_for_memory_as_the_live_run_did(tmp_path: Path) -> None:
    # two jobs of 4 vCPUs (8 GiB each) beside a resident VM of 4 GiB (2 vCPUs), on a host of 32 cores but 14 GiB:
    # the second job waits for the first to end
    gib = 1024**3
    (tmp_path / "jobs.csv").write_text(",".join(COLUMNS) + "\n0,a,4,4,idle,100,\n5,b,4,4,idle,100,\n")
    config = SimulatorConfig(vms=1, max_vcpus=4, arrivals_file=tmp_path / "jobs.csv", host_memory_bytes=14 * gib)
    live = Host(
        32,
        32,
        jobs=scenario.arrivals(config),
        resident=scenario.resident_vms(config, 0.0),
        memory_capacity_bytes=scenario.memory_capacity(config),
        memory_bytes=14 * gib,
    )
    live.advance(300.0)
    reply = JobsReply(time=300.0, origin=0.0, host=live.state(), jobs=live.jobs())
    assert [job.start_s for job in reply.jobs] == [0.0, pytest.approx(100.0)]
    assert fixed_size_run(config, reply).jobs == reply.jobs
