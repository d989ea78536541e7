"""The systemd units in deploy/systemd: `systemd-analyze verify` and `security --offline` on each (Debian's
systemd package, installed by .ci/install-debian-packages; no running systemd needed), and their commands and
environment files against the real CLI and the variables the code reads.

`verify` checks that ExecStart's program exists, so each unit is verified from a copy whose installed path
(/opt/hotplug-heaven/bin/hotplug, docs/operations.md "systemd") names the hotplug of the interpreter that runs the tests
instead (this checkout's .venv/bin/hotplug under `make test`, whatever virtualenv runs the suite otherwise).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hotplug.cli import build_parser
from tests.conftest import REPO, require_tool

pytestmark = pytest.mark.external  # needs a tool from the OS (see require_tool)

UNITS = REPO / "deploy" / "systemd"
INSTALLED = "/opt/hotplug-heaven/bin/hotplug"
# template -> (instance used in the checks, the option the instance name fills, most exposure allowed x10)
SERVICES = {"collector": ("node1", "--host", 50), "actuator": ("node1", "--host", 50), "decider": ("d1", "--name", 20)}
SOURCES = [p for d in ("shared", "services", "hotplug") for p in (REPO / d).rglob("*.py")]


def need(tool: str) -> str:
    return require_tool(tool, "systemd")


def settings(unit: Path) -> list[tuple[str, str]]:
    """The unit's KEY=VALUE lines, in order, without comments."""
    out = []
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def env_file(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile's assignments, the commented-out examples included."""
    out = {}
    for line in path.read_text().splitlines():
        found = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if found:
            out[found[1]] = found[2]
    return out


def hotplug_executable() -> Path:
    """The ``hotplug`` console script installed beside the interpreter that runs these tests."""
    bin_dir = Path(sys.executable).parent  # not resolved: a virtualenv's python is a link out of its bin/
    found = shutil.which("hotplug", path=str(bin_dir))
    assert found is not None, f"no hotplug in {bin_dir}: install the project into this environment (bin/bootstrap)"
    return Path(found)


def installable(tmp_path: Path, name: str, text: str | None = None) -> Path:
    """A copy of the template whose ExecStart runs the tests' own hotplug (verify wants it to exist)."""
    hotplug = hotplug_executable()
    text = (UNITS / f"hotplug-{name}@.service").read_text() if text is None else text
    assert INSTALLED in text
    copy = tmp_path / f"hotplug-{name}@.service"
    copy.write_text(text.replace(INSTALLED, str(hotplug)))
    return copy


def verify(analyze: str, unit: Path, instance: str) -> list[str]:
    """`systemd-analyze verify` of one instance of a template: the complaints about it (other units on the
    machine may have their own, which are not ours to judge)."""
    name = unit.name.replace("@.", f"@{instance}.")
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(unit.parent / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ours = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if str(unit.parent) in line or unit.stem.split("@")[0] in line
    ]
    if done.returncode != 0:
        ours.append(f"exit code {done.returncode}")
    return ours


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_systemd_analyze_verify_accepts_the_unit(name: str, tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    unit = installable(tmp_path, name)
    assert verify(analyze, unit, SERVICES[name][0]) == []


def test_systemd_analyze_verify_finds_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt setting and a bad value are reported."""
    analyze = need("systemd-analyze")
    text = (UNITS / "hotplug-actuator@.service").read_text()
    broken = text.replace("Restart=on-failure", "Restart=sometimes").replace("ProtectSystem=", "ProtectSistem=")
    assert broken != text
    complaints = verify(analyze, installable(tmp_path, "actuator", broken), "node1")
    assert any("sometimes" in c for c in complaints), complaints
    assert any("ProtectSistem" in c for c in complaints), complaints


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_systemd_analyze_security_rates_the_unit_hardened(name: str, tmp_path: Path) -> None:
    """Exposure as `systemd-analyze security` rates it (0 best, 10 worst) stays under the unit's ceiling: 2.0 for
    the decider, 5.0 for the services that must reach the hypervisor as its user."""
    analyze = need("systemd-analyze")
    instance, _, ceiling = SERVICES[name]
    unit = installable(tmp_path, name)
    done = subprocess.run(
        [
            analyze,
            "security",
            "--offline=yes",
            f"--threshold={ceiling}",
            str(unit.parent / unit.name.replace("@.", f"@{instance}.")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Overall exposure level" in done.stdout


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_unit_runs_the_service_with_options_the_cli_takes(name: str) -> None:
    instance, option, _ = SERVICES[name]
    unit = UNITS / f"hotplug-{name}@.service"
    service = dict(settings(unit))
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    files = [value for key, value in settings(unit) if key == "EnvironmentFile"]
    assert files[0] == f"/etc/hotplug-heaven/{name}.env"  # required; the rest are optional ("-")
    assert all(f.startswith("-/etc/hotplug-heaven/") for f in files[1:]), files
    env = env_file(UNITS / f"{name}.env")
    argv = shlex.split(service["ExecStart"].replace("%i", instance))
    assert argv[0] == INSTALLED
    options_var = f"HOTPLUG_{name.upper()}_OPTIONS"
    assert argv[-1] == f"${options_var}"  # unbraced: systemd splits it at white space into words
    args = [*argv[1:-1], *env[options_var].split()]
    parsed = build_parser().parse_args(args)  # argparse exits on an option the CLI does not have
    assert parsed.command == name
    assert args[args.index(option) + 1] == instance


def test_environment_files_set_only_variables_that_are_read() -> None:
    code = "\n".join(p.read_text() for p in SOURCES)
    ports = set()
    for name in SERVICES:
        env = env_file(UNITS / f"{name}.env")
        unit = (UNITS / f"hotplug-{name}@.service").read_text()
        assert {"HOTPLUG_NATS_URL", "HOTPLUG_METRICS_PORT", "HOTPLUG_METRICS_ADDR"} <= set(env)
        for key in env:
            assert key.startswith("HOTPLUG_"), key
            read = key in code or f'_env("{key.removeprefix("HOTPLUG_")}"' in code
            assert read or f"${key}" in unit, f"{name}.env sets {key}, which nothing reads"
        ports.add(env["HOTPLUG_METRICS_PORT"])
    assert len(ports) == len(SERVICES), "each service needs its own metrics port on a shared host"


def test_hypervisor_services_can_reach_the_hypervisor_and_the_decider_is_sandboxed() -> None:
    """VBoxManage talks to VBoxSVC through /tmp/.vbox-<user>-ipc and reads the VMs' settings in the owner's home;
    QEMU's QMP sockets live in the owner's home too: the collector and actuator keep both visible."""
    for name in ("collector", "actuator"):
        service = dict(settings(UNITS / f"hotplug-{name}@.service"))
        assert service.get("PrivateTmp", "no") == "no"
        assert service.get("ProtectHome", "no") == "no"
        assert service.get("ProtectSystem") in ("yes", "full")  # not strict: VBoxSVC may write its own files
        assert "AF_UNIX" in service["RestrictAddressFamilies"]
        assert service["User"]
    decider = dict(settings(UNITS / "hotplug-decider@.service"))
    assert decider["DynamicUser"] == "yes"
    assert decider["ProtectSystem"] == "strict"
    assert decider["ProtectHome"] == "yes"
