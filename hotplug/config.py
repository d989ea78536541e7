"""``--config FILE`` for every service and ``up``, the settings order, and the ``hotplug config`` commands:
``check`` (validate; the rule each known VM falls under) and ``reference`` (docs/configuration.md's table).

Settings, lowest first: built-in default < config file < environment variable < command-line flag. Every flag
defaults to "not given"; :func:`apply_file` is the one place that puts the three lower layers together
(``shared.config.settings.layered``) and makes them the command's defaults before the command line is read, so
a flag given beats them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from shared.config.load import ConfigError, LoadedConfig, load
from shared.config.reload import Reloader
from shared.config.rules import Defaults, resolve
from shared.config.schema import (
    CONFIG_ENV,
    SECTIONS,
    SETTINGS,
    ActuatorSettings,
    ConfigFile,
    ServiceSection,
    ServiceSettings,
    UpSettings,
    VmRule,
    config_file_with,
    section_values,
)
from shared.config.settings import Spec, layered, specs
from shared.plugins import registry_of
from shared.runtime import ServiceContext

ACTUATOR_DEFAULT = ActuatorSettings()  # the actuator's min_vcpus/max_vcpus for VMs no rule bounds
# The plug-ins a command runs: their [plugins.NAME] options are its too.
PLUGIN_KINDS = {"collector": "source", "actuator": "driver"}


@functools.cache  # the built-in records are what they are for the process's life
def config_type() -> type[ConfigFile]:
    """The config file as ``hotplug`` reads it: :class:`ConfigFile` with the built-in hypervisor records' own
    options among ``[up]``'s keys (``seed``, ``trace``, ``libvirt_uri``...), declared by the records."""
    from hotplug.hypervisors import HYPERVISORS

    return config_file_with(HYPERVISORS.option_specs(HYPERVISORS.builtins()))


def load_file(path: Path) -> LoadedConfig:
    """Read and check the config file ``path``, ``[up]``'s record keys included."""
    return load(path, config_type())


def section_type(command: str) -> type[Any]:
    """The section ``command`` reads (``[up]`` with the records' keys)."""
    sections: dict[str, type[Any]] = {f.name: f.type for f in msgspec.structs.fields(config_type())}
    return sections[command]


def up_settings() -> list[Spec]:
    """Every setting ``up`` takes: its own (``UpSettings``), then each hypervisor record's own options."""
    from hotplug.hypervisors import HYPERVISORS

    return [*specs(UpSettings), *HYPERVISORS.option_specs()]


def epilog(command: str) -> str:
    """The settings order, for the command's ``--help``."""
    rules = {
        "decider": " and its [[vm]] rules (re-read on SIGHUP)",
        "actuator": " and its [[vm]] rules (re-read on SIGHUP)",
        "collector": " and its [[host]] rules (re-read on SIGHUP)",
    }.get(command, "")
    sections = f"[{command}]" if command == "up" else f"[service] and [{command}]"
    return (
        f"Settings, lowest first: built-in default < config file (--config FILE or ${CONFIG_ENV}: its {sections} "
        f"sections{rules}) < environment variable < command-line flag. A list key (param, process...) is "
        "extended by its flag. See 'hotplug config reference'."
    )


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"TOML config file (${CONFIG_ENV}); see 'hotplug config reference'",
    )


