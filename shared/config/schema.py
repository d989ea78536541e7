"""The config file's types, and each command's settings.

Each service's settings are one Struct here (``ServiceSettings`` for what every service takes, then one per
service, and ``UpSettings``): a field per setting, with its type, range, description and built-in default. The
command's flags, its config-file section (``[simulator]``, ``[decider]``...), its environment variables and the
configuration reference are generated from it (``shared.config.settings``), so none of them is written twice.
The services' own config classes take their defaults from these Structs.

The file's sections keep every key optional (a key the file leaves out is None, and keeps the layer below);
unknown keys are refused, never silently ignored (a limit that is not read is worse than none). Beside them, the
``[[vm]]`` rules and the ``[[host]]`` rules (capacity), and ``[plugins.NAME]``: a plug-in's own options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import msgspec
from msgspec import Meta

from shared import topology
from shared.bus import DEFAULT_URL_ENV as NATS_URL_ENV  # read where the bus connects
from shared.config.settings import Params as Params
from shared.config.settings import ParamValue as ParamValue
from shared.config.settings import Spec, section_of, section_with
from shared.config.settings import param_flags as param_flags
from shared.libvirt.connection import URI_ENV as LIBVIRT_URI_ENV  # read where libvirt connects
from shared.units import SizeError, format_size, parse_size

PosInt = Annotated[int, Meta(ge=1)]
PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]
Autoscale = Literal["auto", "off", "recommend"]
# Source and driver names are the registries' (plug-ins add their own: shared/plugins.py), so the type takes any
# name; loading the file refuses an unknown one at its key's line, naming the choices (load._check_plugin_names).
Hypervisor = str
SourceName = str

_PARAM_DOC = (
    "policy and guard parameters, as --param NAME.KEY=VALUE: write param.NAME.KEY = VALUE "
    "(e.g. param.guard.up_cooldown_s = 5); --param on the command line overrides the same key"
)

# Settings more than one command takes (up passes its own to its children): one declaration each, and one
# default.
INTERVAL_S = 1.0
SPEED = 1.0
LOG_LEVEL = "INFO"
SEED = 1
# The VMs a run makes when not told how many (the simulator's seeded VMs, QEMU's guests booted by up).
VMS = 6
NatsUrl = Annotated[str | None, Meta(description="NATS URL", extra={"env": NATS_URL_ENV, "env_read_later": True})]
LibvirtUri = Annotated[
    str | None,
    Meta(description="libvirt URI (default qemu:///system)", extra={"env": LIBVIRT_URI_ENV, "env_read_later": True}),
]
LibvirtOptIn = Annotated[
    bool, Meta(description="libvirt: only domains whose hotplug metadata says enabled (hotplug libvirt prepare)")
]
Seed = Annotated[int, Meta(description="workload and arrivals seed")]
Interval = Annotated[PosFloat, Meta(description="sampling interval, seconds (of the shared clock)")]
Speed = Annotated[PosFloat, Meta(description="simulated seconds per wall second")]
LogLevel = Annotated[str, Meta(description="DEBUG, INFO, WARNING or ERROR")]
Param = Annotated[Params, Meta(description=_PARAM_DOC)]
TraceFile = Annotated[
    str | None,
    Meta(
        description="the VMs follow this replay CSV (time_s,vm,demand_vcpus[,max_vcpus]) from the run's start, "
        "repeating at its end, instead of the seeded profiles (relative to the config file's folder)",
        extra={"path": True, "metavar": "FILE"},
    ),
]
HostCores = Annotated[
    PosInt | None,
    Meta(
        description="the simulated host's physical cores (default: the VMs' maximums together, so they never "
        "contend); its capacity in vCPUs is the config file's [[host]] rule's reading of them"
    ),
]
HostMemory = Annotated[
    str | None,
    Meta(
        description='the simulated host\'s memory: "64GiB", "65536" (MiB) (default: not limited); the loop '
        "commits what the config file's [[host]] rule makes of it",
        extra={"metavar": "SIZE"},
    ),
]
HostMemoryOvercommit = Annotated[
    float,
    Meta(
        gt=0,
        le=64,
        description="how far the simulated hypervisor lets its VMs' memory exceed its memory (1: not at all); "
        "beyond, it refuses a memory grow (host-full) and jobs wait",
        extra={"metavar": "RATIO"},
    ),
]
ArrivalsRate = Annotated[
    NonNegFloat,
    Meta(
        description="jobs (VMs to start) arriving per hour, a seeded Poisson process of the mix in "
        "services/simulator/jobs.py (0: none)",
        extra={"metavar": "JOBS_PER_HOUR"},
    ),
]
ArrivalsFile = Annotated[
    str | None,
    Meta(
        description="jobs arriving from this CSV: arrival_s,name,requested_vcpus,max_vcpus,profile,lifetime_s,"
        "work_s (relative to the config file's folder)",
        extra={"path": True, "metavar": "FILE"},
    ),
]


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every command's settings."""


