"""The one test and benchmark harness: child processes, metric scraping, polling, bus recording and fault
injection, shared by ``hotplug chaos``, ``hotplug bench`` and the tests (it lives in the product so the first
two can use it)."""
