"""Message contracts on the bus: one msgspec Struct per subject family.

Every message carries a schema version ``v``. Decoding is strict (see ``shared.codec``): field types and
ranges are checked by msgspec from the annotations below, so a message that decodes is a message the
services may act on. ``hotplug schema`` writes the JSON Schema of each, for deciders in other languages.

Times are POSIX seconds on the shared clock (``shared.clock``): wall time, or simulated time when the
simulator runs faster than the clock.

Fields at their default (null, mostly) are left out of the JSON; a reader takes the default. Schema versions.
Version 1 knows vCPUs only. Version 2 adds memory: a sample's ``memory`` reading, commands and deferrals that
name their ``resource``, and the memory sizes of results and host states. Version 3 adds the ``urgent`` mark of a
sample sent at once on a pressure trigger, between the regular ones. A message is written with the lowest
version that holds it (``required_version``, applied by ``shared.codec.encode``): a vCPU-only message stays v1, so
a decider written against v1 goes on reading every message about vCPUs, and a reader of v1 or v2 drops only the
urgent samples, which are extra (the regular ones still cover all the time). This build reads all three; a message
that carries a field of a later version than it says, or a command or deferral whose fields do not match its
resource, is malformed (``contract_error``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

SCHEMA_VERSION = 3  # the newest version this build reads and writes
READABLE_VERSIONS = frozenset({1, 2, 3})
MEMORY_VERSION = 2  # the first version with memory
URGENT_VERSION = 3  # the first version with urgent samples

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
# 64 TiB, as shared.units.MAX_MEMORY_BYTES: past any one VM; a larger figure is a unit slipped.
Bytes = Annotated[int, msgspec.Meta(ge=0, le=64 * 1024**4, description="memory in bytes")]
MAX_TEXT = 1024  # the longest reason or error a message carries
ShortText = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]


class Resource(StrEnum):
    """What a command changes (schema v2; a v1 command changes vCPUs)."""

    VCPU = "vcpu"
    MEMORY = "memory"


def short_text(text: str) -> str:
    """``text`` cut to what a ``ShortText`` field takes: a long reason or error is kept in part, never refused."""
    return text[:MAX_TEXT]


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
    # Memory (schema v2): a shrink that would leave the guest less than it uses plus the headroom; refused before
    # the hypervisor is asked, since a balloon or virtio-mem shrink below the working set OOM-kills guest work.
    BELOW_USED = "below-used"
    # The device stopped short of the target (virtio-mem cannot move pinned pages out; a balloon out of puff):
    # ``memory_after`` says how far it got.
    PARTIAL = "partial"


# Fields at their default are not written (omit_defaults): a v1 message then holds no v2 key, which a reader built
# before v2 (unknown fields forbidden) would refuse. shared.codec.encode writes ``v`` itself when it is 1.
class _Message(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    v: Annotated[
        int,
        msgspec.Meta(
            description="schema version of the message: 1 (vCPUs only), 2 (memory too) or 3 (urgent samples too). "
            "This build writes the lowest version that holds the message and reads all three; any other is dropped"
        ),
    ] = 1


class MemoryReading(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False, omit_defaults=True
):
    """A VM's memory at the end of a sampling interval (schema v2), in bytes; the part of a MetricSample about
    memory. ``size_bytes`` is what the hypervisor gives the guest now; the guest's own figures are null where the
    source cannot read them."""

    size_bytes: Annotated[Bytes, msgspec.Meta(description="memory the VM has now (as the hypervisor gives it)")]
    min_bytes: Annotated[Bytes, msgspec.Meta(description="the least memory the hypervisor lets the VM have")]
    max_bytes: Annotated[Bytes, msgspec.Meta(description="the most memory the VM can be given live")]
    used_bytes: Annotated[
        Bytes | None,
        msgspec.Meta(description="memory the guest uses: MemTotal - MemAvailable (page cache it can drop excluded)"),
    ] = None
    available_bytes: Annotated[
        Bytes | None, msgspec.Meta(description="memory the guest could use without swapping (MemAvailable)")
    ] = None
    swap_in_bytes_per_s: (
        Annotated[float, msgspec.Meta(ge=0, description="bytes swapped in per second over the interval (thrashing)")]
        | None
    ) = None
    psi_some: Annotated[
        Fraction | None,
        msgspec.Meta(description="share of the interval in which some task stalled on memory (PSI memory some)"),
    ] = None
    oom_kills: (
        Annotated[int, msgspec.Meta(ge=0, description="out-of-memory kills in the guest so far (a running count)")]
        | None
    ) = None


class MetricSample(_Message, tag="metric", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One VM's CPU use over the last sampling interval, published on ``hotplug.metrics.<host>.<vm>``."""

    time: Annotated[Timestamp, msgspec.Meta(description="end of the sampling interval, on the shared clock")]
    host: HostName
    vm: VmName
    online_vcpus: Annotated[VcpuCount, msgspec.Meta(description="vCPUs online in the VM at the end of the interval")]
    min_vcpus: Annotated[VcpuCount, msgspec.Meta(description="the fewest vCPUs the hypervisor lets the VM have")]
    max_vcpus: Annotated[VcpuCount, msgspec.Meta(description="the most vCPUs the VM can be hot-plugged to")]
    cpu_used_cores: Annotated[Cores, msgspec.Meta(description="CPU the VM used over the interval, in cores")]
    interval_s: Annotated[
        float, msgspec.Meta(gt=0, le=3600, description="length of the sampling interval, in shared-clock seconds")
    ]
    source: Annotated[Identifier, msgspec.Meta(description="the collector source that measured it (e.g. simulator)")]
    per_vcpu_busy: Annotated[
        list[Fraction] | None,
        msgspec.Meta(description="busy share of each vCPU over the interval, where the source knows it"),
    ] = None
    # Demand the VM could not run, in cores (run-queue excess over online vCPUs), where the source knows it.
    pressure_cores: Annotated[
        Cores | None,
        msgspec.Meta(description="demand the VM could not run, in cores (runnable tasks beyond its online vCPUs)"),
    ] = None
    # PSI cpu.some share of the interval (some runnable task waited), where the source knows it.
    psi_some: Annotated[
        Fraction | None,
        msgspec.Meta(description="share of the interval in which some runnable task waited for a CPU (PSI cpu some)"),
    ] = None
    memory: Annotated[
        MemoryReading | None, msgspec.Meta(description="the VM's memory (schema v2), where the source reads it")
    ] = None
    # Written only when true (omit_defaults), so a regular sample stays v1 or v2 and old readers are unaffected.
    urgent: Annotated[
        bool,
        msgspec.Meta(
            description="sent at once because a pressure trigger fired in the guest (schema v3), between the "
            "regular samples; its interval runs from the VM's last sample. A decider may grow on it at once; "
            "the Hot-Plug Heaven decider never shrinks on it"
        ),
    ] = False


