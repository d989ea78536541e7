"""The source and driver registries: each plug-in's config checks itself with a user's message; the rules every
plug-in shares (``--speed``, an optional extra) hold for all; and a plug-in from a file outside the code base, named
in $HOTPLUG_PLUGINS, is offered and used by the command line without a line of it changed."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from hotplug import cli
from services.actuator.checks import Bounds, parse_vm_bounds
from services.actuator.drivers.registry import DRIVERS, LibvirtDriverConfig
from services.collector.sources.registry import SOURCES, LibvirtSourceConfig, ProcessSourceConfig
from shared import plugins
from shared.clock import Clock
from shared.errors import MissingDependency, UsageError, UserError

TOY = Path(__file__).resolve().parents[2] / "examples" / "toy_source.py"


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]  # type: ignore[no-any-return]


def _choices(command: str, option: str) -> list[str]:
    action = next(a for a in _subcommand(cli.build_parser(), command)._actions if option in a.option_strings)
    return list(action.choices or [])


def test_the_built_in_names_in_their_order() -> None:
    assert SOURCES.names()[:5] == ["simulator", "psutil", "virtualbox", "qemu", "libvirt"]
    assert DRIVERS.names()[:4] == ["simulator", "virtualbox", "qemu", "libvirt"]
    assert _choices("up", "--hypervisor") == ["simulator", "virtualbox", "qemu", "libvirt"]  # source and driver


@pytest.fixture
def libvirt_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """libvirt-python is an optional extra: these tests are about the configs, wherever it is installed or not."""
    for registry in (SOURCES, DRIVERS):
        monkeypatch.setitem(registry._plugins, "libvirt", dataclasses.replace(registry.get("libvirt"), requires=None))


@pytest.mark.usefixtures("libvirt_installed")
def test_a_config_takes_its_own_options_and_ignores_the_others() -> None:
    options = {"libvirt_uri": "test:///default", "libvirt_domain": ["a", "b"], "interval": 2.0, "speed": 1.0}
    config = SOURCES.config("libvirt", options)
    assert config == LibvirtSourceConfig(libvirt_uri="test:///default", libvirt_domain=["a", "b"])
    assert DRIVERS.config("libvirt", options) == LibvirtDriverConfig(libvirt_uri="test:///default")
    assert SOURCES.config("qemu", options) == SOURCES.get("qemu").config_type()


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("psutil", {}, "the psutil source needs at least one process (VM=PID or VM=REGEX)"),
        ("psutil", {"process": ["vm="]}, "expected NAME=PID or NAME=REGEX, got 'vm='"),
        ("psutil", {"process": ["vm=("]}, "not a regular expression"),
        # An option only another plug-in takes is checked all the same (a typo found before the run).
        ("simulator", {"process": ["vm=("]}, "not a regular expression"),
        ("libvirt", {"libvirt_domain": "one"}, "source libvirt: Expected `array`, got `str`"),
        ("qemu", {"speed": 2.0}, "speed applies to the simulator only; real sources run on the wall clock"),
        ("nope", {}, "unknown source 'nope'; choose from simulator, psutil"),
    ],
)
@pytest.mark.usefixtures("libvirt_installed")
def test_a_source_config_that_does_not_fit_is_a_user_error(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as raised:
        SOURCES.config(name, options)
    assert message in str(raised.value)
    assert isinstance(raised.value, UsageError)


def test_the_psutil_config_keeps_the_parsed_processes() -> None:
    config = SOURCES.config("psutil", {"process": ["web=123", "db=postgres.*"], "speed": 1.0})
    assert isinstance(config, ProcessSourceConfig)
    assert [(s.vm, s.pid, s.pattern) for s in config.specs()] == [("web", 123, None), ("db", None, "postgres.*")]


@pytest.mark.parametrize("driver", ["virtualbox", "qemu", "libvirt"])
def test_speed_is_for_the_simulator_only(driver: str) -> None:
    DRIVERS.check_speed("simulator", 8.0)
    DRIVERS.check_speed(driver, 1.0)
    with pytest.raises(UsageError, match=r"^speed applies to the simulator only; real hypervisors run on the wall"):
        DRIVERS.check_speed(driver, 2.0)
    with pytest.raises(UsageError, match=r"^speed applies to the simulator only$"):
        DRIVERS.check_speed(driver, 2.0, note="")  # up's wording


def test_a_missing_extra_is_reported_before_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise MissingDependency("libvirt-python is not installed")

    monkeypatch.setitem(DRIVERS._plugins, "libvirt", dataclasses.replace(DRIVERS.get("libvirt"), requires=missing))
    with pytest.raises(MissingDependency, match="libvirt-python"):
        DRIVERS.config("libvirt", {"libvirt_uri": "test:///default"})


@pytest.mark.parametrize("item", ["x", "vm=1", "vm=2:1", "=1:2", "vm=a:2", "vm=1:"])
def test_vm_bounds_that_do_not_parse(item: str) -> None:
    with pytest.raises(UsageError, match=r"^vm_bounds takes VM=MIN:MAX with MIN <= MAX, got "):
        parse_vm_bounds([item])


def test_vm_bounds_take_the_last_equals_sign() -> None:
    assert parse_vm_bounds(["a=b=1:2", "c=3:3"]) == {"a=b": Bounds(1, 2), "c": Bounds(3, 3)}


@pytest.fixture
def toy_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example plug-in, named in $HOTPLUG_PLUGINS; the registry forgets it afterwards."""
    monkeypatch.setenv(plugins.PLUGINS_ENV, str(TOY))
    monkeypatch.setattr(SOURCES, "_plugins", dict(SOURCES._plugins))
    monkeypatch.setattr(plugins, "_loaded", set())
    yield
    sys.modules.pop(f"hotplug_plugin_{TOY.stem}", None)


