"""One declaration per setting: a service's settings are the fields of one msgspec Struct (its type, range and
description in the field's ``Meta``, its built-in default as the field's default, and in ``Meta.extra`` what
only some settings have: an environment variable, a metavar, a path taken from the config file's folder). From
that Struct come its command-line flags (:func:`add_flags`), its config-file section (:func:`section_of`), its
environment variables (:func:`env_of`), and the layers under the flags (:func:`layered`).

Settings, lowest first: built-in default < config file < environment variable < command-line flag. Every flag
defaults to "not given" (``argparse.SUPPRESS``); :func:`layered` puts the lower three together in one place and
the command line's parser takes them as its defaults, so a flag given beats them all.

``Meta.extra`` keys: ``env`` (the variable that sets it), ``env_read_later`` (the variable is read where the value
is used, e.g. ``$HOTPLUG_NATS_URL``: when it is set the file's value is dropped, so the variable still beats the
file), ``metavar``, ``path`` (a file or folder: relative paths in the config file are taken from its folder).
"""

from __future__ import annotations

import argparse
import functools
import operator
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

import msgspec
from msgspec import Meta

from shared.errors import UsageError

_BOUNDS = ("gt", "ge", "lt", "le")


@dataclass(frozen=True)
class Spec:
    """One setting, as its Struct declares it."""

    name: str
    kind: type  # int, float, str, bool, list or dict: what the flag parses
    hint: Any  # the full annotation (with its Meta), for checking a value from a variable or a flag
    default: Any
    description: str
    bounds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str | None:
        value = self.extra.get("env")
        return value if isinstance(value, str) else None

    @property
    def is_path(self) -> bool:
        return bool(self.extra.get("path"))


def _unwrap(hint: Any) -> tuple[type, list[Meta]]:
    """The plain type under ``Annotated`` and ``X | None``, and every ``Meta`` met on the way."""
    metas: list[Meta] = []
    while True:
        if typing.get_origin(hint) is Annotated:
            metas += [m for m in hint.__metadata__ if isinstance(m, Meta)]
            hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) in (Union, types.UnionType):
            options = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = options[0]
        else:
            origin = typing.get_origin(hint)
            return (origin if origin is not None else hint), metas


@functools.cache  # a pure reading of a type, asked for by every command's parser and layers at each start
def specs(settings: type[msgspec.Struct]) -> tuple[Spec, ...]:
    """The settings ``settings`` declares, in its fields' order."""
    hints = typing.get_type_hints(settings, include_extras=True)
    out = []
    for f in msgspec.structs.fields(settings):
        kind, metas = _unwrap(hints[f.name])
        bounds = {b: getattr(m, b) for m in metas for b in _BOUNDS if getattr(m, b, None) is not None}
        description = next((m.description for m in reversed(metas) if m.description), "")  # the outermost
        extra: dict[str, Any] = {}
        for m in metas:
            extra.update(m.extra or {})
        default = f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default
        out.append(Spec(f.name, kind, hints[f.name], default, description, bounds, extra))
    return tuple(out)


def own_specs(settings: type[msgspec.Struct], base: type[msgspec.Struct] | None) -> list[Spec]:
    """The settings ``settings`` adds to those of ``base`` (a service's own, beside every service's)."""
    inherited = set(base.__struct_fields__) if base is not None else set()
    return [s for s in specs(settings) if s.name not in inherited]


def defaults_of(settings: type[msgspec.Struct]) -> dict[str, Any]:
    """Each setting's built-in default, as the command line holds it (a path as a Path, a table as flags)."""
    return {s.name: _as_parsed(s, s.default) for s in specs(settings)}


def _as_parsed(spec: Spec, value: Any, folder: Path | None = None) -> Any:
    if spec.is_path and isinstance(value, str):
        return (folder / value) if folder is not None else Path(value)
    if spec.kind is dict:
        return param_flags(value or {})
    if spec.kind is list:
        return list(value)  # argparse extends an append option's default in place: each parse its own list
    return value


def env_of(settings: type[msgspec.Struct]) -> dict[str, str]:
    """The environment variable of each setting that has one."""
    return {s.name: s.env for s in specs(settings) if s.env is not None}


def layered(
    settings: type[msgspec.Struct], file: Mapping[str, Any], environ: Mapping[str, str], folder: Path | None = None
) -> dict[str, Any]:
    """Built-in defaults < the config file's ``file`` keys < environment variables: what the command line starts
    from (its flags, when given, beat these). Paths in the file are taken from its ``folder``. Pure."""
    out = {}
    for spec in specs(settings):
        value = _as_parsed(spec, file[spec.name], folder) if spec.name in file else _as_parsed(spec, spec.default)
        text = environ.get(spec.env) if spec.env is not None else None
        if text:
            value = spec.default if spec.extra.get("env_read_later") else _from_env(spec, text)
        out[spec.name] = value
    return out


