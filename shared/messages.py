"""Message contracts on the bus: one msgspec Struct per subject family.

Every message carries a schema version ``v``. Decoding is strict (see ``shared.codec``): field types and
ranges are checked by msgspec from the annotations below, so a message that decodes is a message the
services may act on. ``hotplug schema`` writes the JSON Schema of each, for deciders in other languages.

Times are POSIX seconds on the shared clock (``shared.clock``): wall time, or simulated time when the
simulator runs faster than the clock.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

SCHEMA_VERSION = 1

VmName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        # Any printable text: VirtualBox names may hold spaces, quotes and shell metacharacters. Control
        # characters (and so newlines) are refused; nothing in the project ever builds a shell line.
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="VM name as the hypervisor knows it",
    ),
]
HostName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="host (hypervisor) name; a single NATS subject token",
    ),
]
Identifier = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"),
]
Timestamp = Annotated[float, msgspec.Meta(ge=0, description="POSIX seconds on the shared clock")]
VcpuCount = Annotated[int, msgspec.Meta(ge=0, le=1024)]
Cores = Annotated[float, msgspec.Meta(ge=0, le=4096, description="CPU in cores (1.0 = one busy vCPU)")]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
ShortText = Annotated[str, msgspec.Meta(max_length=1024)]


class ErrorCode(StrEnum):
    """Stable error codes of a ScaleResult; the hypervisor's own message goes in ``error``."""

    EXPIRED = "expired"
    STALE_VIEW = "stale-view"
    OUT_OF_BOUNDS = "out-of-bounds"
    WRONG_HOST = "wrong-host"
    VM_NOT_FOUND = "vm-not-found"
    VM_NOT_RUNNING = "vm-not-running"
    HOTPLUG_DISABLED = "hotplug-disabled"
    CPU_ID_OUT_OF_RANGE = "cpu-id-out-of-range"
    ALREADY_ATTACHED = "already-attached"
    NOT_ATTACHED = "not-attached"
    CPU0 = "cpu0"
    GUEST_REFUSED = "guest-refused"
    NOT_VERIFIED = "not-verified"
    HOTPLUG_BUDGET = "hotplug-budget-exhausted"
    SUPERSEDED = "superseded"
    RATE_LIMITED = "rate-limited"
    STALE_TERM = "stale-term"
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"
    # An operator paused autoscaling of the VM (``hotplug pause``): refused whatever the decider knows.
    PAUSED = "paused"
    # The host has no room for the grow: its committed vCPUs would pass its capacity (shared.pool). A grow of which
    # only part fits is carried out in part: ``vcpus_after`` says how far, ``retry_after`` when to ask again.
    HOST_FULL = "host-full"


class _Message(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    v: int = SCHEMA_VERSION


class MetricSample(_Message, tag="metric", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One VM's CPU use over the last sampling interval, published on ``hotplug.metrics.<host>.<vm>``."""

    time: Timestamp
    host: HostName
    vm: VmName
    online_vcpus: VcpuCount
    min_vcpus: VcpuCount
    max_vcpus: VcpuCount
    cpu_used_cores: Cores
    interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)]
    source: Identifier
    per_vcpu_busy: list[Fraction] | None = None
    # Demand the VM could not run, in cores (run-queue excess over online vCPUs), where the source knows it.
    pressure_cores: Cores | None = None
    # PSI cpu.some share of the interval (some runnable task waited), where the source knows it.
    psi_some: Fraction | None = None


