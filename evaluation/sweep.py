"""Policies scored on traces side by side with the oracle, and swept along their trade-off (``hotplug replay``).

Policies run in parallel worker processes (one policy's whole replay per task); the arithmetic is
``evaluation.replay``. Each policy declares its own knob and the values a sweep tries (``SWEEP``, a class attribute
of the policy); the frontier is read from the sweep (``evaluation.frontier``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from evaluation.frontier import frontier
from evaluation.replay import score_oracle, score_policy
from evaluation.tally import ORACLE
from services.decider.registry import POLICIES, build_policy, parse_params
from shared.errors import UsageError
from shared.traces import VmSeries


@dataclass(frozen=True)
class Job:
    """One worker task: a policy with its parameters over every series, reported under ``label``."""

    label: str
    policy: str
    params: dict[str, dict[str, str]]
    pressure: bool


def policy_names(spec: str) -> list[str]:
    """The policies ``spec`` names ("all", or names separated by commas); an unknown name is refused."""
    names = list(POLICIES) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if name not in POLICIES:
            raise UsageError(f"unknown policy {name!r}; choose from all, {', '.join(sorted(POLICIES))}")
    return names


def policy_params(items: list[str], policies: Iterable[str], run: str) -> dict[str, dict[str, str]]:
    """``--param NAME.KEY=VALUE`` items by scope, each naming one of ``policies`` or ``guard`` (``run``: the
    policies' role in the error, e.g. "replayed")."""
    params = parse_params(items)
    unknown = set(params) - {*policies, "guard"}
    if unknown:
        raise UsageError(f"--param names {', '.join(sorted(unknown))}, which is not among the {run} policies")
    return params


def scoped(params: dict[str, dict[str, str]], policy: str) -> dict[str, dict[str, str]]:
    """The ``--param`` entries that apply to ``policy`` (its own scope and ``guard``)."""
    return {k: v for k, v in params.items() if k in (policy, "guard")}


def declared_sweep(policy: str) -> tuple[str, tuple[float, ...]]:
    """The knob ``policy`` declares for a sweep and the values to try (a plug-in policy may declare none)."""
    sweep: tuple[str, tuple[float, ...]] | None = getattr(POLICIES[policy], "SWEEP", None)
    if sweep is None:
        raise UsageError(
            f"policy {policy!r} declares no SWEEP (its trade-off parameter and values): it cannot be swept"
        )
    return sweep


_SERIES: list[VmSeries] = []


def _init_worker(series: list[VmSeries]) -> None:
    _SERIES[:] = series


def _run_job(job: Job) -> tuple[str, dict[str, float]]:
    policy, rails = build_policy(job.policy, job.params)
    return job.label, score_policy(_SERIES, policy, rails, job.pressure)


def run_jobs(series: list[VmSeries], jobs: list[Job], workers: int | None = None) -> dict[str, dict[str, float]]:
    for job in jobs:  # refuse bad parameters before forking anything
        build_policy(job.policy, job.params)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        _init_worker(series)
        return dict(map(_run_job, jobs))
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(series,)) as pool:
        return dict(pool.map(_run_job, jobs))


def replay_table(
    series: list[VmSeries], names: list[str], params: dict[str, dict[str, str]], pressure: bool
) -> dict[str, object]:
    jobs = [Job(name, name, scoped(params, name), pressure) for name in names]
    scores = run_jobs(series, jobs)
    scores[ORACLE] = score_oracle(series)
    return {
        "vms": len(series),
        "steps": sum(len(s.demand) for s in series),
        "policies": {name: scores[name] for name in [*names, ORACLE]},
    }


def sweep(
    series: list[VmSeries],
    names: list[str],
    params: dict[str, dict[str, str]],
    pressure: bool,
    workers: int | None = None,
    values: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, list[tuple[float, dict[str, float]]]]:
    """Each policy along its trade-off knob, at the values its ``SWEEP`` declares or those ``values`` names for
    it, in ``workers`` processes (None: one per CPU)."""
    jobs = []
    for name in names:
        key, declared = declared_sweep(name)
        for value in (values or {}).get(name, declared):
            p = scoped(params, name)
            p = {**p, name: {**p.get(name, {}), key: repr(value)}}
            jobs.append(Job(f"{name}:{value!r}", name, p, pressure))
    scores = run_jobs(series, jobs, workers)
    out: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for job in jobs:
        out.setdefault(job.policy, []).append((float(job.label.split(":", 1)[1]), scores[job.label]))
    return out


def frontier_report(
    series: list[VmSeries],
    names: list[str],
    params: dict[str, dict[str, str]],
    pressure: bool,
    levels: list[float],
    workers: int | None = None,
    values: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, object]:
    """Each policy's sweep (``sweep``), and from it the cost (× oracle) it reaches at each level of unmet demand."""
    sweeps = sweep(series, names, params, pressure, workers, values)
    policies: dict[str, object] = {}
    for name, points in sweeps.items():
        pairs = [(scores["unmet_pct"], scores["ratio_to_oracle"]) for _, scores in points]
        policies[name] = {
            "parameter": f"{name}.{declared_sweep(name)[0]}",
            **frontier(pairs, levels),
            "sweep": [
                {
                    "value": value,
                    "unmet_pct": scores["unmet_pct"],
                    "ratio_to_oracle": scores["ratio_to_oracle"],
                    "actions_per_vm_day": scores["actions_per_vm_day"],
                }
                for value, scores in points
            ],
        }
    return {
        "vms": len(series),
        "steps": sum(len(s.demand) for s in series),
        "pressure": pressure,
        "levels_pct": levels,
        "policies": policies,
    }
