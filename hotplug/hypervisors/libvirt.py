"""libvirt as a hypervisor: ``up`` watches and resizes the running domains, or ``--vms`` test domains it starts for
the run; ``hotplug libvirt start|stop|set|load|status|prepare`` are its admin commands, through the same connection
and driver the services use.

``prepare`` sets up a user's own (shut off) domain once: the maximum, the boot count, a hotpluggable layout and the
project's settings in the domain's metadata. ``start``/``stop`` make and destroy transient test domains from the
project's guest image, for demos and tests; ``stop`` refuses a domain it did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from hotplug.cli.common import Handler, Subparsers, add_command, mebibytes
from hotplug.hypervisors import Hypervisor
from hotplug.hypervisors.resize import resize
from shared.config.schema import LibvirtUri
from shared.libvirt.connection import Connection, LibvirtMissing
from shared.libvirt.domain import (
    SETTINGS_NS,
    SETTINGS_PREFIX,
    Settings,
    classify,
    hotpluggable_layout,
    parse_domain,
    settings_xml,
)
from shared.libvirt.guest import (
    BOOT_TIMEOUT_S,
    LIFETIME_MAXIMUM,
    GuestChannel,
    check_memory,
    domain_xml,
    guest_dir,
    started_by_us,
)
from shared.qemu.image import ImageError, ensure_image
from shared.qemu.vm import parse_cpu_list

if TYPE_CHECKING:  # the record is read by every command's parser: up's own modules load when up runs
    from hotplug.up import UpOptions

STATES = {
    0: "no state",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shut off",
    6: "crashed",
    7: "pmsuspended",
}


class LibvirtCommandError(Exception):
    """A failure to report as ``<code>: <message>`` (a contract code, or "" for a refusal) and exit 1."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _fail(conn: Connection, exc: Any) -> LibvirtCommandError:
    return LibvirtCommandError(classify(exc.get_error_code(), str(exc)).value, str(exc))


def start(
    conn: Connection,
    name: str,
    max_vcpus: int,
    vcpus: int,
    memory_mb: int,
    root: Path | None = None,
    boot_timeout_s: float = BOOT_TIMEOUT_S,
    max_memory_mb: int | None = None,
) -> int:
    if not 1 <= vcpus <= max_vcpus <= 255:
        raise LibvirtCommandError(
            "out-of-bounds", f"need 1 <= --vcpus <= --max-vcpus <= 255, got {vcpus} and {max_vcpus}"
        )
    try:
        check_memory(memory_mb, max_memory_mb)
    except ValueError as exc:
        raise LibvirtCommandError("out-of-bounds", str(exc)) from exc
    image = ensure_image()
    directory = guest_dir(name, root)
    libvirt = conn.libvirt
    try:
        conn.run(lambda c: c.lookupByName(name))
        raise LibvirtCommandError("", f"a domain named {name!r} exists already")
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise _fail(conn, exc) from exc
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "name").write_text(name)
    xml = domain_xml(
        name, image, directory, max_vcpus=max_vcpus, vcpus=vcpus, memory_mb=memory_mb, max_memory_mb=max_memory_mb
    )
    try:
        dom = conn.run(lambda c: c.createXML(xml, 0))
    except libvirt.libvirtError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise _fail(conn, exc) from exc
    channel = GuestChannel(directory / "ctl.log", directory / "ctl.sock")
    deadline = time.monotonic() + boot_timeout_s
    while not channel.ready():
        if time.monotonic() > deadline:
            _destroy(conn, name)
            raise LibvirtCommandError(
                "timeout", f"guest {name!r} did not boot within {boot_timeout_s:.0f} s; see {directory / 'console.log'}"
            )
        time.sleep(0.05)
    memory = f", {memory_mb} of {max_memory_mb} MiB (virtio-mem + balloon)" if max_memory_mb else ""
    print(f"{name}: running (domain id {dom.ID()}), {vcpus} of {max_vcpus} vCPUs{memory}; files in {directory}")
    return 0


def _destroy(conn: Connection, name: str) -> None:
    libvirt = conn.libvirt
    try:
        conn.run(lambda c: c.lookupByName(name).destroy())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            raise


