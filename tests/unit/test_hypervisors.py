"""The hypervisor records: each names a source and a driver that exist; ``up`` builds every child's command line and
its provisioning from the run's record, takes each record's own options from its flags and the config file, refuses
another hypervisor's options in one line, and takes a plug-in's record (its own flag and file key, its provisioning)
from $HOTPLUG_PLUGINS; and nothing in ``hotplug/`` branches on a name."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotplug import cli
from hotplug.config import apply_file
from hotplug.hypervisors import HYPERVISORS, NoOptions
from hotplug.hypervisors.libvirt import DIR_ENV as LIBVIRT_DIR_ENV
from hotplug.hypervisors.libvirt import LibvirtUp
from hotplug.up import UpOptions, child_argv, services_of
from services.actuator.drivers.registry import DRIVERS
from services.collector.sources.registry import SOURCES
from shared import plugins

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "examples" / "toy_hypervisor.py"


def _argv(service: str, options: UpOptions) -> list[str]:
    return child_argv(service, options, "nats://x", 0.0, 1)


def test_every_record_names_a_source_and_a_driver_that_exist() -> None:
    assert HYPERVISORS.names() == ["simulator", "virtualbox", "qemu", "libvirt"]
    for record in HYPERVISORS.all():
        assert record.source_name in SOURCES.names(), record.name
        assert record.driver_name in DRIVERS.names(), record.name


def test_up_gives_each_child_what_the_runs_record_says() -> None:
    uri = "qemu+ssh://h/system"
    libvirt = UpOptions(hypervisor="libvirt", own=LibvirtUp(libvirt_uri=uri))
    assert services_of(libvirt) == ["collector", "decider", "actuator"]  # no simulated cloud
    for service in ("collector", "actuator"):
        argv = _argv(service, libvirt)
        assert argv[argv.index("--libvirt-uri") + 1] == uri, service
    assert "--libvirt-uri" not in _argv("decider", libvirt)
    assert "--libvirt-uri" not in _argv("collector", UpOptions(hypervisor="libvirt"))  # the source's own default
    collector = _argv("collector", UpOptions(hypervisor="qemu"))
    assert collector[collector.index("--source") + 1] == "qemu"
    actuator = _argv("actuator", UpOptions(hypervisor="virtualbox"))
    assert actuator[actuator.index("--driver") + 1] == "virtualbox"


def test_a_record_without_options_of_its_own_takes_none() -> None:
    qemu = HYPERVISORS.get("qemu")
    assert qemu.own(UpOptions(hypervisor="qemu")) == NoOptions()
    with pytest.raises(TypeError):  # the simulator's options handed to libvirt: a bug, said at once
        HYPERVISORS.get("libvirt").own(UpOptions(hypervisor="libvirt", own=NoOptions()))


def test_libvirt_provisions_no_domain_without_vms_but_names_its_folder(tmp_path: Path) -> None:
    async def enter() -> dict[str, str]:
        async with HYPERVISORS.get("libvirt").provision(UpOptions(hypervisor="libvirt"), tmp_path) as env:
            return dict(env)

    assert asyncio.run(enter()) == {LIBVIRT_DIR_ENV: str(tmp_path / "libvirt")}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hypervisor", "qemu", "--trace", "t.csv"], "--trace: options of --hypervisor simulator, not of qemu"),
        (
            ["--hypervisor", "libvirt", "--host-cores", "8", "--seed", "3"],
            "--seed, --host-cores: options of --hypervisor simulator, not of libvirt",
        ),
        (["--libvirt-uri", "qemu:///x"], "--libvirt-uri: options of --hypervisor libvirt, not of simulator"),
    ],
)
def test_up_refuses_another_hypervisors_options_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["up", *argv]) == 2
    assert capsys.readouterr().err == f"hotplug up: {message}\n"


@pytest.fixture
def toy_hypervisor(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example hypervisor plug-in, named in $HOTPLUG_PLUGINS; the registries forget it afterwards."""
    HYPERVISORS.all()  # the built-ins first, as a run finds them
    monkeypatch.setenv(plugins.PLUGINS_ENV, str(TOY))
    monkeypatch.setattr(SOURCES, "_plugins", dict(SOURCES._plugins))
    monkeypatch.setattr(DRIVERS, "_plugins", dict(DRIVERS._plugins))
    monkeypatch.setattr(HYPERVISORS, "_records", dict(HYPERVISORS._records))
    monkeypatch.setattr(plugins, "_loaded", set())
    yield
    sys.modules.pop(f"hotplug_plugin_{TOY.stem}", None)


