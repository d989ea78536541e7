"""Reading a config file: TOML syntax (stdlib ``tomllib``), then types (msgspec, unknown keys refused). Every error
names the file, the line and the reason: ``hotplug.toml:12: vm[1].max_vcpus: Expected `int >= 1`, got `0```.

``tomllib`` says where a syntax error is; it keeps no positions for a valid document, so :func:`key_lines` reads
the (already valid) text once more for the line of every table and key, and a msgspec error path such as
``$.vm[1].max_vcpus`` is mapped back to its line (or the nearest enclosing one that is written out).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from shared.config.schema import ConfigFile
from shared.errors import InputError, UserError

KeyPath = tuple[str | int, ...]

_TOML_AT = re.compile(r"^(?P<reason>.*?) \(at line (?P<line>\d+), column \d+\)$")
_MSGSPEC_AT = re.compile(r"^(?P<reason>.*) - at `\$(?P<path>[^`]*)`$")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<name>[^`]+)`")
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")


class ConfigError(InputError):
    """A config file that cannot be used: where, and why."""

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}" if line is not None else f"{path}: {reason}")


@dataclass(frozen=True)
class LoadedConfig:
    """A valid config file, with the line of each of its keys (for errors found after loading, such as a rule's
    policy parameter that its policy does not take)."""

    path: Path
    config: ConfigFile
    lines: dict[KeyPath, int] = field(default_factory=dict, compare=False)

    def line_of(self, keys: KeyPath) -> int | None:
        """The line of ``keys``, or of the nearest enclosing table or key that is written in the file."""
        for end in range(len(keys), 0, -1):
            line = self.lines.get(keys[:end])
            if line is not None:
                return line
        return None

    def error(self, keys: KeyPath, reason: str) -> ConfigError:
        return ConfigError(self.path, self.line_of(keys), f"{dotted(keys)}: {reason}" if keys else reason)


def dotted(keys: KeyPath) -> str:
    """``("vm", 1, "max_vcpus")`` → ``vm[1].max_vcpus``."""
    out = ""
    for key in keys:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


def parse(text: str, path: Path, schema: type[ConfigFile] = ConfigFile) -> LoadedConfig:
    """A config from its text (``path`` names it in errors), of type ``schema`` (``hotplug`` adds the hypervisor
    records' keys to ``[up]``: ``schema.config_file_with``). Pure."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_AT.match(str(exc))
        if found is None:
            raise ConfigError(path, None, str(exc)) from None
        raise ConfigError(path, int(found["line"]), found["reason"]) from None
    lines = key_lines(text)
    try:
        config = msgspec.convert(raw, schema)
    except msgspec.ValidationError as exc:
        loaded = LoadedConfig(path, schema(), lines)
        keys, reason = error_location(str(exc))
        raise loaded.error(keys, reason) from None
    loaded = LoadedConfig(path, config, lines)
    _check_plugin_names(loaded)
    return loaded


def _check_plugin_names(loaded: LoadedConfig) -> None:
    """Source and driver names are open-ended in the types (plug-ins register more), so they are checked here,
    against the registries as they stand once $HOTPLUG_PLUGINS is imported, with the key's line; so are the
    ``[plugins.NAME]`` tables, against the option types of the plug-ins of that name (a source, a driver, a
    hypervisor record). A registry not imported (no command that runs its plug-ins) has nothing to check against."""
    from shared.plugins import names_in, plugin_options, registry_of

    config = loaded.config
    sources, drivers = registry_of("source"), registry_of("driver")
    wanted = [
        (("collector", "source"), config.collector.source, "source", [sources]),
        (("actuator", "driver"), config.actuator.driver, "driver", [drivers]),
        (("up", "hypervisor"), config.up.hypervisor, "hypervisor", [drivers, sources]),
    ]
    for keys, name, kind, needed in wanted:
        known = [r for r in needed if r is not None]
        if name is None or len(known) < len(needed):
            continue
        choices = names_in(known)
        if name not in choices:
            raise loaded.error(keys, f"unknown {kind} {name!r}; choose from {', '.join(choices)}")
    every = plugin_options()
    if not every:
        return  # no command that runs plug-ins: nothing to check against
    for name, options in config.plugins.items():
        types = every.get(name)
        if not types:
            raise loaded.error(("plugins", name), f"no plug-in {name!r}; choose from {', '.join(sorted(every))}")
        # A source, a driver and a hypervisor record of one name share the table: a key is one of theirs, and each
        # checks the keys it takes.
        for key in options:
            if not any(key in t.__struct_fields__ for t in types):
                taken = ", ".join(dict.fromkeys(k for t in types for k in t.__struct_fields__)) or "no options"
                raise loaded.error(("plugins", name, key), f"unknown key; {name} takes {taken}")
        for config_type in types:
            try:
                msgspec.convert(
                    {k: v for k, v in options.items() if k in config_type.__struct_fields__}, config_type, strict=False
                )
            except (msgspec.ValidationError, UserError) as exc:
                cause = exc.__cause__ if isinstance(exc.__cause__, UserError) else exc
                raise loaded.error(("plugins", name), str(cause)) from None


def load(path: Path, schema: type[ConfigFile] = ConfigFile) -> LoadedConfig:
    """Read and check ``path`` (of type ``schema``, as :func:`parse`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse(text, path, schema)


def error_location(message: str) -> tuple[KeyPath, str]:
    """Where a msgspec validation error points, as a key path, and its reason without the path."""
    found = _MSGSPEC_AT.match(message)
    # An error at the top level has no path.
    reason, path = (found["reason"], found["path"]) if found is not None else (message, "")
    keys: list[str | int] = []
    for part in _PATH_PART.finditer(path):
        if part.group(1) is not None:
            keys.append(part.group(1))
        elif part.group(2) is not None:
            keys.append(int(part.group(2)))
        else:
            break  # a dict key msgspec does not name: the enclosing table is as near as we can point
    reason = reason.replace(" | null", "")  # every key may be left out; `null` is no value TOML can write
    unknown = _UNKNOWN_FIELD.match(reason)
    if unknown is not None:
        keys.append(unknown["name"])
        reason = "unknown key"
    return tuple(keys), reason


def key_lines(text: str) -> dict[KeyPath, int]:
    """The line (1-based) of every table header and key of a valid TOML document, by key path; the elements of
    an array of tables are numbered (``("vm", 1, "max_vcpus")``). A dotted key also records its prefixes; the
    keys inside an inline table or a multi-line value take the line of the key that holds them."""
    lines: dict[KeyPath, int] = {}
    array_index: dict[tuple[str, ...], int] = {}
    table: KeyPath = ()
    skip_until: str | None = None  # the closing quotes of a multi-line string
    depth = 0  # open brackets of a multi-line array or inline table
    for number, line in enumerate(text.splitlines(), start=1):
        if skip_until is not None:
            if skip_until in line:
                skip_until = None
            continue
        if depth > 0:
            depth += _bracket_balance(line)
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[["):
            names = tuple(_split_key(stripped[2 : stripped.index("]]")]))
            table = _resolve(names[:-1], array_index)
            array_index[names] = array_index.get(names, -1) + 1
            table = (*table, names[-1], array_index[names])
            lines.setdefault(table[:-1], number)
            lines[table] = number
            continue
        if stripped.startswith("["):
            names = tuple(_split_key(stripped[1 : _closing_bracket(stripped)]))
            table = _resolve(names, array_index)
            lines.setdefault(table, number)
            continue
        key_text, value = _split_assignment(stripped)
        if key_text is None:
            continue
        keys = _split_key(key_text)
        for end in range(1, len(keys) + 1):
            lines.setdefault((*table, *keys[:end]), number)
        value = value.strip()
        for quotes in ('"""', "'''"):
            if value.startswith(quotes) and value.count(quotes) == 1:
                skip_until = quotes
        if skip_until is None:
            depth = _bracket_balance(value)
    return lines


def _resolve(names: tuple[str, ...], array_index: dict[tuple[str, ...], int]) -> KeyPath:
    """A header's names as a key path: a prefix that names an array of tables means its latest element."""
    path: list[str | int] = []
    for end in range(1, len(names) + 1):
        path.append(names[end - 1])
        index = array_index.get(names[:end])
        if index is not None:
            path.append(index)
    return tuple(path)


def _split_key(text: str) -> list[str]:
    """``a."b.c".d`` → ``["a", "b.c", "d"]``."""
    parts: list[str] = []
    current = ""
    quote: str | None = None
    for char in text:
        if quote is not None:
            if char == quote:
                quote = None
            else:
                current += char
        elif char in "\"'":
            quote = char
        elif char == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


def _split_assignment(line: str) -> tuple[str | None, str]:
    """The key and value text of ``key = value`` (an ``=`` inside a quoted key does not count)."""
    quote: str | None = None
    for i, char in enumerate(line):
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "=":
            return line[:i], line[i + 1 :]
    return None, ""


def _closing_bracket(header: str) -> int:
    quote: str | None = None
    for i, char in enumerate(header):
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "]":
            return i
    return len(header)


def _bracket_balance(value: str) -> int:
    """Opened minus closed brackets and braces outside strings and comments."""
    balance = 0
    quote: str | None = None
    escaped = False
    for char in value:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            break
        elif char in "[{":
            balance += 1
        elif char in "]}":
            balance -= 1
    return balance