def _settings_text(dom: Any, libvirt: Any, flags: int = 0) -> str | None:
    try:
        return str(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, SETTINGS_NS, flags))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise


def stop(conn: Connection, name: str, root: Path | None = None) -> int:
    libvirt = conn.libvirt
    try:
        dom = conn.run(lambda c: c.lookupByName(name))
        if not started_by_us(_settings_text(dom, libvirt)):
            raise LibvirtCommandError(
                "", f"domain {name!r} was not started by hotplug libvirt start: left alone (virsh shutdown stops it)"
            )
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as exc:
        raise _fail(conn, exc) from exc
    shutil.rmtree(guest_dir(name, root), ignore_errors=True)
    print(f"{name}: stopped")
    return 0


def set_vcpus(conn: Connection, name: str, target: int) -> int:
    if target < 1:
        print(f"cpu0: vCPU 0 never leaves: {name!r} keeps at least 1 vCPU, not {target}", file=sys.stderr)
        return 1

    async def run() -> int:
        from services.actuator.drivers.libvirt import LibvirtDriver

        driver = LibvirtDriver(connection=conn)
        return await resize(driver, name, target)

    return asyncio.run(run())


def load(conn: Connection, name: str, busy: int) -> int:
    libvirt = conn.libvirt
    try:
        info = parse_domain(conn.run(lambda c: c.lookupByName(name).XMLDesc(0)))
    except libvirt.libvirtError as exc:
        raise _fail(conn, exc) from exc
    if info.domain_id < 0:
        raise LibvirtCommandError("vm-not-running", f"domain {name!r} is not running")
    if info.control_socket is None:
        raise LibvirtCommandError("unknown", f"domain {name!r} is not the project's test guest (no control port)")
    GuestChannel(info.control_log or "", info.control_socket).send(f"busy {busy}")
    print(f"{name}: {busy} busy loop(s)")
    return 0


def _guest_online(conn: Connection, name: str, info: Any) -> int | None:
    """The guest's own count: a fresh STAT line of the test guest, or the guest agent; None if it cannot tell."""
    if info.control_log is not None:
        channel = GuestChannel(info.control_log)
        if channel.ready():
            stat = channel.fresh_stat()
            return len(stat.online) if stat is not None else None
    try:
        answer = conn.run(lambda c: c.lookupByName(name).guestVcpus())
    except conn.libvirt.libvirtError:
        return None
    if not answer or "online" not in answer:
        return None
    return len(parse_cpu_list(str(answer["online"])))


def _row(conn: Connection, dom: Any) -> dict[str, Any]:
    libvirt = conn.libvirt
    name = dom.name()
    row: dict[str, Any] = {"name": name, "uuid": dom.UUIDString()}
    try:
        state = dom.state()[0]
        row["state"] = STATES.get(state, str(state))
        info = parse_domain(dom.XMLDesc(0))
        row.update(
            {
                "type": info.kind,
                "vcpus": info.online if state == 1 else None,
                "min_vcpus": info.min_vcpus,
                "max_vcpus": info.max_vcpus,
                "domain_maximum": info.maximum,
                "enabled": info.settings.enabled,
                "started_by_hotplug": started_by_us(_settings_text(dom, libvirt)),
            }
        )
        if state == 1:
            row["guest_online_vcpus"] = _guest_online(conn, name, info)
            row["hotplug_adds_left"] = info.adds_left()
    except libvirt.libvirtError as exc:
        row.update({"error": classify(exc.get_error_code(), str(exc)).value, "message": str(exc)})
    return row


def status(conn: Connection, as_json: bool) -> int:
    try:
        domains = conn.run(lambda c: c.listAllDomains(0))
    except conn.libvirt.libvirtError as exc:
        raise _fail(conn, exc) from exc
    # Each running test guest is asked for a fresh count (up to a second): all at once.
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = sorted(pool.map(lambda d: _row(conn, d), domains), key=lambda r: str(r["name"]))
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("name", "state", "type", "vCPUs", "online in guest", "min", "max", "hot-adds left", "enabled"):
        table.add_column(column)
    for r in rows:
        if "error" in r:
            table.add_row(str(r["name"]), f"error: {r['error']}", "", "", "", "", "", "", str(r["message"]))
            continue
        table.add_row(
            *(
                ("" if r.get(k) is None else str(r.get(k)))
                for k in (
                    "name",
                    "state",
                    "type",
                    "vcpus",
                    "guest_online_vcpus",
                    "min_vcpus",
                    "max_vcpus",
                    "hotplug_adds_left",
                    "enabled",
                )
            )
        )
    Console().print(table)
    return 0