class ScaleCommand(_Message, tag="command", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A decider's order to resize one VM, published on ``hotplug.commands.<host>.<vm>``."""

    id: Annotated[
        Identifier,
        msgspec.Meta(
            description="unique per command, never reused (also across the sender's restarts); published as its "
            "Nats-Msg-Id, so a retried publish is stored once, and named by the result as command_id"
        ),
    ]
    time: Annotated[Timestamp, msgspec.Meta(description="when the decider sent it, on the shared clock")]
    host: HostName
    vm: VmName
    resource: Annotated[
        Resource,
        msgspec.Meta(
            description="what the command changes (schema v2): vcpu (target_vcpus, seen_vcpus) or memory "
            "(target_memory_bytes, seen_memory_bytes); the other resource's fields are null"
        ),
    ] = Resource.VCPU
    target_vcpus: (
        Annotated[int, msgspec.Meta(ge=1, le=1024, description="the vCPU count the VM is to have (vcpu commands)")]
        | None
    ) = None
    seen_vcpus: Annotated[
        VcpuCount | None,
        msgspec.Meta(
            description="the online vCPUs the decider saw (the sample's online_vcpus): a VM that has another count "
            "by then is refused as stale-view (vcpu commands)"
        ),
    ] = None
    target_memory_bytes: Annotated[
        Bytes | None,
        msgspec.Meta(
            description="the memory the VM is to have, in bytes (memory commands, schema v2); the actuator rounds "
            "it to the hypervisor's step"
        ),
    ] = None
    seen_memory_bytes: Annotated[
        Bytes | None,
        msgspec.Meta(
            description="the memory size the decider saw (the sample's memory.size_bytes); a VM whose size has "
            "moved by more than a step since is refused as stale-view (memory commands, schema v2)"
        ),
    ] = None
    decider: Annotated[
        Identifier, msgspec.Meta(description="who sent it: the decider's name, or the lease's name under a lease")
    ]
    reason: Annotated[ShortText, msgspec.Meta(description="why, for people reading the event log")]
    expires_at: Annotated[
        Timestamp,
        msgspec.Meta(description="shared-clock time from which the actuator refuses it as expired (time + a TTL)"),
    ]
    # Time of the sample that triggered the decision: the start of the end-to-end latency.
    sample_time: Annotated[
        Timestamp | None,
        msgspec.Meta(description="time of the sample the decision was made on: the start of the end-to-end latency"),
    ] = None
    # Leadership term of the decider that sent it (0 = no leader election in use).
    term: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description="leadership term of the lease named in decider (0: no lease); the actuator refuses a term "
            "older than the newest it knows for that name as stale-term",
        ),
    ] = 0

    def vcpu_change(self) -> tuple[int, int]:
        """``(seen_vcpus, target_vcpus)`` of a vcpu command: both are set in any command the decoder let through
        (``contract_error``). Raises ValueError for a memory command."""
        if self.seen_vcpus is None or self.target_vcpus is None:
            raise ValueError(f"command {self.id} changes {self.resource}, not vCPUs")
        return self.seen_vcpus, self.target_vcpus

    def memory_change(self) -> tuple[int, int]:
        """``(seen_memory_bytes, target_memory_bytes)`` of a memory command; ValueError for a vcpu command."""
        if self.seen_memory_bytes is None or self.target_memory_bytes is None:
            raise ValueError(f"command {self.id} changes {self.resource}, not memory")
        return self.seen_memory_bytes, self.target_memory_bytes


