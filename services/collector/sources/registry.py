"""The collector's sources by name (``hotplug collector --source``), each with the config it takes.

Config fields are named after the command-line options they mirror (argparse's names: ``--libvirt-uri`` is
``libvirt_uri``). The sources themselves are imported only when built: libvirt-python, for one, is optional.
"""

from __future__ import annotations

from typing import Any

import msgspec

from services.collector.sources.base import Source
from services.collector.sources.procs import ProcessSpec
from shared.errors import UsageError
from shared.libvirt.connection import libvirt_module
from shared.plugins import Registry
from shared.runtime import ServiceContext

SOURCES: Registry[Source] = Registry("source", "; real sources run on the wall clock")


class SimulatorSourceConfig(msgspec.Struct, frozen=True):
    """The simulated mini-cloud of this host: nothing to set."""


class ProcessSourceConfig(msgspec.Struct, frozen=True):
    process: list[str] = []  # VM=PID or VM=REGEX, one per --process

    def __post_init__(self) -> None:
        self.specs()  # a bad one is an error now, not when the collector first samples
        if not self.process:
            raise UsageError("the psutil source needs at least one process (VM=PID or VM=REGEX)")

    def specs(self) -> list[ProcessSpec]:
        return [ProcessSpec.parse(p) for p in self.process]


class VirtualBoxSourceConfig(msgspec.Struct, frozen=True):
    """The VMs ``VBoxManage`` lists as running ($HOTPLUG_VBOXMANAGE or PATH)."""


class QemuSourceConfig(msgspec.Struct, frozen=True):
    """The guests ``hotplug qemu`` runs ($HOTPLUG_QEMU_DIR)."""


class LibvirtSourceConfig(msgspec.Struct, frozen=True):
    libvirt_uri: str | None = None  # None: $HOTPLUG_LIBVIRT_URI, else qemu:///system
    libvirt_domain: list[str] = []  # watch only these domains; none: every running domain
    libvirt_opt_in: bool = False  # only domains whose hotplug metadata says enabled


@SOURCES.register("simulator", SimulatorSourceConfig, simulated=True)
def _simulator(_config: SimulatorSourceConfig, ctx: ServiceContext[Any]) -> Source:
    from services.collector.sources.simulator import SimulatorSource

    return SimulatorSource(ctx.nc, ctx.host)


@SOURCES.register("psutil", ProcessSourceConfig)
def _psutil(config: ProcessSourceConfig, ctx: ServiceContext[Any]) -> Source:
    from services.collector.sources.procs import ProcessSource

    return ProcessSource(config.specs(), ctx.clock)


@SOURCES.register("virtualbox", VirtualBoxSourceConfig)
def _virtualbox(_config: VirtualBoxSourceConfig, ctx: ServiceContext[Any]) -> Source:
    from services.collector.sources.virtualbox import VirtualBoxSource
    from shared.virtualbox import VBoxManage

    return VirtualBoxSource(VBoxManage(), ctx.clock)


@SOURCES.register("qemu", QemuSourceConfig)
def _qemu(_config: QemuSourceConfig, ctx: ServiceContext[Any]) -> Source:
    from services.collector.sources.qemu import QemuSource

    return QemuSource(ctx.clock)


@SOURCES.register("libvirt", LibvirtSourceConfig, requires=libvirt_module)
def _libvirt(config: LibvirtSourceConfig, ctx: ServiceContext[Any]) -> Source:
    from services.collector.sources.libvirt import LibvirtSource

    return LibvirtSource(
        ctx.clock,
        config.libvirt_uri,
        domains=config.libvirt_domain,
        opt_in=config.libvirt_opt_in,
        registry=ctx.metrics.registry,
    )
