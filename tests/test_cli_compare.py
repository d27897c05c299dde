"""CliRunner tests of `convcost compare`: built-in layer, specs, models, formats and errors."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from convcost.cli import cli
from tests.conftest import EXAMPLES


def run(*args):
    return CliRunner().invoke(cli, ["compare", "--no-time", *args])


def test_default_layer_groups_1_2_4_8_no_files():
    r = run("--groups", "1,2,4,8")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "64->64 3x3 on 56x56, batch 32" in out
    for label in ("original (dense)", "grouped g=2", "grouped g=4", "grouped g=8", "depthwise",
                  "separable"):
        assert label in out
    assert "MACs x0.125" in out and "1/N + 1/K^2" in out


def test_default_layer_json_contract():
    r = run("--groups", "1,2,4,8", "-f", "json")
    d = json.loads(r.stdout)
    for key in ("schema_version", "source", "conventions", "baseline", "variants"):
        assert key in d
    assert d["baseline"]["variant"] == "original" and d["baseline"]["macs"] == 32 * 56 * 56 * 9 * 64 * 64
    labels = [v["label"] for v in d["variants"]]
    assert d["baseline"]["label"] == "original (dense)"
    assert labels == ["grouped g=2", "grouped g=4", "grouped g=8", "depthwise", "separable"]
    for v in d["variants"]:
        for key in ("variant", "groups", "params", "macs", "flops", "latency_ms", "ratio",
                    "analytic", "skipped"):
            assert key in v
        assert set(v["ratio"]) == {"params", "macs", "latency"}
        assert set(v["analytic"]) == {"params", "macs"}
        assert v["ratio"]["macs"] == v["analytic"]["macs"]
    g8 = d["variants"][2]
    assert g8["groups"] == 8 and g8["ratio"]["params"] == 0.125


def test_layer_options_and_groups_all():
    r = run("--in", "12", "--out", "18", "--kernel", "5", "--size", "10", "--stride", "2",
            "--batch", "2", "--groups", "all", "-f", "json")
    d = json.loads(r.stdout)
    assert d["layer"]["output_shape"] == [2, 18, 5, 5]
    assert [v["groups"] for v in d["variants"] if v["variant"] in ("dense", "grouped")] == [2, 3, 6]
    dw = next(v for v in d["variants"] if v["variant"] == "depthwise")
    assert "not a multiple" in dw["skipped"] and dw["params"] is None


def test_skip_reason_in_table_and_json():
    r = run("--in", "24", "--out", "24", "--groups", "5,6")
    assert "skipped: C=24 and N=24 are not both divisible by g=5" in r.stdout
    d = json.loads(run("--in", "24", "--out", "24", "--groups", "5", "-f", "json").stdout)
    assert "divisible" in d["variants"][0]["skipped"]


def test_variants_all_on_default():
    r = run("--variants", "all", "--groups", "4", "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    labels = [(x["variant"], x["groups"]) for x in rows]
    assert labels == [("original", "1"), ("grouped", "4"), ("depthwise", ""), ("separable", ""),
                      ("pointwise-grouped", "4"), ("shuffle", "4"), ("gdc", "")]
    pg = next(x for x in rows if x["variant"] == "pointwise-grouped")
    assert "1x1" in pg["skipped"]


def test_with_a_spec_per_layer_and_model_rows():
    r = run(str(EXAMPLES / "resnext_bottleneck.yaml"), "--kernel-size", "3", "--groups", "8",
            "-f", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert [x["name"] for x in d["layers"]] == ["block1.grouped", "block2.grouped"]
    g8 = next(v for v in d["variants"] if v["label"] == "grouped g=8")
    assert g8["substituted"] == 2 and len(g8["layers"]) == 2
    assert g8["layers"][0]["ratio"]["macs"] == 4.0  # from g=32 to g=8: 4x the MACs
    assert d["baseline"]["layer"] == "(model)"


def test_with_a_spec_table_and_layers_glob():
    r = run(str(EXAMPLES / "tiny.yaml"), "--layers", "gro*", "--groups", "1,2")
    assert r.exit_code == 0, r.output
    assert "64->64 3x3 g=4" in r.stdout and "whole model" in r.stdout
    assert "stem" not in r.stdout.split("whole model")[0]


def test_model_only_and_markdown(tmp_path):
    out = tmp_path / "c.md"
    r = run(f"{EXAMPLES}/models.py:TinyNet", "--model-only", "-f", "markdown", "-o", str(out))
    assert r.exit_code == 0
    text = out.read_text()
    assert "### Whole model" in text and "| original |" in text


@pytest.mark.parametrize("args,needle", [
    (["--groups", "0"], "'0' in '0' is not a positive integer"),
    (["--groups", "2,x"], "'x' in '2,x' is not a positive integer"),
    (["--groups", ""], "use a comma list"),
    (["--variants", "grouped,fancy"], "'fancy' is not a variant"),
    (["--in", "0"], "0 is not in the range"),
    (["--kernel", "9", "--size", "4"], "larger than --size"),
    (["--layers", "x*"], "need a SOURCE"),
])
def test_bad_options_exit_2(args, needle):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert needle in r.output


def test_layer_options_with_a_source_exit_2():
    r = run(str(EXAMPLES / "tiny.yaml"), "--in", "32")
    assert r.exit_code == 2 and "--in describes the built-in layer" in r.stderr


def test_no_matching_layer_exit_2():
    r = run(str(EXAMPLES / "tiny.yaml"), "--layers", "nothing*")
    assert r.exit_code == 2 and "no Conv1d/Conv2d/Conv3d layer matches --layers nothing*" in r.stderr


def test_golden_compare_table(golden):
    from convcost.report.compare import render_compare
    from convcost.variants.compare import compare_default

    golden("compare_default.table.txt", render_compare(compare_default(), "table"))
    golden("compare_default.md", render_compare(compare_default(), "markdown"))


@pytest.mark.parametrize("width", [60, 80, 120])
def test_golden_compare_at_terminal_widths(golden, width):
    from convcost.report.compare import render_compare
    from convcost.sources.load import load_source
    from convcost.variants.compare import compare_model

    loaded = load_source(f"{EXAMPLES}/models.py:TinyNet")
    rep = compare_model(loaded.model, loaded.input_shapes, source="examples/models.py:TinyNet",
                        name="TinyNet", variant_names=("grouped", "depthwise", "separable"),
                        groups=(1, 2, 4))
    text = render_compare(rep, "table", width=width)
    golden(f"compare_tinynet.{width}.txt", text)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width and all(x == x.rstrip() for x in lines)
    assert "variant" in text and "headline" in text  # the essential columns stay
    assert "[1]" in text and "\n[1] skipped:" in text  # notes as numbered footnotes


def test_conv1d_and_conv3d_through_the_cli_against_closed_forms():
    r = run(f"{EXAMPLES.parent}/tests/fixtures/bad_models.py:Convs1d3d", "--input-shape", "1,4,6,5",
            "--groups", "2", "-f", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    lay = {lc["name"]: {v["label"]: v for v in lc["variants"]} for lc in d["layers"]}
    # c1: Conv1d 4->8, k=3, g=2, on L=30 (6*5 flattened), padding 1 keeps L
    L, C, N, K = 30, 4, 8, 3
    assert lay["c1"]["depthwise"]["params"] == N * K  # from the grouped original: N/C per channel
    assert lay["c1"]["separable"]["params"] == C * K + C * N
    assert lay["c1"]["separable"]["macs"] == L * (C * K + C * N)
    assert lay["c1"]["grouped g=2"]["skipped"]  # already is this conv
    # c3: Conv3d 4->6, k=3x3x3 on 2x6x5 (padding 1 keeps it)
    V, C, N = 2 * 6 * 5, 4, 6
    assert lay["c3"]["grouped g=2"]["macs"] == V * 27 * C * N // 2
    assert lay["c3"]["separable"]["params"] == C * 27 + C * N
    assert lay["c3"]["separable"]["formula"] == "1/N + 1/K^3"
    t = run(f"{EXAMPLES.parent}/tests/fixtures/bad_models.py:Convs1d3d", "--input-shape", "1,4,6,5",
            "--groups", "2").stdout
    assert "(1-D) on 30" in t and "(3-D) on 2x6x5" in t
