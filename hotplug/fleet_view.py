"""The live terminal view of ``hotplug up``: one row per VM, and a line per host under them, rendered with rich."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from hotplug.fleet import Fleet, VmRow
from shared.messages import HostState
from shared.units import GIB


def render(fleet: Fleet, title: str) -> RenderableType:
    table = Table(title=title, expand=False)
    rows = sorted(fleet.live_rows().items())
    # Memory columns only where some source reads memory: a vCPU-only run looks as it did.
    memory = any(row.memory_bytes is not None for _, row in rows)
    columns = ("host", "vm", "vCPUs", "CPU used", "pressure")
    for column in (*columns, *(("memory GiB", "OOM") if memory else ()), "last action", "reason"):
        table.add_column(column)
    for (host, vm), row in rows:
        bar = "█" * row.online_vcpus + "·" * max(0, row.max_vcpus - row.online_vcpus)
        pressure = "?" if row.pressure_cores is None else f"{row.pressure_cores:.2f}"
        cells = [host, vm, f"{row.online_vcpus}/{row.max_vcpus} {bar}", f"{row.used_cores:.2f}", pressure]
        if memory:
            cells += [memory_cell(row), str(row.oom_kills)]
        table.add_row(*cells, row.last_action, row.last_reason[:60])
    hosts = [Text(host_line(state)) for _, state in sorted(fleet.hosts.items())]
    return Group(table, *hosts) if hosts else table


def memory_cell(row: VmRow) -> str:
    """ "3.2 used of 8.0" (GiB), or "8.0" when the guest's use is unknown, or "" without memory."""
    if row.memory_bytes is None:
        return ""
    size = row.memory_bytes / GIB
    return f"{size:.1f}" if row.memory_used_bytes is None else f"{row.memory_used_bytes / GIB:.1f} used of {size:.1f}"


def host_line(state: HostState) -> str:
    """One host: "host local: 24 vCPUs capacity on 24 CPUs, 20 committed, 13.2 cores used; 3 jobs waiting (12
    vCPUs)"."""
    used = "" if state.used_cores is None else f", {state.used_cores:.1f} cores used"
    waiting = f"; {state.waiting_vms} jobs waiting ({state.waiting_vcpus} vCPUs)" if state.waiting_vms else ""
    return (
        f"host {state.host}: {state.capacity_vcpus} vCPUs capacity on {state.cpus} CPUs, "
        f"{state.committed_vcpus} committed{used}{waiting}"
    )
