"""A stand-in for VirtualBox's ``VBoxManage``, for tests: VirtualBox cannot run on these machines.

It reproduces, for the commands the project uses, what ``docs/virtualbox.md`` (from VirtualBox 6.1.36 and
7.0.14 sources) documents: argument forms and both option spellings, outputs, exit codes, the exact error
texts with their Details/Context lines, the order of the checks (``controlvm``: find, running, missing
argument, the ``parseNum`` quirk that carries on with CPU 0, then the API checks), the settings file with
its ``<CpuTree>`` rewritten after each live change, and the guest's part in an unplug.

State lives in ``$FAKE_VBOX_HOME`` (one JSON file per VM plus its ``.vbox`` settings file).
``$FAKE_VBOX_VERSION`` (``7.0`` or ``6.1``) and ``$FAKE_VBOX_HOST`` (``linux`` or ``windows``) switch the
version- and host-specific texts. Every call is appended to ``$FAKE_VBOX_HOME/calls.log``.

A started VM is a real process named ``VBoxHeadless`` (``--comment <name> --startvm <uuid>``) with one
thread per configured vCPU named ``EMT-<i>``; the threads of attached CPUs burn CPU up to the VM's load
(set with :func:`set_load`), as a guest would. One Python process holds one core at most (the GIL).

Test helpers (not VBoxManage commands): :func:`create_vm`, :func:`set_load`, :func:`set_guest`,
:func:`set_guest_memory`.

**The memory balloon** (``controlvm <vm> guestmemoryballoon <MB>``); docs/virtualbox.md does not cover it, so this
follows the VirtualBox source (the 6.1/7.0 trees the doc names) and the manual:

* documented [src ``VBoxManageControlVM.cpp``]: the checks run find → not running → exactly one argument (else
  ``Incorrect number of parameters.``, 7.x as a syntax error with the logo and usage, exit 1) → the value parsed
  by ``RTStrToUInt32Ex(arg, NULL, 0, …)`` (decimal, ``0x`` hex, leading-0 octal; anything else, a sign or trailing
  text: ``Error parsing guest memory balloon size '<arg>'.``, 6.1 without the period and without usage, exit 1)
  → ``IGuest::COMSETTER(MemoryBalloonSize)``, which refuses a size ≥ 90 % of the VM's RAM (``VMMDEV_MAX_MEMORY_
  BALLOON(RAM) = 9 * RAM / 10``, integer MB) with ``Invalid memory balloon size: <n> MB (must be in range [0,
  <max>] MB)``, E_INVALIDARG [src ``MachineImpl.cpp``, ``VMMDev.h``]. Success prints nothing, exit 0. The value is
  MB; the manual: the balloon needs the Guest Additions, and "guestmemoryballoon" sets the size of the balloon, that
  is memory taken from the guest.
* documented [src ``VBoxManageInfo.cpp``]: ``showvminfo --machinereadable`` prints ``memory=<MB>`` and
  ``GuestMemoryBalloon=<MB>`` (the configured balloon), and ``GuestAdditionsRunLevel=<n>`` only while running.
* assumed: the Details/Context lines of the size refusal (``component SessionMachine, interface IMachine``: the
  setter's error is the machine's; the Context line number is made up, as the doc allows); the balloon is stored
  in the settings file as ``<Guest memoryBalloonSize="…"/>`` when non-zero; a guest with Additions inflates at once
  (VirtualBox moves it in the guest's time, visible only in the ``Guest/RAM/Usage/Balloon`` metric, which the
  stand-in serves with the metrics below); a guest without them (``set_guest(name, "none")``) reports run level 0
  and never inflates, yet the command succeeds (VirtualBox cannot tell).

**Metrics** (``metrics setup|query``, docs/virtualbox.md §7), for the guest's memory only:

* documented: ``setup [--period <sec>] [--samples <n>] [--list] [*|host|<vm> [<metric-list>]]`` matches *base*
  names (``Guest/RAM/Usage``), prints nothing and exits 0 (``--list``: the modified metrics, or ``No metrics match
  the specified filter!`` still with exit 0); ``--period``/``--samples`` take a separate value (``--period=5`` is
  read as the object), a bad one is ``Invalid value for 'period' parameter: '<arg>'``, exit 2; an unknown VM is
  ``Invalid machine name: '<arg>'``, exit 1. ``query [*|host|<vm> [<metric-list>]]`` prints the two header lines,
  then ``%-15s %-40s `` (object, metric) and the values oldest first joined by ``", "``, kB metrics as ``<n> kB``;
  a metric with no data yet still gets its line, without values; a VM not running gets no lines. Patterns take
  ``*``/``?`` and are case-sensitive; nothing is collected before ``setup``, and a VM's setup goes when it stops.
  Guest figures need the Guest Additions: a guest without them (``set_guest(name, "none")``) never has values.
* assumed: the Additions' first report is there at once after ``setup`` (VirtualBox: within the period), and the
  guest is steady, so the ``samples`` values shown are all its figures now. The guest (``set_guest_memory``): Total
  is the VM's RAM; Balloon is what the Additions inflated; Free is Total − used − Balloon and holds the cache (a Linux
  guest's Additions send MemFree + Buffers + Cached as free); Shared 0. Only the ``Guest/RAM/Usage/*`` metrics are
  served (no host, CPU, disk or network metrics: the project does not query them); ``list``, ``enable``,
  ``disable`` and ``collect`` are not served.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

API = {
    "invalidarg": ("NS_ERROR_INVALID_ARG", "E_INVALIDARG", "0x80070057"),
    "fail": ("NS_ERROR_FAILURE", "E_FAIL", "0x80004005"),
    "not_found": ("VBOX_E_OBJECT_NOT_FOUND", "VBOX_E_OBJECT_NOT_FOUND", "0x80bb0001"),
    "invalid_vm_state": ("VBOX_E_INVALID_VM_STATE", "VBOX_E_INVALID_VM_STATE", "0x80bb0002"),
    "vm_error": ("VBOX_E_VM_ERROR", "VBOX_E_VM_ERROR", "0x80bb0003"),
    "invalid_object_state": ("VBOX_E_INVALID_OBJECT_STATE", "VBOX_E_INVALID_OBJECT_STATE", "0x80bb0007"),
    "in_use": ("VBOX_E_OBJECT_IN_USE", "VBOX_E_OBJECT_IN_USE", "0x80bb000c"),
}
RUNNING_STATES = {"running", "paused"}


class Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def home() -> Path:
    return Path(os.environ["FAKE_VBOX_HOME"])


def version() -> str:
    return os.environ.get("FAKE_VBOX_VERSION", "7.0")


def windows() -> bool:
    return os.environ.get("FAKE_VBOX_HOST", "linux") == "windows"


def prog() -> str:
    return "VBoxManage.exe" if windows() else "VBoxManage"


def err(text: str) -> None:
    for line in text.split("\n"):
        sys.stderr.write(f"{prog()}: error: {line}\n")


def api_error(text: str, kind: str, component: str, interface: str, context: str, line: int, file: str) -> Exit:
    xpcom, win, value = API[kind]
    err(text)
    err(
        f"Details: code {win if windows() else xpcom} ({value}), component {component}, interface {interface}, "
        f"callee {'IUnknown' if windows() else 'nsISupports'}"
    )
    err(f'Context: "{context}" at line {line} of file {file}')
    return Exit(1)


# ---- state -------------------------------------------------------------------------------------------------


def _vm_files() -> list[Path]:
    return sorted((home() / "vms").glob("*.json"))


def load_vm(path: Path) -> dict[str, Any]:
    vm: dict[str, Any] = json.loads(path.read_text())
    return vm


def save_vm(vm: dict[str, Any]) -> None:
    (home() / "vms").mkdir(parents=True, exist_ok=True)
    path = home() / "vms" / f"{vm['uuid']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(vm))
    tmp.replace(path)
    write_settings(vm)


def write_settings(vm: dict[str, Any]) -> None:
    """The .vbox file: ``count`` only above 1, ``hotplug`` only when true, CpuTree lists attached CPUs."""
    attrs = (f' count="{vm["cpus"]}"' if vm["cpus"] > 1 else "") + (' hotplug="true"' if vm["hotplug"] else "")
    tree = "".join(f'<Cpu id="{i}"/>' for i in sorted(vm["attached"])) if vm["hotplug"] else ""
    cpu = f"<CPU{attrs}>" + (f"<CpuTree>{tree}</CpuTree>" if vm["hotplug"] else "") + "</CPU>"
    name = vm["name"].replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    balloon = vm.get("balloon", 0)
    guest = f'      <Guest memoryBalloonSize="{balloon}"/>\n' if balloon else ""
    Path(vm["cfgfile"]).parent.mkdir(parents=True, exist_ok=True)
    Path(vm["cfgfile"]).write_text(
        '<?xml version="1.0"?>\n<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">\n'
        f'  <Machine uuid="{{{vm["uuid"]}}}" name="{name}" OSType="Ubuntu_64">\n'
        f'    <Hardware>\n      {cpu}\n      <Memory RAMSize="{vm.get("memory", 1024)}"/>\n{guest}    </Hardware>\n'
        "  </Machine>\n</VirtualBox>\n"
    )


def find_vm(arg: str) -> dict[str, Any] | None:
    wanted = arg.strip("{}").lower()
    for path in _vm_files():
        vm = load_vm(path)
        if vm["name"] == arg or vm["uuid"] == wanted or vm["cfgfile"] == arg:
            # a VM whose process died is "aborted", as VBoxSVC would see it
            if vm["state"] in RUNNING_STATES and vm.get("pid") and not _alive(vm["pid"]):
                vm["state"] = "aborted"
                save_vm(vm)
            return vm
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def require_vm(arg: str, file: str, line: int) -> dict[str, Any]:
    vm = find_vm(arg)
    if vm is None:
        if re.fullmatch(r"\{?[0-9a-fA-F-]{36}\}?", arg):
            text = f"Could not find a registered machine with UUID {{{arg.strip('{}').lower()}}}"
        else:
            text = f"Could not find a registered machine named '{arg}'"
        raise api_error(
            text,
            "not_found",
            "VirtualBoxWrap",
            "IVirtualBox",
            "FindMachine(Bstr(a->argv[0]).raw(), machine.asOutParam())",
            line,
            file,
        )
    return vm


# ---- commands ----------------------------------------------------------------------------------------------


def cmd_list(args: list[str]) -> None:
    if not args or args[0] not in ("vms", "runningvms"):
        err("Unknown subcommand"), sys.exit(2)  # type: ignore[func-returns-value]
    for path in _vm_files():
        vm = find_vm(load_vm(path)["uuid"])
        assert vm is not None
        if args[0] == "vms" or vm["state"] in RUNNING_STATES:
            print(f'"{vm["name"]}" {{{vm["uuid"]}}}')


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_showvminfo(args: list[str]) -> None:
    if not args:
        err("Missing VM name"), sys.exit(2)  # type: ignore[func-returns-value]
    vm = require_vm(args[0], "VBoxManageInfo.cpp", 3115)
    out = [f"name={_q(vm['name'])}"]
    if version().startswith("7.0"):
        out.append("Encryption:     disabled")
    elif not version().startswith("6."):
        out.append('encryption="disabled"')
    out += [
        'groups="/"',
        'ostype="Ubuntu (64-bit)"',
        f"UUID={_q(vm['uuid'])}",
        f"CfgFile={_q(vm['cfgfile'])}",
        f"memory={vm.get('memory', 1024)}",
        f"cpus={vm['cpus']}",
        "cpuexecutioncap=100",
        'chipset="piix3"',
        'acpi="on"',
        'ioapic="on"',
        f"VMState={_q(vm['state'])}",
        f'VMStateChangeTime="{vm.get("changed", "")}"',
        f"GuestMemoryBalloon={vm.get('balloon', 0)}",
    ]
    if vm["state"] in RUNNING_STATES:
        out.append('SessionName="headless"')
        out.append(f"GuestAdditionsRunLevel={0 if vm.get('guest', 'additions') == 'none' else 2}")
    print("\n".join(out))


def _parse_cpu_number(text: str) -> int:
    """VBoxManage's parseNum(argv[2], 32, "CPU"): decimal 1..32, else complain and carry on with 0."""
    if re.fullmatch(r"[0-9]+", text) and 1 <= int(text) <= 32:
        return int(text)
    err(f"Invalid CPU number '{text}'.")
    return 0