def _from_env(spec: Spec, text: str) -> Any:
    try:
        return msgspec.convert(text, spec.hint, strict=False)
    except msgspec.ValidationError as exc:
        raise UsageError(f"${spec.env}: {exc}") from None


# --- the command line -----------------------------------------------------------------------------------------


def add_flags(
    parser: argparse.ArgumentParser,
    settings: Iterable[Spec],
    choices: Mapping[str, Callable[[], list[str]]] | None = None,
) -> None:
    """A flag per setting, each defaulting to "not given" (its value comes from :func:`layered`)."""
    for spec in settings:
        kwargs: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS, "help": help_of(spec)}
        if spec.kind is bool:
            kwargs["action"] = "store_true"
        elif spec.kind in (list, dict):
            kwargs["action"] = "append"
            kwargs["metavar"] = spec.extra.get("metavar", "NAME.KEY=VALUE" if spec.kind is dict else None)
        else:
            kwargs["type"] = Path if spec.is_path else _parser_of(spec) if spec.kind is not str else None
            kwargs["metavar"] = spec.extra.get("metavar")
        if choices is not None and spec.name in choices:
            kwargs["choices"] = choices[spec.name]()
        parser.add_argument(spec.flag, **{k: v for k, v in kwargs.items() if v is not None})


def help_of(spec: Spec) -> str:
    """The flag's help: the setting's description, its variable and its built-in default."""
    text = spec.description
    if spec.env is not None:
        text += f" (${spec.env})"
    if spec.default not in (None, False, "", [], {}):
        text += f"; default {spec.default}"
    return text.replace("%", "%%")


def _parser_of(spec: Spec) -> Callable[[str], Any]:
    """The flag's type: the setting's kind and range, each refused in one line (``must be positive, got 0``)."""
    kind = spec.kind
    if not spec.bounds:
        return kind

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if kind in (int, float) and not _within(value, spec.bounds):
            raise argparse.ArgumentTypeError(f"must be {_range_words(spec.bounds)}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def _within(value: float, bounds: Mapping[str, float]) -> bool:
    tests = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
    return value == value and all(tests[b](value, n) for b, n in bounds.items())  # NaN is in no range


def _range_words(bounds: Mapping[str, float]) -> str:
    if bounds == {"gt": 0}:
        return "positive"
    if bounds == {"ge": 0}:
        return "0 or more"
    words = {"gt": "above", "ge": "at least", "lt": "below", "le": "at most"}
    return " and ".join(f"{words[b]} {n}" for b, n in bounds.items())


# --- the config file ------------------------------------------------------------------------------------------


def section_of(
    settings: type[msgspec.Struct], name: str, base: type[msgspec.Struct], inherited: type[msgspec.Struct] | None
) -> type[Any]:
    """The config-file section of ``settings``: the same keys, types, ranges and descriptions, each optional (a
    key the file leaves out is None, and keeps the layer below), under ``base``; ``inherited``'s keys are
    ``base``'s already."""
    section = section_with(name, own_specs(settings, inherited), base, settings.__module__)
    section.__doc__ = settings.__doc__
    return section


def section_with(name: str, settings: Iterable[Spec], base: type[msgspec.Struct], module: str) -> type[Any]:
    """A section of ``base``'s keys and one optional key per setting of ``settings`` (``[up]`` is ``UpSettings``'
    keys and each built-in hypervisor record's own options)."""
    fields = []
    for spec in settings:
        plain = typing.get_args(spec.hint)[0] if typing.get_origin(spec.hint) is Annotated else spec.hint
        if spec.kind in (list, dict):
            inner: Any = plain
        else:
            bounds: dict[str, Any] = dict(spec.bounds)
            inner = Annotated[spec.kind, Meta(**bounds)] if bounds else spec.kind
        hint = Annotated[inner | None, Meta(description=spec.description)]
        fields.append((spec.name, hint, None))
    section: type[Any] = msgspec.defstruct(name, fields, bases=(base,), module=module)
    section.__doc__ = base.__doc__
    return section


# A policy or guard parameter's value, as ``--param NAME.KEY=VALUE`` would give it.
ParamValue = bool | int | float | str
# ``param.<policy or guard>.<key> = value``: the file's form of ``--param NAME.KEY=VALUE``.
Params = dict[str, dict[str, ParamValue]]


def param_flags(params: Params) -> list[str]:
    """A ``param`` table as ``--param`` items: ``{"guard": {"max_changes": 2}}`` → ``["guard.max_changes=2"]``."""
    return [f"{scope}.{key}={_flag_value(value)}" for scope, keys in params.items() for key, value in keys.items()]


def _flag_value(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)
