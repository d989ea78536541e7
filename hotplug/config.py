"""``--config FILE`` for every service and ``up`` (the file's keys become the flags' defaults), and the ``hotplug
config`` commands: ``check`` (validate; the rule each known VM falls under) and ``reference`` (the README's table).

Settings, lowest first: built-in default < config file < environment variable < command-line flag. The file's
values are set as the parser's defaults before the command line is read, so a flag given beats them; a key whose
environment variable is set is left out, so the variable beats the file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from services.actuator.checks import Bounds
from shared.config.load import ConfigError, LoadedConfig, load
from shared.config.reload import Reloader
from shared.config.rules import Defaults, resolve
from shared.config.schema import (
    CONFIG_ENV,
    PATH_KEYS,
    SECTIONS,
    ConfigFile,
    ServiceSection,
    VmRule,
    env_of,
    param_flags,
    section_values,
)
from shared.runtime import ServiceContext

ACTUATOR_DEFAULT = Bounds()  # the actuator's --min-vcpus/--max-vcpus defaults


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


def config_path(argv: list[str], environ: Mapping[str, str]) -> tuple[str, Path] | None:
    """The command and its config file, when it is one that takes a file and one is named."""
    command = next((a for a in argv if not a.startswith("-")), None)
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


def file_defaults(loaded: LoadedConfig, command: str, environ: Mapping[str, str]) -> dict[str, object]:
    """The parser defaults the file gives ``command``: its section's keys, without those an environment variable
    sets, with paths taken from the file's folder and ``param`` as ``--param`` items. Pure but for ``environ``."""
    values = section_values(loaded.config, command)
    env = env_of(command)
    out: dict[str, object] = {}
    for key, value in values.items():
        if key in env and environ.get(env[key]):
            continue
        if key in PATH_KEYS and isinstance(value, str):
            out[key] = loaded.path.parent / value
        elif key == "param" and isinstance(value, dict):
            out[key] = param_flags(value)
        else:
            out[key] = value
    return out


def apply_file(parser: argparse.ArgumentParser, argv: list[str]) -> LoadedConfig | None:
    """Load the config file ``argv`` names (or ``$HOTPLUG_CONFIG``) and make its keys the command's defaults."""
    found = config_path(argv, os.environ)
    if found is None:
        return None
    command, path = found
    loaded = load(path)
    sub = _subparser(parser, command)
    defaults = file_defaults(loaded, command, os.environ)
    if isinstance(defaults.get("param"), list):
        # argparse extends an append option's default in place: hand it a list of its own
        defaults["param"] = list(defaults["param"])  # type: ignore[call-overload]
    sub.set_defaults(**defaults)
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
        loaded = load(path)
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
    """The config file reference in Markdown, from the Structs' JSON Schema (names, types, descriptions)."""
    schema: dict[str, Any] = msgspec.json.schema(ConfigFile)
    defs: dict[str, Any] = schema["$defs"]
    top = defs["ConfigFile"]["properties"]
    lines = []
    for section, prop in top.items():
        name = prop.get("$ref", "").rsplit("/", 1)[-1] or prop["items"]["$ref"].rsplit("/", 1)[-1]
        struct = defs[name]
        header = f"[[{section}]]" if section in ("vm", "host") else f"[{section}]"
        text = " ".join(struct.get("description", "").split()).replace("``", "`")
        inherits = section in SECTIONS and issubclass(SECTIONS[section], ServiceSection)
        if inherits:
            text += " It also takes every key of `[service]`, which it overrides."
        lines += [f"#### `{header}`", "", text, ""]
        env = env_of(section) if section in SECTIONS or section == "service" else {}
        lines += ["| key | type | meaning |", "|---|---|---|"]
        for key, field in struct["properties"].items():
            if inherits and key in ServiceSection.__struct_fields__:
                continue
            variable = f" (${env[key]})" if key in env else ""
            required = " **required**" if key in struct.get("required", []) else ""
            if field.get("default") not in (None, {}):
                required += f" (default {msgspec.json.encode(field['default']).decode()})"
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
