"""Connecting to NATS and the JetStream streams that keep the event log.

Commands and results are published to JetStream with ``Nats-Msg-Id`` set from the command id, so a retry
after a lost acknowledgement is stored once. Metrics go over core NATS (losing one is harmless) and a
short-lived stream keeps them for later study.

A URL may list several servers, comma-separated (the nodes of a cluster); the client fails over between them.
On a cluster, set ``HOTPLUG_STREAM_REPLICAS=3`` for every service: the streams and KV buckets then live on
three nodes and survive the loss of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import ssl
import time
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from shared import subjects, topology
from shared.errors import InputError, NotFound

log = logging.getLogger(__name__)

DEFAULT_URL_ENV = "HOTPLUG_NATS_URL"
CA_ENV = "HOTPLUG_NATS_CA"  # a CA file: connect with TLS and verify the server against it
REPLICAS_ENV = "HOTPLUG_STREAM_REPLICAS"
EVENTS_MAX_AGE_S = 90 * 24 * 3600.0
METRICS_MAX_AGE_S = 24 * 3600.0
METRICS_MAX_BYTES = 1 << 30
DUPLICATE_WINDOW_S = 600.0
STORE_PATIENCE_S = 120.0
NO_JETSTREAM = (
    "the NATS server has no JetStream (nothing answers its JetStream API): Hot-Plug Heaven keeps commands, "
    "results and its buckets there; start nats-server with -js (and -sd DIR for its store)"
)


def replicas() -> int:
    """How many nodes keep each stream and bucket: ``$HOTPLUG_STREAM_REPLICAS``, 1 by default."""
    text = os.environ.get(REPLICAS_ENV, "1")
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 5:  # JetStream's own limit
        raise InputError(f"${REPLICAS_ENV} must be a whole number from 1 to 5, not {text!r}")
    return count


def servers(url: str) -> list[str]:
    """The server URLs in a comma-separated list."""
    return [part.strip() for part in url.split(",") if part.strip()]


def credentials_apart(url: str) -> tuple[list[str], str | None, str | None]:
    """The server URLs without their ``user:password@``, and that user and password.

    Given as connect options rather than in each URL, the credentials also reach the servers a cluster
    announces to the client, which it may fail over to."""
    plain: list[str] = []
    user = password = None
    for server in servers(url):
        parts = urllib.parse.urlsplit(server)
        if parts.username is not None:
            if user is not None and (parts.username, parts.password) != (user, password):
                raise InputError("every server in a NATS URL list must carry the same credentials")
            user, password = parts.username, parts.password
            netloc = parts.hostname or ""
            if parts.port is not None:
                netloc = f"{netloc}:{parts.port}"
            server = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        plain.append(server)
    if user is not None:
        user, password = urllib.parse.unquote(user), urllib.parse.unquote(password or "")
    return plain, user, password


def stream_configs() -> list[StreamConfig]:
    copies = replicas()
    return [
        StreamConfig(
            name=topology.EVENTS_STREAM,
            description="Every scale command and result, pause and resume, and deferred grow, kept for later study",
            subjects=[subjects.ALL_COMMANDS, subjects.ALL_RESULTS, subjects.ALL_PAUSES, subjects.ALL_DEFERRALS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=EVENTS_MAX_AGE_S,
            duplicate_window=DUPLICATE_WINDOW_S,
            discard=DiscardPolicy.OLD,
            num_replicas=copies,
        ),
        StreamConfig(
            name=topology.METRICS_STREAM,
            description="Metric samples (stored by partition) and shadow deciders' proposals, kept one day",
            subjects=[subjects.ALL_METRICS, subjects.ALL_PROPOSALS],
            subject_transform=SubjectTransform(src=f"{subjects.METRICS}.*.*", dest=subjects.PARTITIONED_METRICS),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=METRICS_MAX_AGE_S,
            max_bytes=METRICS_MAX_BYTES,
            discard=DiscardPolicy.OLD,
            num_replicas=copies,
        ),
    ]


@contextlib.contextmanager
def jetstream_required() -> Iterator[None]:
    """Turn "no JetStream on this server" into one line for the user (``NotFound``) instead of a traceback.

    nats-py reports a JetStream request nobody answers as a ``ServiceUnavailableError`` raised while handling the
    server's no-responders reply; a JetStream that answers with an error of its own (a cluster electing its leader)
    has no such cause and is raised as it is.
    """
    try:
        yield
    except ServiceUnavailableError as exc:
        if isinstance(exc.__context__, nats.errors.NoRespondersError):
            raise NotFound(NO_JETSTREAM) from None
        raise


async def ensure_streams(js: JetStreamContext, reconcile: bool = False, *, patience_s: float = 0.0) -> None:
    """Create missing streams; with ``reconcile`` (an admin's call) also bring existing ones up to date.

    Services call it without ``reconcile``: where permissions are in force they may look streams up but not
    create or change them (``hotplug streams`` as the admin user does that once). A server without JetStream is a
    ``NotFound`` (``jetstream_required``). A cluster just started on a loaded machine may leave a replicated
    stream's creation unanswered past the request's timeout: the set-up is then tried again (it is idempotent)
    until ``patience_s`` has passed.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with jetstream_required():
                await _ensure_streams(js, reconcile)
            return
        except TimeoutError:  # nats-py's own timeout is one too
            if time.monotonic() >= deadline:
                raise
            log.warning("streams not set up within the request's timeout (a cluster still electing?); retrying")


async def _ensure_streams(js: JetStreamContext, reconcile: bool) -> None:
    for config in stream_configs():
        assert config.name is not None
        try:
            await js.stream_info(config.name)
            exists = True
        except NotFoundError:
            exists = False
        if not exists:
            try:
                await js.add_stream(config)
            except BadRequestError:  # created meanwhile by another service
                exists = True
        if exists and reconcile:
            await js.update_stream(config)


async def key_value(js: JetStreamContext, bucket: str, *, ttl_s: float | None = None) -> KeyValue:
    """Open a KV bucket (one value per key), creating it with this deployment's replica count if missing; a server
    without JetStream is a ``NotFound``."""
    with jetstream_required():
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s, replicas=replicas()))


