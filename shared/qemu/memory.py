"""The memory a test guest is started with: QEMU's arguments for boot RAM, a virtio-mem device and a balloon
(docs/hypervisors/qemu.md, Memory), checked before QEMU is run so a bad layout is refused in plain words."""

from __future__ import annotations

from shared.units import MIB

VMEM_ID = "vmem0"  # the virtio-mem device: /machine/peripheral/vmem0
BALLOON_ID = "balloon0"
VMEM_BLOCK_BYTES = 2 * MIB  # virtio-mem's default block on x86 (QEMU refuses a backend not a multiple of it)
MIN_BOOT_MB = 64


class MemoryLayoutError(ValueError):
    pass


def memory_options(memory_mb: int, max_memory_mb: int | None, plugged_mb: int, balloon: bool) -> list[str]:
    """QEMU's memory arguments; ``MemoryLayoutError`` for a layout QEMU would refuse."""
    if memory_mb < MIN_BOOT_MB:
        raise MemoryLayoutError(
            f"boot memory {memory_mb} MiB is too little for the guest: give at least {MIN_BOOT_MB} MiB"
        )
    args = ["-m", f"{memory_mb}M"]
    if max_memory_mb is not None:
        device_mb = max_memory_mb - memory_mb
        block_mb = VMEM_BLOCK_BYTES // MIB
        if device_mb <= 0 or device_mb % block_mb:
            raise MemoryLayoutError(
                f"the maximum memory ({max_memory_mb} MiB) must exceed the boot memory ({memory_mb} MiB) by a "
                f"multiple of {block_mb} MiB (virtio-mem's block)"
            )
        if not 0 <= plugged_mb <= device_mb or plugged_mb % block_mb:
            raise MemoryLayoutError(
                f"memory plugged at boot must be a multiple of {block_mb} MiB from 0 to {device_mb} MiB"
            )
        args = [
            "-m",
            f"{memory_mb}M,maxmem={max_memory_mb}M",
            "-object",
            f"memory-backend-ram,id={VMEM_ID}mem,size={device_mb}M",
            "-device",
            f"virtio-mem-pci,id={VMEM_ID},memdev={VMEM_ID}mem,node=0,requested-size={plugged_mb}M",
        ]
    elif plugged_mb:
        raise MemoryLayoutError("memory plugged at boot needs a virtio-mem device: give the maximum memory too")
    if balloon:
        args += ["-device", f"virtio-balloon-pci,id={BALLOON_ID},deflate-on-oom=on,free-page-reporting=on"]
    return args
