"""``hotplug auth init``: a nats-server config with one user per service and the subjects each may use,
and one credentials file per user.

Authority comes from these permissions, never from a message field: only the decider user may publish on
``hotplug.commands.>`` and record deferred grows (``hotplug.deferrals.>``); a collector may publish the metrics and
the HostState of its own host only; deciders read every host's state, an actuator its own host's; an actuator may
read only its own host's commands (its JetStream consumer's filter is part of the permitted API subject), and publish
and read back only its own host's results; a viewer may read (host states and deferrals too) but not publish. The
operator user may pause and resume VMs (``hotplug pause``: the pause bucket and pause events) and read what a viewer
reads; deciders and actuators read pauses and may not change them. The admin user (``hotplug up``) creates the streams.

An actuator's consumers are named after its ``--name`` and host (``shared.topology``), so each host's actuator
user is granted the consumers of the names ``--actuator-names`` lists (``actuator`` by default), name by name: a
consumer name is one token of the API subject, and no pattern could confine it to one host's.

Passwords are random; the files are written readable by their owner only.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared import subjects, topology
from shared.errors import UsageError

EVENTS, METRICS = topology.EVENTS_STREAM, topology.METRICS_STREAM
PROGRESS = topology.ACTUATOR_PROGRESS_BUCKET
LEASES = topology.LEASES_BUCKET
PAUSES = topology.PAUSES_BUCKET
API = "$JS.API"


@dataclass
class User:
    name: str
    publish: list[str]
    subscribe: list[str]
    allow_responses: bool = False
    deny_publish: list[str] = field(default_factory=list)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))


def _read_stream(stream: str) -> list[str]:
    """What reading a stream through an ephemeral consumer takes (hotplug events, report, compare)."""
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.>",
        f"{API}.CONSUMER.DELETE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.>",
    ]


def _read_pauses(create: bool) -> list[str]:
    """What watching and reading the pause bucket takes (and creating it, empty, when missing)."""
    bucket = topology.kv_stream(PAUSES)
    return [
        f"{API}.STREAM.INFO.{bucket}",
        *([f"{API}.STREAM.CREATE.{bucket}"] if create else []),
        f"{API}.DIRECT.GET.{bucket}.>",
        f"{API}.STREAM.MSG.GET.{bucket}",  # a bucket made without direct get is read through its stream
        f"{API}.CONSUMER.*.{bucket}",
        f"{API}.CONSUMER.*.{bucket}.>",
        f"$JS.FC.{bucket}.>",  # a long-running watch's flow control replies
    ]


def _operator(viewer: User) -> User:
    """Pauses and resumes VMs: writes the pause bucket and the pause events, and reads what a viewer reads."""
    return User(
        topology.OPERATOR_USER,
        publish=[*viewer.publish, *_read_pauses(create=True), topology.kv_subject(PAUSES), f"{subjects.PAUSES}.>"],
        subscribe=[*viewer.subscribe, f"{subjects.PAUSES}.>"],
    )


def _actuator_consumers(host: str, name: str) -> list[str]:
    """What the actuator called ``name`` on ``host`` does through its own consumers: take the host's commands
    and read back the host's results (services.actuator.service), under the names shared.topology derives."""
    durable = topology.actuator_consumer(name, host)
    reader = topology.actuator_log_reader(durable)
    return [
        f"{API}.CONSUMER.INFO.{EVENTS}.{durable}",
        f"{API}.CONSUMER.CREATE.{EVENTS}.{durable}.{subjects.host_commands(host)}",
        f"{API}.CONSUMER.MSG.NEXT.{EVENTS}.{durable}",
        f"$JS.ACK.{EVENTS}.{durable}.>",
        f"{API}.CONSUMER.CREATE.{EVENTS}.{reader}.{subjects.host_results(host)}",
        f"{API}.CONSUMER.MSG.NEXT.{EVENTS}.{reader}",
        f"{API}.CONSUMER.DELETE.{EVENTS}.{reader}",
    ]


