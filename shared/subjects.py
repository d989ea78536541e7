"""Every NATS subject the project uses, and the one way to turn a VM name into a subject token (the subject half
of the topology: streams, buckets, consumers and users are named in ``shared.topology``).

VM names may contain characters NATS gives meaning to (``.``, ``*``, ``>``, white space), so a name is
carried in the message body and only its escaped form goes into the subject. The escape is reversible
and stable: one token per VM.
"""

from __future__ import annotations

import re

PREFIX = "hotplug"
METRICS = f"{PREFIX}.metrics"
COMMANDS = f"{PREFIX}.commands"
RESULTS = f"{PREFIX}.results"
SIMULATOR = f"{PREFIX}.sim"
PROPOSALS = f"{PREFIX}.proposals"
PAUSES = f"{PREFIX}.pauses"
HOSTS = f"{PREFIX}.hosts"
DEFERRALS = f"{PREFIX}.deferrals"

ALL_METRICS = f"{METRICS}.>"
ALL_COMMANDS = f"{COMMANDS}.>"
ALL_RESULTS = f"{RESULTS}.>"
ALL_PROPOSALS = f"{PROPOSALS}.>"
ALL_PAUSES = f"{PAUSES}.>"
ALL_HOSTS = f"{HOSTS}.*"
ALL_DEFERRALS = f"{DEFERRALS}.>"

# The metrics stream stores each sample under a partition of its host: the partitions sharded deciders share
# out, so one decider sees every VM of a host and plans the host as a whole. Core subscribers still see the
# original subject.
PARTITIONS = 16
PARTITIONED_METRICS = f"{METRICS}.{{{{partition({PARTITIONS},1)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"

_SAFE = re.compile(r"[A-Za-z0-9_-]")


def vm_token(name: str) -> str:
    """Escape a VM name into one subject token: ``[A-Za-z0-9_-]`` kept, every other byte as ``%XX``."""
    return "".join(ch if _SAFE.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode()) for ch in name)


def vm_from_token(token: str) -> str:
    """Inverse of :func:`vm_token`."""
    if "%" not in token:
        return token
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "%":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out += token[i].encode()
            i += 1
    return out.decode()


def metrics(host: str, vm: str) -> str:
    return f"{METRICS}.{host}.{vm_token(vm)}"


def commands(host: str, vm: str) -> str:
    return f"{COMMANDS}.{host}.{vm_token(vm)}"


def results(host: str, vm: str) -> str:
    return f"{RESULTS}.{host}.{vm_token(vm)}"


def pauses(host: str, vm: str) -> str:
    """Where ``hotplug pause`` and ``resume`` record what they did (a PauseEvent, kept in the event log)."""
    return f"{PAUSES}.{host}.{vm_token(vm)}"


def hosts(host: str) -> str:
    """Where a host's collector publishes its HostState (capacity, committed, waiting) every interval."""
    return f"{HOSTS}.{host}"


def deferrals(host: str, vm: str, resource: str = "vcpu") -> str:
    """Where a decider records a grow it deferred for want of room, and its end (kept in the event log). A memory
    grow's under a token of its own (``….memory``), so that the newest Deferral per subject is the newest of each
    resource (``hotplug pool`` reads only those) and a VM's memory deferral does not hide its vCPU one."""
    subject = f"{DEFERRALS}.{host}.{vm_token(vm)}"
    return subject if resource == "vcpu" else f"{subject}.{resource}"


def proposals(decider: str, host: str, vm: str) -> str:
    """Where a shadow decider publishes what it would command (a ScaleCommand that nobody executes)."""
    return f"{PROPOSALS}.{decider}.{host}.{vm_token(vm)}"


def stored_metrics(host: str, vm: str) -> str:
    """The subject the metrics stream stores a VM's samples under (``PARTITIONED_METRICS`` applied to its
    ``metrics`` subject)."""
    return f"{METRICS}.{partition_of(host)}.{host}.{vm_token(vm)}"


def metrics_partition(partition: int) -> str:
    """The stored subjects of one partition of the metrics stream."""
    return f"{METRICS}.{partition}.>"


def stored_partition(subject: str) -> int | None:
    """The partition of a stored metrics subject (``metrics_partition``'s), or None for another subject."""
    prefix = f"{METRICS}."
    if not subject.startswith(prefix):
        return None
    token = subject[len(prefix) :].split(".", 1)[0]
    return int(token) if token.isdigit() else None


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def partition_of(host: str, partitions: int = PARTITIONS) -> int:
    """The partition nats-server's ``partition()`` puts a host's samples in: FNV-1a of its token."""
    return fnv1a32(host.encode()) % partitions


def host_commands(host: str) -> str:
    return f"{COMMANDS}.{host}.>"


def host_results(host: str) -> str:
    """Every result of one host's VMs: what its actuator publishes and reads back."""
    return f"{RESULTS}.{host}.>"


def host_metrics(host: str) -> str:
    """Every sample of one host's VMs: what its collector and agents publish."""
    return f"{METRICS}.{host}.>"


def simulator(host: str, operation: str) -> str:
    """Request subject of the simulated mini-cloud on ``host`` (``stats``, ``hotplug``, ``load``)."""
    return f"{SIMULATOR}.{host}.{operation}"


def simulator_pressure(host: str) -> str:
    """Where the simulated mini-cloud on ``host`` says at once that a guest's PSI trigger fired (a SimPressure):
    published, not a request."""
    return simulator(host, "pressure")


def split(subject: str) -> tuple[str, str, str]:
    """``hotplug.<kind>[.<decider>].<host>.<vmtoken>`` → (kind, host, vm name). ValueError on other shapes."""
    parts = subject.split(".")
    # 5 tokens: a proposal (…proposals.<decider>.<host>.<vm>) or a stored sample (…metrics.<partition>.<host>.<vm>)
    five = len(parts) == 5 and parts[1] in ("proposals", "metrics")
    if parts[0] != PREFIX or not (len(parts) == 4 or five):
        raise ValueError(f"not a per-VM subject: {subject!r}")
    return parts[1], parts[-2], vm_from_token(parts[-1])


def origin(subject: str) -> tuple[str, str | None] | None:
    """The (host, VM) a subject speaks for: a per-VM subject's host and VM, a per-host subject's
    (``hotplug.hosts.<host>``) host and None; None for any other shape."""
    parts = subject.split(".")
    if len(parts) == 3 and parts[0] == PREFIX and f"{PREFIX}.{parts[1]}" == HOSTS:
        return parts[2], None
    try:
        _, host, vm = split(subject)
    except ValueError:
        return None
    return host, vm