class ServiceSettings(Settings):
    """Keys every service takes (simulator, collector, decider, actuator, agent); a service's own section
    overrides them."""

    nats: NatsUrl = None
    host: Annotated[str, Meta(description="hypervisor host name", extra={"env": "HOTPLUG_HOST"})] = "local"
    metrics_port: Annotated[
        Port, Meta(description="Prometheus port (0: any free port)", extra={"env": "HOTPLUG_METRICS_PORT"})
    ] = 0
    metrics_addr: Annotated[
        str, Meta(description="address the metrics endpoint binds", extra={"env": "HOTPLUG_METRICS_ADDR"})
    ] = "127.0.0.1"
    speed: Annotated[Speed, Meta(extra={"env": "HOTPLUG_SPEED"})] = SPEED
    epoch: Annotated[
        float | None,
        Meta(
            description="wall time (POSIX seconds) from which the shared clock runs speed times faster (default: "
            "this service's start); under speed every service of a run needs the same one (hotplug up prints its "
            "own)"
        ),
    ] = None
    log_level: Annotated[LogLevel, Meta(extra={"env": "HOTPLUG_LOG_LEVEL"})] = LOG_LEVEL


class SimulatorSettings(ServiceSettings):
    """``hotplug simulator``: the simulated mini-cloud."""

    vms: Annotated[
        PosInt | None,
        Meta(description=f"VMs to simulate (default {VMS}); with trace, the first N of the trace's VMs by name"),
    ] = None
    trace: TraceFile = None
    seed: Seed = SEED
    host_cores: HostCores = None
    host_memory: HostMemory = None
    host_memory_overcommit: HostMemoryOvercommit = 1.0
    arrivals_rate: ArrivalsRate = 0.0
    arrivals_file: ArrivalsFile = None
    arrivals_seed: Annotated[int | None, Meta(description="the arrivals' seed (default: seed)")] = None
    hotplug_delay: Annotated[float, Meta(description="simulated seconds per plug or unplug")] = 0.3
    profiles: Annotated[str, Meta(description="comma-separated workload profiles to cycle through")] = ""
    max_vcpus: Annotated[
        PosInt | None, Meta(description="every VM's maximum (it boots with half); default: 4, 8, 16, 8 in turn")
    ] = None


class CollectorSettings(ServiceSettings):
    """``hotplug collector``: samples CPU use and publishes metrics."""

    source: Annotated[
        SourceName,
        Meta(description="where CPU use is read: simulator, psutil, virtualbox, qemu, libvirt, or a plug-in's source"),
    ] = "simulator"
    libvirt_uri: LibvirtUri = None
    libvirt_opt_in: LibvirtOptIn = False
    libvirt_domain: Annotated[
        list[str],
        Meta(
            description="libvirt: watch only this domain (repeatable; default: every running domain)",
            extra={"metavar": "NAME"},
        ),
    ] = []
    interval: Interval = INTERVAL_S
    process: Annotated[
        list[str],
        Meta(description="psutil: a host process to watch as a VM", extra={"metavar": "VM=PID|VM=REGEX"}),
    ] = []
    no_urgent: Annotated[
        bool,
        Meta(
            description="do not watch the source for pressure between the rounds (qemu: the guests' PSI lines): "
            "regular samples only"
        ),
    ] = False