class ScaleResult(_Message, tag="result", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The one outcome of one command, published on ``hotplug.results.<host>.<vm>``."""

    command_id: Annotated[Identifier, msgspec.Meta(description="the id of the command this result answers")]
    time: Annotated[Timestamp, msgspec.Meta(description="when the actuator finished with it, on the shared clock")]
    host: HostName
    vm: VmName
    ok: Annotated[
        bool, msgspec.Meta(description="true: the VM has the target (or had it already); false: see error_code")
    ]
    vcpus_before: Annotated[
        VcpuCount | None, msgspec.Meta(description="online vCPUs before (null: refused before the VM was read)")
    ]
    vcpus_after: Annotated[
        VcpuCount | None,
        msgspec.Meta(description="online vCPUs after, as verified (null: refused before the VM was read, or unsure)"),
    ]
    target_vcpus: (
        Annotated[int, msgspec.Meta(ge=0, le=1024, description="the command's target_vcpus (null for memory)")] | None
    ) = None
    duration_s: Annotated[float, msgspec.Meta(ge=0, description="wall seconds the actuator spent on it")]
    actuator: Annotated[Identifier, msgspec.Meta(description="the name of the actuator that answered")]
    error_code: Annotated[
        ErrorCode | None, msgspec.Meta(description="why it failed or was refused (null when ok); stable codes")
    ] = None
    error: Annotated[
        ShortText | None, msgspec.Meta(description="the failure in words (the hypervisor's own message)")
    ] = None
    sample_time: Annotated[Timestamp | None, msgspec.Meta(description="the command's sample_time, carried over")] = None
    # The sizes this actuator allows the VM (its own bounds within the hypervisor's), when it read the VM.
    # Deciders keep their orders inside them instead of repeating refused ones.
    allowed_min_vcpus: Annotated[
        VcpuCount | None,
        msgspec.Meta(description="the fewest vCPUs this actuator allows the VM (when it read the VM); order within"),
    ] = None
    allowed_max_vcpus: Annotated[
        VcpuCount | None,
        msgspec.Meta(description="the most vCPUs this actuator allows the VM (when it read the VM); order within"),
    ] = None
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
    # Schema v2: the memory a memory command moved. vcpus_before/vcpus_after/target_vcpus are null then.
    resource: Annotated[Resource, msgspec.Meta(description="the command's resource (schema v2)")] = Resource.VCPU
    target_memory_bytes: Annotated[
        Bytes | None, msgspec.Meta(description="the memory command's target, as the actuator aligned it")
    ] = None
    memory_before_bytes: Annotated[
        Bytes | None, msgspec.Meta(description="the VM's memory before (null: refused before the VM was read)")
    ] = None
    memory_after_bytes: Annotated[
        Bytes | None,
        msgspec.Meta(description="the VM's memory after, as read back (partial: how far the device got)"),
    ] = None
    allowed_min_memory_bytes: Annotated[
        Bytes | None, msgspec.Meta(description="the least memory this actuator allows the VM (order within)")
    ] = None
    allowed_max_memory_bytes: Annotated[
        Bytes | None, msgspec.Meta(description="the most memory this actuator allows the VM (order within)")
    ] = None
    guest_used_bytes: Annotated[
        Bytes | None,
        msgspec.Meta(description="what the guest used when the actuator judged a shrink (below-used: the floor)"),
    ] = None
    # Schema v2: as host_capacity_vcpus/host_committed_vcpus, for a memory grow judged against the host's memory
    # (named as HostState's capacity_memory_bytes and committed_memory_bytes, under the result's host_ prefix).
    host_capacity_memory_bytes: Annotated[
        Bytes | None, msgspec.Meta(description="the host's memory capacity when the memory grow was judged (schema v2)")
    ] = None
    host_committed_memory_bytes: Annotated[
        Bytes | None,
        msgspec.Meta(description="memory committed on the host (every running VM's, and grows under way) (schema v2)"),
    ] = None


class PauseAction(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"


class PauseEvent(_Message, tag="pause", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operator paused or resumed autoscaling of one VM, published on ``hotplug.pauses.<host>.<vm>`` (kept in
    the event log). A pause is also the value of the VM's key in the pause bucket while it lasts
    (``shared.pauses``). Times are wall-clock POSIX seconds: a pause is an operator's, in real time."""

    id: Annotated[Identifier, msgspec.Meta(description="unique per pause or resume (its Nats-Msg-Id)")]
    time: Annotated[
        Timestamp, msgspec.Meta(description="when the operator paused or resumed, wall-clock POSIX seconds")
    ]
    host: HostName
    vm: VmName
    action: Annotated[PauseAction, msgspec.Meta(description="pause or resume")]
    by: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=128,
            pattern=r"^[^\x00-\x1f\x7f]+$",
            description="who: the NATS user under broker auth, else the OS user",
        ),
    ]
    reason: Annotated[ShortText, msgspec.Meta(description="the operator's reason")] = ""
    # A pause's end (absent: until resumed); a resume carries the end of the pause it lifted, if it had one.
    until: Annotated[
        Timestamp | None,
        msgspec.Meta(description="wall-clock end of the pause (null: until resumed); on a resume, the lifted pause's"),
    ] = None