def prepare(conn: Connection, name: str, max_vcpus: int, start_vcpus: int | None, min_vcpus: int) -> int:
    """One-time set-up of a shut-off domain: maximum, boot count, hotpluggable layout, settings metadata."""
    boot = max_vcpus if start_vcpus is None else start_vcpus
    if not 1 <= min_vcpus <= boot <= max_vcpus <= 255:
        raise LibvirtCommandError(
            "out-of-bounds",
            f"need 1 <= --min-vcpus <= --start-vcpus <= --max-vcpus <= 255, got {min_vcpus}, {boot} and {max_vcpus}",
        )
    libvirt = conn.libvirt
    config = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    try:
        dom = conn.run(lambda c: c.lookupByName(name))
        if dom.isActive():
            raise LibvirtCommandError(
                "", f"domain {name!r} is running; shut it down first (virsh shutdown), then run this again"
            )
        if not dom.isPersistent():
            raise LibvirtCommandError("", f"domain {name!r} is transient: nothing to prepare")
        info = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        # Under TCG each run allows <vcpu> maximum - boot vCPUs hot-adds: a large maximum, our bound in metadata.
        maximum = max(max_vcpus, LIFETIME_MAXIMUM) if info.tcg else max_vcpus
        if boot <= info.maximum:
            dom.setVcpusFlags(boot, config)  # first, so the maximum may shrink below the old count
        dom.setVcpusFlags(maximum, config | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
        dom.setVcpusFlags(boot, config)
        conn.run(lambda c: c.defineXML(hotpluggable_layout(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), boot)))
        dom = conn.run(lambda c: c.lookupByName(name))
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            settings_xml(Settings(enabled=True, min_vcpus=min_vcpus, max_vcpus=max_vcpus)),
            SETTINGS_PREFIX,
            SETTINGS_NS,
            config,
        )
        info = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    except libvirt.libvirtError as exc:
        raise _fail(conn, exc) from exc
    print(
        f"{name}: boots with {info.online} vCPUs, may grow to {max_vcpus} (domain maximum {info.maximum}"
        f"{', large for the TCG hot-add budget' if info.tcg and info.maximum > max_vcpus else ''}), "
        f"hotpluggable: {', '.join(str(v.id) for v in info.vcpus if v.hotpluggable and v.id < max_vcpus)}"
    )
    return 0


# --- hotplug up ---------------------------------------------------------------------------------------------------

log = logging.getLogger(__name__)

DIR_ENV = "HOTPLUG_LIBVIRT_DIR"  # where the source and the driver find the run's test domains' files


class LibvirtUp(msgspec.Struct, frozen=True):
    """``up``'s options for libvirt, named as their flags (the source's and the driver's config take the same)."""

    libvirt_uri: LibvirtUri = None  # None: $HOTPLUG_LIBVIRT_URI, else qemu:///system


def service_args(service: str, options: UpOptions) -> list[str]:
    """The URI, for the collector's source and the actuator's driver (their own default otherwise)."""
    uri = HYPERVISOR.own(options).libvirt_uri
    return ["--libvirt-uri", uri] if uri and service in ("collector", "actuator") else []


@contextlib.asynccontextmanager
async def provision(options: UpOptions, data_dir: Path) -> AsyncIterator[Mapping[str, str]]:
    """``--vms`` transient test domains with 1 vCPU each (default none: the running domains are the run's), started
    in parallel, all or none; destroyed when the run ends."""
    root = data_dir / "libvirt"
    uri = HYPERVISOR.own(options).libvirt_uri
    names = await _start_domains(uri, options.vms or 0, options.max_vcpus, root)
    try:
        yield {DIR_ENV: str(root)}
    finally:
        if names:
            await asyncio.to_thread(_stop_domains, uri, names, root)


