"""``--config FILE`` on the command line: each section mirrors its command's flags, the settings order is built-in
default < file < environment variable < flag, and ``hotplug config check``/``reference``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hotplug.cli import build_parser, main
from hotplug.config import _subparser, apply_file, config_path, reference, section_type, up_settings
from shared import bus
from shared.config.schema import (
    CONFIG_ENV,
    SECTIONS,
    SETTINGS,
    ActuatorSettings,
    DeciderSettings,
    ServiceSection,
    ServiceSettings,
    SimulatorSettings,
    UpSettings,
)
from shared.config.settings import env_of, param_flags, specs
from shared.libvirt.connection import URI_ENV

REPO = Path(__file__).resolve().parents[2]
NOT_MIRRORED = {"help", "handler", "config"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*env_of(ServiceSettings).values(), CONFIG_ENV):
        monkeypatch.delenv(name, raising=False)


def actions(command: str) -> dict[str, argparse.Action]:
    sub = _subparser(build_parser(), command)
    return {a.dest: a for a in sub._actions if a.dest not in NOT_MIRRORED}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    loaded = apply_file(parser, argv)
    args = parser.parse_args(argv)
    args.config_file = loaded
    return args


# Keys whose flag offers the names in a plug-in registry (sources, drivers): open-ended in the file.
PLUGIN_KEYS = {"source", "driver", "hypervisor"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hotplug.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("command", sorted(SECTIONS))
def test_each_section_has_exactly_its_commands_flags(command: str) -> None:
    assert set(section_type(command).__struct_fields__) == set(actions(command))


@pytest.mark.parametrize("command", sorted(SECTIONS))
def test_each_key_takes_what_its_flag_takes(command: str) -> None:
    schema: dict[str, Any] = msgspec.json.schema(section_type(command))
    props = schema["$defs"][section_type(command).__name__]["properties"]
    for dest, action in actions(command).items():
        kinds = {o.get("type") for o in props[dest].get("anyOf", [props[dest]])} - {"null"}
        enum = next((o["enum"] for o in props[dest].get("anyOf", []) if "enum" in o), None)
        if dest in PLUGIN_KEYS:
            assert kinds == {"string"}, dest  # any registered name: plug-ins add names the file must take
        elif action.choices is not None:
            assert enum is not None and set(enum) == set(action.choices), dest
        elif isinstance(action, argparse._StoreTrueAction):
            assert kinds == {"boolean"}, dest
        elif isinstance(action, argparse._AppendAction):
            assert kinds <= {"array", "object"}, dest
        elif action.type is int or getattr(action.type, "__name__", "") == "int":
            assert kinds == {"integer"}, dest
        elif action.type is not None and action.type is not Path:
            assert kinds <= {"number", "integer"}, dest  # float and positive


def test_the_environment_variables_named_are_those_the_code_reads() -> None:
    service = env_of(ServiceSettings)
    up = {s.name: s.env for s in up_settings() if s.env is not None}  # the records' options' too (libvirt_uri)
    assert service["nats"] == up["nats"] == bus.DEFAULT_URL_ENV
    assert env_of(SETTINGS["collector"])["libvirt_uri"] == up["libvirt_uri"] == URI_ENV
    assert service == {
        "nats": "HOTPLUG_NATS_URL",
        "host": "HOTPLUG_HOST",
        "metrics_port": "HOTPLUG_METRICS_PORT",
        "metrics_addr": "HOTPLUG_METRICS_ADDR",
        "speed": "HOTPLUG_SPEED",
        "log_level": "HOTPLUG_LOG_LEVEL",
    }
    for key, variable in service.items():
        assert f"${variable}" in (actions("decider")[key].help or ""), key


def test_the_settings_order_is_default_file_environment_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[service]\nhost = "from-service"\n[decider]\nhost = "from-file"\ncommand_ttl = 12\n')
    base = ["decider", "--config", str(path)]
    assert parse(["decider"]).host == "local"  # built-in default
    assert parse(base).host == "from-file"  # the command's own section over [service]
    assert parse(base).command_ttl == 12
    monkeypatch.setenv("HOTPLUG_HOST", "from-env")
    assert parse(base).host == "from-env"
    assert parse([*base, "--host", "from-flag"]).host == "from-flag"
    assert parse([*base, "--command-ttl", "7"]).command_ttl == 7


def test_the_file_comes_from_hotplug_config_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[actuator]\nmax_vcpus = 9\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert parse(["actuator"]).max_vcpus == 9
    assert config_path(["events"], {CONFIG_ENV: str(path)}) is None  # only commands that take a file
    assert config_path(["decider", f"--config={path}"], {}) == ("decider", path)


def test_params_from_the_file_come_before_the_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "[decider]\nparam.threshold.upper = 0.9\nparam.guard.warmup_s = 0\n")
    args = parse(["decider", "--config", str(path), "--param", "threshold.upper=0.7"])
    assert args.param == ["threshold.upper=0.9", "guard.warmup_s=0", "threshold.upper=0.7"]


def test_paths_in_the_file_are_taken_from_its_folder(tmp_path: Path) -> None:
    path = write(tmp_path, '[up]\ndata_dir = "runs/one"\ntrace = "t.csv"\n')
    args = parse(["up", "--config", str(path)])
    assert (args.data_dir, args.trace) == (tmp_path / "runs/one", tmp_path / "t.csv")


def test_a_file_value_outside_a_flags_choices_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '\n[collector]\nsource = "vmware"\n')
    assert main(["collector", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"hotplug.toml:3: collector.source: unknown source 'vmware'; choose from simulator, psutil", err)


def test_config_check_lists_each_vms_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[[vm]]\nmatch = "vm-01"\nautoscale = "off"\n[[vm]]\nmatch = "db-*"\nmax_vcpus = 4\n')
    assert main(["config", "check", str(path), "--vm", "vm-01", "--vm", "node2/vm-02"]) == 0
    out = capsys.readouterr().out
    assert "valid; 2 [[vm]] rules" in out
    assert "no broker given" in out
    assert re.search(r"local\s+vm-01\s+#1 vm-01\s+off", out)
    assert re.search(r"node2\s+vm-02\s+default\s+auto\s+default\s+1\.\.1024", out)
    assert "rule #2 (match db-*) matches none of these VMs" in out


def test_config_check_refuses_an_invalid_file_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[[vm]]\nmatch = "a"\n\n[[vm]]\nmatch = "b"\nmax_vcpus = -1\n')
    assert main(["config", "check", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{path}:6: vm[1].max_vcpus: Expected `int` >= 1")


def test_config_check_refuses_a_rule_its_policy_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[decider]\npolicy = "hpa"\n[[vm]]\nmatch = "a"\nparam.hpa.nope = 1\n')
    assert main(["config", "check", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{path}:5: vm[0].param: bad parameter for hpa")


def test_the_example_file_is_valid_and_has_an_off_rule_and_a_bounded_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(REPO / "examples/hotplug.toml"), "--vm", "vm-01", "--vm", "vm-02"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"vm-01\s+#1 frozen\s+off", out)
    assert re.search(r"vm-02\s+#2 lively\s+auto\s+threshold\s+2\.\.6", out)


def test_the_docs_reference_is_the_generated_one() -> None:
    readme = (REPO / "docs" / "configuration.md").read_text()
    begin, end = "<!-- config-reference: begin -->\n", "<!-- config-reference: end -->"
    assert begin in readme and end in readme, "docs/configuration.md lacks the config reference markers"
    written = readme.split(begin, 1)[1].split(end, 1)[0]
    assert written.strip() == reference().strip(), (
        "docs/configuration.md's config reference is stale: paste `hotplug config reference`"
    )


def test_the_reference_names_every_key() -> None:
    text = reference()
    for command in SECTIONS:
        section = section_type(command)
        own = set(section.__struct_fields__) - (
            set(ServiceSection.__struct_fields__) if issubclass(section, ServiceSection) else set()
        )
        for key in own:
            assert f"| `{key}` |" in text, (command, key)


def test_every_service_help_states_the_settings_order() -> None:
    for command in SECTIONS:
        sub = _subparser(build_parser(), command)
        assert "default < config file" in (sub.epilog or ""), command
        assert "< environment variable < command-line flag" in (sub.epilog or ""), command


def test_up_hands_the_file_to_every_child() -> None:
    from hotplug.up import UpOptions, child_argv, services_of

    options = UpOptions(config=Path("/etc/hotplug.toml"))
    assert services_of(options) == ["simulator", "collector", "decider", "actuator"]
    for service in services_of(options):
        argv = child_argv(service, options, "nats://x", 0.0, 1)
        assert argv[argv.index("--config") + 1] == "/etc/hotplug.toml", service
    assert "--config" not in child_argv("decider", UpOptions(), "nats://x", 0.0, 1)


def test_ups_summary_names_each_vms_rule() -> None:
    from hotplug.fleet import Fleet
    from shared.config.load import load
    from shared.messages import MetricSample

    fleet = Fleet(load(REPO / "examples/hotplug.toml").config, "default")
    for vm in ("vm-01", "vm-02", "vm-03"):
        fleet.on_sample(
            MetricSample(
                time=1.0,
                host="local",
                vm=vm,
                online_vcpus=2,
                min_vcpus=1,
                max_vcpus=8,
                cpu_used_cores=1.0,
                interval_s=1.0,
                source="t",
            )
        )
    assert fleet.summary_lines()[-1] == (
        "VM rules: #1 frozen (off): vm-01; #2 lively (auto, threshold, 2-6 vCPUs): vm-02; "
        "default (auto, default, 1-64 vCPUs): vm-03"
    )
    assert not any(line.startswith("VM rules") for line in Fleet().summary_lines())


@pytest.mark.parametrize("command", sorted(SETTINGS))
def test_no_flag_holds_a_default_of_its_own(command: str) -> None:
    """Every flag defaults to "not given": what a command starts from is its settings Struct's defaults (then the
    file, then the environment), so a flag's default cannot differ from its setting's. For ``up``, each hypervisor
    record's own options too: their defaults are their record's Struct's."""
    sub = _subparser(build_parser(), command)
    for action in sub._actions:
        if action.dest not in NOT_MIRRORED:
            assert action.default is argparse.SUPPRESS, (command, action.dest)
    args = parse([command])
    declared = up_settings() if command == "up" else specs(SETTINGS[command])
    assert {s.name for s in declared} == set(actions(command))
    for spec in declared:
        expected: Any = spec.default
        if spec.is_path and expected is not None:
            expected = Path(expected)
        elif spec.kind is dict:
            expected = param_flags(expected)
        assert getattr(args, spec.name) == expected, spec.name


