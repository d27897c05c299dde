"""Option rules shared by every command: -o infers the format from its extension and refuses a
contradiction, --depth applies to every format, --batch must agree with --input-shape, --device
is validated without timing, --plot is checked before any work and means something without
timing, latencies print in plain notation, and calibrate --quick never replaces a full one."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from convcost.cli import cli
from convcost.units import fmt_ms
from tests.conftest import EXAMPLES

TINY = str(EXAMPLES / "tiny.yaml")
TINYNET = f"{EXAMPLES}/models.py:TinyNet"
COMMANDS = {
    "analyze": ["analyze", "--no-time", TINY],
    "compare": ["compare", "--no-time", "--in", "16", "--out", "16", "--size", "8"],
    "check": ["check", "--no-time", str(EXAMPLES / "budget.yaml")],
}


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def _kind(text: str) -> str:
    """What a written report is, judged by its content."""
    if text.lstrip().startswith("{"):
        json.loads(text)
        return "json"
    if text.startswith("## ") or "\n| " in text:
        return "markdown"
    if text.count(",") > 10 and "\n" in text and not text.startswith(" "):
        return "csv"
    return "table"


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("ext,kind", [(".json", "json"), (".csv", "csv"), (".md", "markdown"),
                                      (".txt", "table")])
def test_output_extension_decides_the_format(tmp_path, command, ext, kind):
    out = tmp_path / f"report{ext}"
    r = invoke(*COMMANDS[command], "-o", str(out))
    if command == "check" and kind == "csv":  # check has no CSV report: refused before any work
        assert r.exit_code == 2 and "this command writes table, json, markdown, not csv" in r.output
        assert not out.exists()
        return
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert _kind(text) == kind, text[:300]
    if kind == "table":
        assert not any(line != line.rstrip() for line in text.splitlines())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_format_contradicting_the_extension_is_refused(tmp_path, command):
    out = tmp_path / "report.json"
    r = invoke(*COMMANDS[command], "-f", "markdown", "-o", str(out))
    assert r.exit_code == 2
    assert f"--format markdown but -o {out} is a .json file (json)" in r.output
    assert not out.exists()
    # an agreeing --format and an unknown extension with --format are fine
    assert invoke(*COMMANDS[command], "-f", "json", "-o", str(out)).exit_code == 0
    other = tmp_path / "report.out"
    assert invoke(*COMMANDS[command], "-f", "json", "-o", str(other)).exit_code == 0
    json.loads(other.read_text())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unknown_extension_without_format_and_missing_folder(tmp_path, command):
    r = invoke(*COMMANDS[command], "-o", str(tmp_path / "report.xlsx"))
    assert r.exit_code == 2 and "cannot tell the format from '.xlsx'" in r.output
    missing = tmp_path / "no" / "such" / "report.json"
    r = invoke(*COMMANDS[command], "-o", str(missing))
    assert r.exit_code == 2 and "does not exist; create it first" in r.output
    assert not missing.parent.exists()


def test_cache_export_rules(tmp_path):
    r = invoke("cache", "export", "-f", "json", str(tmp_path / "m.csv"))
    assert r.exit_code == 2 and "--format json but" in r.output
    r = invoke("cache", "export", str(tmp_path / "m.txt"))
    assert r.exit_code == 2 and "cannot tell the format" in r.output
    r = invoke("cache", "export", str(tmp_path / "none" / "m.json"))
    assert r.exit_code == 2 and "does not exist" in r.output
    assert invoke("cache", "export", str(tmp_path / "m.csv")).exit_code == 0
    assert (tmp_path / "m.csv").read_text().startswith("label,scope,")


def test_depth_applies_to_every_format():
    base = ["analyze", "--no-time", TINYNET, "--depth", "1"]
    d = json.loads(invoke(*base, "-f", "json").stdout)
    assert d["depth"] == 1
    assert [m["name"] for m in d["modules"]] == ["stem", "grouped", "dw", "pw", "head"]
    assert sum(m["macs"] for m in d["modules"]) == d["totals"]["macs"]
    assert sum(m["params"] for m in d["modules"]) == d["totals"]["params"]
    assert len(d["layers"]) > len(d["modules"])  # the leaves are still there
    rows = list(csv.DictReader(io.StringIO(invoke(*base, "-f", "csv").stdout)))
    assert [r["name"] for r in rows[:5]] == ["stem", "grouped", "dw", "pw", "head"]
    assert int(rows[0]["macs"]) == d["modules"][0]["macs"]
    md = invoke(*base, "-f", "markdown").stdout
    assert "| `stem` | ConvBNAct |" in md and "`stem.0`" not in md
    table = invoke(*base).stdout
    assert "stem.0" not in table and "ConvBNAct" in table


def test_csv_carries_not_counted_operators_and_never_called():
    rows = list(csv.DictReader(io.StringIO(invoke("analyze", "--no-time", TINYNET, "-f", "csv").stdout)))
    nc = {r["name"]: r["kind"] for r in rows if r["op"] == "not counted"}
    assert nc == {"aten::hardtanh_": "4 call(s)", "aten::mean": "1 call(s)"}


def test_batch_and_input_shape():
    ok = invoke("analyze", "--no-time", TINYNET, "--input-shape", "4,3,32,32", "--batch", "4", "-f", "json")
    assert json.loads(ok.stdout)["input_shape"] == [4, 3, 32, 32]
    r = invoke("analyze", "--no-time", TINYNET, "--input-shape", "1,3,32,32", "--batch", "4")
    assert r.exit_code == 2 and "--batch 4 disagrees with --input-shape 1,3,32,32 (batch 1)" in r.output
    r = invoke("compare", "--no-time", TINYNET, "--input-shape", "2,3,32,32", "--batch", "8")
    assert r.exit_code == 2 and "disagrees" in r.output


@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_device_is_validated_even_without_timing(command):
    args = [TINY] if command == "analyze" else []
    r = invoke(command, "--no-time", *args, "--device", "tpu")
    assert r.exit_code == 2 and "tpu" in r.output


def test_plot_is_checked_before_any_work(tmp_path):
    r = invoke("analyze", TINY, "--plot", str(tmp_path / "p.jpg"))
    assert r.exit_code == 2 and "use a name ending in .png" in r.output
    r = invoke("compare", "--plot", str(tmp_path / "missing" / "p.png"))
    assert r.exit_code == 2 and "does not exist" in r.output


def _png_title(path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        return im.text["Title"]


def test_plot_without_timing_plots_the_counted_ratios(tmp_path):
    png = tmp_path / "c.png"
    r = invoke("compare", "--no-time", "--groups", "1,2,4", "--plot", str(png))
    assert r.exit_code == 0, r.output
    title = _png_title(png)
    assert "counted params and MAC ratios (not timed)" in title and "[, ]" not in title
    png = tmp_path / "a.png"
    r = invoke("analyze", "--no-time", TINYNET, "--plot", str(png))
    assert r.exit_code == 0, r.output
    assert "MACs and params of the largest layers (not timed)" in _png_title(png)


@pytest.mark.parametrize("ms,text", [
    (1183.0, "1.18 s"), (3790.0, "3.79 s"), (0.812, "812 us"), (3.79, "3.79 ms"),
    (999.96, "1.00 s"), (0.99996, "1.00 ms"), (0.0004, "400 ns"), (95300.0, "95.3 s"),
    (0.0, "0 ns"), (None, "-"),
])
def test_latency_in_plain_notation(ms, text):
    assert fmt_ms(ms) == text
    assert "e+" not in fmt_ms(ms) and "e-" not in fmt_ms(ms)


def test_calibrate_quick_never_replaces_a_full_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVCOST_CACHE_DIR", str(tmp_path))
    r = invoke("calibrate", "--device", "cpu", "--quick", "-f", "json")
    assert r.exit_code == 0, r.output
    stored = json.loads((tmp_path / "peaks.json").read_text())
    (key, peaks), = stored.items()
    assert peaks["details"]["quick"] is True
    # a quick calibration replaces a quick one; make the stored one a full one
    peaks["details"]["quick"] = False
    peaks["bandwidth_gbs"] = 12345.0
    (tmp_path / "peaks.json").write_text(json.dumps(stored))
    r = invoke("calibrate", "--device", "cpu", "--quick", "-f", "json")
    assert r.exit_code == 0, r.output
    assert "the full calibration of" in r.stderr and "is kept" in r.stderr
    assert json.loads(r.stdout)["cache"] is None
    assert json.loads((tmp_path / "peaks.json").read_text())[key]["bandwidth_gbs"] == 12345.0
