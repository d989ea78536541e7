"""The config file: TOML syntax and types, errors with file, line and reason, and the line of every key."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config.load import ConfigError, dotted, error_location, key_lines, load, parse
from shared.config.schema import ConfigFile, Params, VmRule, param_flags, section_values

FILE = Path("hotplug.toml")

GOOD = """\
# a comment
[service]
nats = "nats://127.0.0.1:4222"

[decider]
policy = "threshold"
param.threshold.upper = 0.9
param.guard.up_cooldown_s = 5

[actuator]
max_vcpus = 64

[[vm]]
match = "vm-01"
autoscale = "off"

[[vm]]
name = "big ones"
match = ["node1/vm-*",
         "db-?"]
min_vcpus = 2
max_vcpus = 8
policy = "hpa"

[vm.param.hpa]
target = 0.6
"""


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(text, FILE)
    return caught.value


def test_a_good_file_decodes_to_typed_sections_and_rules_in_order() -> None:
    loaded = parse(GOOD, FILE)
    config = loaded.config
    assert config.decider.policy == "threshold"
    assert config.decider.param == {"threshold": {"upper": 0.9}, "guard": {"up_cooldown_s": 5}}
    assert config.actuator.max_vcpus == 64
    assert [rule.patterns for rule in config.vm] == [("vm-01",), ("node1/vm-*", "db-?")]
    assert config.vm[0].autoscale == "off"
    assert config.vm[1].autoscale == "auto"
    assert config.vm[1].param == {"hpa": {"target": 0.6}}


def test_an_empty_file_is_every_default() -> None:
    assert parse("", FILE).config == ConfigFile()


def test_a_syntax_error_names_file_line_and_reason() -> None:
    error = error_of('[decider]\npolicy = "threshold"\nname = \n')
    assert (error.path, error.line) == (FILE, 3)
    assert str(error).startswith("hotplug.toml:3: ")
    assert error.reason


def test_a_wrong_type_points_at_its_key_in_an_array_of_tables() -> None:
    error = error_of(GOOD.replace("max_vcpus = 8", 'max_vcpus = "eight"'))
    assert error.line == GOOD.splitlines().index("max_vcpus = 8") + 1
    assert error.reason.startswith("vm[1].max_vcpus: Expected `int")


def test_an_unknown_key_is_refused_at_its_own_line() -> None:
    text = GOOD.replace('autoscale = "off"', 'autoscale = "off"\nmax_vcpu = 4')
    error = error_of(text)
    assert error.line == text.splitlines().index("max_vcpu = 4") + 1
    assert error.reason == "vm[0].max_vcpu: unknown key"


def test_an_unknown_section_is_refused() -> None:
    error = error_of("[decidr]\npolicy = 'hpa'\n")
    assert (error.line, error.reason) == (1, "decidr: unknown key")


def test_an_unknown_autoscale_mode_is_refused() -> None:
    error = error_of('[[vm]]\nmatch = "x"\nautoscale = "sometimes"\n')
    assert error.line == 3
    assert "vm[0].autoscale" in error.reason


def test_bounds_that_leave_no_size_are_refused_at_the_rule() -> None:
    error = error_of('[[vm]]\nmatch = "x"\nmin_vcpus = 4\nmax_vcpus = 2\n')
    assert error.line == 1
    assert "min_vcpus 4 is above max_vcpus 2" in error.reason


@pytest.mark.parametrize("match", ['""', "[]", '["a", ""]'])
def test_a_rule_must_match_something(match: str) -> None:
    assert "match" in error_of(f"[[vm]]\nmatch = {match}\n").reason


def test_a_rule_without_match_is_refused() -> None:
    assert "match" in error_of("[[vm]]\nautoscale = 'off'\n").reason


def test_bad_values_in_sections_are_refused() -> None:
    # Source and driver names are checked against their registries once imported, as every command that runs
    # them has (shared/config/load.py); imported here, so the test does not depend on which test ran before it.
    import services.actuator.drivers.registry
    import services.collector.sources.registry  # noqa: F401

    assert "service.metrics_port" in error_of("[service]\nmetrics_port = 70000\n").reason
    assert "collector.source" in error_of("[collector]\nsource = 'vmware'\n").reason
    assert "decider.command_ttl" in error_of("[decider]\ncommand_ttl = 0\n").reason


def test_a_missing_file_says_so() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(Path("/nonexistent/hotplug.toml"))


def test_section_values_put_the_service_section_under_the_commands_own() -> None:
    config = parse('[service]\nhost = "a"\nlog_level = "DEBUG"\n[decider]\nhost = "b"\n', FILE).config
    assert section_values(config, "decider") == {"host": "b", "log_level": "DEBUG"}
    assert section_values(config, "actuator") == {"host": "a", "log_level": "DEBUG"}
    assert section_values(config, "up") == {}


def test_param_tables_become_param_flags() -> None:
    params: Params = {"threshold": {"upper": 0.9, "sustain_s": 3}, "guard": {"x": True, "y": "z"}}
    assert param_flags(params) == ["threshold.upper=0.9", "threshold.sustain_s=3", "guard.x=true", "guard.y=z"]


def test_error_locations_follow_msgspec_paths() -> None:
    assert error_location("Expected `int`, got `str` - at `$.vm[12].max_vcpus`") == (
        ("vm", 12, "max_vcpus"),
        "Expected `int`, got `str`",
    )
    assert error_location("Object contains unknown field `x` - at `$.decider`") == (("decider", "x"), "unknown key")
    assert error_location("Expected `str` - at `$.vm[0].param[...]`") == (("vm", 0, "param"), "Expected `str`")
    assert error_location("no path here") == ((), "no path here")
    assert dotted(("vm", 1, "param", "hpa")) == "vm[1].param.hpa"


def test_key_lines_number_array_elements_and_dotted_keys() -> None:
    lines = key_lines(GOOD)
    at = GOOD.splitlines().index
    assert lines[("decider", "param", "guard", "up_cooldown_s")] == at("param.guard.up_cooldown_s = 5") + 1
    assert lines[("vm", 0)] == at("[[vm]]") + 1
    assert lines[("vm", 1, "match")] == at('match = ["node1/vm-*",') + 1
    # the line after a multi-line array is read as a key again
    assert lines[("vm", 1, "min_vcpus")] == at("min_vcpus = 2") + 1
    assert lines[("vm", 1, "param", "hpa", "target")] == at("target = 0.6") + 1


def test_key_lines_skip_multi_line_strings_and_read_quoted_keys() -> None:
    text = '[decider]\nname = """\nfake = 1\n"""\n"odd.key" = 2\n[up]\n'
    lines = key_lines(text)
    assert ("decider", "fake") not in lines
    assert lines[("decider", "odd.key")] == 5
    assert lines[("up",)] == 6


keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@given(st.lists(st.tuples(keys, st.lists(st.tuples(keys, st.integers()), max_size=4)), max_size=5))
def test_key_lines_find_every_key_of_an_array_of_tables(tables: list[tuple[str, list[tuple[str, int]]]]) -> None:
    """Each ``[[t]]`` element's keys are found on the line they were written, with the element's index."""
    text = ""
    expected: dict[tuple[str | int, ...], int] = {}
    seen: dict[str, int] = {}
    line = 0
    for name, pairs in tables:
        index = seen[name] = seen.get(name, -1) + 1
        text += f"[[{name}]]\n"
        line += 1
        written = set()
        for key, value in pairs:
            if key in written or key == name:
                continue
            written.add(key)
            text += f"{key} = {value}\n"
            line += 1
            expected[(name, index, key)] = line
    lines = key_lines(text)
    for path, number in expected.items():
        assert lines[path] == number


def test_rule_struct_refuses_unknown_fields_by_itself() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"match": "x", "max_cpus": 3}, VmRule)