def users(hosts: list[str], actuator_names: Sequence[str] = (topology.ACTUATOR_NAME,)) -> list[User]:
    """Every user of the deployment. Each host's actuator user may use the consumers of the actuators named
    ``actuator_names`` on that host (their ``--name``; a consumer name is one subject token, so it is granted
    by name, not by pattern)."""
    if not actuator_names or not all(topology.valid_name(n) for n in actuator_names):
        raise UsageError(f"actuator names are letters, digits, '_' and '-', comma-separated: {list(actuator_names)}")
    buckets = topology.DECIDER_BUCKETS
    out = [
        User(topology.ADMIN_USER, publish=[">"], subscribe=[">"]),
        User(
            topology.DECIDER_USER,
            publish=[
                f"{subjects.COMMANDS}.>",
                f"{subjects.PROPOSALS}.>",
                subjects.ALL_DEFERRALS,
                f"{API}.STREAM.INFO.*",
                *[f"{API}.STREAM.CREATE.{topology.kv_stream(b)}" for b in buckets],
                *[topology.kv_subject(b) for b in buckets],
                *[f"{API}.DIRECT.GET.{topology.kv_stream(b)}.>" for b in buckets],
                # a bucket made without direct get (as shared.bus makes them) is read through its stream
                *[f"{API}.STREAM.MSG.GET.{topology.kv_stream(b)}" for b in buckets],
                f"{API}.CONSUMER.>",
                *_read_pauses(create=True),
            ],  # group members' consumers on the metrics stream, KV key listings
            subscribe=[f"{subjects.METRICS}.>", f"{subjects.RESULTS}.>", subjects.ALL_HOSTS, "_INBOX.>"],
            deny_publish=[f"{API}.CONSUMER.DELETE.{EVENTS}.>"],
        ),
        User(
            topology.VIEWER_USER,
            publish=[*_read_stream(EVENTS), *_read_stream(METRICS), *_read_pauses(create=False)],
            subscribe=[
                f"{subjects.METRICS}.>",
                f"{subjects.COMMANDS}.>",
                f"{subjects.RESULTS}.>",
                f"{subjects.PROPOSALS}.>",
                subjects.ALL_HOSTS,
                subjects.ALL_DEFERRALS,
                "_INBOX.>",
            ],
        ),
    ]
    out.append(_operator(next(u for u in out if u.name == topology.VIEWER_USER)))
    for host in hosts:
        out += [
            User(
                topology.host_user("simulator", host),
                publish=[subjects.simulator_pressure(host)],  # its guests' PSI triggers, said as they fire
                subscribe=[subjects.simulator(host, "*")],
                allow_responses=True,
            ),
            User(
                topology.host_user("collector", host),
                publish=[subjects.host_metrics(host), subjects.hosts(host), subjects.simulator(host, "stats")],
                # the simulator source's watch for pressure
                subscribe=["_INBOX.>", subjects.simulator_pressure(host)],
            ),
            User(topology.host_user("agent", host), publish=[subjects.host_metrics(host)], subscribe=["_INBOX.>"]),
            User(
                topology.host_user("actuator", host),
                publish=[
                    subjects.host_results(host),
                    subjects.simulator(host, "stats"),
                    subjects.simulator(host, "hotplug"),
                    f"{API}.STREAM.INFO.*",
                    *[grant for name in dict.fromkeys(actuator_names) for grant in _actuator_consumers(host, name)],
                    # the leases, read for the term check (services.actuator.service: _follow_terms)
                    f"{API}.CONSUMER.CREATE.{topology.kv_stream(LEASES)}.>",
                    f"{API}.DIRECT.GET.{topology.kv_stream(LEASES)}.>",
                    f"{API}.STREAM.MSG.GET.{topology.kv_stream(LEASES)}",  # a bucket made without direct get
                    f"{API}.CONSUMER.DELETE.{topology.kv_stream(LEASES)}.>",
                    # its own host's progress markers (services/actuator/progress.py)
                    f"{API}.STREAM.CREATE.{topology.kv_stream(PROGRESS)}",
                    topology.kv_subject(PROGRESS, topology.progress_keys(host)),
                    f"{API}.DIRECT.GET.{topology.kv_stream(PROGRESS)}.>",
                    f"{API}.STREAM.MSG.GET.{topology.kv_stream(PROGRESS)}",  # a bucket made without direct get
                    *_read_pauses(create=True),
                ],
                subscribe=[subjects.hosts(host), "_INBOX.>"],  # its host's state, for the capacity it enforces
            ),
        ]
    return out