class ScaleCommand(_Message, tag="command", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A decider's order to resize one VM, published on ``hotplug.commands.<host>.<vm>``."""

    id: Identifier
    time: Timestamp
    host: HostName
    vm: VmName
    target_vcpus: Annotated[int, msgspec.Meta(ge=1, le=1024)]
    seen_vcpus: VcpuCount
    decider: Identifier
    reason: ShortText
    expires_at: Timestamp
    # Time of the sample that triggered the decision: the start of the end-to-end latency.
    sample_time: Timestamp | None = None
    # Leadership term of the decider that sent it (0 = no leader election in use).
    term: Annotated[int, msgspec.Meta(ge=0)] = 0


class ScaleResult(_Message, tag="result", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The one outcome of one command, published on ``hotplug.results.<host>.<vm>``."""

    command_id: Identifier
    time: Timestamp
    host: HostName
    vm: VmName
    ok: bool
    vcpus_before: VcpuCount | None
    vcpus_after: VcpuCount | None
    target_vcpus: Annotated[int, msgspec.Meta(ge=0, le=1024)]
    duration_s: Annotated[float, msgspec.Meta(ge=0)]
    actuator: Identifier
    error_code: ErrorCode | None = None
    error: ShortText | None = None
    sample_time: Timestamp | None = None
    # The sizes this actuator allows the VM (its own bounds within the hypervisor's), when it read the VM.
    # Deciders keep their orders inside them instead of repeating refused ones.
    allowed_min_vcpus: VcpuCount | None = None
    allowed_max_vcpus: VcpuCount | None = None
    # When asking again makes sense, for a refusal: without it, deciders would repeat a refused order on their
    # next sample. Deciders hold the VM at least this long (and apply their own minimum per error code).
    retry_after: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0,
                le=86400,
                description="seconds after this result's time before asking the same VM again makes sense (for a "
                "refusal; rate-limited: when the actuator's window frees; guest-refused: a back-off from "
                "30 s doubling to 600 s). 0: at once; absent: no particular wait",
            ),
        ]
        | None
    ) = None
    # The actuator's own rate limit (at most max_changes resizes of one VM per window), advertised so that a
    # decider plans within it and the limit stays a backstop that is never hit.
    rate_limit_changes: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1, description="the actuator's rate limit: resizes it allows one VM per rate_limit_window_s"
            ),
        ]
        | None
    ) = None
    rate_limit_window_s: (
        Annotated[
            float, msgspec.Meta(gt=0, description="the actuator's rate-limit window, in seconds of the shared clock")
        ]
        | None
    ) = None
    # The host's capacity and what was committed on it when the actuator judged a grow (shared.pool): a decider
    # learns from a host-full refusal how much room there really was.
    host_capacity_vcpus: (
        Annotated[int, msgspec.Meta(ge=0, description="the host's capacity in vCPUs when the grow was judged")] | None
    ) = None
    host_committed_vcpus: (
        Annotated[
            int,
            msgspec.Meta(ge=0, description="vCPUs committed on the host (every running VM's, and grows under way)"),
        ]
        | None
    ) = None


class PauseAction(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"


class PauseEvent(_Message, tag="pause", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operator paused or resumed autoscaling of one VM, published on ``hotplug.pauses.<host>.<vm>`` (kept in
    the event log). A pause is also the value of the VM's key in the pause bucket while it lasts
    (``shared.pauses``). Times are wall-clock POSIX seconds: a pause is an operator's, in real time."""

    id: Identifier
    time: Timestamp
    host: HostName
    vm: VmName
    action: PauseAction
    by: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=128,
            pattern=r"^[^\x00-\x1f\x7f]+$",
            description="who: the NATS user under broker auth, else the OS user",
        ),
    ]
    reason: ShortText = ""
    # A pause's end (absent: until resumed); a resume carries the end of the pause it lifted, if it had one.
    until: Timestamp | None = None


class HostState(_Message, tag="host", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One host's capacity and what is committed on it, published by its collector every interval on
    ``hotplug.hosts.<host>``. Capacity is ``(cpus - reserve_cpus) × overcommit``, floored (``shared.pool``)."""

    time: Timestamp
    host: HostName
    cpus: Annotated[int, msgspec.Meta(ge=1, le=65536, description="the host's CPUs (the source's, or the config's)")]
    capacity_vcpus: Annotated[int, msgspec.Meta(ge=0, le=1_048_576, description="vCPUs the host may commit")]
    committed_vcpus: Annotated[
        int, msgspec.Meta(ge=0, le=1_048_576, description="online vCPUs of every running VM, managed or not")
    ]
    # Negative when more is committed than the capacity (a capacity lowered under running VMs).
    free_vcpus: Annotated[int, msgspec.Meta(ge=-1_048_576, le=1_048_576, description="capacity - committed")]
    watermark: Annotated[
        float,
        msgspec.Meta(gt=0, le=1, description="share of capacity that cores held against a burst (not in use) may take"),
    ] = 1.0
    used_cores: Cores | None = None
    # Demand of running vCPUs that the host's cores could not run (more runnable vCPUs than cores), apart from the
    # VMs' own pressure (demand above their vCPUs): the wait an overcommitted host causes.
    host_wait_cores: Cores | None = None
    # VMs (jobs) waiting to start on this host until it can commit their requested size, where the source knows.
    waiting_vms: Annotated[int, msgspec.Meta(ge=0)] = 0
    waiting_vcpus: Annotated[int, msgspec.Meta(ge=0, description="the waiting VMs' requested vCPUs in total")] = 0
    next_waiting_vcpus: (
        Annotated[int, msgspec.Meta(ge=1, description="requested vCPUs of the first VM in the queue")] | None
    ) = None
    source: Identifier = "unknown"


class DeferralAction(StrEnum):
    DEFERRED = "deferred"  # the VM wants more than its host can give it now
    GRANTED = "granted"  # a deferred grow was granted in full
    DROPPED = "dropped"  # the VM no longer wants it (or is gone)


class Deferral(_Message, tag="deferral", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A grow a decider could not grant in full for want of room on the host, and its end, published on
    ``hotplug.deferrals.<host>.<vm>`` and kept in the event log (only when its state changes)."""

    time: Timestamp
    host: HostName
    vm: VmName
    action: DeferralAction
    decider: Identifier
    vcpus: VcpuCount
    wanted_vcpus: VcpuCount
    granted_vcpus: VcpuCount
    since: Annotated[float, msgspec.Meta(ge=0, description="when the grow was first deferred (shared clock)")]
    priority: int = 0
    reason: ShortText = ""


BusMessage = MetricSample | ScaleCommand | ScaleResult | PauseEvent | HostState | Deferral
MESSAGE_TYPES: tuple[type[BusMessage], ...] = (MetricSample, ScaleCommand, ScaleResult, PauseEvent, HostState, Deferral)