async def stored_keys(js: JetStreamContext, bucket: str, keys: str = ">") -> list[str]:
    """The keys of KV ``bucket`` matching ``keys`` (a deleted key's marker included), from its stream's per-subject
    state; read each with ``KeyValue.get``.

    Not ``KeyValue.keys()`` or a watch's "all in": nats-py's watch can say the current entries are all in before
    the ones already on their way have been handed over (nats-io/nats.py#842, open in 2.16), so what it lists may
    leave out an entry stored long before."""
    info = await js.stream_info(topology.kv_stream(bucket), subjects_filter=topology.kv_subject(bucket, keys))
    prefix = topology.kv_subject(bucket, "")
    return sorted(subject[len(prefix) :] for subject in (info.state.subjects or {}))


async def current_entries(js: JetStreamContext, kv: KeyValue, bucket: str, keys: str = ">") -> dict[str, bytes]:
    """The value of every live entry of KV ``bucket`` (opened as ``kv``) matching ``keys``, read by key: deleted
    and purged keys are left out (see ``stored_keys`` for why not a watch)."""
    found: dict[str, bytes] = {}
    for key in await stored_keys(js, bucket, keys):
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # deleted or purged since (its marker is the key's newest message)
            continue
        if entry.value:
            found[key] = entry.value
    return found


async def connect(
    url: str,
    name: str,
    *,
    forever: bool = True,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
) -> Client:
    """Connect with the reconnect settings a long-running service needs (retry forever, log every change)."""

    async def error_cb(exc: Exception) -> None:
        log.warning("nats error: %s", exc)
        if on_error is not None:
            await on_error(exc)

    async def disconnected_cb() -> None:
        log.info("nats disconnected")

    async def reconnected_cb() -> None:
        log.info("nats reconnected")

    ca = os.environ.get(CA_ENV)
    tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca) if ca else None
    plain, user, password = credentials_apart(url)
    return await nats.connect(
        plain,
        user=user,
        password=password,
        name=name,
        tls=tls,
        max_reconnect_attempts=-1 if forever else 3,
        reconnect_time_wait=1.0 if forever else 0.2,
        connect_timeout=2,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
    )


async def session(url: str, name: str) -> Client:
    """A short connection for a command (no endless reconnects); an unreachable server is a clear ``NotFound``."""
    try:
        return await connect(url, name, forever=False)
    except Exception as exc:
        raise NotFound(f"cannot reach NATS at {servers(url)}: {exc or type(exc).__name__}") from None


async def publish_durable(
    js: JetStreamContext, subject: str, payload: bytes, msg_id: str, *, patience_s: float = STORE_PATIENCE_S
) -> None:
    """Publish to JetStream, retrying with the same id (so the stream stores it exactly once) until the stream
    acknowledges it or ``patience_s`` has passed; then the last error is raised.

    The patience outlasts a broker restart or a cluster electing a new stream leader: a command seen on the bus
    must reach the event log, or its sender must know that it did not.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}, timeout=2.0)
            return
        except (
            TimeoutError,
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.NoStreamResponseError,
            nats.js.errors.ServiceUnavailableError,
            nats.errors.ConnectionReconnectingError,
        ):
            if time.monotonic() + delay > deadline:
                raise
            log.warning("publish of %s to %s not acknowledged (attempt %d); retrying", msg_id, subject, attempt)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def read_stream(
    js: JetStreamContext,
    stream: str,
    filters: list[str],
    *,
    since: dt.datetime | None = None,
    name: str | None = None,
    batch: int = 256,
    last_per_subject: bool = False,
) -> AsyncGenerator[tuple[str, bytes], None]:
    """The stored messages of ``stream`` matching ``filters`` (all, or those stored from ``since`` on), oldest
    first, as (subject, data); with ``last_per_subject``, only the newest message of each subject.

    They are read through a short-lived consumer. ``name`` fixes its name, so that a user's permissions can
    allow this reader and nothing else; with a single filter, the filter is part of the permitted API subject.
    """
    config = ConsumerConfig(
        name=name or f"read-{secrets.token_hex(8)}",
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
        if last_per_subject
        else DeliverPolicy.ALL
        if since is None
        else DeliverPolicy.BY_START_TIME,
        opt_start_time=since,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
        **({"filter_subject": filters[0]} if len(filters) == 1 else {"filter_subjects": filters}),
    )
    assert config.name is not None
    try:
        if name is not None:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(stream, name)  # left by a reader that died mid-read
        info = await js.add_consumer(stream, config)
    except NotFoundError:
        return  # no such stream: nothing stored
    try:
        remaining = info.num_pending or 0
        if remaining == 0:
            return
        psub = await js.pull_subscribe_bind(config.name, stream=stream)
        while remaining > 0:
            try:
                msgs = await psub.fetch(batch=min(batch, remaining), timeout=5.0)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for msg in msgs:
                yield msg.subject, msg.data
            remaining = msgs[-1].metadata.num_pending if msgs else remaining
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, config.name)
