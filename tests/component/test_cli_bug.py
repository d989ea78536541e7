"""A bug in a command reaches the terminal as a traceback with a non-2 exit, in a real ``hotplug`` process
(the unit tier checks main's side in-process; this checks what the user sees)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# hotplug schema with a handler that has a bug, run as the console script runs main
SCRIPT = """
import sys
from hotplug.cli import main, operations

def broken(_args):
    return {}["missing"]

operations.cmd_schema = broken
sys.exit(main(["schema"]))
"""


def test_a_bug_shows_its_traceback_and_does_not_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode not in (0, 2), done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert "KeyError: 'missing'" in done.stderr
    assert "hotplug schema:" not in done.stderr