def server_config(all_users: list[User], tls: tuple[Path, Path] | None = None) -> str:
    """The ``authorization`` (and optional ``tls``) blocks of a nats-server config."""
    entries = []
    for u in all_users:
        permissions: dict[str, object] = {
            "publish": {"allow": u.publish, **({"deny": u.deny_publish} if u.deny_publish else {})},
            "subscribe": {"allow": u.subscribe or ["_INBOX.none"]},
        }
        if u.allow_responses:
            permissions["allow_responses"] = True
        entries.append(
            f"    {{ user: {json.dumps(u.name)}, password: {json.dumps(u.password)}, "
            f"permissions: {json.dumps(permissions)} }}"
        )
    text = "# Written by `hotplug auth init`: one user per service, subject permissions.\n"
    text += "authorization {\n  users = [\n" + "\n".join(entries) + "\n  ]\n}\n"
    if tls is not None:
        text += f"tls {{\n  cert_file: {json.dumps(str(tls[0]))}\n  key_file: {json.dumps(str(tls[1]))}\n}}\n"
    return text


def client_url(user: User, host: str, ports: list[int], tls: bool) -> str:
    """The user's URL for each server (a cluster's nodes), comma-separated."""
    return ",".join(f"{'tls' if tls else 'nats'}://{user.name}:{user.password}@{host}:{port}" for port in ports)


def make_certificates(out: Path, days: int = 825) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 and localhost, made with openssl.
    Returns (ca certificate, server certificate, server key)."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("--tls needs the openssl command")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    ca_key, ca, key, csr, cert = (out / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(ca_key))
    run(
        "req",
        "-x509",
        "-new",
        "-key",
        str(ca_key),
        "-subj",
        "/CN=hotplug-heaven CA",
        "-days",
        str(days),
        "-out",
        str(ca),
    )
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    run("req", "-new", "-key", str(key), "-subj", "/CN=nats", "-out", str(csr))
    extensions = out / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        str(days),
        "-extfile",
        str(extensions),
        "-out",
        str(cert),
    )
    for private in (ca_key, key):
        private.chmod(0o600)
    return ca, cert, key


def write(
    out: Path,
    hosts: list[str],
    address: str,
    ports: list[int],
    tls: bool,
    actuator_names: Sequence[str] = (topology.ACTUATOR_NAME,),
) -> list[Path]:
    """Write nats.conf and credentials/<user>.env under ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "credentials").mkdir(exist_ok=True)
    certs = make_certificates(out) if tls else None
    all_users = users(hosts, actuator_names)
    conf = out / "nats.conf"
    conf.write_text(server_config(all_users, (certs[1], certs[2]) if certs else None))
    conf.chmod(0o600)
    written = [conf]
    for u in all_users:
        env = out / "credentials" / f"{u.name}.env"
        lines = [f"HOTPLUG_NATS_URL={client_url(u, address, ports, tls)}"]
        if certs:
            lines.append(f"HOTPLUG_NATS_CA={certs[0]}")
        env.write_text("\n".join(lines) + "\n")
        env.chmod(0o600)
        written.append(env)
    return written
