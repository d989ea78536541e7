"""``hotplug bench``: benchmarks that print JSON. Targets live here and in docs/performance.md, never in tests."""

# The VMs ``hotplug bench loop`` can put a load step on (its ``--guest``): read by the command line's parser,
# so it lives here, away from the benchmark's own imports.
LOOP_GUESTS = ("simulator", "qemu", "libvirt")
# The guests ``hotplug bench memory`` can measure (its ``--guest``): only real ones move real memory.
MEMORY_GUESTS = ("qemu",)