def _api_plug(vm: dict[str, Any], cpu: int, context: str, line: int, file: str) -> None:
    if not vm["hotplug"]:
        raise api_error("CPU hotplug is not enabled", "invalidarg", "SessionMachine", "IMachine", context, line, file)
    if cpu >= vm["cpus"]:
        raise api_error(
            f"CPU id exceeds number of possible CPUs [0:{vm['cpus'] - 1}]",
            "invalidarg",
            "SessionMachine",
            "IMachine",
            context,
            line,
            file,
        )
    if cpu in vm["attached"]:
        raise api_error(f"CPU {cpu} is already attached", "in_use", "SessionMachine", "IMachine", context, line, file)


def _api_unplug(vm: dict[str, Any], cpu: int, context: str, line: int, file: str) -> None:
    if not vm["hotplug"]:
        raise api_error("CPU hotplug is not enabled", "invalidarg", "SessionMachine", "IMachine", context, line, file)
    if cpu >= 64:
        raise api_error(
            "CPU index exceeds maximum CPU count (must be in range [0:64])",
            "invalidarg",
            "SessionMachine",
            "IMachine",
            context,
            line,
            file,
        )
    if cpu not in vm["attached"]:
        raise api_error(f"CPU {cpu} is not attached", "not_found", "SessionMachine", "IMachine", context, line, file)
    if cpu == 0:
        raise api_error(
            "It is not possible to detach CPU 0", "invalidarg", "SessionMachine", "IMachine", context, line, file
        )


