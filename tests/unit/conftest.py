"""The unit tier's promise, enforced: a test here that opens a connection, listens or starts a child process fails
at once, so the tier stays fast and runnable anywhere (`make check`)."""

from __future__ import annotations

import socket
import subprocess
from typing import Any, NoReturn

import pytest


def _refuse(what: str) -> Any:
    def refuse(*_args: object, **_kwargs: object) -> NoReturn:
        raise AssertionError(f"unit tests may not {what}: move this test to tests/component or tests/system")

    return refuse


@pytest.fixture(autouse=True)
def _no_sockets_or_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    for method in ("connect", "connect_ex", "bind", "listen"):
        monkeypatch.setattr(socket.socket, method, _refuse(f"use sockets (socket.{method})"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start child processes"))
