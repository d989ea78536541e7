"""The live terminal view of ``hotplug up``: one row per VM, rendered with rich."""

from __future__ import annotations

from rich.table import Table

from hotplug.fleet import Fleet


def render(fleet: Fleet, title: str) -> Table:
    table = Table(title=title, expand=False)
    for column in ("host", "vm", "vCPUs", "CPU used", "pressure", "last action", "reason"):
        table.add_column(column)
    for (host, vm), row in sorted(fleet.rows.items()):
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
    return table
