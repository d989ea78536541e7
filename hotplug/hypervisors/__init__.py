"""Hypervisors by name: one record each, which ``hotplug up`` and the command line loop over.

A record names its collector source and its actuator driver (in ``SOURCES`` and ``DRIVERS``), the ``up`` options it
takes of its own (one Struct that declares them as settings: their flags, config-file keys and reference lines are
generated from it, as a service's are from its settings), how ``up`` provisions it (its own service children, guests
booted for the run and the environment the children need) and its admin command group (``hotplug qemu ...``). Nothing in
``hotplug/`` branches on a hypervisor's name: ``up --hypervisor X`` is the record ``X``.

Every module of this package that holds a ``HYPERVISOR`` is a built-in record, found here by itself; a plug-in
named in ``$HOTPLUG_PLUGINS`` calls ``HYPERVISORS.register`` (``examples/toy_hypervisor.py``;
``docs/hypervisors/adding-a-hypervisor.md`` says how).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from services.actuator.drivers.registry import DRIVERS
from services.collector.sources.registry import SOURCES
from shared.config.schema import VMS
from shared.config.settings import Spec, specs
from shared.errors import UsageError, UserError
from shared.plugins import add_option_kind, load_plugins, names_in

if TYPE_CHECKING:
    from nats.aio.client import Client

    from hotplug.cli.common import Subparsers
    from hotplug.fleet import Fleet
    from hotplug.up import UpOptions
    from shared.config.schema import ConfigFile

U = TypeVar("U", bound=msgspec.Struct)

_LAST = 1000  # a built-in without ORDER comes after the others

# The run's VMs when --vms is not given, for a hypervisor that makes them (the simulator's, QEMU's guests): the
# simulator's own default.
DEFAULT_VMS = VMS


class NoOptions(msgspec.Struct, frozen=True):
    """The ``up`` options of a hypervisor that takes none of its own."""


@contextlib.asynccontextmanager
async def nothing_to_provision(_options: UpOptions, _data_dir: Path) -> AsyncIterator[Mapping[str, str]]:
    """What ``up`` does for a hypervisor whose VMs are already there: nothing, and no environment."""
    yield {}


@dataclass(frozen=True)
class Hypervisor(Generic[U]):
    """What ``hotplug up`` and the command line know of one hypervisor."""

    name: str
    # One line for ``up --hypervisor``'s help: which VMs a run sees.
    summary: str
    # What ``up --vms`` means for it, for that flag's help (None: it makes no VMs, and ignores the count).
    vms: str | None = None
    # Its collector source and actuator driver, by their registry names (None: the hypervisor's own name).
    source: str | None = None
    driver: str | None = None
    # Its own ``up`` options: one Struct that declares each as a setting (``shared.config.settings``: its type, and
    # its range, description, environment variable and built-in default in the field's ``Meta``), named as its
    # flag's argparse name (``--host-cores`` is ``host_cores``, as in a source's and a driver's config). Its flags,
    # its config-file keys (a built-in's in ``[up]``, a plug-in's in ``[plugins.NAME]``) and its lines of the
    # configuration reference are generated from it. A field the run's options hold (``--vms``, ``--max-vcpus``)
    # is not its own: each record reads it its way.
    options: type[U] = NoOptions  # type: ignore[assignment]
    # Checks its options before any process starts (a UserError if they do not fit) and returns them as the
    # children need them (e.g. paths made absolute).
    prepare: Callable[[U, UpOptions, ConfigFile | None], U] | None = None
    # Service children of its own, started before the collector (the simulated cloud is one).
    services: tuple[str, ...] = ()
    # A child's own arguments after the common ones: its services', and what its source (in the collector) and its
    # driver (in the actuator) take.
    service_args: Callable[[str, UpOptions], list[str]] | None = None
    # The guests of the run (booted on entry, stopped on exit, after the services) and the environment every
    # child needs to find them.
    provision: Callable[[UpOptions, Path], AbstractAsyncContextManager[Mapping[str, str]]] = nothing_to_provision
    # After the run, before its services stop: what only this hypervisor can report (the simulator's jobs).
    finish: Callable[[Client, UpOptions, ConfigFile | None, Fleet], Awaitable[None]] | None = None
    # Its admin command group (``hotplug qemu start|set|...``), registered among the commands.
    admin: Callable[[Subparsers[argparse.ArgumentParser]], None] | None = None

    @property
    def source_name(self) -> str:
        return self.source or self.name

    @property
    def driver_name(self) -> str:
        return self.driver or self.name

    def own(self, options: UpOptions) -> U:
        """This hypervisor's own options in the run (its defaults when none were given)."""
        own = options.own if options.own is not None else self.options()
        if not isinstance(own, self.options):
            raise TypeError(f"up options of {type(own).__name__} for hypervisor {self.name}")  # a bug
        return own

    def own_from(self, values: Mapping[str, Any]) -> U:
        """Its own options from parsed options by argparse name (keys it does not take are ignored); a path, which
        the command line and the file give as a ``Path``, is declared as text, as in every settings Struct."""
        fields = {
            f.name: str(value) if isinstance(value := values[f.name], Path) else value
            for f in msgspec.structs.fields(self.options)
            if f.name in values
        }
        try:
            return msgspec.convert(fields, self.options, strict=False)
        except msgspec.ValidationError as exc:
            if isinstance(exc.__cause__, UserError):
                raise exc.__cause__ from None  # the options' own message, word for word
            raise UsageError(f"hypervisor {self.name}: {exc}") from exc

    def given(self, values: Mapping[str, Any]) -> list[str]:
        """The flags of its own that ``values`` sets away from their defaults (``--trace``, ``--host-cores``)."""
        return [
            "--" + f.name.replace("_", "-")
            for f in msgspec.structs.fields(self.options)
            if f.name in values and values[f.name] not in (_default(f), None, [], ())
        ]