def command_of(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def config_path(argv: list[str], environ: Mapping[str, str]) -> tuple[str, Path] | None:
    """The command and its config file, when it is one that takes a file and one is named."""
    command = command_of(argv)
    if command not in SECTIONS:
        return None
    path: str | None = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    path = path or environ.get(CONFIG_ENV) or None
    return (command, Path(path)) if path else None


def starting_values(command: str, loaded: LoadedConfig | None, environ: Mapping[str, str]) -> dict[str, object]:
    """What ``command``'s flags start from: built-in defaults < the file's [service] and [command] keys (and the
    [plugins.NAME] options of the plug-ins it runs) < environment variables. Pure but for ``environ``."""
    file = section_values(loaded.config, command) if loaded is not None else {}
    folder = loaded.path.parent if loaded is not None else None
    values: dict[str, object] = layered(SETTINGS[command], file, environ, folder)
    if command == "up":
        values.update(_record_values(loaded, file, environ))
    kind = PLUGIN_KINDS.get(command)
    registry = registry_of(kind) if kind is not None else None
    if loaded is not None and registry is not None:
        for name, options in loaded.config.plugins.items():
            if name in registry.names():
                values.update({k: v for k, v in options.items() if k not in values})
    return values


def _record_values(
    loaded: LoadedConfig | None, up: Mapping[str, object], environ: Mapping[str, str]
) -> dict[str, object]:
    """The hypervisor records' own options, layered as every setting is: a built-in's from ``[up]`` (``up``), a
    plug-in's from its ``[plugins.NAME]`` table. Pure but for ``environ``."""
    from hotplug.hypervisors import HYPERVISORS

    config = loaded.config if loaded is not None else None
    folder = loaded.path.parent if loaded is not None else None
    values: dict[str, object] = {}
    for record in HYPERVISORS.all():
        own = HYPERVISORS.file_options(record, config, up)
        for key, value in layered(record.options, own, environ, folder).items():
            values.setdefault(key, value)  # an option two records share: the first one's, as its flag is
    return values


def apply_file(parser: argparse.ArgumentParser, argv: list[str]) -> LoadedConfig | None:
    """Load the config file ``argv`` names (or ``$HOTPLUG_CONFIG``), and make the settings' layers under the
    command line (:func:`starting_values`) the command's defaults; the file, if any."""
    command = command_of(argv)
    if command not in SETTINGS:
        return None
    found = config_path(argv, os.environ)
    loaded = load_file(found[1]) if found is not None else None
    _subparser(parser, command).set_defaults(**starting_values(command, loaded, os.environ))
    return loaded


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen: argparse.ArgumentParser = action.choices[command]
            return chosen
    raise LookupError(f"no sub-command {command}")


def loaded_of(args: argparse.Namespace) -> LoadedConfig | None:
    """The config file ``main`` loaded for this command, if any."""
    loaded = getattr(args, "config_file", None)
    return loaded if isinstance(loaded, LoadedConfig) else None


def watch_config(
    ctx: ServiceContext[Any], args: argparse.Namespace, command: str, apply: Callable[[LoadedConfig], str] | None = None
) -> Reloader:
    """Re-read the service's config file on SIGHUP; ``apply`` takes the new rules (None: the service has none to
    take, and a reload only checks the file)."""

    def nothing(_: LoadedConfig) -> str:
        return f"nothing the {command} changes while running"

    reloader = Reloader(loaded_of(args), command, apply or nothing, ctx.metrics.registry)
    reloader.install()
    return reloader


# --- hotplug config check -------------------------------------------------------------------------------------


def check(path: Path, vms: list[str], nats_url: str | None, host: str) -> int:
    """Validate ``path``; print the rule each known VM falls under. 2 (and file:line: reason) if invalid."""
    from services.decider.registry import ParamError
    from services.decider.rulebook import build_rulebook

    try:
        loaded = load_file(path)
        decider = loaded.config.decider
        try:
            build_rulebook(loaded, decider.policy or "default", decider.param or {})
        except ParamError as exc:
            key = "param" if decider.param else "policy"
            raise loaded.error(("decider", key), str(exc)) from None
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    rules = loaded.config.vm
    print(f"{path}: valid; {len(rules)} [[vm]] rule{'s' if len(rules) != 1 else ''}")
    known = {_split_vm(v, host) for v in vms}
    if nats_url is None:
        print("no broker given (--nats or $HOTPLUG_NATS_URL): only the VMs named with --vm are listed")
    else:
        try:
            known |= asyncio.run(asyncio.wait_for(known_vms(nats_url), timeout=20))
        except Exception as exc:
            print(f"broker at {nats_url} not reachable ({exc or type(exc).__name__}): only --vm VMs are listed")
    for line in rule_table(loaded.config, sorted(known)):
        print(line)
    return 0


def _split_vm(name: str, host: str) -> tuple[str, str]:
    h, slash, vm = name.partition("/")
    return (h, vm) if slash else (host, name)


def rule_table(config: ConfigFile, vms: list[tuple[str, str]]) -> list[str]:
    """One line per known VM (its rule, mode, policy and bounds), then the rules no known VM falls under. Pure."""
    decider, actuator = config.decider, config.actuator
    defaults = Defaults(
        decider.policy or "default",
        decider.param or {},
        actuator.min_vcpus or ACTUATOR_DEFAULT.min_vcpus,
        actuator.max_vcpus or ACTUATOR_DEFAULT.max_vcpus,
    )
    out = []
    used: set[int] = set()
    if vms:
        rows = [("HOST", "VM", "RULE", "AUTOSCALE", "POLICY", "VCPUS")]
        for host, vm in vms:
            s = resolve(config.vm, host, vm, defaults)
            if s.rule_index is not None:
                used.add(s.rule_index)
            label = s.rule if s.rule_index is None else f"#{s.rule_index + 1} {s.rule}"
            rows.append((host, vm, label, s.autoscale, s.policy, f"{s.min_vcpus}..{s.max_vcpus}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        out += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    else:
        out.append("no known VMs")
    for index, rule in enumerate(config.vm):
        if index not in used and vms:
            out.append(f"rule #{index + 1} ({_describe(rule)}) matches none of these VMs")
    return out


def _describe(rule: VmRule) -> str:
    return f"match {', '.join(rule.patterns)}" + (f", name {rule.name}" if rule.name else "")


async def known_vms(url: str) -> set[tuple[str, str]]:
    """The (host, VM) of every VM with a sample in the metrics stream (the newest per subject)."""
    from shared import bus, subjects, topology
    from shared.codec import BadMessage, Decoder
    from shared.messages import MetricSample

    decoder = Decoder(MetricSample)
    found: set[tuple[str, str]] = set()
    nc = await bus.connect(url, "hotplug-config", forever=False)
    try:
        async for _, data in bus.read_stream(
            nc.jetstream(), topology.METRICS_STREAM, [subjects.ALL_METRICS], last_per_subject=True
        ):
            with contextlib.suppress(BadMessage):
                sample = decoder.decode(data)
                found.add((sample.host, sample.vm))
    finally:
        await nc.close()
    return found


# --- hotplug config reference ---------------------------------------------------------------------------------


def reference() -> str:
    """The config file reference in Markdown, from the Structs' JSON Schema (names, types, descriptions) and the
    settings they are generated from (built-in defaults, environment variables)."""
    schema: dict[str, Any] = msgspec.json.schema(config_type())
    defs: dict[str, Any] = schema["$defs"]
    top = defs["ConfigFile"]["properties"]
    lines = []
    for section, prop in top.items():
        if section == "plugins":
            lines += ["#### `[plugins.NAME]`", "", prop["description"].replace("``", "`") + ".", ""]
            continue
        name = prop.get("$ref", "").rsplit("/", 1)[-1] or prop["items"]["$ref"].rsplit("/", 1)[-1]
        struct = defs[name]
        header = f"[[{section}]]" if section in ("vm", "host") else f"[{section}]"
        text = " ".join(struct.get("description", "").split()).replace("``", "`")
        inherits = section in SECTIONS and issubclass(SECTIONS[section], ServiceSection)
        if inherits:
            text += " It also takes every key of `[service]`, which it overrides."
        lines += [f"#### `{header}`", "", text, ""]
        settings = SETTINGS.get(section, ServiceSettings if section == "service" else None)
        declared = {s.name: s for s in (up_settings() if section == "up" else specs(settings) if settings else [])}
        lines += ["| key | type | meaning |", "|---|---|---|"]
        for key, field in struct["properties"].items():
            if inherits and key in ServiceSection.__struct_fields__:
                continue
            spec = declared.get(key)
            variable = f" (${spec.env})" if spec is not None and spec.env is not None else ""
            required = " **required**" if key in struct.get("required", []) else ""
            default = spec.default if spec is not None else field.get("default")
            if default not in (None, {}, [], ""):
                required += f" (default {msgspec.json.encode(default).decode()})"
            lines.append(f"| `{key}` | {_type(field, defs)} | {field.get('description', '')}{variable}{required} |")
        lines.append("")
    return "\n".join(lines)


def _type(field: dict[str, Any], defs: dict[str, Any]) -> str:
    options = field.get("anyOf", [field])
    names = [_one_type(o, defs) for o in options if o.get("type") != "null"]
    return " or ".join(names)


def _one_type(field: dict[str, Any], defs: dict[str, Any]) -> str:
    if "enum" in field:
        return " \\| ".join(f'"{v}"' for v in field["enum"])
    kind = field.get("type", "table")
    if kind == "array":
        return f"list of {_one_type(field['items'], defs)}"
    if kind == "object":
        return "table"
    bound = next((f" {op} {field[k]}" for k, op in (("minimum", "≥"), ("exclusiveMinimum", ">")) if k in field), "")
    return {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}[kind] + bound
