"""``hotplug bench``: benchmarks that print JSON. Targets live here and in the README, never in tests."""
