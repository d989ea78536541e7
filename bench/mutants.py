"""A small mutation check of the pure cores: does the unit tier notice a realistic slip in a rule?

    nice -n 10 .venv/bin/python bench/mutants.py --limit 60 --json mutants.json

Each mutant is one small change to one function body, the kind a reviewer makes by hand: a comparison
flipped (``<`` ↔ ``>``) or moved across its boundary (``<`` ↔ ``<=``), ``==`` ↔ ``!=``, ``in`` ↔ ``not in``,
``and`` ↔ ``or``, one condition of an ``and``/``or`` dropped, a ``not`` dropped, ``+`` ↔ ``-``, ``min`` ↔
``max``, ``True`` ↔ ``False``, an integer constant plus one, a call made for its effect dropped. Assertions,
log calls, f-strings and annotations are left alone.

The mutants run one at a time on a copy of the tree in a temporary directory (the checkout is never
edited), each file restored after its mutant, with ``PYTHONDONTWRITEBYTECODE`` so no stale bytecode is
reused. For each: first the unit test files that name the mutated module, then, if they all pass, the whole
unit tier, with ``pytest -x`` and a timeout; a failure, an error or the timeout kills it. An unmutated run
must pass first. Hypothesis runs with a fixed seed and no example database, so a run is repeatable.

``--limit`` takes a deterministic sample (``--seed``): the files in turn, each file's mutants in a shuffled
order, so every file gets its share. ``--list`` shows the mutants without running them; ``--only ID`` reruns
chosen ones. A full run of every mutant takes hours on 2 cores; 60 take 10 to 14 minutes.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORES = (
    "services/actuator/ledger.py",
    "services/actuator/checks.py",
    "services/actuator/retry.py",
    "services/decider/guard.py",
    "services/decider/refusals.py",
    "services/decider/engine.py",
    "services/decider/policies/default.py",
    "shared/inbox.py",
    "shared/codec.py",
    "shared/pauses.py",
    "shared/config/rules.py",
)
UNIT = "tests/unit"
IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".hotplug",
    "*.egg-info",
)
FLIP = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}
BOUNDARY = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
NEGATE = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
LOGGERS = {"log", "logger", "logging"}


@dataclass(frozen=True)
class Mutant:
    id: str  # path:line:column:operator, and /2, /3... for further ones of the same kind at the same place
    path: str
    line: int
    original: str
    replacement: str
    start: int  # byte offsets of the replaced text in the file
    end: int


@dataclass
class Outcome:
    id: str
    line: int
    original: str
    replacement: str
    status: str  # killed, survived, timeout
    seconds: float
    by: str  # the first failing test, or what stopped the run


def _offsets(source: bytes) -> list[int]:
    """The byte offset at which each line (1-based) starts."""
    starts = [0, 0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _logs(call: ast.Call) -> bool:
    """Whether ``call`` is ``log.<level>(...)`` (what a mutant there changes is a message, not a rule)."""
    func = call.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in LOGGERS


class _Sites(ast.NodeVisitor):
    """Every (node, mutated text, operator) in the function bodies of one module."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.expr | ast.stmt, str, str]] = []
        self._depth = 0  # inside a function body

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._depth += 1
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        for statement in body:
            self.visit(statement)
        self._depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assert(self, node: ast.Assert) -> None:
        return None

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return None

    def visit_Expr(self, node: ast.Expr) -> None:
        call = node.value.value if isinstance(node.value, ast.Await) else node.value
        if self._depth and isinstance(call, ast.Call) and not _logs(call):
            self._add(node, "pass", "drop-call")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if _logs(node):
            return None
        if self._depth and isinstance(func, ast.Name) and func.id in ("min", "max"):
            self._add(func, "max" if func.id == "min" else "min", "minmax")
        self.generic_visit(node)

    def _add(self, node: ast.expr | ast.stmt, text: str, operator: str) -> None:
        self.found.append((node, text, operator))

    def visit_Compare(self, node: ast.Compare) -> None:
        if self._depth:
            for i, op in enumerate(node.ops):
                for table, name in ((FLIP, "flip"), (BOUNDARY, "boundary"), (NEGATE, "negate")):
                    other = table.get(type(op))
                    if other is not None:
                        mutated = copy.deepcopy(node)
                        mutated.ops[i] = other()
                        self._add(node, f"({ast.unparse(mutated)})", name)
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        if self._depth:
            swapped = ast.BoolOp(op=ast.Or() if isinstance(node.op, ast.And) else ast.And(), values=node.values)
            self._add(node, f"({ast.unparse(swapped)})", "and-or")
            for i in range(len(node.values)):
                rest = node.values[:i] + node.values[i + 1 :]
                kept = rest[0] if len(rest) == 1 else ast.BoolOp(op=node.op, values=rest)
                self._add(node, f"({ast.unparse(kept)})", "drop-condition")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if self._depth and isinstance(node.op, ast.Not):
            self._add(node, f"({ast.unparse(node.operand)})", "drop-not")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if self._depth and isinstance(node.op, ast.Add | ast.Sub):
            mutated = ast.BinOp(
                left=node.left, op=ast.Sub() if isinstance(node.op, ast.Add) else ast.Add(), right=node.right
            )
            self._add(node, f"({ast.unparse(mutated)})", "plus-minus")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if not self._depth:
            return
        if isinstance(node.value, bool):
            self._add(node, str(not node.value), "true-false")
        elif isinstance(node.value, int):
            self._add(node, f"({node.value + 1})", "plus-one")