def test_the_services_own_configs_take_the_settings_defaults() -> None:
    from services.actuator.checks import Bounds
    from services.actuator.service import ActuatorConfig
    from services.decider.service import DeciderConfig
    from services.simulator.scenario import SimulatorConfig

    actuator, decider, simulator = ActuatorSettings(), DeciderSettings(), SimulatorSettings()
    assert Bounds() == Bounds(actuator.min_vcpus, actuator.max_vcpus)
    config = ActuatorConfig()
    assert (config.max_changes, config.rate_window_s, config.ack_wait_s, config.step_timeout_s) == (
        actuator.max_changes,
        actuator.rate_window,
        actuator.ack_wait,
        actuator.step_timeout,
    )
    d = DeciderConfig()
    assert (d.command_ttl_s, d.lease_ttl_s, d.max_sample_age_s, d.intake_capacity, d.name) == (
        decider.command_ttl,
        decider.lease_ttl,
        decider.max_sample_age,
        decider.intake_capacity,
        decider.name,
    )
    s = SimulatorConfig()
    assert (s.seed, s.hotplug_delay_s, s.arrivals_rate) == (simulator.seed, simulator.hotplug_delay, 0.0)


def test_an_environment_variable_is_checked_as_its_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOTPLUG_METRICS_PORT", "8123")
    assert parse(["collector"]).metrics_port == 8123
    monkeypatch.setenv("HOTPLUG_METRICS_PORT", "70000")
    assert main(["collector"]) == 2
    assert "$HOTPLUG_METRICS_PORT: Expected `int` <= 65535" in capsys.readouterr().err


