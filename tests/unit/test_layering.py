"""Who may import whom: ``shared`` ← each service ← ``evaluation`` ← ``hotplug``. A service that imported another
service, the study code or the CLI would tie parts that meet only on NATS subjects."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").is_file())


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (imports inside functions count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offending(package: Path, allowed: tuple[str, ...]) -> list[str]:
    """``file: module`` for each first-party import under ``package`` outside the ``allowed`` prefixes."""
    first_party = ("shared", "services", "evaluation", "hotplug")
    out = []
    for path in sorted(package.rglob("*.py")):
        for module in sorted(imported_modules(path)):
            top = module.split(".")[0]
            if top in first_party and not any(module == a or module.startswith(a + ".") for a in allowed):
                out.append(f"{path.relative_to(package.parent)}: {module}")
    return out


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_shared_and_itself(service: str) -> None:
    assert offending(ROOT / "services" / service, ("shared", f"services.{service}")) == []


def test_the_check_sees_a_cross_service_import_even_inside_a_function(tmp_path: Path) -> None:
    package = tmp_path / "simulator"
    package.mkdir()
    (package / "m.py").write_text(
        "from shared.traces import load\n\ndef f() -> None:\n    from services.decider.engine import VmEngine\n"
    )
    assert offending(package, ("shared", "services.simulator")) == ["simulator/m.py: services.decider.engine"]
