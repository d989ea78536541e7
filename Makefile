# make bench: every benchmark, one JSON document in bench/results.json (about 4 minutes on 2 cores).
.PHONY: bench check test
PY := .venv/bin/python

bench:
	bin/bootstrap
	$(PY) -m hotplug bench decider --json > bench/.decider.json
	$(PY) -m hotplug bench loop --json > bench/.loop.json
	$(PY) -m hotplug bench collector --json > bench/.collector.json
	$(PY) -m hotplug bench replay --json > bench/.replay.json
	$(PY) -c 'import json, pathlib; parts = {n: json.loads(pathlib.Path(f"bench/.{n}.json").read_text()) for n in ("decider", "loop", "collector", "replay")}; pathlib.Path("bench/results.json").write_text(json.dumps(parts, indent=1) + "\n")'
	rm -f bench/.decider.json bench/.loop.json bench/.collector.json bench/.replay.json
	cat bench/results.json

test:
	bin/test

# make check: the inner loop, under a minute on 2 cores: lint, format, types, and the unit tier (no sockets).
# The unit tier runs in one process (-n 0): it is CPU-bound, and xdist's workers (-n 2, -n 4) were no faster here.
check:
	bin/bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/mypy examples
	.venv/bin/pytest -q -p no:cacheprovider -n 0 tests/unit
