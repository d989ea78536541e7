"""The alert rules in deploy/prometheus/alerts.yml: `promtool check rules` and `promtool test rules` on their unit
tests (Debian's prometheus package, installed by .ci/install-debian-packages); every alert has a case that fires
and one that does not, and breaking any rule (never firing, always firing) fails its tests. The series the rules
read exist in the services' code, and every actuator error code belongs to exactly one alert.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.messages import ErrorCode
from tests.conftest import REPO, require_tool

pytestmark = pytest.mark.external  # needs a tool from the OS (see require_tool)

PROMETHEUS = REPO / "deploy" / "prometheus"
SOURCES = [p for d in ("shared", "services") for p in (REPO / d).rglob("*.py")]


def need(tool: str) -> str:
    return require_tool(tool, "prometheus")


def rules(path: Path = PROMETHEUS / "alerts.yml") -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules()]


def promtool_test(promtool: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "test", "rules", str(directory / "alerts_test.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_check_rules_accepts_the_alerts() -> None:
    promtool = need("promtool")
    done = subprocess.run(
        [promtool, "check", "rules", str(PROMETHEUS / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    promtool = need("promtool")
    done = promtool_test(promtool, PROMETHEUS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = set(alert_names())
    assert len(names) == len(alert_names()), "alert names are unique"
    assert names - fires == set(), "alerts without a case that fires"
    assert names - silent == set(), "alerts without a case that does not fire"
    assert (fires | silent) <= names, "cases for alerts that do not exist"


@pytest.mark.parametrize("alert", alert_names())
def test_breaking_the_rule_fails_its_tests(alert: str, tmp_path: Path) -> None:
    """The unit tests can fail: the rule made to never fire fails a firing case, made to always fire fails a
    silent one. Only the cases that check this alert run (the whole file runs, unbroken, in the test above): each
    promtool run then takes a fraction of a second instead of seconds."""
    promtool = need("promtool")
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    tests["tests"] = [
        case for case in tests["tests"] if any(check["alertname"] == alert for check in case["alert_rule_test"])
    ]
    assert tests["tests"], f"no case checks {alert}"
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    unbroken = promtool_test(promtool, tmp_path)
    assert unbroken.returncode == 0, (
        unbroken.stdout + unbroken.stderr
    )  # the cases alone pass: failures below are the rule's
    for broken in ("vector(1) == 2", "vector(1)"):
        data = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
        for group in data["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == alert:
                    rule["expr"] = broken
        (tmp_path / "alerts.yml").write_text(yaml.safe_dump(data, sort_keys=False))
        done = promtool_test(promtool, tmp_path)
        assert done.returncode != 0, f"{alert} with expr {broken!r} still passes its tests"
        failed = set(re.findall(r"alertname: (\w+)", done.stdout + done.stderr))
        assert failed == {alert}, (broken, failed)


def test_the_series_the_alerts_read_exist_in_the_code() -> None:
    code = "\n".join(p.read_text() for p in SOURCES)
    used: set[str] = set()
    for rule in rules():
        for name in re.findall(r"\bhotplug_[a-z_]+", rule["expr"]):
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            used.add(base)
            assert f'"{base}"' in code, f"{rule['alert']} reads {name}, which no service exports"
    assert {
        "hotplug_vm_pressure_cores",
        "hotplug_decider_held",
        "hotplug_actuator_actions",
        "hotplug_decider_leader",
        "hotplug_collector_samples_published",
    } <= used


def test_every_actuator_error_code_belongs_to_exactly_one_alert() -> None:
    owner: dict[str, list[str]] = {}
    for rule in rules():
        for codes in re.findall(r'error_code=~"([^"]+)"', rule["expr"]):
            for code in codes.split("|"):
                owner.setdefault(code, []).append(rule["alert"])
    assert set(owner) == {code.value for code in ErrorCode}, set(owner) ^ {code.value for code in ErrorCode}
    assert {code: alerts for code, alerts in owner.items() if len(set(alerts)) != 1} == {}