class DeciderSettings(ServiceSettings):
    """``hotplug decider``: the defaults for VMs that no ``[[vm]]`` rule sets otherwise."""

    policy: Annotated[str, Meta(description="policy of VMs no rule gives one")] = "default"
    param: Param = {}
    name: Annotated[str, Meta(description="this decider's name in commands")] = topology.DECIDER_NAME
    dry_run: Annotated[bool, Meta(description="log what it would do; command nothing")] = False
    cpu_only: Annotated[
        bool,
        Meta(description="decide vCPUs only, also for VMs whose samples carry memory (else memory.* params apply)"),
    ] = False
    lease: Annotated[
        str | None, Meta(description="replicas with the same lease elect one active decider (commands carry its term)")
    ] = None
    lease_ttl: Annotated[PosFloat, Meta(description="seconds a lease lasts without renewal")] = 5.0
    group: Annotated[
        str | None,
        Meta(description="share the VMs with the other live deciders of this group (each needs its own name)"),
    ] = None
    shadow: Annotated[
        bool, Meta(description="publish proposals on hotplug.proposals.<name>.<host>.<vm> instead of commands")
    ] = False
    max_sample_age: Annotated[PosFloat, Meta(description="older samples (seconds) never drive a decision")] = 10.0
    intake_capacity: Annotated[
        PosInt,
        Meta(
            description="VMs whose newest sample may wait at once; a flood sheds the oldest samples",
            extra={"metavar": "VMS"},
        ),
    ] = 100_000
    command_ttl: Annotated[PosFloat, Meta(description="seconds a command stays valid")] = 30.0


class ActuatorSettings(ServiceSettings):
    """``hotplug actuator``: the bounds of VMs that no ``[[vm]]`` rule bounds."""

    driver: Annotated[
        Hypervisor,
        Meta(description="how the hypervisor is driven: simulator, virtualbox, qemu, libvirt, or a plug-in's driver"),
    ] = "simulator"
    libvirt_uri: LibvirtUri = None
    libvirt_opt_in: LibvirtOptIn = False
    name: Annotated[str, Meta(description="this actuator's name")] = topology.ACTUATOR_NAME
    min_vcpus: Annotated[PosInt, Meta(description="smallest size of VMs no rule bounds")] = 1
    max_vcpus: Annotated[PosInt, Meta(description="largest size of VMs no rule bounds")] = 1024
    step_timeout: Annotated[PosFloat, Meta(description="seconds one hypervisor call may take")] = 30.0
    vm_bounds: Annotated[
        list[str],
        Meta(
            description="this VM's own bounds, above any rule (the last '=' separates the name); repeatable",
            extra={"metavar": "VM=MIN:MAX"},
        ),
    ] = []
    max_changes: Annotated[PosInt, Meta(description="resizes allowed per VM per rate_window")] = 6
    rate_window: Annotated[PosFloat, Meta(description="seconds (of the shared clock)")] = 60.0
    ack_wait: Annotated[
        PosFloat, Meta(description="seconds before an unacknowledged command is redelivered (e.g. after a crash)")
    ] = 60.0


class AgentSettings(ServiceSettings):
    """``hotplug agent`` (inside a guest): publishes its own CPU view."""

    vm: Annotated[str | None, Meta(description="the VM's name as the hypervisor knows it (required)")] = None
    interval: Interval = INTERVAL_S
    no_online: Annotated[bool, Meta(description="do not bring newly plugged CPUs online")] = False
    # The defaults: a task that waits 10 % of a second for a CPU is a burst worth serving now, not at the next sample;
    # the kernel checks such a trigger every 100 ms while pressure lasts and costs nothing while the guest is calm.
    urgent_stall: Annotated[
        PosFloat,
        Meta(
            description="urgent samples: a PSI trigger fires when runnable tasks waited this long within "
            "urgent_window, and the agent samples at once (seconds of the guest's own clock)"
        ),
    ] = 0.1
    urgent_window: Annotated[
        float,
        Meta(
            ge=0.5,
            le=10,
            description="the PSI trigger's window, seconds; at most one urgent sample per window (without "
            "CAP_SYS_RESOURCE the kernel takes only multiples of 2 s: the agent rounds up and says so)",
        ),
    ] = 1.0
    no_urgent: Annotated[bool, Meta(description="set no PSI trigger: regular samples only")] = False


