"""Reading a service's Prometheus ``/metrics`` endpoint: every sample, or one metric's total over its labels."""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """All samples of an exposition text, keyed by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    """All samples of a /metrics endpoint; raises ``OSError`` while nothing listens there."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (the services' loopback port)
        return parse(response.read().decode())


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and all((k, v) in sample_labels for k, v in labels.items())
    )


def metric(url: str, name: str, **labels: str) -> float:
    """One metric's total at ``url`` (see ``total``); blocking: from a coroutine, use ``metric_async``.

    Only that metric is asked for (prometheus_client's ``name[]`` filter): a decider with 10,000 VMs has a series
    per VM, and rendering and parsing them all at every look took the CPU a benchmark was measuring."""
    separator = "&" if "?" in url else "?"
    return total(scrape(f"{url}{separator}{urllib.parse.urlencode({'name[]': name})}"), name, **labels)


def metric_or_zero(url: str, name: str, **labels: str) -> float:
    """``metric``, or 0 while the service is down (a restarting child has no endpoint for a moment)."""
    try:
        return metric(url, name, **labels)
    except OSError:
        return 0.0


async def metric_async(url: str, name: str, **labels: str) -> float:
    """``metric`` on a thread, so the caller's event loop keeps running while the service answers."""
    return await asyncio.to_thread(metric, url, name, **labels)
