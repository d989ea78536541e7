"""The host process of a stand-in VirtualBox VM (see ``vboxmanage.py``): one ``EMT-<i>`` thread per vCPU.

The threads of attached vCPUs burn CPU up to the VM's load, read from its state file; the others idle, as
the emulation threads of unplugged CPUs do. Runs until SIGTERM.
"""

from __future__ import annotations

import ctypes
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_NAME = 15
STATE = Path(sys.argv[1])


@dataclass
class VmState:
    """What the EMT threads read: written by the main thread from the state file."""

    attached: list[int] = field(default_factory=lambda: [0])
    load: float = 0.0


shared = VmState()
stop = threading.Event()


def name_thread(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def emt(index: int, count: int) -> None:
    name_thread("EMT" if count == 1 else f"EMT-{index}")
    while not stop.is_set():
        attached = sorted(shared.attached)
        load = shared.load
        # spread the load over the attached vCPUs, each at most one core
        share = min(1.0, load / len(attached)) if index in attached and attached else 0.0
        start = time.perf_counter()
        if share > 0:
            while time.perf_counter() - start < 0.05 * share:
                pass
        time.sleep(max(0.0, 0.05 - (time.perf_counter() - start)))


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    state = json.loads(STATE.read_text())
    count = int(state["cpus"])
    threads = [threading.Thread(target=emt, args=(i, count), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    while not stop.is_set():
        try:
            state = json.loads(STATE.read_text())
            shared.attached = state["attached"] if state["hotplug"] else list(range(int(state["cpus"])))
            shared.load = float(state.get("load", 0.0))
        except (OSError, ValueError):
            pass
        stop.wait(0.1)


if __name__ == "__main__":
    main()
