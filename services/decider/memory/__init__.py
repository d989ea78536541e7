"""The memory decision rule: pure, per VM and per sample, apart from the CPU policies because its harm is not theirs.

A CPU shortfall slows work down; a memory shortfall swaps or OOM-kills it, and a virtio-mem shrink below the guest's
working set kills processes outright (``../shared/docs/memory.md`` §7). So the rule grows at once and shrinks only
slowly, on a window of evidence (``policy``); its parameters are ``settings``, its running window max ``window``.
"""

from services.decider.memory.policy import MemoryDecision, MemoryObservation, MemoryPolicy, MemoryState
from services.decider.memory.settings import MemorySettings, MemorySettingsError, memory_settings

__all__ = [
    "MemoryDecision",
    "MemoryObservation",
    "MemoryPolicy",
    "MemorySettings",
    "MemorySettingsError",
    "MemoryState",
    "memory_settings",
]
