"""The actuator's drivers by name (``hotplug actuator --driver``), each with the config it takes and how
``hotplug up`` checks, before starting anything, that its hypervisor is there.

Config fields are named after the command-line options they mirror (argparse's names: ``--libvirt-uri`` is
``libvirt_uri``). The drivers themselves are imported only when built: libvirt-python, for one, is optional.
"""

from __future__ import annotations

from typing import Any

import msgspec

from services.actuator.drivers.base import Driver
from shared.errors import NotFound, UsageError
from shared.libvirt.connection import libvirt_module
from shared.plugins import Registry
from shared.runtime import ServiceContext

DRIVERS: Registry[Driver] = Registry("driver", "; real hypervisors run on the wall clock")


class SimulatorDriverConfig(msgspec.Struct, frozen=True):
    """The simulated mini-cloud of this host: nothing to set."""


class VirtualBoxDriverConfig(msgspec.Struct, frozen=True):
    """``VBoxManage`` from $HOTPLUG_VBOXMANAGE or PATH."""


class QemuDriverConfig(msgspec.Struct, frozen=True):
    """The guests ``hotplug qemu`` runs ($HOTPLUG_QEMU_DIR)."""


class LibvirtDriverConfig(msgspec.Struct, frozen=True):
    libvirt_uri: str | None = None  # None: $HOTPLUG_LIBVIRT_URI, else qemu:///system
    libvirt_opt_in: bool = False  # only domains whose hotplug metadata says enabled


def _find_vboxmanage(_config: VirtualBoxDriverConfig) -> None:
    from shared.virtualbox import find_vboxmanage

    find_vboxmanage()


def _find_qemu(_config: QemuDriverConfig) -> None:
    from shared.qemu.vm import QemuError, find_qemu

    try:
        find_qemu()
    except QemuError as exc:
        raise NotFound(str(exc)) from exc


def _reach_libvirt(config: LibvirtDriverConfig) -> None:
    from shared.libvirt.connection import Connection

    probe = Connection(config.libvirt_uri)
    try:
        probe.run(lambda conn: conn.getLibVersion())  # a clear error now, not in three children's logs
    except probe.libvirt.libvirtError as exc:
        raise UsageError(f"libvirt at {probe.uri}: {exc}") from exc
    finally:
        probe.close()


@DRIVERS.register("simulator", SimulatorDriverConfig, simulated=True)
def _simulator(_config: SimulatorDriverConfig, ctx: ServiceContext[Any]) -> Driver:
    from services.actuator.drivers.simulator import SimulatorDriver

    return SimulatorDriver(ctx.nc, ctx.host, ctx.clock)


@DRIVERS.register("virtualbox", VirtualBoxDriverConfig, probe=_find_vboxmanage)
def _virtualbox(_config: VirtualBoxDriverConfig, _ctx: ServiceContext[Any]) -> Driver:
    from services.actuator.drivers.virtualbox import VirtualBoxDriver

    return VirtualBoxDriver()


@DRIVERS.register("qemu", QemuDriverConfig, probe=_find_qemu)
def _qemu(_config: QemuDriverConfig, _ctx: ServiceContext[Any]) -> Driver:
    from services.actuator.drivers.qemu import QemuDriver

    return QemuDriver()


@DRIVERS.register("libvirt", LibvirtDriverConfig, requires=libvirt_module, probe=_reach_libvirt)
def _libvirt(config: LibvirtDriverConfig, _ctx: ServiceContext[Any]) -> Driver:
    from services.actuator.drivers.libvirt import LibvirtDriver

    return LibvirtDriver(config.libvirt_uri, opt_in=config.libvirt_opt_in)
