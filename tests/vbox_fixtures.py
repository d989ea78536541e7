"""Helpers for tests against the stand-in VBoxManage (tests/standins): VirtualBox cannot run here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.standins import vboxmanage as standin

STANDIN = Path(__file__).resolve().parent / "standins" / "VBoxManage"


class VBoxHome:
    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(STANDIN), *args], capture_output=True, text=True, timeout=30, check=False)

    def create(self, name: str, max_vcpus: int = 4, attached: int = 1, running: bool = True) -> str:
        uuid = standin.create_vm(name)
        assert self.run("modifyvm", name, "--cpus", str(max_vcpus), "--cpuhotplug", "on").returncode == 0
        for cpu in range(max_vcpus - 1, attached - 1, -1):
            assert self.run("modifyvm", name, "--unplugcpu", str(cpu)).returncode == 0
        if running:
            done = self.run("startvm", name, "--type", "headless")
            assert done.returncode == 0, done.stderr
        return uuid

    def calls(self) -> list[list[str]]:
        log = self.path / "calls.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def attached(self, name: str) -> list[int]:
        vm = standin.find_vm(name)
        assert vm is not None
        return list(vm["attached"])
