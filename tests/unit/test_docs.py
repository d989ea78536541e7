"""The docs hold to the code: links resolve, and the README's diagram and hypervisor pages name what is registered.

A page moved or a heading renamed breaks a link silently; a plug-in added or removed leaves the front door
describing a system that is not there. These tests read the Markdown files only (no sockets, no processes).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.actuator.drivers.registry import DRIVERS
from services.collector.sources.registry import SOURCES
from services.decider.registry import POLICIES

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
README_MAX_LINES = 200


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    inside_code = False
    found: set[str] = set()
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            inside_code = not inside_code
        elif not inside_code and (m := re.match(r"#{1,6} (.+)", line)):
            found.add(slug(m.group(1)))
    return found


def local_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_slug_follows_github() -> None:
    assert slug("The pool benchmark: who waits, with fixed sizes and with hot-plug") == (
        "the-pool-benchmark-who-waits-with-fixed-sizes-and-with-hot-plug"
    )
    assert slug("The shared clock: `--speed` and `--epoch`") == "the-shared-clock---speed-and---epoch"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_local_link_reaches_a_file_and_its_heading(page: Path) -> None:
    broken = []
    for target in local_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_link_check_finds_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\n[to b](b.md#missing) [to a](#a)\n")
    (tmp_path / "b.md").write_text("# B\n")
    links = local_links(tmp_path / "a.md")
    assert links == ["b.md#missing", "#a"]
    assert "missing" not in anchors(tmp_path / "b.md") and "a" in anchors(tmp_path / "a.md")


def readme_diagram() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## How the pieces fit", 1)[1]
    return section.split("```", 2)[1]


def names_in(text: str) -> set[str]:
    return set(re.findall(r"[a-z][a-z0-9_]*", text))


def test_the_readme_diagram_names_every_registered_source_driver_and_policy() -> None:
    words = names_in(readme_diagram())
    missing = {
        kind: sorted(set(names) - words)
        for kind, names in (("source", SOURCES.names()), ("driver", DRIVERS.names()), ("policy", list(POLICIES)))
    }
    assert not any(missing.values()), f"the README's diagram lacks {missing}"


def test_the_readme_hypervisor_table_names_only_registered_plug_ins() -> None:
    section = (REPO / "README.md").read_text().split("## Your hypervisor", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ") and "`" in line]
    named = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row[2])}
    registered = set(SOURCES.names()) | set(DRIVERS.names())
    assert named, "the README's hypervisor table names no plug-in"
    assert named <= registered, f"the README names {sorted(named - registered)}, which no registry has"


def test_every_hypervisor_has_its_page_and_the_readme_links_it() -> None:
    readme = (REPO / "README.md").read_text()
    hypervisors = set(SOURCES.names()) & set(DRIVERS.names())
    assert hypervisors, "no name is both a source and a driver"
    for name in sorted(hypervisors):
        page = REPO / "docs" / "hypervisors" / f"{name}.md"
        assert page.is_file(), f"{name} is a hypervisor (a source and a driver) but has no {page.relative_to(REPO)}"
        assert f"(docs/hypervisors/{name}.md)" in readme, f"the README does not link docs/hypervisors/{name}.md"


def test_the_readme_is_a_front_door() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
