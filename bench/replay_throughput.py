"""Benchmark: replay throughput in VM-steps per second for each policy, one core, printed as JSON.

    .venv/bin/python bench/replay_throughput.py [--traces DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from services.decider.registry import POLICIES, build_policy
from services.decider.replay import score_policy
from services.decider.traces import load


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "traces")
    args = parser.parse_args()
    series = load([args.traces / "bitbrains_rnd" / "2013-7"], "bitbrains")
    steps = sum(len(s.demand) for s in series)
    out: dict[str, float] = {}
    for name in POLICIES:
        policy, rails = build_policy(name)
        started = time.perf_counter()
        score_policy(series, policy, rails, pressure=False)
        out[name] = round(steps / (time.perf_counter() - started))
    print(json.dumps({"bench": "replay", "trace": "bitbrains_rnd/2013-7", "vm_steps": steps,
                      "vm_steps_per_s": out, "machine": f"{platform.machine()} {platform.python_version()}"}))


if __name__ == "__main__":
    main()
