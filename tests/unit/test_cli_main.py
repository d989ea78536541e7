"""``hotplug``'s main: a user's mistake is one line and exit 2, anything else a bug that keeps its traceback;
and the command groups, found by themselves, still offer every command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hotplug import cli
from hotplug.cli import operations
from shared.errors import InputError, MissingDependency, NotFound, UsageError, UserError

COMMANDS = {
    "up",
    "simulator",
    "collector",
    "decider",
    "actuator",
    "agent",
    "events",
    "schema",
    "load",
    "replay",
    "compare",
    "report",
    "bench",
    "vbox",
    "qemu",
    "libvirt",
    "auth",
    "streams",
    "chaos",
    "config",
    "pause",
    "resume",
    "paused",
    "pool",
}


def _fail_with(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """``hotplug schema`` raises ``exc`` (the handler is looked up when the parser is built, inside main)."""

    def handler(_args: argparse.Namespace) -> int:
        raise exc

    monkeypatch.setattr(operations, "cmd_schema", handler)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _leaves(parser: argparse.ArgumentParser, path: str = "hotplug") -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command that runs something (``hotplug qemu start``, ``hotplug up``), by its words."""
    sub = _subcommands(parser)
    if not sub:
        return [(path, parser)]
    return [leaf for name, child in sub.items() for leaf in _leaves(child, f"{path} {name}")]


def test_every_command_is_registered_once_with_a_handler() -> None:
    parser = cli.build_parser()
    assert set(_subcommands(parser)) == COMMANDS
    leaves = _leaves(parser)
    assert {"hotplug qemu start", "hotplug vbox set", "hotplug libvirt prepare", "hotplug config check"} <= {
        path for path, _ in leaves
    }
    for path, command in leaves:
        assert callable(command.get_default("handler")), path
    # One dispatch: each command has its own handler, not one per group that compares the subcommand's name.
    handlers = [command.get_default("handler") for _, command in leaves]
    assert len(set(map(id, handlers))) == len(handlers)


@pytest.mark.parametrize(
    "error",
    [
        UserError("plain"),
        UsageError("--x and --y exclude each other"),
        InputError("trace.csv:3: bad"),
        NotFound("no such file"),
        MissingDependency("install it"),
    ],
)
def test_a_user_error_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: UserError
) -> None:
    _fail_with(monkeypatch, error)
    assert cli.main(["schema"]) == 2
    assert capsys.readouterr().err == f"hotplug schema: {error}\n"


@pytest.mark.parametrize("bug", [ValueError("a bug"), FileNotFoundError("a bug"), KeyError("a bug")])
def test_anything_else_is_a_bug_and_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, bug: Exception) -> None:
    """Before the UserError family, every ValueError and FileNotFoundError became "exit 2", hiding bugs."""
    _fail_with(monkeypatch, bug)
    with pytest.raises(type(bug)) as raised:
        cli.main(["schema"])
    assert raised.value is bug


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_with(monkeypatch, KeyboardInterrupt())
    assert cli.main(["schema"]) == 130


def test_user_errors_are_still_the_builtin_errors_they_refine() -> None:
    """Callers that caught ValueError or FileNotFoundError before keep catching these."""
    assert issubclass(UsageError, ValueError) and issubclass(InputError, ValueError)
    assert issubclass(NotFound, FileNotFoundError) and issubclass(MissingDependency, RuntimeError)
    assert not issubclass(ValueError, UserError)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["events", "--data-dir", "{tmp}/none"], "no event log in"),
        (["up", "--trace", "{tmp}/none.csv", "--data-dir", "{tmp}/run"], "no such file or directory"),
        (["up", "--policy", "threshold", "--param", "threshold.nope=1", "--data-dir", "{tmp}/run"], "bad parameter"),
        (["up", "--param", "nodot=1", "--data-dir", "{tmp}/run"], "expected NAME.KEY=VALUE"),
        (["bench", "decisions", "--policy", "nope"], "unknown policy 'nope'"),
        (["collector", "--nats", "nats://127.0.0.1:1", "--source", "psutil"], "needs at least one process"),
        (["collector", "--nats", "nats://127.0.0.1:1", "--process", "vm=("], "not a regular expression"),
        (["load", "vm-01", "lots", "--nats", "nats://127.0.0.1:1"], "cores takes a number from 0 to 4096 or 'clear'"),
        (["load", "vm-01", "nan", "--nats", "nats://127.0.0.1:1"], "cores takes a number from 0 to 4096 or 'clear'"),
        (["load", "vm-01", "-4", "--nats", "nats://127.0.0.1:1"], "cores takes a number from 0 to 4096 or 'clear'"),
    ],
)
def test_real_mistakes_end_in_one_line_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
