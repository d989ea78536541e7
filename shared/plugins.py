"""Plug-in registries: collector sources and actuator drivers by name, each with a typed config that checks itself.

A plug-in is a name, a config type (a plain ``msgspec.Struct`` whose fields mirror the command-line options it
takes, by their argparse names, so a TOML section with the same keys decodes into it too) and a factory that
builds the source or driver from that config and the running service's context. The config type holds the
plug-in's own option rules (``__post_init__`` raises a :class:`shared.errors.UserError`); the registry holds the
rules every plug-in shares: ``--speed`` only for the simulated cloud, an optional extra that must be installed.

The command line asks a registry for its names (``--source``/``--driver`` choices), builds the chosen plug-in's
config from the parsed options (:meth:`Registry.config`) and calls the factory (:meth:`Registry.build`); it has
no branch per plug-in. A plug-in's config fields that its service does not already take become flags of that
service (``--toy-load``), and keys of the config file's ``[plugins.NAME]`` table (checked when the file is read).
A plug-in outside this package registers itself when its module is imported: name the module, or its ``.py``
file, in ``$HOTPLUG_PLUGINS`` (comma-separated); see ``examples/toy_source.py``. A whole
hypervisor (a source, a driver and what ``hotplug up`` does for it) is one such module too:
``examples/toy_hypervisor.py`` and ``docs/hypervisors/adding-a-hypervisor.md``.

Each registry registers itself here by its kind (:func:`registry_of`), so that ``shared.config`` can check the
names and options a config file gives without importing the services that hold the registries; ``hotplug``'s
hypervisor records add their plug-ins' options the same way (:func:`add_option_kind`), for ``[plugins.NAME]``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from shared.errors import InputError, UsageError, UserError
from shared.runtime import ServiceContext

PLUGINS_ENV = "HOTPLUG_PLUGINS"

P = TypeVar("P")  # what the registry's factories build: a Source, a Driver
C = TypeVar("C", bound=msgspec.Struct)

_loaded: set[str] = set()
_registries: dict[str, Registry[Any]] = {}
# Plug-in kinds held above ``shared`` whose options are ``[plugins.NAME]`` keys too (``hotplug``'s hypervisor records):
# each kind's option types by plug-in name, asked for when a file is checked.
_option_kinds: dict[str, Callable[[], Mapping[str, type[msgspec.Struct]]]] = {}


def registry_of(kind: str) -> Registry[Any] | None:
    """The registry of ``kind`` ("source", "driver"), once the module that holds it is imported."""
    return _registries.get(kind)


def add_option_kind(kind: str, option_types: Callable[[], Mapping[str, type[msgspec.Struct]]]) -> None:
    """Plug-ins of ``kind`` take options from ``[plugins.NAME]`` too: ``option_types()`` gives their types by name."""
    _option_kinds[kind] = option_types


def plugin_options() -> dict[str, list[type[msgspec.Struct]]]:
    """The option types of every plug-in known now, by plug-in name: a source, a driver and a hypervisor record of
    one name share its ``[plugins.NAME]`` table."""
    found: dict[str, list[type[msgspec.Struct]]] = {}
    kinds = [r.config_types for r in _registries.values()] + list(_option_kinds.values())
    for option_types in kinds:
        for name, config_type in option_types().items():
            found.setdefault(name, []).append(config_type)
    return found


def load_plugins(env: Mapping[str, str] | None = None) -> None:
    """Import every plug-in module named in ``$HOTPLUG_PLUGINS`` (once each), which registers its plug-ins.

    An entry is a module name (``mypackage.mysource``) or the path of a ``.py`` file. The services that ``up``
    starts inherit the variable, so they find the same plug-ins."""
    value = (os.environ if env is None else env).get(PLUGINS_ENV, "")
    for entry in (e.strip() for e in value.split(",")):
        if not entry or entry in _loaded:
            continue
        _loaded.add(entry)  # before the import: a module that fails is reported once, not at every look-up
        try:
            if entry.endswith(".py"):
                _import_file(Path(entry))
            else:
                importlib.import_module(entry)
        except ImportError as exc:
            raise InputError(f"${PLUGINS_ENV}: cannot import {entry!r}: {exc}") from exc


def _import_file(path: Path) -> None:
    name = f"hotplug_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ImportError(f"no such Python file: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # msgspec and dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)


@dataclass(frozen=True)
class Plugin(Generic[C, P]):
    name: str
    config_type: type[C]
    factory: Callable[[C, ServiceContext[Any]], P]
    # Runs on the simulated cloud's clock, which --speed scales; every other plug-in runs on the wall clock.
    simulated: bool = False
    # Raises a UserError if an optional extra the plug-in needs is not installed (checked before any start).
    requires: Callable[[], object] | None = None
    # Raises a UserError if the hypervisor cannot be reached with this config (``hotplug up`` checks it first).
    probe: Callable[[C], None] | None = None


class Registry(Generic[P]):
    """Plug-ins of one kind by name, in the order they registered (the order ``--help`` lists them)."""

    def __init__(self, kind: str, wall_clock_note: str) -> None:
        self.kind = kind  # "source", "driver": in messages
        self.wall_clock_note = wall_clock_note  # what ``--speed`` with a real plug-in is told
        self._plugins: dict[str, Plugin[Any, P]] = {}
        _registries[kind] = self

    def register(
        self,
        name: str,
        config_type: type[C],
        *,
        simulated: bool = False,
        requires: Callable[[], object] | None = None,
        probe: Callable[[C], None] | None = None,
    ) -> Callable[[Callable[[C, ServiceContext[Any]], P]], Callable[[C, ServiceContext[Any]], P]]:
        """Decorate a factory ``(config, ctx) -> plug-in`` to register it as ``name``."""

        def add(factory: Callable[[C, ServiceContext[Any]], P]) -> Callable[[C, ServiceContext[Any]], P]:
            if name in self._plugins:
                raise ValueError(f"{self.kind} {name!r} is registered twice")  # a bug in a plug-in, not a user error
            self._plugins[name] = Plugin(name, config_type, factory, simulated, requires, probe)
            return factory

        return add

    def names(self) -> list[str]:
        load_plugins()
        return list(self._plugins)

    def get(self, name: str) -> Plugin[Any, P]:
        load_plugins()
        if name not in self._plugins:
            raise UsageError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._plugins)}")
        return self._plugins[name]

    def config_types(self) -> dict[str, type[msgspec.Struct]]:
        """Each plug-in's config type, by name: its options (flags, ``[plugins.NAME]`` keys)."""
        load_plugins()
        return {name: plugin.config_type for name, plugin in self._plugins.items()}

    def check_speed(self, name: str, speed: float, note: str | None = None) -> None:
        """The one ``--speed`` rule: only the simulated cloud has a clock to speed up."""
        if not self.get(name).simulated and speed != 1.0:
            raise UsageError("speed applies to the simulator only" + (self.wall_clock_note if note is None else note))

    def config(self, name: str, options: Mapping[str, Any]) -> Any:
        """The config of plug-in ``name`` from ``options`` (parsed options by argparse name, or a TOML section);
        keys the plug-in does not take are ignored. A UserError if it does not fit.

        An option that only another plug-in takes, when given, is still checked by that plug-in's config: a
        mistake is found now rather than in the run that uses it."""
        plugin = self.get(name)
        if "speed" in options:
            self.check_speed(name, float(options["speed"]))
        if plugin.requires is not None:
            plugin.requires()
        for other in self._plugins.values():
            if other is not plugin:
                given = {
                    f.name: options[f.name]
                    for f in msgspec.structs.fields(other.config_type)
                    if f.name in options and options[f.name] != _default(f)
                }
                if given:
                    self._convert(given, other)
        return self._convert(_taken(options, plugin.config_type), plugin)

    def _convert(self, values: Mapping[str, Any], plugin: Plugin[Any, P]) -> Any:
        try:
            return msgspec.convert(values, plugin.config_type, strict=False)
        except msgspec.ValidationError as exc:
            if isinstance(exc.__cause__, UserError):
                raise exc.__cause__ from None  # the config's own message, word for word
            raise UsageError(f"{self.kind} {plugin.name}: {exc}") from exc

    def build(self, name: str, config: Any, ctx: ServiceContext[Any]) -> P:
        """The plug-in itself, for a running service."""
        return self.get(name).factory(config, ctx)

    def probe(self, name: str, config: Any) -> None:
        plugin = self.get(name)
        if plugin.probe is not None:
            plugin.probe(config)


def _taken(options: Mapping[str, Any], config_type: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: options[f.name] for f in msgspec.structs.fields(config_type) if f.name in options}


def _default(field: msgspec.structs.FieldInfo) -> Any:
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return field.default


def names_in(registries: Iterable[Registry[Any]]) -> list[str]:
    """Names registered in every one of ``registries``, in the first one's order (``up --hypervisor``: a
    hypervisor has both a source and a driver)."""
    first, *rest = list(registries)
    return [n for n in first.names() if all(n in r.names() for r in rest)]
