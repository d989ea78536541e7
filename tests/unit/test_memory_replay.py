"""The memory study: the Bitbrains memory reader, the scores on a hand-computed trace, the replay's model of a guest
(censored use, swapping), the halves, the baselines and ``hotplug replay --resource memory`` on a small trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.memory_baselines import MomRule, NeonRule, StaticRule
from evaluation.memory_replay import frontier_report, half, replay_memory, replay_report, rule_specs
from evaluation.memory_scores import ReplayMemoryTally
from hotplug import cli
from services.decider.memory import MemoryObservation, MemoryPolicy, MemorySettings
from shared.memory_traces import MemorySeries, load_memory
from shared.traces import TraceError
from shared.units import GIB, MIB

HEADER = "Timestamp [ms];\tCPU cores;\tMemory capacity provisioned [KB];\tMemory usage [KB]\n"


def write(path: Path, rows: list[tuple[float, float]]) -> Path:
    path.write_text(HEADER + "".join(f"{300 * i};\t4;\t{p};\t{u}\n" for i, (p, u) in enumerate(rows)))
    return path


def test_the_reader_takes_kib_skips_absent_rows_and_keeps_unmeasured_use_as_none(tmp_path: Path) -> None:
    write(tmp_path / "7.csv", [(0.0, 0.0), (1.6703488e7, 0.0), (1.6703488e7, 134217.6), (2048.0, 4096.0)])
    [s] = load_memory([tmp_path], "bitbrains-memory")
    assert s.name == "7"
    assert s.provisioned == [16703488 * 1024, 16703488 * 1024, 2048 * 1024]  # the 0-provisioned row: VM not there
    assert s.used == [None, round(134217.6 * 1024), 4096 * 1024]
    assert s.step_s == 300.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Timestamp [ms];\tCPU cores;\tCPU usage [MHZ]\n1;\t2;\t3\n", "not a Bitbrains memory file"),
        (HEADER + "1;\t4;\tlots;\t3\n", r"x\.csv:2: not a number"),
        (HEADER + "1;\t4;\t100\n", r"x\.csv:2: 3 fields, the header names 4"),
        (HEADER + "1;\t4;\t100;\t5\n2;\t4;\t-100;\t5\n", r"x\.csv:3: memory must be a finite number"),
        (HEADER + "1;\t4;\tnan;\t5\n", r"x\.csv:2: memory must be a finite number"),
    ],
)
def test_a_bad_file_or_line_is_a_clear_error(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=match):
        load_memory([path], "bitbrains-memory")


def test_an_unknown_format_or_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="unknown memory format"):
        load_memory([tmp_path], "bitbrains")
    with pytest.raises(TraceError, match="no such file"):
        load_memory([tmp_path / "missing"], "bitbrains-memory")


def test_the_scores_match_a_hand_computed_trace() -> None:
    series = MemorySeries("vm", [1000, 1000, 1000, 1000], [100, None, 300, 200], 300.0)
    tally = ReplayMemoryTally()
    tally.add(series, [400, 400, 250, 190])
    scores = tally.scores()
    # measured samples 0, 2, 3: allocated 400 + 250 + 190 = 840, used 600, provisioned 3000
    assert scores["ratio_to_oracle"] == pytest.approx(840 / 600)
    assert scores["ratio_to_provisioned"] == pytest.approx(840 / 3000)
    # short at 2 (250 < 300, by 17 %: deep) and 3 (190 < 200, by 5 %: not deep)
    assert scores["shortfall_pct"] == pytest.approx(100 * 2 / 3)
    assert (scores["shortfall_events"], scores["deep_shortfall_events"], scores["vms_short"]) == (2, 1, 1)
    # two changes (400 → 250 → 190) in 4 × 300 s = 1/3 h
    assert scores["changes_per_vm_hour"] == pytest.approx(6.0)


def test_use_above_provisioned_is_a_glitch_clipped_to_it() -> None:
    series = MemorySeries("vm", [1000, 1000], [1500, 900], 300.0)
    tally = ReplayMemoryTally()
    tally.add(series, [1000, 1000])
    assert tally.scores()["shortfall_events"] == 0
    assert tally.scores()["ratio_to_oracle"] == pytest.approx(2000 / 1900)


def test_a_length_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="3 allocations for 2 steps"):
        ReplayMemoryTally().add(MemorySeries("vm", [1, 1], [1, 1], 300.0), [1, 1, 1])


def test_the_replay_starts_provisioned_holds_through_gaps_and_grows_on_the_swap_it_models() -> None:
    s = MemorySettings(window_samples=2, shrink_interval_s=0, max_shrink_fraction=1.0)
    used: list[int | None] = [100 * MIB, None, 100 * MIB, 100 * MIB, 100 * MIB, 3 * GIB, 3 * GIB]
    series = MemorySeries("vm", [8 * GIB] * len(used), used, 300.0)
    allocations = replay_memory(series, MemoryPolicy(s))
    # two samples' evidence (600 s), counted from the first sample, at step 2: the shrink takes effect from step 3
    assert allocations[:3] == [8 * GIB] * 3
    small = allocations[3]
    assert small == 254 * MIB  # 100 MiB × 1.25 + 128 MiB = 253 MiB, up to the 2-MiB block
    # at step 5 the guest wanted 3 GiB but had ``small``: it was short, swapped the rest, and one step later had all
    assert allocations[4:6] == [small, small]
    assert allocations[6] >= 3 * GIB * 1.25


def test_the_static_baseline_has_what_was_provisioned_at_each_step() -> None:
    series = MemorySeries("vm", [1 * GIB, 2 * GIB, 2 * GIB], [None, 1 * GIB, 2 * GIB], 300.0)
    assert replay_memory(series, StaticRule()) == [1 * GIB, 2 * GIB, 2 * GIB]


def observe(size: int, used: int) -> MemoryObservation:
    return MemoryObservation(time=0, size_bytes=size, used_bytes=used, min_bytes=2 * MIB, max_bytes=64 * GIB)


def test_mom_moves_at_most_five_percent_towards_used_plus_headroom() -> None:
    mom = MomRule(headroom=0.2)
    down = mom.decide(None, observe(10 * GIB, 1 * GIB))
    up = mom.decide(None, observe(1 * GIB, 1 * GIB))
    assert down is not None and up is not None
    assert 0.95 * 10 * GIB <= down.target_bytes < 10 * GIB
    assert 1 * GIB < up.target_bytes <= 1.05 * GIB + 2 * MIB
    assert mom.decide(None, observe(1200 * MIB, 1000 * MIB)) is None


def test_neon_grows_above_upper_shrinks_below_half_of_it_and_holds_between() -> None:
    neon = NeonRule(upper=0.8)
    grow = neon.decide(None, observe(1 * GIB, 900 * MIB))
    shrink = neon.decide(None, observe(10 * GIB, 1 * GIB))
    assert grow is not None and shrink is not None
    assert grow.target_bytes == 1500 * MIB  # 900 MiB is 0.6 of it: the middle of the band 0.4-0.8
    assert shrink.target_bytes == pytest.approx(1 * GIB / 0.6, abs=2 * MIB)
    assert neon.decide(None, observe(1 * GIB, 600 * MIB)) is None


def vms(n: int) -> list[MemorySeries]:
    return [MemorySeries(f"{i:02d}", [4 * GIB] * 3, [GIB, GIB, 2 * GIB], 300.0) for i in range(n)]


def test_the_halves_split_by_sorted_name_even_and_odd() -> None:
    series = list(reversed(vms(5)))
    assert [s.name for s in half(series, "a")] == ["00", "02", "04"]
    assert [s.name for s in half(series, "b")] == ["01", "03"]
    with pytest.raises(ValueError, match="no half"):
        half(series, "c")


def test_the_reports_have_every_rule_on_every_half() -> None:
    series = vms(4)
    table = replay_report(series)
    assert table["vms"] == {"a": 2, "b": 2, "all": 4}
    halves = table["halves"]
    assert isinstance(halves, dict)
    assert set(halves["a"]) == {"static", "memory", "mom", "neon"}
    specs = [spec for spec in rule_specs() if spec.knob == "headroom"][:1]
    frontier = frontier_report(series, levels=[0.5], specs=specs)
    entry = frontier["halves"]["b"]  # type: ignore[index]
    assert entry["vms"] == 2
    assert [p["value"] for p in entry["sweeps"][0]["sweep"]] == list(specs[0].values)


def test_the_command_prints_a_table_for_each_half(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(4):
        write(tmp_path / f"{i}.csv", [(4194304.0, 1048576.0 * (1 + j % 3)) for j in range(30)])
    argv = ["replay", "--resource", "memory", "--format", "bitbrains-memory", str(tmp_path)]
    assert cli.main([*argv, "--param", "memory.headroom=0.5"]) == 0
    out = capsys.readouterr().out
    assert 'half "a" (tuning), 2 VMs' in out and 'half "b" (check), 2 VMs' in out and "all VMs, 4 VMs" in out
    assert "| memory |" in out and "| static | 7." not in out


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--format", "bitbrains", "--resource", "memory"], "reads a memory format"),
        (["--format", "bitbrains-memory"], "add --resource memory"),
        (["--format", "bitbrains-memory", "--resource", "memory", "--pressure"], "are for --resource cpu"),
        (["--format", "bitbrains-memory", "--resource", "memory", "--param", "default.x=1"], "only memory"),
        (["--format", "bitbrains-memory", "--resource", "memory", "--param", "memory.headroom=-1"], "bad memory"),
        (["--format", "bitbrains-memory", "--resource", "memory", "--levels", "1"], "--levels goes with"),
    ],
)
def test_the_command_refuses_what_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], match: str
) -> None:
    write(tmp_path / "1.csv", [(4194304.0, 1048576.0)])
    assert cli.main(["replay", str(tmp_path), *extra]) == 2
    assert match in capsys.readouterr().err