def mutants_of(path: str) -> list[Mutant]:
    """The mutants of one file (relative to the checkout), in source order, each different from the others."""
    raw = (ROOT / path).read_bytes()
    tree = ast.parse(raw)
    starts = _offsets(raw)
    visitor = _Sites()
    visitor.visit(tree)
    seen: set[bytes] = set()
    sites: dict[str, int] = {}
    out = []
    for node, text, operator in visitor.found:
        assert node.end_lineno is not None
        assert node.end_col_offset is not None
        start = starts[node.lineno] + node.col_offset
        end = starts[node.end_lineno] + node.end_col_offset
        mutated = raw[:start] + text.encode() + raw[end:]
        try:
            same = ast.dump(ast.parse(mutated)) == ast.dump(tree)
        except SyntaxError:
            continue
        if same or mutated in seen:
            continue
        seen.add(mutated)
        original = " ".join(raw[start:end].decode().split())
        name = f"{path}:{node.lineno}:{node.col_offset}:{operator}"
        sites[name] = n = sites.get(name, 0) + 1
        if n > 1:  # another mutant of the same kind at the same place: number it
            name = f"{name}/{n}"
        out.append(Mutant(name, path, node.lineno, original, text, start, end))
    return out


def sample(by_file: dict[str, list[Mutant]], limit: int, seed: int) -> list[Mutant]:
    """At most ``limit`` mutants: the files in turn, each file's mutants in an order shuffled by ``seed``."""
    queues = []
    for path, found in by_file.items():
        shuffled = list(found)
        random.Random(f"{seed}:{path}").shuffle(shuffled)
        queues.append(shuffled)
    chosen: list[Mutant] = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    order = {m.id: i for i, m in enumerate(m for found in by_file.values() for m in found)}
    return sorted(chosen, key=lambda m: order[m.id])


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    lines = output.strip().splitlines()
    return lines[-1] if lines else ""