class UpSettings(Settings):
    """``hotplug up``: what it runs. Its children also read this file (its ``[[vm]]`` rules and their own
    sections), but what ``up`` passes them (policy, param, interval, dry_run...) comes first. The keys of one
    hypervisor only (the simulator's seed and trace, libvirt's URI...) are its record's own options, each named for
    its hypervisor."""

    vms: Annotated[
        PosInt | None,
        Meta(description="the run's VMs, as the hypervisor makes them (`hotplug up --help` says how each does)"),
    ] = None
    duration: Annotated[PosFloat | None, Meta(description="stop after this many simulated seconds")] = None
    speed: Speed = SPEED
    policy: Annotated[
        str | None, Meta(description="the decider's policy (default: the file's [decider] policy, or default)")
    ] = None
    param: Param = {}
    data_dir: Annotated[
        str, Meta(description="event log and logs (relative to the config file's folder)", extra={"path": True})
    ] = ".hotplug"
    nats: Annotated[NatsUrl, Meta(description="use this NATS server instead of starting one")] = None
    cluster: Annotated[
        PosInt,
        Meta(
            description="start a NATS cluster of this many nodes on loopback (streams kept on three)",
            extra={"metavar": "NODES"},
        ),
    ] = 1
    hypervisor: Annotated[
        Hypervisor,
        Meta(description="what the VMs run on: a hypervisor's record (`hotplug up --help` lists them)"),
    ] = "simulator"
    max_vcpus: Annotated[
        PosInt, Meta(description="a hypervisor that boots guests for the run: each one's maximum (it boots with 1)")
    ] = 4
    interval: Interval = INTERVAL_S
    dry_run: Annotated[bool, Meta(description="decide and log, but command nothing")] = False
    no_decider: Annotated[
        bool,
        Meta(
            description="run no decider: the broker, simulator, collector and actuator wait for yours, in any "
            "language (docs/deciders-any-language.md); up prints the clock's speed and epoch for it"
        ),
    ] = False
    no_view: Annotated[bool, Meta(description="no live table (it is off anyway without a terminal)")] = False
    log_level: Annotated[LogLevel, Meta(description="the services' log level")] = LOG_LEVEL


