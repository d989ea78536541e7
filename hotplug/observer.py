"""Moved to ``hotplug.harness.recorder`` (``Observer`` is its ``Recorder``); this name stays so that code written
against it keeps importing."""

from hotplug.harness.recorder import Recorder, hypervisor_ops, settle, stored_events

Observer = Recorder

__all__ = ["Observer", "Recorder", "hypervisor_ops", "settle", "stored_events"]
