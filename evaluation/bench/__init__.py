"""``hotplug bench``: benchmarks that print JSON. Targets live here and in docs/performance.md, never in tests."""
