"""The study code: how well a policy decides, measured away from the live loop (and against it).

Beside ``services`` (the loop's parts) and ``shared`` (what they share), and below the ``hotplug`` CLI, which only
parses and formats. The pure part imports ``shared`` and ``services`` only: ``replay`` (a trace through a policy's
engine), ``tally`` (the one run tally and the oracle), ``frontier``, ``sweep`` (each policy along its declared
``SWEEP``), ``shadow`` and ``decisions`` (scoring live deciders), ``audit``, ``report``, ``counterfactual``. The live
part drives real processes through ``hotplug.harness``: ``bench`` (the benchmarks) and ``chaos``. Traces are read by
``shared.traces``, since the simulator replays them too. ``docs/evaluation.md`` is the guide.
"""
