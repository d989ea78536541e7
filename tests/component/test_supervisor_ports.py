"""``hotplug up``'s supervisor and a child's metrics port: a child whose port another process holds does not die of
``Address already in use`` at every restart; it restarts on a free port, and the supervisor says which. The child
is a real Python process that binds its port as the services' metrics server does (SO_REUSEADDR, then listen)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from hotplug.harness.poll import eventually
from hotplug.harness.processes import METRICS_PORT_FLAG
from hotplug.supervisor import Supervisor
from shared.broker import free_port

# Binds 127.0.0.1:<the port after --metrics-port> and waits to be stopped; exit 1 if the port is taken.
LISTENER = """
import signal, socket, sys
port = int(sys.argv[sys.argv.index("--metrics-port") + 1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", port))
except OSError as exc:
    print(f"cannot bind {port}: {exc}", flush=True)
    sys.exit(1)
s.listen()
print(f"listening on {port}", flush=True)
signal.pause()
"""


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.component
async def test_a_child_whose_port_is_taken_restarts_on_a_free_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        supervisor = Supervisor(tmp_path, initial_backoff_s=0.05)
        child = await supervisor.start("svc", [sys.executable, "-c", LISTENER, METRICS_PORT_FLAG, str(taken)], taken)
        try:
            await eventually(lambda: child.metrics_port != taken and _answers(child.metrics_port), what="a new port")
            assert child.exits and child.exits[0] == 1  # it did die of the taken port first
            assert child.argv[-1] == str(child.metrics_port)
            assert f"listening on {child.metrics_port}" in (tmp_path / "svc.log").read_text()
            assert f"its metrics port {taken} is taken; it restarts on port {child.metrics_port}" in caplog.text
        finally:
            await supervisor.stop(timeout_s=10)


@pytest.mark.component
async def test_a_child_restarts_on_its_own_port_while_that_port_is_free(tmp_path: Path) -> None:
    port = free_port()
    supervisor = Supervisor(tmp_path, initial_backoff_s=0.05)
    child = await supervisor.start("svc", [sys.executable, "-c", LISTENER, METRICS_PORT_FLAG, str(port)], port)
    try:
        await eventually(lambda: _answers(port), what="the child listening")
        assert child.process is not None
        first = child.process.pid
        child.process.kill()
        await eventually(
            lambda: child.process is not None and child.process.pid != first and _answers(port), what="a restart"
        )
        assert child.restarts == 1 and child.metrics_port == port
    finally:
        await supervisor.stop(timeout_s=10)