# Each command's settings.
SETTINGS: dict[str, type[Settings]] = {
    "simulator": SimulatorSettings,
    "collector": CollectorSettings,
    "decider": DeciderSettings,
    "actuator": ActuatorSettings,
    "agent": AgentSettings,
    "up": UpSettings,
}


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Base of every section: a key left out (None) keeps the layer below."""


# The sections, generated from the settings (typed Any for mypy: their fields exist only once generated).
ServiceSection = section_of(ServiceSettings, "ServiceSection", Section, None)
SimulatorSection = section_of(SimulatorSettings, "SimulatorSection", ServiceSection, ServiceSettings)
CollectorSection = section_of(CollectorSettings, "CollectorSection", ServiceSection, ServiceSettings)
DeciderSection = section_of(DeciderSettings, "DeciderSection", ServiceSection, ServiceSettings)
ActuatorSection = section_of(ActuatorSettings, "ActuatorSection", ServiceSection, ServiceSettings)
AgentSection = section_of(AgentSettings, "AgentSection", ServiceSection, ServiceSettings)
UpSection = section_of(UpSettings, "UpSection", Section, None)


class VmRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One ``[[vm]]`` rule. The first rule whose ``match`` fits a VM is the VM's rule; a VM no rule matches runs
    under the services' defaults. A key the rule leaves out keeps the service's default."""

    match: Annotated[
        str | list[str],
        Meta(
            description='glob on the VM\'s name ("vm-0*": any host) or on HOST/VM ("node1/vm-*"); '
            "a list matches any of its patterns"
        ),
    ]
    name: Annotated[str | None, Meta(description="the rule's name in metrics and logs (default: its match)")] = None
    autoscale: Annotated[
        Autoscale,
        Meta(description="auto: decide and command; recommend: decide and log, never command; off: leave alone"),
    ] = "auto"
    min_vcpus: Annotated[PosInt | None, Meta(description="smallest size (decider and actuator)")] = None
    max_vcpus: Annotated[PosInt | None, Meta(description="largest size (decider and actuator)")] = None
    min_memory: Annotated[
        str | int | None,
        Meta(description='least memory (decider and actuator): "512MiB", "8GiB", "1.5G"; a bare number is MiB'),
    ] = None
    max_memory: Annotated[
        str | int | None,
        Meta(description='most memory (decider and actuator): "16GiB"; a bare number is MiB'),
    ] = None
    policy: Annotated[str | None, Meta(description="the VM's policy (default: the decider's)")] = None
    param: Annotated[Params, Meta(description=_PARAM_DOC)] = {}
    priority: Annotated[
        int,
        Meta(
            ge=-1000,
            le=1000,
            description="on a full host, VMs of higher priority are served first (default 0)",
        ),
    ] = 0
    weight: Annotated[
        float,
        Meta(gt=0, le=1000, description="on a full host, VMs of one priority share cores in proportion to it"),
    ] = 1.0
    preemptible: Annotated[
        bool,
        Meta(description="on a full host, may be shrunk to what it uses now to make room for a higher priority"),
    ] = False

    def __post_init__(self) -> None:
        patterns = self.patterns
        if not patterns or any(not p for p in patterns):
            raise ValueError("match needs at least one non-empty pattern")
        if self.min_vcpus is not None and self.max_vcpus is not None and self.min_vcpus > self.max_vcpus:
            raise ValueError(f"min_vcpus {self.min_vcpus} is above max_vcpus {self.max_vcpus}")
        if self.name == "":
            raise ValueError("name, when given, must not be empty")
        low, high = self.min_memory_bytes, self.max_memory_bytes
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_memory {format_size(low)} is above max_memory {format_size(high)}")

    @property
    def patterns(self) -> tuple[str, ...]:
        return (self.match,) if isinstance(self.match, str) else tuple(self.match)

    @property
    def min_memory_bytes(self) -> int | None:
        return memory_bytes_of("min_memory", self.min_memory)

    @property
    def max_memory_bytes(self) -> int | None:
        return memory_bytes_of("max_memory", self.max_memory)


def memory_bytes_of(key: str, value: str | int | None, *, allow_zero: bool = False) -> int | None:
    """A memory setting in bytes (None: not given): a rule's bound or size, a simulator's RAM; a bad one is a
    ValueError naming the key."""
    if value is None:
        return None
    try:
        return parse_size(value, allow_zero=allow_zero)
    except SizeError as exc:
        raise ValueError(f"{key}: {exc}") from exc


class HostRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One ``[[host]]`` rule: a host's capacity in vCPUs is ``(cpus - reserve_cpus) × overcommit``, floored, and in
    memory ``(memory - reserve_memory) × memory_overcommit`` bytes, floored (``shared.pool``). The first rule whose
    ``match`` fits a host's name is its rule; a host no rule matches keeps the defaults (its source's CPUs and
    memory, no reserve, overcommit 1)."""

    match: Annotated[
        str | list[str], Meta(description='glob on the host\'s name ("node*"); a list matches any of its patterns')
    ]
    cpus: Annotated[
        PosInt | None, Meta(description="the host's CPUs, in place of what its source or driver reports")
    ] = None
    reserve_cpus: Annotated[
        float, Meta(ge=0, description="CPUs kept for the host itself (its OS, the hypervisor's own threads)")
    ] = 0.0
    overcommit: Annotated[
        float, Meta(gt=0, le=64, description="vCPUs committed per CPU: 1 means no vCPU ever waits for a core")
    ] = 1.0
    watermark: Annotated[
        float,
        Meta(
            gt=0,
            le=1,
            description="share of capacity that cores held against a burst (not in use) may take; "
            "present need may take it all",
        ),
    ] = 1.0
    memory: Annotated[
        str | int | None,
        Meta(
            description='the host\'s memory, in place of what its source or driver reports: "256GiB"; a bare '
            "number is MiB"
        ),
    ] = None
    reserve_memory: Annotated[
        str | int | None,
        Meta(description='memory kept for the host itself (its OS, the hypervisor\'s own): "8GiB" (default none)'),
    ] = None
    memory_overcommit: Annotated[
        float,
        Meta(
            gt=0,
            le=64,
            description="bytes of VM memory committed per byte of the host's: 1 means no guest page is ever short "
            "of host RAM",
        ),
    ] = 1.0

    def __post_init__(self) -> None:
        patterns = self.patterns
        if not patterns or any(not p for p in patterns):
            raise ValueError("match needs at least one non-empty pattern")
        # Read once here so that a bad size is the rule's error at load, not a surprise at the first host view.
        memory, reserve = self.memory_bytes, self.reserve_memory_bytes
        if memory is not None and reserve is not None and reserve >= memory:
            raise ValueError(
                f"reserve_memory {format_size(reserve)} leaves nothing of memory {format_size(memory)} for VMs"
            )

    @property
    def patterns(self) -> tuple[str, ...]:
        return (self.match,) if isinstance(self.match, str) else tuple(self.match)

    @property
    def memory_bytes(self) -> int | None:
        return memory_bytes_of("memory", self.memory)

    @property
    def reserve_memory_bytes(self) -> int | None:
        return memory_bytes_of("reserve_memory", self.reserve_memory, allow_zero=True)  # 0: no reserve, as by default


class ConfigFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole file: sections for the commands, the ``[[vm]]`` and ``[[host]]`` rules in order, and each
    plug-in's own options (``[plugins.NAME]``)."""

    if TYPE_CHECKING:
        service: Any = None
        simulator: Any = None
        collector: Any = None
        decider: Any = None
        actuator: Any = None
        agent: Any = None
        up: Any = None
    else:
        service: ServiceSection = msgspec.field(default_factory=ServiceSection)
        simulator: SimulatorSection = msgspec.field(default_factory=SimulatorSection)
        collector: CollectorSection = msgspec.field(default_factory=CollectorSection)
        decider: DeciderSection = msgspec.field(default_factory=DeciderSection)
        actuator: ActuatorSection = msgspec.field(default_factory=ActuatorSection)
        agent: AgentSection = msgspec.field(default_factory=AgentSection)
        up: UpSection = msgspec.field(default_factory=UpSection)
    vm: list[VmRule] = []
    host: list[HostRule] = []
    plugins: Annotated[
        dict[str, dict[str, Any]],
        Meta(description="a plug-in's own options, by its name: [plugins.NAME] KEY = VALUE (its flag --KEY)"),
    ] = {}


def config_file_with(up: Sequence[Spec]) -> type[ConfigFile]:
    """The file's type with the settings ``up`` among ``[up]``'s keys: the built-in hypervisor records' own options,
    which ``hotplug.hypervisors`` declares (``shared`` knows no record, so :class:`ConfigFile` alone refuses them;
    ``hotplug`` reads every file with this type, and a service's reload keeps the type it started with)."""
    if not up:
        return ConfigFile
    section = section_with("UpSection", up, UpSection, __name__)
    section.__doc__ = UpSection.__doc__
    field = msgspec.field(default_factory=section)
    config = cast(
        type[ConfigFile],
        msgspec.defstruct("ConfigFile", [("up", section, field)], bases=(ConfigFile,), module=__name__, kw_only=True),
    )
    config.__doc__ = ConfigFile.__doc__
    return config


# The section each command reads, with [service] under it for the services.
SECTIONS: dict[str, type[Any]] = {
    "simulator": SimulatorSection,
    "collector": CollectorSection,
    "decider": DeciderSection,
    "actuator": ActuatorSection,
    "agent": AgentSection,
    "up": UpSection,
}
CONFIG_ENV = "HOTPLUG_CONFIG"


def section_values(config: ConfigFile, command: str) -> dict[str, object]:
    """The keys the file sets for ``command`` ([service] first, then the command's own section), unset ones left
    out. Pure."""
    own = getattr(config, command)
    values: dict[str, object] = {}
    if isinstance(own, ServiceSection):
        values.update(_set_fields(config.service))
    values.update(_set_fields(own))
    return values


def _set_fields(section: Any) -> dict[str, object]:
    return {name: value for name in section.__struct_fields__ if (value := getattr(section, name)) is not None}