def cmd_controlvm(args: list[str]) -> None:
    file = "VBoxManageControlVM.cpp"
    if len(args) < 2:
        err("Not enough parameters.")
        raise Exit(2)
    vm = require_vm(args[0], file, 120)
    if vm["state"] not in RUNNING_STATES:
        err(f"Machine '{args[0]}' is not currently running" + ("" if version().startswith("6.") else "."))
        raise Exit(1)
    sub = args[1]
    if sub == "poweroff":
        _stop_process(vm)
        vm["state"] = "poweroff"
        vm["changed"] = _now()
        vm.pop("metrics", None)  # a VM's metrics are discarded when it stops
        save_vm(vm)
        sys.stderr.write("0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n")
        return
    if sub == "guestmemoryballoon":
        _balloon(vm, args, file)
        return
    if sub not in ("plugcpu", "unplugcpu"):
        err(f"Invalid parameter '{sub}'")
        raise Exit(1)
    if len(args) < 3:
        if version().startswith("6."):
            err(f"Missing argument to '{sub}'. Expected CPU number.")
        else:
            sys.stderr.write(_logo())
            err(f"Missing argument to '{sub}'.")
            sys.stderr.write("\nUsage:\n  VBoxManage controlvm <uuid|vmname> ...\n")
        raise Exit(1)
    cpu = _parse_cpu_number(args[2])
    old = version().startswith("6.")
    if vm["state"] == "paused":
        raise api_error(
            "Invalid machine state: Paused",
            "invalid_vm_state",
            "ConsoleWrap",
            "IConsole",
            "HotPlugCPU(n)" if sub == "plugcpu" else "HotUnplugCPU(n)",
            428,
            file,
        )
    if sub == "plugcpu":
        _api_plug(vm, cpu, "HotPlugCPU(n)", 440 if old else 428, file)
        vm["attached"] = sorted({*vm["attached"], cpu})
    else:
        _api_unplug(vm, cpu, "HotUnplugCPU(n)", 427 if old else 414, file)
        guest = vm.get("guest", "additions")
        if guest != "additions":
            if guest == "stuck":  # VirtualBox polls ~10 s for the guest; the stand-in waits less by default
                time.sleep(float(os.environ.get("FAKE_VBOX_STUCK_S", "1.0")))
            raise api_error(
                "Hot-Remove was aborted because the CPU may still be used by the guest",
                "vm_error",
                "ConsoleWrap",
                "IConsole",
                "HotUnplugCPU(n)",
                427 if old else 414,
                file,
            )
        vm["attached"] = sorted(set(vm["attached"]) - {cpu})
    save_vm(vm)