def test_without_the_variable_there_is_no_toy() -> None:
    assert "toy" not in _choices("collector", "--source")


@pytest.mark.usefixtures("toy_plugin")
def test_a_plugin_file_is_offered_by_the_cli() -> None:
    assert _choices("collector", "--source")[-1] == "toy"
    assert "toy" not in _choices("up", "--hypervisor")  # a source without a driver is no hypervisor
    with pytest.raises(UsageError, match="toy_load is a share of the vCPUs"):
        SOURCES.config("toy", {"toy_load": 1.5})


@pytest.mark.usefixtures("toy_plugin")
def test_the_cli_builds_and_runs_a_plugin_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """``hotplug collector --source toy`` hands the toy source, built from its config, to the collector."""
    from hotplug.cli import services as service_commands
    from services.collector import service

    sources: list[Any] = []

    class Collector:
        def __init__(
            self, _ctx: object, source: Any, interval_s: float, host_rules: Any = (), watch_pressure: bool = False
        ) -> None:
            sources.append((source, interval_s))
            assert tuple(host_rules) == ()  # no config file: no [[host]] rules
            assert watch_pressure  # on by default: a plug-in source with a watch_pressure is watched

        def use_host_rules(self, _rules: object) -> str:
            return ""

        async def run(self) -> None:
            pass

    started: list[Any] = []

    def run(_options: object, _metrics: object, body: Any) -> int:
        started.append(body)
        return 0

    monkeypatch.setattr(service, "Collector", Collector)
    monkeypatch.setattr(service_commands, "run", run)
    assert cli.main(["collector", "--nats", "nats://127.0.0.1:1", "--source", "toy", "--interval", "2"]) == 0
    metrics = SimpleNamespace(registry=CollectorRegistry())  # the config reloader counts reloads there
    asyncio.run(started[0](SimpleNamespace(clock=Clock(speed=1.0, epoch=0.0), metrics=metrics)))
    ((source, interval_s),) = sources
    assert (source.name, interval_s) == ("toy", 2.0)
    readings = asyncio.run(source.read())
    assert [r.vm for r in readings] == ["toy-01", "toy-02"]  # the config's defaults


def _toy_run(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Any:
    """The toy source ``hotplug collector ARGV`` builds (its service stubbed out)."""
    from hotplug.cli import services as service_commands
    from services.collector import service

    built: list[Any] = []

    class Collector:
        def __init__(
            self, _ctx: object, source: Any, _interval_s: float, host_rules: Any = (), watch_pressure: bool = False
        ) -> None:
            built.append(source)

        def use_host_rules(self, _rules: object) -> str:
            return ""

        async def run(self) -> None:
            pass

    def run(_options: object, _metrics: object, body: Any) -> int:
        metrics = SimpleNamespace(registry=CollectorRegistry())
        asyncio.run(body(SimpleNamespace(clock=Clock(speed=1.0, epoch=0.0), metrics=metrics)))
        return 0

    monkeypatch.setattr(service, "Collector", Collector)
    monkeypatch.setattr(service_commands, "run", run)
    assert cli.main(["collector", "--nats", "nats://127.0.0.1:1", "--source", "toy", *argv]) == 0
    return built[0]


@pytest.mark.usefixtures("toy_plugin")
def test_a_plugin_takes_its_options_from_a_flag_and_from_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The toy config's fields are collector flags (``--toy-load``) and keys of ``[plugins.toy]``; the flag beats
    the file, the file the field's default."""
    assert "--toy-load" in _subcommand(cli.build_parser(), "collector").format_help()
    assert _toy_run(monkeypatch, []).config.toy_load == 0.5
    assert _toy_run(monkeypatch, ["--toy-load", "0.8"]).config.toy_load == 0.8
    path = tmp_path / "hotplug.toml"
    path.write_text("[plugins.toy]\ntoy_load = 0.25\ntoy_vms = 3\n")
    from_file = _toy_run(monkeypatch, ["--config", str(path)]).config
    assert (from_file.toy_load, from_file.toy_vms) == (0.25, 3)
    assert _toy_run(monkeypatch, ["--config", str(path), "--toy-load", "0.9"]).config.toy_load == 0.9


@pytest.mark.usefixtures("toy_plugin")
def test_a_plugin_table_is_checked_at_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hotplug.toml"
    for text, error in [
        ("[plugins.toy]\ntoy_load = 1.5\n", "hotplug.toml:1: plugins.toy: toy_load is a share of the vCPUs"),
        ("[plugins.toy]\n\ntoy_lod = 1\n", "hotplug.toml:3: plugins.toy.toy_lod: unknown key; toy takes toy_vms, "),
        ("[plugins.nope]\nx = 1\n", "hotplug.toml:1: plugins.nope: no plug-in 'nope'; choose from "),
    ]:
        path.write_text(text)
        assert cli.main(["collector", "--config", str(path)]) == 2
        assert error in capsys.readouterr().err
