"""Per-thread CPU and run-queue waiting of a host process, from Linux's /proc/<pid>/task/*/schedstat.

schedstat's first two fields are nanoseconds spent on a CPU and waiting on a run queue: the host-side view of
what each vCPU thread received and what it wanted but did not get (a TCG or VirtualBox guest has no steal
time to tell it). ``comm`` names the thread (VirtualBox: ``EMT-<n>``; QEMU: ``CPU <n>/TCG``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadStat:
    tid: int
    name: str
    cpu_seconds: float
    wait_seconds: float


def read_threads(pid: int, proc: Path = Path("/proc")) -> list[ThreadStat] | None:
    """Every thread of ``pid``; None when the process is gone or schedstat is not available."""
    out = []
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return None
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
            name = (task / "comm").read_text().strip()
            out.append(ThreadStat(int(task.name), name, int(fields[0]) / 1e9, int(fields[1]) / 1e9))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # the thread ended between listing and reading
        except (IndexError, ValueError):
            return None
    return out