class HostState(_Message, tag="host", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One host's capacity and what is committed on it, published by its collector every interval on
    ``hotplug.hosts.<host>``. Capacity is ``(cpus - reserve_cpus) × overcommit``, floored (``shared.pool``)."""

    time: Annotated[Timestamp, msgspec.Meta(description="when the collector read the host, on the shared clock")]
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
    used_cores: Annotated[Cores | None, msgspec.Meta(description="CPU the host's VMs used, in cores")] = None
    # Demand of running vCPUs that the host's cores could not run (more runnable vCPUs than cores), apart from the
    # VMs' own pressure (demand above their vCPUs): the wait an overcommitted host causes.
    host_wait_cores: Annotated[
        Cores | None,
        msgspec.Meta(
            description="demand of running vCPUs the host's cores could not run (an overcommitted host's wait)"
        ),
    ] = None
    # VMs (jobs) waiting to start on this host until it can commit their requested size, where the source knows.
    waiting_vms: Annotated[
        int, msgspec.Meta(ge=0, description="VMs (jobs) waiting to start until the host can commit their size")
    ] = 0
    waiting_vcpus: Annotated[int, msgspec.Meta(ge=0, description="the waiting VMs' requested vCPUs in total")] = 0
    next_waiting_vcpus: (
        Annotated[int, msgspec.Meta(ge=1, description="requested vCPUs of the first VM in the queue")] | None
    ) = None
    source: Annotated[Identifier, msgspec.Meta(description="the collector source that read the host")] = "unknown"
    # Schema v2: the host's memory, committed as vCPUs are (capacity = (memory - reserve) x memory overcommit).
    memory_bytes: Annotated[Bytes | None, msgspec.Meta(description="the host's memory (schema v2)")] = None
    capacity_memory_bytes: Annotated[
        Bytes | None, msgspec.Meta(description="memory the host may commit to its VMs (schema v2)")
    ] = None
    committed_memory_bytes: Annotated[
        Bytes | None, msgspec.Meta(description="memory of every running VM, managed or not (schema v2)")
    ] = None


class DeferralAction(StrEnum):
    DEFERRED = "deferred"  # the VM wants more than its host can give it now
    GRANTED = "granted"  # a deferred grow was granted in full
    DROPPED = "dropped"  # the VM no longer wants it (or is gone)


class Deferral(_Message, tag="deferral", frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A grow a decider could not grant in full for want of room on the host, and its end, published on
    ``hotplug.deferrals.<host>.<vm>`` and kept in the event log (only when its state changes)."""

    time: Annotated[Timestamp, msgspec.Meta(description="when the deferral started, was granted or dropped")]
    host: HostName
    vm: VmName
    action: Annotated[DeferralAction, msgspec.Meta(description="deferred, granted (in full) or dropped")]
    decider: Annotated[Identifier, msgspec.Meta(description="the decider that deferred the grow")]
    # A memory grow's deferral (schema v2) says its sizes in the memory fields below, and these three are null.
    vcpus: Annotated[VcpuCount | None, msgspec.Meta(description="the VM's online vCPUs then (vcpu deferrals)")] = None
    wanted_vcpus: Annotated[
        VcpuCount | None, msgspec.Meta(description="the size the decider wanted for the VM (vcpu deferrals)")
    ] = None
    granted_vcpus: Annotated[
        VcpuCount | None, msgspec.Meta(description="the size the host had room for (vcpu deferrals)")
    ] = None
    since: Annotated[float, msgspec.Meta(ge=0, description="when the grow was first deferred (shared clock)")]
    priority: Annotated[
        int, msgspec.Meta(description="the VM's priority in the host's plan (higher: served first)")
    ] = 0
    reason: Annotated[ShortText, msgspec.Meta(description="why, in words")] = ""
    resource: Annotated[
        Resource,
        msgspec.Meta(
            description="the deferred grow's resource (schema v2): vcpu (vcpus, wanted_vcpus, granted_vcpus) or "
            "memory (memory_bytes, wanted_memory_bytes, granted_memory_bytes); the other resource's fields are null"
        ),
    ] = Resource.VCPU
    memory_bytes: Annotated[Bytes | None, msgspec.Meta(description="the VM's memory then (memory deferrals)")] = None
    wanted_memory_bytes: Annotated[
        Bytes | None, msgspec.Meta(description="the memory the decider wanted for the VM (memory deferrals)")
    ] = None
    granted_memory_bytes: Annotated[
        Bytes | None, msgspec.Meta(description="the memory the host had room for (memory deferrals)")
    ] = None

    def sizes(self) -> tuple[int, int, int]:
        """``(now, wanted, granted)`` in the resource's unit (vCPUs, or bytes): all set in any deferral the decoder
        let through (``contract_error``)."""
        if self.resource is Resource.MEMORY:
            now, wanted, granted = self.memory_bytes, self.wanted_memory_bytes, self.granted_memory_bytes
        else:
            now, wanted, granted = self.vcpus, self.wanted_vcpus, self.granted_vcpus
        if now is None or wanted is None or granted is None:
            raise ValueError(f"a {self.resource} deferral of {self.host}/{self.vm} without its sizes")
        return now, wanted, granted


def _deferral_error(deferral: Deferral) -> str | None:
    vcpu = (deferral.vcpus, deferral.wanted_vcpus, deferral.granted_vcpus)
    memory = (deferral.memory_bytes, deferral.wanted_memory_bytes, deferral.granted_memory_bytes)
    mine, other = (memory, vcpu) if deferral.resource is Resource.MEMORY else (vcpu, memory)
    if any(size is None for size in mine):
        return f"a {deferral.resource} deferral needs its three sizes"
    if any(size is not None for size in other):
        return f"a {deferral.resource} deferral carries no sizes of the other resource"
    return None


def _vcpu_command_error(command: ScaleCommand) -> str | None:
    if command.target_vcpus is None or command.seen_vcpus is None:
        return "a vcpu command needs target_vcpus and seen_vcpus"
    if command.target_memory_bytes is not None or command.seen_memory_bytes is not None:
        return "a vcpu command carries no memory sizes (one command changes one resource)"
    return None


def _memory_command_error(command: ScaleCommand) -> str | None:
    if command.target_memory_bytes is None or command.seen_memory_bytes is None:
        return "a memory command needs target_memory_bytes and seen_memory_bytes"
    if command.target_memory_bytes == 0:
        return "a memory command's target_memory_bytes must be more than 0"
    if command.target_vcpus is not None or command.seen_vcpus is not None:
        return "a memory command carries no vCPU counts (one command changes one resource)"
    return None


def required_version(message: BusMessage) -> int:
    """The lowest schema version that holds ``message``: 3 for an urgent sample, 2 when it carries anything about
    memory, else 1."""
    if isinstance(message, MetricSample):
        if message.urgent:
            return URGENT_VERSION
        needs_memory = message.memory is not None
    elif isinstance(message, ScaleCommand):
        needs_memory = message.resource is not Resource.VCPU
    elif isinstance(message, ScaleResult):
        needs_memory = (
            message.resource is not Resource.VCPU
            or message.host_capacity_memory_bytes is not None
            or message.host_committed_memory_bytes is not None
        )
    elif isinstance(message, Deferral):
        needs_memory = message.resource is not Resource.VCPU
    elif isinstance(message, HostState):
        needs_memory = (
            message.memory_bytes is not None
            or message.capacity_memory_bytes is not None
            or message.committed_memory_bytes is not None
        )
    else:
        needs_memory = False
    return MEMORY_VERSION if needs_memory else 1


def contract_error(message: BusMessage) -> str | None:
    """What makes a decoded ``message`` break its contract beyond its field types, or None: a field of a later
    version than the message says (v2 under v1, v3 under v1 or v2), a command whose fields do not match its
    resource. Field types and ranges are msgspec's to check."""
    if message.v < required_version(message):
        if isinstance(message, MetricSample) and message.urgent:
            return f"v={message.v} carries urgent, which needs v={URGENT_VERSION}"
        return f"v={message.v} carries memory fields, which need v={MEMORY_VERSION}"
    if isinstance(message, Deferral):
        return _deferral_error(message)
    if isinstance(message, ScaleCommand):
        if message.resource is Resource.VCPU:
            return _vcpu_command_error(message)
        return _memory_command_error(message)
    return None


BusMessage = MetricSample | ScaleCommand | ScaleResult | PauseEvent | HostState | Deferral
MESSAGE_TYPES: tuple[type[BusMessage], ...] = (MetricSample, ScaleCommand, ScaleResult, PauseEvent, HostState, Deferral)


def json_schemas() -> dict[str, dict[str, object]]:
    """The JSON Schema of each message, by name (what ``hotplug schema`` writes): msgspec's, with the tag field
    ``type`` described too (msgspec gives a tag no description of its own)."""
    schemas: dict[str, dict[str, object]] = {}
    for message_type in MESSAGE_TYPES:
        schema = msgspec.json.schema(message_type)
        tag = message_type.__struct_config__.tag
        properties = schema["$defs"][message_type.__name__]["properties"]
        properties["type"]["description"] = f'message kind: always "{tag}" for a {message_type.__name__}'
        schemas[message_type.__name__] = schema
    return schemas
