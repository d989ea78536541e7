"""docs/deciders-any-language.md agrees with the code it describes: its escaping examples are ``vm_token``'s, and
its refusal table names every error code a result may carry."""

from __future__ import annotations

import re

from hotplug.harness.processes import REPO
from shared.messages import ErrorCode
from shared.subjects import vm_token

PAGE = REPO / "docs" / "deciders-any-language.md"


def test_the_escaping_examples_are_what_vm_token_gives() -> None:
    text = PAGE.read_text()
    table = text.split("| VM name | token |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", table, re.M)
    assert len(rows) >= 4
    for name, token in rows:
        assert vm_token(name) == token, f"the page escapes {name!r} as {token!r}; vm_token gives {vm_token(name)!r}"


def test_the_refusal_table_names_every_error_code() -> None:
    text = PAGE.read_text()
    table = text.split("| `error_code` | meaning | `retry_after` |", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z0-9-]+)`", table))
    assert {code.value for code in ErrorCode} <= named
