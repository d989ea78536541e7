"""Reading a run back out of JetStream, for everyone: the event log (commands, results, pauses and resumes, deferred
grows) and the metrics stream (samples, shadow proposals).

``hotplug events``, ``report`` and ``compare``, the actuator's look-ups of past results, ``hotplug chaos`` and the
test harness all read through here, so a message that does not decode is treated the same way everywhere: the
readers of whole runs skip it (``read_events`` hands it over as ``None`` so the caller can say so), the actuator's
look-ups leave it out. Where the log lives and how it is printed is ``hotplug.events``'s business.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator

import msgspec
from nats.js import JetStreamContext

from shared import subjects, topology
from shared.bus import read_stream
from shared.codec import BadMessage, Decoder
from shared.messages import Deferral, MetricSample, PauseEvent, ScaleCommand, ScaleResult

Event = ScaleCommand | ScaleResult
AnyEvent = ScaleCommand | ScaleResult | PauseEvent | Deferral
_event_decoder = msgspec.json.Decoder(Event)
_any_event_decoder = msgspec.json.Decoder(AnyEvent)
_deferral_decoder = Decoder(Deferral)
_result_decoder = Decoder(ScaleResult)
_sample_decoder = Decoder(MetricSample)
_proposal_decoder = Decoder(ScaleCommand)
_deferral_decoder = Decoder(Deferral)


async def read_events(js: JetStreamContext) -> AsyncIterator[tuple[str, Event | None]]:
    """Every command and result of the event log in order; undecodable ones as (subject, None)."""
    async for subject, data in read_stream(js, topology.EVENTS_STREAM, [subjects.ALL_COMMANDS, subjects.ALL_RESULTS]):
        try:
            yield subject, _event_decoder.decode(data)
        except msgspec.DecodeError:
            yield subject, None


async def read_all_events(js: JetStreamContext) -> AsyncIterator[tuple[str, AnyEvent | None]]:
    """Every command, result, pause, resume and deferral of the event log in order; undecodable ones as
    (subject, None)."""
    filters = [subjects.ALL_COMMANDS, subjects.ALL_RESULTS, subjects.ALL_PAUSES, subjects.ALL_DEFERRALS]
    async for subject, data in read_stream(js, topology.EVENTS_STREAM, filters):
        try:
            yield subject, _any_event_decoder.decode(data)
        except msgspec.DecodeError:
            yield subject, None


async def read_deferrals(js: JetStreamContext, *, latest: bool = False) -> list[Deferral]:
    """The deciders' Deferral events (deferred, granted, dropped grows), oldest first; with ``latest``, only the
    newest of each VM, which says whether its grow is deferred now. Undecodable ones are left out."""
    found: list[Deferral] = []
    stored = read_stream(js, topology.EVENTS_STREAM, [subjects.ALL_DEFERRALS], last_per_subject=latest)
    async with contextlib.aclosing(stored):
        async for _, data in stored:
            with contextlib.suppress(BadMessage):
                found.append(_deferral_decoder.decode(data))
    return found


async def stored_events(js: JetStreamContext) -> tuple[list[ScaleCommand], list[ScaleResult]]:
    """Every command and result in the event log, oldest first (undecodable ones left out)."""
    commands: list[ScaleCommand] = []
    results: list[ScaleResult] = []
    async for _, event in read_events(js):
        if isinstance(event, ScaleCommand):
            commands.append(event)
        elif isinstance(event, ScaleResult):
            results.append(event)
    return commands, results


async def read_results(
    js: JetStreamContext, filter_subject: str, *, since: dt.datetime | None = None, name: str | None = None
) -> AsyncGenerator[ScaleResult, None]:
    """The stored results on ``filter_subject`` (from ``since`` on, if given), oldest first; ``name`` names the
    reader (see ``shared.bus.read_stream``). Closing this generator early frees the reader at once."""
    stored = read_stream(js, topology.EVENTS_STREAM, [filter_subject], since=since, name=name)
    async with contextlib.aclosing(stored):
        async for _, data in stored:
            with contextlib.suppress(BadMessage):
                yield _result_decoder.decode(data)


async def last_result(js: JetStreamContext, host: str, vm: str) -> ScaleResult | None:
    """The newest stored result of ``vm`` on ``host``; None if there is none or it does not decode. Errors of the
    broker (no stream leader yet, no such message) are the caller's to handle."""
    stored = await js.get_last_msg(topology.EVENTS_STREAM, subjects.results(host, vm))
    if stored.data is None:
        return None
    try:
        return _result_decoder.decode(stored.data)
    except BadMessage:
        return None


async def read_deferrals(js: JetStreamContext) -> list[Deferral]:
    """Every deferred grow in the event log, its grant and its drop, oldest first (undecodable ones left out)."""
    found: list[Deferral] = []
    async for _, data in read_stream(js, topology.EVENTS_STREAM, [subjects.ALL_DEFERRALS]):
        with contextlib.suppress(BadMessage):
            found.append(_deferral_decoder.decode(data))
    return found


async def read_metrics(
    js: JetStreamContext, *, proposals: bool = False
) -> tuple[list[MetricSample], list[ScaleCommand]]:
    """The metrics stream's samples and, with ``proposals``, the shadow deciders' proposals, oldest first
    (undecodable ones left out)."""
    samples: list[MetricSample] = []
    found: list[ScaleCommand] = []
    filters = [subjects.ALL_METRICS, subjects.ALL_PROPOSALS] if proposals else [subjects.ALL_METRICS]
    async for subject, data in read_stream(js, topology.METRICS_STREAM, filters):
        try:
            if subject.startswith(subjects.PROPOSALS):
                found.append(_proposal_decoder.decode(data))
            else:
                samples.append(_sample_decoder.decode(data))
        except BadMessage:
            continue
    return samples, found


async def read_run(js: JetStreamContext) -> tuple[list[MetricSample], list[ScaleCommand], list[ScaleResult]]:
    """A run's metric samples, commands and results, each oldest first."""
    samples, _ = await read_metrics(js)
    commands, results = await stored_events(js)
    return samples, commands, results