def _parse_uint32(text: str) -> int | None:
    """IPRT's RTStrToUInt32Ex(text, NULL, 0, …) == VINF_SUCCESS: base from the prefix, nothing after the digits."""
    match = re.fullmatch(r"\s*(?:(0[xX][0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))", text)
    if match is None:
        return None  # a sign, trailing text or nothing: a warning or an error status, not VINF_SUCCESS
    hexa, octal, decimal = match.groups()
    value = int(hexa, 16) if hexa else int(octal, 8) if octal else int(decimal)
    return value if value < 2**32 else None


def _balloon(vm: dict[str, Any], args: list[str], file: str) -> None:
    old = version().startswith("6.")
    if len(args) != 3:
        if old:
            sys.stderr.write(_logo() + "Usage:\n  VBoxManage controlvm <uuid|vmname> ...\n")
            sys.stderr.write("\nSyntax error: Incorrect number of parameters\n")
        else:
            sys.stderr.write(_logo())
            err("Incorrect number of parameters.")
            sys.stderr.write("\nUsage:\n  VBoxManage controlvm <uuid|vmname> guestmemoryballoon <balloon-size>\n")
        raise Exit(1)
    size = _parse_uint32(args[2])
    if size is None:
        if old:
            err(f"Error parsing guest memory balloon size '{args[2]}'")
        else:
            sys.stderr.write(_logo())
            err(f"Error parsing guest memory balloon size '{args[2]}'.")
            sys.stderr.write("\nUsage:\n  VBoxManage controlvm <uuid|vmname> guestmemoryballoon <balloon-size>\n")
        raise Exit(1)
    limit = 9 * vm.get("memory", 1024) // 10  # VMMDEV_MAX_MEMORY_BALLOON
    if size >= limit:
        raise api_error(
            f"Invalid memory balloon size: {size} MB (must be in range [0, {limit}] MB)",
            "invalidarg",
            "SessionMachine",
            "IMachine",
            "COMSETTER(MemoryBalloonSize)(uVal)",
            1126 if old else 1418,
            file,
        )
    vm["balloon"] = size
    if vm.get("guest", "additions") != "none":
        vm["guest_balloon"] = size  # the Additions inflate it; without them the guest never does
    save_vm(vm)