def _default(field: msgspec.structs.FieldInfo) -> Any:
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return field.default


class Hypervisors:
    """The records by name, built-ins first, in the order they registered."""

    def __init__(self) -> None:
        self._records: dict[str, Hypervisor[Any]] = {}
        self._builtins: set[str] = set()
        self._builtins_loaded = False
        # A plug-in record's options are keys of the file's [plugins.NAME] table, beside its source's and driver's.
        add_option_kind("hypervisor", self._plugin_options)

    def register(self, record: Hypervisor[Any]) -> Hypervisor[Any]:
        if record.name in self._records:
            raise ValueError(f"hypervisor {record.name!r} is registered twice")  # a bug in a plug-in
        self._records[record.name] = record
        return record

    def _load(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
            # Each built-in module registers its record on import; its ORDER (the --hypervisor choices' order)
            # decides which comes first.
            plugins = dict(self._records)  # a plug-in imported before this look-up comes after the built-ins
            self._records = {}
            for module in sorted(modules, key=lambda m: getattr(m, "ORDER", _LAST)):
                if isinstance(getattr(module, "HYPERVISOR", None), Hypervisor):  # not resize.py, a helper
                    self.register(module.HYPERVISOR)
                    self._builtins.add(module.HYPERVISOR.name)
            for record in plugins.values():
                self.register(record)
        load_plugins()
        # A plug-in with a source and a driver of the same name and no record of its own: a hypervisor whose VMs
        # are already there, as before records existed.
        for name in names_in([DRIVERS, SOURCES]):
            if name not in self._records:
                self.register(Hypervisor(name=name, summary=f"{name}: the VMs its source and driver see"))

    def all(self) -> list[Hypervisor[Any]]:
        self._load()
        return list(self._records.values())

    def names(self) -> list[str]:
        return [h.name for h in self.all()]

    def builtins(self) -> list[Hypervisor[Any]]:
        return [h for h in self.all() if h.name in self._builtins]

    def option_specs(self, records: list[Hypervisor[Any]] | None = None) -> list[Spec]:
        """The own options of ``records`` (default: every one) as settings of ``up``, each described for its
        hypervisor (``simulator: workload and arrivals seed``; a plug-in's with its file key), once per name (two
        records may share an option: the first one's declaration stands)."""
        out: dict[str, Spec] = {}
        for record in self.all() if records is None else records:
            where = "" if record.name in self._builtins else " ([plugins.{}] {})"
            declared: type[msgspec.Struct] = record.options
            for spec in specs(declared):
                text = f"{record.name}: {spec.description or spec.name}{where.format(record.name, spec.name)}"
                out.setdefault(spec.name, dataclasses.replace(spec, description=text))
        return list(out.values())

    def file_options(
        self, record: Hypervisor[Any], config: ConfigFile | None, up: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Where the file sets ``record``'s own options: a built-in's in ``[up]`` (``up``: that section's keys set),
        a plug-in's in its ``[plugins.NAME]`` table."""
        if record.name in self._builtins:
            return up
        return config.plugins.get(record.name, {}) if config is not None else {}

    def _plugin_options(self) -> dict[str, type[msgspec.Struct]]:
        return {h.name: h.options for h in self.all() if h.name not in self._builtins}

    def get(self, name: str) -> Hypervisor[Any]:
        self._load()
        if name not in self._records:
            raise UsageError(f"unknown hypervisor {name!r}; choose from {', '.join(self._records)}")
        return self._records[name]


HYPERVISORS = Hypervisors()
