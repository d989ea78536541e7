"""The config file's types: one section per command (keys are its flags' names, ``-`` written ``_``), the
``[[vm]]`` rules and the ``[[host]]`` rules (capacity). Every key is optional; a key the file leaves out keeps
the flag's default. Unknown keys are refused, never silently ignored (a limit that is not read is worse than none).

docs/configuration.md's reference is generated from these Structs (``hotplug config reference``), and a unit test
checks each section against its command's flags, so the file, the flags and the docs cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

PosInt = Annotated[int, Meta(ge=1)]
PosFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]
Autoscale = Literal["auto", "off", "recommend"]
# A policy or guard parameter's value, as ``--param NAME.KEY=VALUE`` would give it.
ParamValue = bool | int | float | str
# ``param.<policy or guard>.<key> = value``: the file's form of ``--param NAME.KEY=VALUE``.
Params = dict[str, dict[str, ParamValue]]
# Source and driver names are the registries' (plug-ins add their own: shared/plugins.py), so the type takes any
# name; loading the file refuses an unknown one at its key's line, naming the choices (load._check_plugin_names).
Hypervisor = str
SourceName = str

_PARAM_DOC = (
    "policy and guard parameters, as --param NAME.KEY=VALUE: write param.NAME.KEY = VALUE "
    "(e.g. param.guard.up_cooldown_s = 5); --param on the command line overrides the same key"
)


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Base of every section: a key left out (None) keeps the flag's own default."""


class ServiceSection(Section):
    """Keys every service takes (simulator, collector, decider, actuator, agent); a service's own section
    overrides them."""

    nats: Annotated[str | None, Meta(description="NATS URL")] = None
    host: Annotated[str | None, Meta(description="hypervisor host name")] = None
    metrics_port: Annotated[Port | None, Meta(description="Prometheus port (0: any free port)")] = None
    metrics_addr: Annotated[str | None, Meta(description="address the metrics endpoint binds")] = None
    speed: Annotated[PosFloat | None, Meta(description="simulated seconds per wall second")] = None
    epoch: Annotated[float | None, Meta(description="wall time at which simulated time starts")] = None
    log_level: Annotated[str | None, Meta(description="DEBUG, INFO, WARNING or ERROR")] = None


class SimulatorSection(ServiceSection):
    """``hotplug simulator``."""

    vms: Annotated[PosInt | None, Meta(description="VMs to simulate")] = None
    trace: Annotated[str | None, Meta(description="replay CSV the VMs follow (relative to this file)")] = None
    seed: Annotated[int | None, Meta(description="workload seed")] = None
    hotplug_delay: Annotated[float | None, Meta(description="simulated seconds per plug or unplug")] = None
    profiles: Annotated[str | None, Meta(description="comma-separated workload profiles")] = None
    max_vcpus: Annotated[PosInt | None, Meta(description="every VM's maximum")] = None
    host_cores: Annotated[
        PosInt | None, Meta(description="the host's physical cores (default: the VMs' maximums together)")
    ] = None
    arrivals_rate: Annotated[NonNegFloat | None, Meta(description="jobs arriving per hour (Poisson, seeded)")] = None
    arrivals_file: Annotated[str | None, Meta(description="CSV of arriving jobs (relative to this file)")] = None
    arrivals_seed: Annotated[int | None, Meta(description="the arrivals' seed (default: seed)")] = None


class CollectorSection(ServiceSection):
    """``hotplug collector``."""

    source: Annotated[
        SourceName | None,
        Meta(description="where CPU use is read: simulator, psutil, virtualbox, qemu, libvirt, or a plug-in's source"),
    ] = None
    libvirt_uri: Annotated[str | None, Meta(description="libvirt URI")] = None
    libvirt_opt_in: Annotated[bool | None, Meta(description="libvirt: only domains opted in")] = None
    libvirt_domain: Annotated[list[str] | None, Meta(description="libvirt: watch only these domains")] = None
    interval: Annotated[PosFloat | None, Meta(description="sampling interval, seconds")] = None
    process: Annotated[list[str] | None, Meta(description="psutil: VM=PID or VM=REGEX")] = None