GUEST_RAM_BASE = "Guest/RAM/Usage"
GUEST_RAM = ("Total", "Free", "Balloon", "Shared", "Cache")  # in the order VirtualBox registers them
VM_BASE_METRICS = ("CPU/Load", "RAM/Usage", "Disk/Usage", "Net/Rate", "Guest/CPU/Load", GUEST_RAM_BASE)
METRICS_HEADER = f"{'Object':<15} {'Metric':<40} Values\n{'-' * 15} {'-' * 40} {'-' * 44}\n"


def _pattern(text: str) -> re.Pattern[str]:
    """One metric pattern: ``*`` and ``?`` are wildcards, the rest must match exactly (case-sensitive)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text))


def _matches(patterns: list[re.Pattern[str]], name: str) -> bool:
    return any(p.fullmatch(name) for p in patterns)


def _metric_targets(obj: str) -> list[dict[str, Any]]:
    """The running VMs ``obj`` names (``*``: all of them, ``host``: none); an unknown VM is an error."""
    if obj == "host":
        return []
    if obj == "*":
        vms = [find_vm(load_vm(path)["uuid"]) for path in _vm_files()]
        return [vm for vm in vms if vm is not None and vm["state"] in RUNNING_STATES]
    vm = find_vm(obj)
    if vm is None:
        err(f"Invalid machine name: '{obj}'")
        raise Exit(1)
    return [vm] if vm["state"] in RUNNING_STATES else []


def _guest_ram_kb(vm: dict[str, Any]) -> dict[str, int]:
    """The guest's memory figures as its Additions would report them now (kB)."""
    total = vm.get("memory", 1024) * 1024
    balloon = vm.get("guest_balloon", 0) * 1024
    free = max(0, total - vm.get("guest_used_mb", 256) * 1024 - balloon)
    cache = min(free, vm.get("guest_cache_mb", 128) * 1024)
    return {"Total": total, "Free": free, "Balloon": balloon, "Shared": 0, "Cache": cache}