async def _start_domains(uri: str | None, count: int, max_vcpus: int, root: Path) -> list[str]:
    if not count:
        return []
    await asyncio.to_thread(ensure_image)
    names = [f"vm-{i + 1:02d}" for i in range(count)]
    conn = Connection(uri)
    try:
        started = await asyncio.gather(
            *(asyncio.to_thread(start, conn, name, max_vcpus, 1, 256, root) for name in names),
            return_exceptions=True,
        )
    finally:
        conn.close()
    failures = [s for s in started if isinstance(s, BaseException)]
    ok = [name for name, s in zip(names, started, strict=True) if not isinstance(s, BaseException)]
    if failures:
        await asyncio.to_thread(_stop_domains, uri, ok, root)
        raise failures[0]
    return names


def _stop_domains(uri: str | None, names: list[str], root: Path) -> None:
    conn = Connection(uri)
    try:
        for name in names:
            try:
                stop(conn, name, root)
            except Exception as exc:  # stop the others all the same
                log.warning("could not stop libvirt domain %s: %s", name, exc)
    finally:
        conn.close()


# --- hotplug libvirt ... ------------------------------------------------------------------------------------------


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    from hotplug.cli.hypervisors import guest_commands

    lv = sub.add_parser("libvirt", help="libvirt domains: prepare, status, resize now; test domains for demos")
    lv.add_argument("--uri", default=None, help="libvirt URI ($HOTPLUG_LIBVIRT_URI; default qemu:///system)")
    lsub = lv.add_subparsers(dest="libvirt_command", required=True)
    guest_commands(
        lsub,
        _connected(lambda c, a: start(c, a.name, a.max_vcpus, a.vcpus, a.memory, max_memory_mb=a.max_memory)),
        _connected(lambda c, a: set_vcpus(c, a.name, a.vcpus)),
        _connected(lambda c, a: load(c, a.name, a.busy)),
        start="start a transient test domain from the project's guest image",
        resize="resize a running domain now",
        load="test domains: run N busy loops in the guest (0 stops them)",
    )
    lsub.choices["start"].add_argument(
        "--max-memory",
        type=mebibytes,
        default=None,
        help="guest memory may grow live to this size (e.g. 2GiB; a bare number is MiB): adds virtio-mem and a "
        "balloon; --memory is then the boot RAM",
    )
    lstop = add_command(
        lsub,
        "stop",
        _connected(lambda c, a: stop(c, a.name)),
        help="destroy a test domain started by 'hotplug libvirt start'",
    )
    lstop.add_argument("name")
    lstatus = add_command(
        lsub,
        "status",
        _connected(lambda c, a: status(c, a.json)),
        help="every domain: state, vCPUs as libvirt and as the guest sees them",
    )
    lstatus.add_argument("--json", action="store_true")
    lprep = add_command(
        lsub,
        "prepare",
        _connected(lambda c, a: prepare(c, a.name, a.max_vcpus, a.start_vcpus, a.min_vcpus)),
        help="one-time set-up of a shut-off domain for hot-plug",
    )
    lprep.add_argument("name")
    lprep.add_argument("--max-vcpus", type=int, required=True)
    lprep.add_argument("--start-vcpus", type=int, default=None)
    lprep.add_argument("--min-vcpus", type=int, default=1)


def _connected(work: Callable[[Connection, argparse.Namespace], int]) -> Handler:
    """A command run on a connection to ``--uri``; its own failures print one line and exit 1, as virsh's do."""

    def handler(args: argparse.Namespace) -> int:
        try:
            conn = Connection(args.uri)
            try:
                return work(conn, args)
            finally:
                conn.close()
        except LibvirtCommandError as exc:
            print(f"{exc.code or f'hotplug libvirt {args.libvirt_command}'}: {exc.message}", file=sys.stderr)
            return 1
        except (LibvirtMissing, ImageError) as exc:
            print(f"hotplug libvirt {args.libvirt_command}: {exc}", file=sys.stderr)
            return 1

    return handler


ORDER = 40

HYPERVISOR: Hypervisor[LibvirtUp] = Hypervisor(
    name="libvirt",
    summary="libvirt: the running domains, or --vms test domains started for the run",
    vms="test domains to start for the run (default: none, the running domains are used)",
    options=LibvirtUp,
    service_args=service_args,
    provision=provision,
    admin=register,
)
