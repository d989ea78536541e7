"""shared.config.settings: from one settings Struct, flags that default to "not given" and check the setting's
range, a config-file section whose keys are optional but keep their range, and the layers under the flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated

import msgspec
import pytest
from msgspec import Meta

from shared.config.settings import add_flags, defaults_of, layered, section_of, specs
from shared.errors import UsageError


class Example(msgspec.Struct, kw_only=True):
    """An example command."""

    count: Annotated[int, Meta(ge=1, description="how many")] = 6
    ttl: Annotated[float, Meta(gt=0, description="seconds", extra={"env": "EX_TTL"})] = 30.0
    url: Annotated[str | None, Meta(description="where", extra={"env": "EX_URL", "env_read_later": True})] = None
    data: Annotated[str, Meta(description="a folder", extra={"path": True})] = "out"
    items: Annotated[list[str], Meta(description="repeatable", extra={"metavar": "X"})] = []
    quiet: Annotated[bool, Meta(description="say less")] = False


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_flags(p, specs(Example))
    return p


def test_flags_are_not_given_unless_given_and_check_the_range() -> None:
    assert vars(parser().parse_args([])) == {}
    args = parser().parse_args(["--count", "2", "--ttl", "1.5", "--items", "a", "--items", "b", "--quiet"])
    assert (args.count, args.ttl, args.items, args.quiet) == (2, 1.5, ["a", "b"], True)
    with pytest.raises(argparse.ArgumentError, match="must be at least 1, got 0"):
        parser().parse_args(["--count", "0"])
    with pytest.raises(argparse.ArgumentError, match="must be positive, got 0"):
        parser().parse_args(["--ttl", "0"])
    assert "how many; default 6" in parser().format_help()
    assert "($EX_TTL)" in parser().format_help()


def test_the_layers_are_default_file_environment(tmp_path: Path) -> None:
    assert defaults_of(Example) == layered(Example, {}, {})
    assert layered(Example, {}, {})["data"] == Path("out")
    values = layered(Example, {"ttl": 5.0, "url": "file", "data": "d"}, {}, tmp_path)
    assert (values["ttl"], values["url"], values["data"]) == (5.0, "file", tmp_path / "d")
    values = layered(Example, {"ttl": 5.0, "url": "file"}, {"EX_TTL": "7", "EX_URL": "env"})
    assert values["ttl"] == 7.0
    assert values["url"] is None  # read where it is used; the file's value must not beat it
    with pytest.raises(UsageError, match=r"^\$EX_TTL: Expected `float` > 0"):
        layered(Example, {}, {"EX_TTL": "-1"})


def test_a_section_has_the_keys_optional_with_their_range() -> None:
    section = section_of(Example, "ExampleSection", Base, None)
    assert set(section.__struct_fields__) == set(Example.__struct_fields__)
    assert msgspec.convert({}, section).count is None
    assert msgspec.convert({"count": 3}, section).count == 3
    with pytest.raises(msgspec.ValidationError, match=">= 1"):
        msgspec.convert({"count": 0}, section)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"cuont": 3}, section)
    props = msgspec.json.schema(section)["$defs"]["ExampleSection"]["properties"]
    assert props["count"]["description"] == "how many"