def cmd_metrics(args: list[str]) -> None:
    sub, rest = args[0], args[1:]
    if sub not in ("setup", "query"):
        err(f"the stand-in serves 'metrics setup' and 'metrics query' only, not '{sub}'")
        raise Exit(2)
    period, samples, listing, positional = 1, 1, False, []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if sub == "setup" and arg in ("--period", "--samples"):
            value = rest[i + 1] if i + 1 < len(rest) else ""
            if not re.fullmatch(r"[0-9]+", value):
                err(f"Invalid value for '{arg[2:]}' parameter: '{value}'")
                raise Exit(2)
            period, samples = (int(value), samples) if arg == "--period" else (period, int(value))
            i += 2
            continue
        if sub == "setup" and arg == "--list":
            listing = True
        else:
            positional.append(arg)
        i += 1
    obj = positional[0] if positional else "*"
    patterns = [_pattern(p) for p in (positional[1] if len(positional) > 1 else "*").split(",")]
    targets = _metric_targets(obj)
    if sub == "setup":
        modified = [(vm, base) for vm in targets for base in VM_BASE_METRICS if _matches(patterns, base)]
        for vm in {vm["uuid"]: vm for vm, base in modified if base == GUEST_RAM_BASE}.values():
            vm["metrics"] = {"period": period, "samples": samples}
            save_vm(vm)
        if listing:
            if not modified:
                err("No metrics match the specified filter!")
                return
            print("The following metrics were modified:\n\nObject     Metric\n---------- --------------------")
            for vm, base in modified:
                print(f"{vm['name']:<10} {base:<20}")
            print()
        return
    out = [METRICS_HEADER]
    for vm in targets:
        collected = vm.get("metrics") is not None and vm.get("guest", "additions") != "none"
        figures = _guest_ram_kb(vm)
        for part in GUEST_RAM:
            name = f"{GUEST_RAM_BASE}/{part}"
            if _matches(patterns, name):
                values = [f"{figures[part]} kB"] * (vm["metrics"]["samples"] if collected else 0)
                out.append(f"{vm['name']:<15} {name:<40} " + ", ".join(values) + "\n")
    sys.stdout.write("".join(out))


def _logo() -> str:
    if version().startswith("6."):
        return (
            "Oracle VM VirtualBox Command Line Management Interface Version 6.1.36\n"
            "(C) 2005-2022 Oracle Corporation\nAll rights reserved.\n\n"
        )
    return (
        "Oracle VM VirtualBox Command Line Management Interface Version 7.0.14\n"
        "Copyright (C) 2005-2024 Oracle and/or its affiliates\n\n"
    )


OPTION_SPELLINGS = {
    "--cpus": "cpus",
    "--cpuhotplug": "hotplug",
    "--cpu-hotplug": "hotplug",
    "--plugcpu": "plug",
    "--plug-cpu": "plug",
    "--unplugcpu": "unplug",
    "--unplug-cpu": "unplug",
}
NEW_ONLY = {"--cpu-hotplug", "--plug-cpu", "--unplug-cpu"}