@pytest.mark.usefixtures("toy_hypervisor")
def test_a_plugins_record_is_a_choice_of_up_with_its_own_option(tmp_path: Path) -> None:
    assert HYPERVISORS.names()[-1] == "toyhv"
    parser = cli.build_parser()
    args = parser.parse_args(["up", "--hypervisor", "toyhv", "--vms", "3", "--toyhv-demand", "1.5"])
    toy = HYPERVISORS.get("toyhv")
    own = toy.own_from(vars(args))
    assert own.toyhv_demand == 1.5
    options = UpOptions(hypervisor="toyhv", vms=3, own=own)
    assert services_of(options) == ["collector", "decider", "actuator"]

    async def enter() -> tuple[dict[str, str], list[str]]:
        async with toy.provision(options, tmp_path) as env:
            return dict(env), sorted(p.name for p in (tmp_path / "toyhv").iterdir())

    env, files = asyncio.run(enter())
    assert env == {"HOTPLUG_TOYHV_DIR": str(tmp_path / "toyhv")}
    assert files == ["toy-01.json", "toy-02.json", "toy-03.json"]
    assert not (tmp_path / "toyhv").exists()  # gone once the run is over


def test_nothing_in_hotplug_branches_on_a_hypervisors_name() -> None:
    branch = re.compile(r'(==|!=) *"(virtualbox|qemu|simulator|psutil|libvirt)"')
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "hotplug").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert found == []


def _up(argv: list[str]) -> argparse.Namespace:
    """``up ARGV`` parsed as ``main`` parses it: the config file's layers under the flags."""
    parser = cli.build_parser()
    apply_file(parser, ["up", *argv])
    return parser.parse_args(["up", *argv])


@pytest.mark.usefixtures("toy_hypervisor")
def test_a_plugins_record_takes_its_option_from_the_file_and_the_flag_beats_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--toyhv-demand`` is also ``toyhv_demand`` in ``[plugins.toyhv]``, as a plug-in source's option is: built-in
    default < file < flag, and the file's value is checked by the record's options at its line."""
    toy = HYPERVISORS.get("toyhv")

    def demand(*argv: str) -> float:
        return float(toy.own_from(vars(_up(["--hypervisor", "toyhv", *argv]))).toyhv_demand)

    path = tmp_path / "hotplug.toml"
    path.write_text("[plugins.toyhv]\ntoyhv_demand = 2\n")
    assert demand() == 3.0  # the record's default
    assert demand("--toyhv-demand", "1.5") == 1.5
    assert demand("--config", str(path)) == 2.0
    assert demand("--config", str(path), "--toyhv-demand", "1.5") == 1.5
    for text, error in [
        ("[plugins.toyhv]\ntoyhv_demand = 100\n", "hotplug.toml:1: plugins.toyhv: --toyhv-demand takes cores from 0"),
        (
            "[plugins.toyhv]\n\ntoyhv_demnd = 1\n",
            "hotplug.toml:3: plugins.toyhv.toyhv_demnd: unknown key; toyhv takes ",
        ),
        ("[up]\ntoyhv_demand = 2\n", "hotplug.toml:2: up.toyhv_demand: unknown key"),  # a plug-in's: not in [up]
    ]:
        path.write_text(text)
        assert cli.main(["up", "--config", str(path)]) == 2
        assert error in capsys.readouterr().err


def test_a_built_in_records_options_are_up_keys_of_the_file_below_the_flags(tmp_path: Path) -> None:
    """The simulator's and libvirt's own options keep their ``[up]`` keys; the records declare them."""
    path = tmp_path / "hotplug.toml"
    path.write_text(
        '[up]\nseed = 7\nhost_cores = 12\narrivals_file = "jobs.csv"\nlibvirt_uri = "qemu+ssh://h/system"\n'
    )
    simulator = HYPERVISORS.get("simulator").own_from(vars(_up(["--config", str(path), "--seed", "9"])))
    assert (simulator.seed, simulator.host_cores, simulator.arrivals_file) == (9, 12, str(tmp_path / "jobs.csv"))
    libvirt = HYPERVISORS.get("libvirt").own_from(vars(_up(["--config", str(path)])))
    assert libvirt == LibvirtUp(libvirt_uri="qemu+ssh://h/system")