def test_a_nats_url_in_the_environment_is_left_for_the_bus_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$HOTPLUG_NATS_URL beats the file's nats, but is not copied into the options (it stays out of up's children's
    command lines, with any credentials it holds)."""
    path = write(tmp_path, '[service]\nnats = "nats://file:4222"\n[up]\nnats = "nats://file:4222"\n')
    assert parse(["decider", "--config", str(path)]).nats == "nats://file:4222"
    monkeypatch.setenv(bus.DEFAULT_URL_ENV, "nats://env:4222")
    assert parse(["decider", "--config", str(path)]).nats is None
    assert parse(["up", "--config", str(path)]).nats is None


def test_the_defaults_still_written_elsewhere_are_the_settings() -> None:
    """Copies in modules this refactor left alone (the built-in plug-ins' configs, up's options): held to the
    settings until they take them from there."""
    from hotplug.hypervisors import DEFAULT_VMS
    from hotplug.up import UpOptions
    from services.actuator.drivers.registry import DRIVERS
    from services.collector.sources.registry import SOURCES
    from services.simulator.scenario import SimulatorConfig

    assert SimulatorConfig().vms == DEFAULT_VMS
    up, options = UpSettings(), UpOptions()
    assert (options.speed, options.interval_s, options.max_vcpus, options.cluster) == (
        up.speed,
        up.interval,
        up.max_vcpus,
        up.cluster,
    )
    assert (options.hypervisor, options.log_level, str(options.data_dir)) == (up.hypervisor, up.log_level, up.data_dir)
    for registry, command in ((SOURCES, "collector"), (DRIVERS, "actuator")):
        declared = {s.name: s.default for s in specs(SETTINGS[command])}
        for name, config_type in registry.config_types().items():
            for spec in specs(config_type):
                if spec.name in declared:
                    assert spec.default == declared[spec.name], (name, spec.name)