def cmd_modifyvm(args: list[str]) -> None:
    file = "VBoxManageModifyVM.cpp"
    if not args:
        err("Not enough parameters.")
        raise Exit(2)
    vm = require_vm(args[0], file, 630)
    if vm["state"] in RUNNING_STATES:
        raise api_error(
            f"The machine '{vm['name']}' is already locked for a session (or being unlocked)",
            "invalid_object_state",
            "MachineWrap",
            "IMachine",
            "LockMachine(a->session, LockType_Write)",
            641,
            file,
        )
    options: list[tuple[str, str]] = []
    rest = args[1:]
    i = 0
    while i < len(rest):
        raw = rest[i]
        name, _, inline = raw.partition("=") if raw.startswith("--") and "=" in raw else (raw, "", "")
        if name not in OPTION_SPELLINGS or (name in NEW_ONLY and version().startswith("6.")):
            err(f"Unknown option: {raw}")
            raise Exit(1)
        if inline:
            value = inline
        else:
            i += 1
            if i >= len(rest):
                err(f"Missing value for option: {name}")
                raise Exit(1)
            value = rest[i]
        options.append((OPTION_SPELLINGS[name], value))
        i += 1
    changed = dict(vm)
    changed["attached"] = list(vm["attached"])
    for key, value in options:  # applied in order; the first failure saves nothing
        if key == "cpus":
            count = int(value)
            if not 1 <= count <= 64:
                raise api_error(
                    f"Invalid virtual CPU count: {count} (must be in range [1, 64])",
                    "invalidarg",
                    "SessionMachine",
                    "IMachine",
                    "COMSETTER(CPUCount)(ValueUnion.u32)",
                    700,
                    file,
                )
            if changed["hotplug"] and any(c >= count for c in changed["attached"]):
                raise api_error(
                    f"There is still a CPU attached to socket {count}.Detach the CPU before removing the socket",
                    "invalidarg",
                    "SessionMachine",
                    "IMachine",
                    "COMSETTER(CPUCount)(ValueUnion.u32)",
                    700,
                    file,
                )
            changed["cpus"] = count
        elif key == "hotplug":
            if value.lower() not in ("on", "off"):
                err(f"Unknown option: {value}")
                raise Exit(1)
            on = value.lower() == "on"
            if on and not changed["hotplug"]:
                changed["attached"] = list(range(changed["cpus"]))
            if not on and changed["hotplug"] and sorted(changed["attached"]) != list(range(changed["cpus"])):
                raise api_error(
                    "CPU hotplug can't be disabled because the maximum number of CPUs is not equal "
                    "to the amount of CPUs attached",
                    "invalidarg",
                    "SessionMachine",
                    "IMachine",
                    "COMSETTER(CPUHotPlugEnabled)(ValueUnion.f)",
                    716,
                    file,
                )
            changed["hotplug"] = on
        elif key == "plug":
            cpu = int(value)
            _api_plug(changed, cpu, "HotPlugCPU(ValueUnion.u32)", 725, file)
            changed["attached"] = sorted({*changed["attached"], cpu})
        elif key == "unplug":
            cpu = int(value)
            _api_unplug(changed, cpu, "HotUnplugCPU(ValueUnion.u32)", 735, file)
            changed["attached"] = sorted(set(changed["attached"]) - {cpu})
    save_vm(changed)


def cmd_createvm(args: list[str]) -> None:
    name = args[args.index("--name") + 1] if "--name" in args else None
    if not name:
        err("Parameter --name is required")
        raise Exit(1)
    create_vm(name)
    vm = find_vm(name)
    assert vm is not None
    print(f"Virtual machine '{name}' is created and registered.\nUUID: {vm['uuid']}\nSettings file: '{vm['cfgfile']}'")


