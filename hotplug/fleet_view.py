"""The live terminal view of ``hotplug up``: one row per VM, and a line per host under them, rendered with rich."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from hotplug.fleet import Fleet
from shared.messages import HostState


def render(fleet: Fleet, title: str) -> RenderableType:
    table = Table(title=title, expand=False)
    for column in ("host", "vm", "vCPUs", "CPU used", "pressure", "last action", "reason"):
        table.add_column(column)
    for (host, vm), row in sorted(fleet.live_rows().items()):
        bar = "█" * row.online_vcpus + "·" * max(0, row.max_vcpus - row.online_vcpus)
        pressure = "?" if row.pressure_cores is None else f"{row.pressure_cores:.2f}"
        table.add_row(
            host,
            vm,
            f"{row.online_vcpus}/{row.max_vcpus} {bar}",
            f"{row.used_cores:.2f}",
            pressure,
            row.last_action,
            row.last_reason[:60],
        )
    hosts = [Text(host_line(state)) for _, state in sorted(fleet.hosts.items())]
    return Group(table, *hosts) if hosts else table


def host_line(state: HostState) -> str:
    """One host: "host local: 24 vCPUs capacity on 24 CPUs, 20 committed, 13.2 cores used; 3 jobs waiting (12
    vCPUs)"."""
    used = "" if state.used_cores is None else f", {state.used_cores:.1f} cores used"
    waiting = f"; {state.waiting_vms} jobs waiting ({state.waiting_vcpus} vCPUs)" if state.waiting_vms else ""
    return (
        f"host {state.host}: {state.capacity_vcpus} vCPUs capacity on {state.cpus} CPUs, "
        f"{state.committed_vcpus} committed{used}{waiting}"
    )
