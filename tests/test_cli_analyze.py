"""CliRunner tests of `convcost analyze` on specs: every format, -o, goldens, JSON contract."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from convcost import __version__
from convcost.cli import cli
from convcost.counting.analysis import analyze_model
from convcost.report.analyze import render_analysis
from convcost.sources.spec import build_model, example_inputs, load_spec
from tests.conftest import EXAMPLES

ALL_EXAMPLE_SPECS = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name != "budget.yaml")


def _report(name: str):
    spec = load_spec(EXAMPLES / name)
    return analyze_model(build_model(spec), example_inputs(spec), source=f"examples/{name}",
                         name=spec.name)


def test_version():
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "convcost", "--version"], capture_output=True,
                         text=True, check=True)
    assert __version__ in out.stdout


@pytest.mark.parametrize("name", ALL_EXAMPLE_SPECS)
def test_every_example_analyzes_and_rows_sum_to_totals(name):
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(EXAMPLES / name), "-f", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert sum(layer["params"] for layer in d["layers"]) == d["totals"]["params"]
    assert sum(layer["macs"] for layer in d["layers"]) == d["totals"]["macs"]
    assert sum(d["by_operator"].values()) == d["totals"]["macs"]
    assert d["totals"]["flops"] == 2 * d["totals"]["macs"]


def test_json_contract():
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(EXAMPLES / "tiny.yaml"), "--format", "json"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    for key in ("schema_version", "source", "conventions", "input_shape", "totals",
                "by_operator", "unsupported_ops", "layers"):
        assert key in d
    assert d["schema_version"] == 1
    assert d["input_shape"] == [1, 3, 32, 32]
    assert set(d["totals"]) >= {"params", "macs", "flops", "latency_ms"}
    assert d["totals"]["latency_ms"] is None
    assert {"macs", "flops", "params"} <= set(d["conventions"])
    layer = d["layers"][0]
    for key in ("name", "op", "kind", "in_shape", "out_shape", "groups", "params", "macs",
                "flops", "latency_ms"):
        assert key in layer
    assert layer == {**layer, "name": "stem", "op": "conv", "kind": "dense", "groups": 1,
                     "params": 864, "macs": 16 * 16 * 9 * 3 * 32, "out_shape": [1, 32, 16, 16]}
    kinds = {x["name"]: x["kind"] for x in d["layers"]}
    assert kinds["dw"] == "depthwise" and kinds["pw"] == "pointwise" and kinds["grouped"] == "grouped"
    assert isinstance(d["totals"]["macs"], int)


def test_batch_option_scales_macs_not_params():
    runner = CliRunner()
    one = json.loads(runner.invoke(cli, ["analyze", "--no-time", str(EXAMPLES / "tiny.yaml"), "-f",
                                         "json"]).stdout)
    four = json.loads(runner.invoke(cli, ["analyze", "--no-time", str(EXAMPLES / "tiny.yaml"), "-f", "json",
                                          "--batch", "4"]).stdout)
    assert four["totals"]["macs"] == 4 * one["totals"]["macs"]
    assert four["totals"]["params"] == one["totals"]["params"]
    assert four["input_shape"][0] == 4


def test_csv_format():
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(EXAMPLES / "tiny.yaml"), "-f", "csv"])
    assert r.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert rows[0]["name"] == "stem" and rows[0]["macs"] == str(16 * 16 * 9 * 3 * 32)
    names = [x["name"] for x in rows]
    i = names.index("total")
    assert int(rows[i]["params"]) == sum(int(x["params"]) for x in rows[:i])
    paper = rows[i + 1]
    assert paper["name"].startswith("total (conv + linear + attention")
    assert int(paper["macs"]) == sum(int(x["macs"]) for x in rows[:i] if x["op"] in ("conv", "linear"))


def test_table_format_states_conventions_and_totals():
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(EXAMPLES / "tiny.yaml")])
    assert r.exit_code == 0
    assert "FLOPs = 2 x MACs" in r.stdout and "total" in r.stdout and "13.4k" in r.stdout
    assert "MACs by operator" in r.stdout


def test_markdown_format():
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(EXAMPLES / "tiny.yaml"), "-f", "markdown"])
    assert r.exit_code == 0
    assert "| # | layer |" in r.stdout and "**total**" in r.stdout


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "markdown"])
def test_output_file(tmp_path, fmt):
    missing = tmp_path / "sub" / f"report.{fmt}"
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(EXAMPLES / "tiny.yaml"), "-f", fmt,
                                 "-o", str(missing)])
    assert r.exit_code == 2 and "does not exist; create it first" in r.stderr
    out = tmp_path / f"report.{fmt}"
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(EXAMPLES / "tiny.yaml"), "-f", fmt,
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    text = out.read_text()
    assert ("stem" in text) and ("13.4k" in text or "13450" in text)


def test_unsupported_ops_are_listed_not_hidden():
    r = CliRunner().invoke(cli, ["analyze", "--no-time", str(EXAMPLES / "resnext_bottleneck.yaml")])
    assert "not counted (no formula; 0 MACs assumed)" in r.stdout and "aten::add x2" in r.stdout
    d = json.loads(CliRunner().invoke(cli, ["analyze", "--no-time", str(EXAMPLES / "resnext_bottleneck.yaml"),
                                            "-f", "json"]).stdout)
    assert d["unsupported_ops"] == {"aten::add": 2}


@pytest.mark.parametrize("name", ["tiny.yaml", "shufflenet_unit.yaml"])
def test_golden_table(golden, name):
    """The wide form (files and pipes: every column, no wrapping)."""
    golden(name.replace(".yaml", ".table.txt"), render_analysis(_report(name), "table"))


@pytest.mark.parametrize("width", [60, 80, 120])
def test_golden_table_at_terminal_widths(golden, width):
    """What a terminal of that width shows: no line longer than it, no cut cells, dropped
    columns named."""
    text = render_analysis(_report("tiny.yaml"), "table", width=width)
    golden(f"tiny.{width}.txt", text)
    assert max(len(line) for line in text.splitlines()) <= width
    assert all(line == line.rstrip() for line in text.splitlines())
    for must in ("stem", "linear1", "3.29M", "13.4k"):  # names and figures whole
        assert must in text


@pytest.mark.parametrize("name", ["tiny.yaml", "mobilenet_v2_block.yaml"])
def test_golden_markdown(golden, name):
    golden(name.replace(".yaml", ".md"), render_analysis(_report(name), "markdown"))