def cmd_startvm(args: list[str]) -> None:
    if not args:
        err("Not enough parameters.")
        raise Exit(2)
    vm = require_vm(args[0], "VBoxManageMisc.cpp", 850)
    if vm["state"] in RUNNING_STATES:
        err(f"The machine '{vm['name']}' is already locked by a session (or being locked or unlocked)")
        raise Exit(1)
    print(f'Waiting for VM "{vm["name"]}" to power on...')
    vm["pid"] = _start_process(vm)
    vm.pop("metrics", None)
    vm["state"] = "running"
    vm["changed"] = _now()
    save_vm(vm)
    print(f'VM "{vm["name"]}" has been successfully started.')


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000", time.gmtime())


def _start_process(vm: dict[str, Any]) -> int:
    binary = home() / "bin" / "VBoxHeadless"
    binary.parent.mkdir(parents=True, exist_ok=True)
    if not binary.exists():
        binary.symlink_to(sys.executable)
    state = home() / "vms" / f"{vm['uuid']}.json"
    proc = subprocess.Popen(
        [
            str(binary),
            str(HERE / "vbox_vm_process.py"),
            str(state),
            "--comment",
            vm["name"],
            "--startvm",
            vm["uuid"],
            "--vrde",
            "config",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc.pid


def _stop_process(vm: dict[str, Any]) -> None:
    pid = vm.get("pid")
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.02)


# ---- helpers for tests -------------------------------------------------------------------------------------


def create_vm(name: str, cpus: int = 1, memory_mb: int = 1024) -> str:
    vm_uuid = str(uuidlib.uuid4())
    safe = re.sub(r"[/\\]", "_", name)
    folder = home() / "VirtualBox VMs" / safe
    save_vm(
        {
            "name": name,
            "uuid": vm_uuid,
            "state": "poweroff",
            "cpus": cpus,
            "memory": memory_mb,
            "balloon": 0,
            "hotplug": False,
            "attached": list(range(cpus)),
            "guest": "additions",
            "load": 0.0,
            "cfgfile": str(folder / f"{safe}.vbox"),
            "changed": _now(),
        }
    )
    return vm_uuid


def _update(name: str, **fields: Any) -> None:
    vm = find_vm(name)
    if vm is None:
        raise KeyError(name)
    vm.update(fields)
    save_vm(vm)


def set_load(name: str, cores: float) -> None:
    """The guest's demand in cores; the VM process burns up to this much on its attached vCPUs."""
    _update(name, load=cores)


def set_guest_memory(name: str, used_mb: int, cache_mb: int = 128) -> None:
    """What the guest's own work uses and its page cache (MB), as its Guest Additions report them."""
    _update(name, guest_used_mb=used_mb, guest_cache_mb=cache_mb)


def set_guest(name: str, mode: str) -> None:
    """``additions`` (cooperates), ``none`` (unplug refused at once) or ``stuck`` (refused after a wait)."""
    assert mode in ("additions", "none", "stuck")
    _update(name, guest=mode)


COMMANDS = {
    "list": cmd_list,
    "showvminfo": cmd_showvminfo,
    "controlvm": cmd_controlvm,
    "modifyvm": cmd_modifyvm,
    "createvm": cmd_createvm,
    "startvm": cmd_startvm,
    "metrics": cmd_metrics,
}


def main(argv: list[str]) -> int:
    home().mkdir(parents=True, exist_ok=True)
    with (home() / "calls.log").open("a") as log:
        log.write(json.dumps(argv) + "\n")
    args = [a for a in argv if a not in ("-q", "--nologo")]
    if args in (["--version"], ["-V"]):
        print("7.0.14r161095" if not version().startswith("6.") else "6.1.36r152435")
        return 0
    if not args:
        sys.stdout.write(_logo() + "Usage:\n  VBoxManage [<general option>] <command>\n")
        return 1
    command = COMMANDS.get(args[0])
    if command is None:
        sys.stderr.write(_logo())
        err(f"Invalid command '{args[0]}'")
        return 2
    if len(args) == 1:
        sys.stdout.write(f"Usage:\n  VBoxManage {args[0]} ...\n")
        return 1
    try:
        command(args[1:])
    except Exit as exc:
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
