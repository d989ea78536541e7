"""Moved to ``hotplug.harness.recorder``; this name stays so that code written against it keeps importing."""

from hotplug.harness.recorder import BusWatcher

__all__ = ["BusWatcher"]
