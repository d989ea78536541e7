"""The deployment: compose.yaml, the Prometheus config and the Grafana dashboard.

No Docker engine runs on these machines, so the compose file is checked structurally against the real CLI
and its own files, and the services are started as compose starts them (the same commands and environment,
with the embedded broker standing in for the nats container) under a real Prometheus (Debian's package,
installed by .ci/install-debian-packages), which must return data for every query of the dashboard.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hotplug.cli import build_parser
from shared.broker import EmbeddedBroker, free_port
from shared.messages import ErrorCode
from tests.conftest import REPO, ServiceProcess, require_tool

pytestmark = pytest.mark.external  # needs a tool from the OS (see require_tool)

DEPLOY = REPO / "deploy"
OURS = ("simulator", "collector", "decider", "actuator")
KNOWN_ENV = {
    "HOTPLUG_NATS_URL",
    "HOTPLUG_HOST",
    "HOTPLUG_METRICS_ADDR",
    "HOTPLUG_METRICS_PORT",
    "HOTPLUG_LOG_LEVEL",
    "HOTPLUG_SPEED",
}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def prometheus_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    return data


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "hotplug.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def need(tool: str) -> str:
    return require_tool(tool, "prometheus")


def test_compose_services_match_the_cli_and_each_other() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) >= {"nats", "nats-exporter", "prometheus", "grafana", *OURS}
    parser = build_parser()
    for name in OURS:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        command = service["command"]
        assert command[0] == name
        parser.parse_args(command)  # every option in the file exists in the CLI (argparse exits otherwise)
        env = service["environment"]
        assert set(env) <= KNOWN_ENV, set(env) - KNOWN_ENV
        nats_host, nats_port = re.fullmatch(r"nats://([\w-]+):(\d+)", env["HOTPLUG_NATS_URL"]).groups()  # type: ignore[union-attr]
        assert nats_host in services
        assert nats_port in "".join(services[nats_host].get("ports", []))
        assert env["HOTPLUG_METRICS_ADDR"] == "0.0.0.0"
        health = service["healthcheck"]["test"]
        assert health[0] == "CMD"  # exec form: no shell
        assert f":{env['HOTPLUG_METRICS_PORT']}/metrics" in " ".join(health)
        assert set(service.get("depends_on", [])) <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in spec["volumes"], f"{name} uses undeclared volume {source}"
        health = service.get("healthcheck", {}).get("test")
        if health:
            assert health[0] == "CMD", f"{name}: health checks are exec-form lists"


def test_prometheus_scrapes_every_service_on_its_metrics_port() -> None:
    services = compose()["services"]
    jobs = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in prometheus_config()["scrape_configs"]
    }
    targets = {t.split(":")[0]: t.split(":")[1] for t in jobs["hotplug"]}
    assert set(targets) == set(OURS)
    for name, port in targets.items():
        assert services[name]["environment"]["HOTPLUG_METRICS_PORT"] == port
    assert jobs["nats"] == ["nats-exporter:7777"]
    assert "nats-exporter" in services


def test_compose_mounts_the_alert_rules_where_prometheus_reads_them() -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prometheus["volumes"])
    config = next(target for source, target in mounts.items() if source == "./prometheus/prometheus.yml")
    rule_files = prometheus_config()["rule_files"]
    assert rule_files == ["alerts.yml"]
    for name in rule_files:  # relative to the config file, inside the container as outside
        assert mounts[f"./prometheus/{name}"] == str(Path(config).parent / name)
        assert (DEPLOY / "prometheus" / name).is_file()


def test_grafana_provisioning_fits_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/hotplug.yaml").read_text())
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/hotplug.json").read_text())
    assert dashboard["uid"] == "hotplug-heaven"
    assert "id" not in dashboard
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"], panel["title"]


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = need("promtool")
    done = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The compose services as processes: same commands and environment; ports made local."""
    broker = EmbeddedBroker(tmp_path / "nats")
    broker.start()
    started: list[ServiceProcess] = []
    targets: dict[str, str] = {}
    try:
        for name in OURS:
            service = compose()["services"][name]
            port = free_port()
            env = {
                **service["environment"],
                "HOTPLUG_NATS_URL": broker.url,
                "HOTPLUG_METRICS_PORT": str(port),
                "HOTPLUG_METRICS_ADDR": "127.0.0.1",
            }
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                proc = ServiceProcess(service["command"], tmp_path / f"{name}.log", port)
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            started.append(proc)
            proc.wait_ready()
            targets[f"{name}:{service['environment']['HOTPLUG_METRICS_PORT']}"] = f"127.0.0.1:{port}"
        yield broker.url, targets
    finally:
        for proc in started:
            proc.stop()
        broker.stop()


def query(base: str, expr: str) -> list[Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    result: list[Any] = body["data"]["result"]
    return result


# Alerts that say the loop itself is broken: none may stay pending or firing while the stack runs.
LOOP_ALERTS = {
    "HotplugDeciderNoLeader",
    "HotplugDeciderSilent",
    "HotplugCollectorNotPublishing",
    "HotplugServiceDown",
    "HotplugNatsDisconnected",
}


def rule_groups(base: str) -> list[Any]:
    with urllib.request.urlopen(f"{base}/api/v1/rules?type=alert", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    groups: list[Any] = body["data"]["groups"]
    return groups


def check_alert_rules(base: str) -> None:
    """Every alert rule is loaded and evaluates without error on the real series; the loop's own alerts settle
    to inactive (a rate needs two scrapes, so one may be pending for a moment at start)."""
    names = {
        rule["alert"]
        for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    deadline = time.monotonic() + 30
    while True:
        loaded = [rule for group in rule_groups(base) for rule in group["rules"]]
        evaluated = all(rule.get("lastEvaluation", "").startswith("20") for rule in loaded)
        active = {
            rule["name"]: rule["state"]
            for rule in loaded
            if rule["name"] in LOOP_ALERTS and rule["state"] != "inactive"
        }
        if (evaluated and not active) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {rule["name"] for rule in loaded} == names
    assert [(rule["name"], rule.get("lastError")) for rule in loaded if rule["health"] != "ok"] == []
    assert evaluated
    assert active == {}


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    stack: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    prometheus = need("prometheus")
    _, targets = stack
    config = prometheus_config()
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(DEPLOY / "prometheus" / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [targets.get(t, f"127.0.0.1:{free_port()}") for t in static["targets"]]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        pending = {
            expr: expr.replace("$__rate_interval", "30s").replace('"$vm"', '".+"') for expr in dashboard_queries()
        }
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for expr, concrete in list(pending.items()):
                try:
                    if query(base, concrete):
                        del pending[expr]
                except OSError:
                    break  # Prometheus still starting
            time.sleep(1)
        assert not pending, f"dashboard queries with no data: {sorted(pending)}"
        up = query(base, 'up{job="hotplug"}')
        assert {r["metric"]["instance"] for r in up if r["value"][1] == "1"} == set(targets.values())
        # the held and refused panels show a series per reason and per refusal code (at 0 until one happens)
        held = query(base, "sum by (reason) (hotplug_decider_held_total)")
        assert {r["metric"]["reason"] for r in held} >= {"warmup", "change-budget", "rate-limited", "paused"}
        # the paused panel: the actuator says how many of its VMs are paused, 0 when none is
        assert [r["value"][1] for r in query(base, "hotplug_actuator_paused_vms")] == ["0"]
        refused = query(base, 'sum by (error_code) (hotplug_actuator_actions_total{outcome="error"})')
        assert {r["metric"]["error_code"] for r in refused} == {code.value for code in ErrorCode}
        check_alert_rules(base)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
