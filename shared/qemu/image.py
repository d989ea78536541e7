"""The test guest: Debian's cloud kernel and busybox-static, unpacked from their packages (nothing installed),
with ``init.sh`` as /init and the kernel's virtio modules (for virtio-mem and the balloon), in a gzip'd newc
initramfs.

Built once into a cache directory named by a hash of its inputs (package versions, /init and ``LAYOUT``), so it
is rebuilt only when they change. Packages come from the machine's configured Debian archive (``apt-get
download``); ``dpkg-deb -x`` unpacks them.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shared.qemu import cpio, modules

log = logging.getLogger(__name__)

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
INIT = Path(__file__).with_name("init.sh")
COMMAND_TIMEOUT_S = 300.0
# What the initramfs holds beyond the packages and /init: a change here must rebuild cached images (it is hashed).
LAYOUT = "2: lib/modules/<module>.ko + lib/modules/load.order"
# Loaded by /init in dependency order: virtio_pci probes the devices, virtio_mem and virtio_balloon drive them.
GUEST_MODULES = ("virtio_pci", "virtio_balloon", "virtio_mem")


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hotplug-heaven" / "guest"


def _run(args: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{args[0]} not found: building the guest needs Debian's apt and dpkg") from exc
    if done.returncode != 0:
        raise ImageError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package the cloud meta-package depends on (e.g. linux-image-6.1.0-56-cloud-amd64)."""
    for line in _run(["apt-cache", "depends", KERNEL_META]).splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-") and name[12:13].isdigit():
            return name
    raise ImageError(f"cannot tell which kernel {KERNEL_META} depends on (run apt-get update first)")


def candidate_version(package: str) -> str:
    for line in _run(["apt-cache", "policy", package]).splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return version
    raise ImageError(f"no candidate version of {package} (run apt-get update first)")


def guest_modules(root: Path, release: str) -> dict[str, bytes]:
    """``GUEST_MODULES`` and what they depend on, from the unpacked kernel package at ``root``, in load order. Each
    must be built for ``release`` (the kernel's): a module of another build is refused by the guest's kernel."""
    tree = root / "lib" / "modules" / release
    found = {p.name.removesuffix(".ko"): p for p in tree.rglob("*.ko")}
    infos = {name: modules.modinfo(path.read_bytes()) for name, path in found.items() if "virtio" in name}
    deps = {n: modules.depends(i) for n, i in infos.items()}
    # another build may have some of them built in: nothing to load for those
    builtin_list = tree / "modules.builtin"
    builtin = (
        {Path(line).name.removesuffix(".ko") for line in builtin_list.read_text().split()}
        if builtin_list.exists()
        else set()
    )
    deps.update({name: [] for name in builtin})
    try:
        order = [name for name in modules.load_order(list(GUEST_MODULES), deps) if name not in builtin]
    except modules.ModuleError as exc:
        raise ImageError(f"kernel {release}: {exc}") from exc
    for name in order:
        if not infos[name].get("vermagic", "").startswith(release + " "):
            raise ImageError(f"module {name} was built for {infos[name].get('vermagic')!r}, not kernel {release}")
    return {name: found[name].read_bytes() for name in order}


def build_initramfs(busybox: bytes, init: bytes, kernel_modules: dict[str, bytes] | None = None) -> bytes:
    """The initramfs; ``kernel_modules`` (name → .ko, in load order) go to /lib/modules with their order."""
    kernel_modules = kernel_modules or {}
    entries = [cpio.directory(d) for d in ("bin", "dev", "lib", "lib/modules", "proc", "sys", "tmp")]
    entries += [cpio.file("bin/busybox", busybox, executable=True), cpio.file("init", init, executable=True)]
    entries += [cpio.file(f"lib/modules/{name}.ko", data) for name, data in kernel_modules.items()]
    entries.append(cpio.file("lib/modules/load.order", "".join(f"{n}\n" for n in kernel_modules).encode()))
    return gzip.compress(cpio.archive(entries), compresslevel=6, mtime=0)


def ensure_image(cache: Path | None = None) -> GuestImage:
    """The guest image, built into ``cache`` if it is not there yet."""
    cache = cache or default_cache()
    kernel_pkg = kernel_package()
    versions = f"{kernel_pkg}={candidate_version(kernel_pkg)} {BUSYBOX}={candidate_version(BUSYBOX)}"
    key = hashlib.sha256(versions.encode() + INIT.read_bytes() + LAYOUT.encode()).hexdigest()[:16]
    target = cache / key
    image = GuestImage(kernel=target / "vmlinuz", initrd=target / "initramfs.cpio.gz")
    if image.kernel.exists() and image.initrd.exists():
        return image
    log.info("building the guest image (%s) in %s", versions, target)
    work = cache / f"build-{key}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "debs").mkdir(parents=True)
    try:
        _run(["apt-get", "download", kernel_pkg, BUSYBOX], cwd=work / "debs")
        for deb in (work / "debs").glob("*.deb"):
            _run(["dpkg-deb", "-x", str(deb), str(work / "root")])
        vmlinuz = next((work / "root" / "boot").glob("vmlinuz-*"), None)
        busybox = work / "root" / "bin" / "busybox"
        if vmlinuz is None or not busybox.exists():
            raise ImageError("the packages did not contain a kernel and busybox")
        # the modules come from the same package as vmlinuz: vermagic must match (docs/hypervisors/qemu.md, Memory)
        kernel_modules = guest_modules(work / "root", vmlinuz.name.removeprefix("vmlinuz-"))
        staged = cache / f"stage-{key}-{os.getpid()}"
        staged.mkdir(parents=True)
        shutil.copyfile(vmlinuz, staged / "vmlinuz")
        initramfs = build_initramfs(busybox.read_bytes(), INIT.read_bytes(), kernel_modules)
        (staged / "initramfs.cpio.gz").write_bytes(initramfs)
        (staged / "inputs.txt").write_text(versions + "\n")
        try:
            staged.rename(target)  # atomic: a concurrent builder either wins or finds it done
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return image
