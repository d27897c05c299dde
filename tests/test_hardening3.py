"""Hardening, round three (issue 20): input values that used to end in exit 70, damaged or
hostile archives (the .pt2 corpus is in test_hardening.py), processes that must die with
convcost, the latency table, and gates that must not pass on what they did not measure."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from convcost.cli import cli
from tests.conftest import EXAMPLES

TINYNET = f"{EXAMPLES / 'models.py'}:TinyNet"


def one_error(r, code: int, *needles: str) -> str:
    assert "Traceback" not in r.output, r.output
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [x for x in r.output.splitlines() if x.startswith("convcost: error:")]
    assert len(lines) == 1, r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- --model-arg values

@pytest.mark.parametrize("value,needle", [
    ("n=" + "9" * 5000, "--model-arg n: '999"),
    ("l=" + "[" * 20000 + "]" * 20000, "--model-arg l: nesting deeper than"),
    ("d=2024-13-45", "--model-arg d: '2024-13-45' is not a valid !!timestamp"),
    ("b=!!bool maybe", "--model-arg b: 'maybe' is not a valid !!bool"),
    ("n=!!int eight", "--model-arg n: 'eight' is not a valid !!int"),
    ("t=!!timestamp never", "--model-arg t: 'never' is not a valid !!timestamp"),
    ("m={a: [1, 2]}", "not a list or mapping"),
    ("class=3", "KEY a Python identifier"),
])
def test_model_arg_values_are_one_line_exit_2(value, needle):
    r = CliRunner().invoke(cli, ["analyze", "--no-time", TINYNET, "--model-arg", value])
    line = one_error(r, 2, needle)
    assert len(line) < 400


def test_model_arg_unicode_identifier_is_an_identifier():
    """'ширина' is a Python identifier (budgets accept it): it reaches the builder, which
    refuses it as an unexpected keyword (exit 3), not the option parser (exit 2)."""
    from convcost.sources.load import parse_model_args

    assert parse_model_args(["ширина=16"]) == {"ширина": 16}
    r = CliRunner().invoke(cli, ["analyze", "--no-time", TINYNET, "--model-arg", "ширина=16"])
    one_error(r, 3, "ширина")


def test_baseline_nested_100000_deep_is_one_line(tmp_path):
    (tmp_path / "base.json").write_text("[" * 100_000 + "]" * 100_000)
    b = tmp_path / "budget.yaml"
    b.write_text(f"version: 1\nbaseline: base.json\nchecks:\n  - name: t\n    model: "
                 f"{EXAMPLES / 'tiny.yaml'}\n    limits: {{params: 1M}}\n")
    r = CliRunner().invoke(cli, ["check", str(b)])
    one_error(r, 2, "base.json", "nested too deep")


def test_spec_flow_nesting_is_convcost_own_limit(tmp_path):
    """The limit and its message are convcost's whatever the YAML library's own limit is:
    just over MAX_DEPTH (far below any parser's) and far over it."""
    from convcost.sources.yamlio import MAX_DEPTH

    for depth in (MAX_DEPTH + 1, 100_000):
        p = tmp_path / f"deep{depth}.yaml"
        p.write_text("input: [3, 8, 8]\nlayers: " + "[" * depth + "]" * depth + "\n")
        r = CliRunner().invoke(cli, ["analyze", "--no-time", str(p)])
        one_error(r, 2, f"{p}:2: nesting deeper than {MAX_DEPTH} levels")
    ok = tmp_path / "quoted.yaml"  # brackets inside quotes and comments are text
    ok.write_text("name: '" + "[" * 200 + "'  # " + "{" * 200 + "\ninput: [3, 8, 8]\n"
                  "layers:\n  - conv: {out: 4, kernel: 3}\n")
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(ok), "-f", "json"])
    assert r.exit_code == 0, r.output


def test_valid_yaml_values_still_load(tmp_path):
    from convcost.sources.yamlio import load_yaml_text

    d = load_yaml_text("a: !!int 8\nb: !!bool true\nc: 2024-01-05\nd: '[[['\n", "t")
    assert d["a"] == 8 and d["b"] is True and str(d["c"]) == "2024-01-05" and d["d"] == "[[["
    assert json.dumps({"x": d["a"]})