class DeciderSection(ServiceSection):
    """``hotplug decider``: the defaults for VMs that no ``[[vm]]`` rule sets otherwise."""

    policy: Annotated[str | None, Meta(description="policy of VMs no rule gives one")] = None
    param: Annotated[Params | None, Meta(description=_PARAM_DOC)] = None
    name: Annotated[str | None, Meta(description="this decider's name in commands")] = None
    dry_run: Annotated[bool | None, Meta(description="log what it would do; command nothing")] = None
    lease: Annotated[str | None, Meta(description="lease name: replicas elect one active decider")] = None
    lease_ttl: Annotated[PosFloat | None, Meta(description="seconds a lease lasts without renewal")] = None
    group: Annotated[str | None, Meta(description="share the VMs with this group's live deciders")] = None
    shadow: Annotated[bool | None, Meta(description="publish proposals instead of commands")] = None
    max_sample_age: Annotated[PosFloat | None, Meta(description="older samples never drive a decision")] = None
    intake_capacity: Annotated[PosInt | None, Meta(description="VMs whose newest sample may wait at once")] = None
    command_ttl: Annotated[PosFloat | None, Meta(description="seconds a command stays valid")] = None


class ActuatorSection(ServiceSection):
    """``hotplug actuator``: the bounds of VMs that no ``[[vm]]`` rule bounds."""

    driver: Annotated[
        Hypervisor | None,
        Meta(description="how the hypervisor is driven: simulator, virtualbox, qemu, libvirt, or a plug-in's driver"),
    ] = None
    libvirt_uri: Annotated[str | None, Meta(description="libvirt URI")] = None
    libvirt_opt_in: Annotated[bool | None, Meta(description="libvirt: only domains opted in")] = None
    name: Annotated[str | None, Meta(description="this actuator's name")] = None
    min_vcpus: Annotated[PosInt | None, Meta(description="smallest size of VMs no rule bounds")] = None
    max_vcpus: Annotated[PosInt | None, Meta(description="largest size of VMs no rule bounds")] = None
    step_timeout: Annotated[PosFloat | None, Meta(description="seconds one hypervisor call may take")] = None
    vm_bounds: Annotated[list[str] | None, Meta(description="VM=MIN:MAX, above any rule")] = None
    max_changes: Annotated[PosInt | None, Meta(description="resizes allowed per VM per rate_window")] = None
    rate_window: Annotated[PosFloat | None, Meta(description="seconds (of the shared clock)")] = None
    ack_wait: Annotated[PosFloat | None, Meta(description="seconds before a command is redelivered")] = None


class AgentSection(ServiceSection):
    """``hotplug agent`` (inside a guest)."""

    vm: Annotated[str | None, Meta(description="the VM's name as the hypervisor knows it")] = None
    interval: Annotated[PosFloat | None, Meta(description="sampling interval, seconds")] = None
    no_online: Annotated[bool | None, Meta(description="do not bring newly plugged CPUs online")] = None


class UpSection(Section):
    """``hotplug up``: what it runs. Its children also read this file (its ``[[vm]]`` rules and their own
    sections), but what ``up`` passes them (policy, param, interval, dry_run...) comes first."""

    vms: Annotated[PosInt | None, Meta(description="VMs (or guests, or test domains)")] = None
    trace: Annotated[str | None, Meta(description="replay CSV the VMs follow (relative to this file)")] = None
    duration: Annotated[PosFloat | None, Meta(description="stop after this many simulated seconds")] = None
    speed: Annotated[PosFloat | None, Meta(description="simulated seconds per wall second")] = None
    policy: Annotated[str | None, Meta(description="the decider's default policy")] = None
    param: Annotated[Params | None, Meta(description=_PARAM_DOC)] = None
    data_dir: Annotated[str | None, Meta(description="event log and logs (relative to this file)")] = None
    nats: Annotated[str | None, Meta(description="use this NATS server instead of starting one")] = None
    cluster: Annotated[PosInt | None, Meta(description="embedded NATS cluster nodes")] = None
    hypervisor: Annotated[
        Hypervisor | None,
        Meta(description="what the VMs run on: a source and driver name (simulator, virtualbox, qemu, libvirt)"),
    ] = None
    max_vcpus: Annotated[PosInt | None, Meta(description="qemu, libvirt: each guest's maximum")] = None
    libvirt_uri: Annotated[str | None, Meta(description="libvirt URI")] = None
    seed: Annotated[int | None, Meta(description="simulator seed")] = None
    host_cores: Annotated[
        PosInt | None, Meta(description="simulator: the host's physical cores (default: the VMs' maximums together)")
    ] = None
    arrivals_rate: Annotated[
        NonNegFloat | None, Meta(description="simulator: jobs arriving per hour (Poisson, seeded)")
    ] = None
    arrivals_file: Annotated[
        str | None, Meta(description="simulator: CSV of arriving jobs (relative to this file)")
    ] = None
    interval: Annotated[PosFloat | None, Meta(description="sampling interval, simulated seconds")] = None
    dry_run: Annotated[bool | None, Meta(description="decide and log, but command nothing")] = None
    no_decider: Annotated[
        bool | None, Meta(description="run no decider: the loop waits for yours (docs/deciders-any-language.md)")
    ] = None
    no_view: Annotated[bool | None, Meta(description="no live table")] = None
    log_level: Annotated[str | None, Meta(description="the services' log level")] = None


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

    @property
    def patterns(self) -> tuple[str, ...]:
        return (self.match,) if isinstance(self.match, str) else tuple(self.match)


class HostRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One ``[[host]]`` rule: a host's capacity in vCPUs is ``(cpus - reserve_cpus) × overcommit``, floored
    (``shared.pool``). The first rule whose ``match`` fits a host's name is its rule; a host no rule matches keeps
    the defaults (its source's CPUs, no reserve, overcommit 1)."""

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

    def __post_init__(self) -> None:
        patterns = self.patterns
        if not patterns or any(not p for p in patterns):
            raise ValueError("match needs at least one non-empty pattern")

    @property
    def patterns(self) -> tuple[str, ...]:
        return (self.match,) if isinstance(self.match, str) else tuple(self.match)


class ConfigFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole file: sections for the commands, and the ``[[vm]]`` rules in order."""

    service: ServiceSection = msgspec.field(default_factory=ServiceSection)
    simulator: SimulatorSection = msgspec.field(default_factory=SimulatorSection)
    collector: CollectorSection = msgspec.field(default_factory=CollectorSection)
    decider: DeciderSection = msgspec.field(default_factory=DeciderSection)
    actuator: ActuatorSection = msgspec.field(default_factory=ActuatorSection)
    agent: AgentSection = msgspec.field(default_factory=AgentSection)
    up: UpSection = msgspec.field(default_factory=UpSection)
    vm: list[VmRule] = []
    host: list[HostRule] = []


# The section each command reads, with [service] under it for the services.
SECTIONS: dict[str, type[Section]] = {
    "simulator": SimulatorSection,
    "collector": CollectorSection,
    "decider": DeciderSection,
    "actuator": ActuatorSection,
    "agent": AgentSection,
    "up": UpSection,
}
# Keys an environment variable also sets; the variable comes before the file (and the flag before both).
SERVICE_ENV = {
    "nats": "HOTPLUG_NATS_URL",
    "host": "HOTPLUG_HOST",
    "metrics_port": "HOTPLUG_METRICS_PORT",
    "metrics_addr": "HOTPLUG_METRICS_ADDR",
    "speed": "HOTPLUG_SPEED",
    "log_level": "HOTPLUG_LOG_LEVEL",
    "libvirt_uri": "HOTPLUG_LIBVIRT_URI",
}
UP_ENV = {"nats": "HOTPLUG_NATS_URL", "libvirt_uri": "HOTPLUG_LIBVIRT_URI"}
CONFIG_ENV = "HOTPLUG_CONFIG"


def env_of(command: str) -> dict[str, str]:
    """The environment variable of each key of ``command``'s section that has one."""
    return UP_ENV if command == "up" else SERVICE_ENV


# Keys that hold a path: relative paths are taken from the config file's folder, not the working directory.
PATH_KEYS = frozenset({"trace", "data_dir", "arrivals_file"})


def section_values(config: ConfigFile, command: str) -> dict[str, object]:
    """The keys the file sets for ``command`` ([service] first, then the command's own section), unset ones left
    out. Pure."""
    own: Section = getattr(config, command)
    values: dict[str, object] = {}
    if isinstance(own, ServiceSection):
        values.update(_set_fields(config.service))
    values.update(_set_fields(own))
    return values


def _set_fields(section: Section) -> dict[str, object]:
    return {name: value for name in section.__struct_fields__ if (value := getattr(section, name)) is not None}


def param_flags(params: Params) -> list[str]:
    """A ``param`` table as ``--param`` items: ``{"guard": {"max_changes": 2}}`` → ``["guard.max_changes=2"]``."""
    return [f"{scope}.{key}={_flag_value(value)}" for scope, keys in params.items() for key, value in keys.items()]


def _flag_value(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)