class Runner:
    """Runs the unit tier on a copy of the checkout in ``tree``."""

    def __init__(self, tree: Path, timeout: float) -> None:
        self.tree = tree
        self.timeout = timeout
        self.env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        self.env.pop("PYTEST_ADDOPTS", None)

    def pytest(self, tests: list[str]) -> tuple[str, str]:
        """(status, first failure): passed, failed or timeout."""
        shutil.rmtree(self.tree / ".hypothesis", ignore_errors=True)  # no examples carried between mutants
        # -n 0: in one process, as before pyproject's addopts asked for xdist workers (-x stops at the first failure)
        command = [sys.executable, "-m", "pytest", "-n", "0", "-x", "-q", "-p", "no:cacheprovider"]
        command += ["--hypothesis-seed=0", *tests]
        try:
            done = subprocess.run(
                command, cwd=self.tree, env=self.env, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return "timeout", f"over {self.timeout:g} s"
        if done.returncode == 0:
            return "passed", ""
        if done.returncode == 5:
            raise SystemExit(f"no tests collected by {' '.join(tests)}")
        return "failed", _first_failure(done.stdout + done.stderr)

    def related(self, path: str) -> list[str]:
        """The unit test files that name the module at ``path``."""
        module = path.removesuffix(".py").replace("/", ".")
        return sorted(
            str(p.relative_to(self.tree)) for p in (self.tree / UNIT).glob("test_*.py") if module in p.read_text()
        )

    def check(self, mutant: Mutant) -> Outcome:
        target = self.tree / mutant.path
        original = target.read_bytes()
        began = time.monotonic()
        try:
            target.write_bytes(original[: mutant.start] + mutant.replacement.encode() + original[mutant.end :])
            status, by = "passed", ""
            related = self.related(mutant.path)
            if related:
                status, by = self.pytest(related)
            if status == "passed":
                status, by = self.pytest([UNIT])
        finally:
            target.write_bytes(original)
        kind = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[status]
        return Outcome(
            mutant.id, mutant.line, mutant.original, mutant.replacement, kind, round(time.monotonic() - began, 1), by
        )


def _table(outcomes: list[Outcome]) -> Iterator[str]:
    for o in outcomes:
        yield f"{o.status:8} {o.seconds:6.1f}s  {o.id}\n         {o.original}  ->  {o.replacement}"
        if o.by:
            yield f"         by {o.by}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="+", default=list(CORES), help="files to mutate (default: the pure cores)")
    parser.add_argument("--limit", type=int, default=60, help="how many mutants to run (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="which sample --limit takes")
    parser.add_argument("--only", nargs="+", default=[], metavar="ID", help="run just these mutants")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per pytest run (default: 3x the baseline)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    by_file = {path: mutants_of(path) for path in args.files}
    everything = [m for found in by_file.values() for m in found]
    if args.only:
        unknown = set(args.only) - {m.id for m in everything}
        if unknown:
            parser.error(f"no such mutant: {', '.join(sorted(unknown))}")
        chosen = [m for m in everything if m.id in args.only]
    else:
        chosen = sample(by_file, args.limit or len(everything), args.seed)
    if args.list:
        for m in chosen:
            print(f"{m.id}\t{m.original}  ->  {m.replacement}")
        print(f"{len(chosen)} of {len(everything)} mutants", file=sys.stderr)
        return 0

    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(ROOT, tree, ignore=IGNORE)
        runner = Runner(tree, args.timeout or 600.0)
        began = time.monotonic()
        status, by = runner.pytest([UNIT])
        baseline = time.monotonic() - began
        if status != "passed":
            print(f"the unmutated unit tier does not pass: {by}", file=sys.stderr)
            return 2
        runner.timeout = args.timeout or max(60.0, 3 * baseline)
        print(f"baseline {baseline:.0f} s; {len(chosen)} of {len(everything)} mutants", file=sys.stderr)
        outcomes = []
        for i, mutant in enumerate(chosen, 1):
            outcome = runner.check(mutant)
            outcomes.append(outcome)
            print(f"[{i}/{len(chosen)}] {outcome.status} {outcome.seconds:.0f} s {mutant.id}", file=sys.stderr)

    counts = {s: sum(o.status == s for o in outcomes) for s in ("killed", "timeout", "survived")}
    summary = {
        "mutants": len(outcomes),
        "of": len(everything),
        **counts,
        "minutes": round((time.monotonic() - began) / 60, 1),
    }
    print("\n".join(_table(outcomes)))
    print(json.dumps(summary))
    if args.json:
        report = {"command": sys.argv, "summary": summary, "outcomes": [asdict(o) for o in outcomes]}
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return 1 if counts["survived"] else 0


if __name__ == "__main__":
    sys.exit(main())
