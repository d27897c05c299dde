"""Start-up and exit of a real convcost process: outputs complete after the fast exit (no
interpreter teardown), exit codes unchanged, and no heavy module loaded that the command and
format do not need."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLES, ROOT


def convcost(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convcost", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_fast_exit_keeps_stdout_and_files_complete(tmp_path):
    out = tmp_path / "report.json"
    p = convcost("analyze", str(EXAMPLES / "mobilenet_v1.yaml"), "--no-time", "-o", str(out))
    assert p.returncode == 0, p.stderr
    d = json.loads(out.read_text())  # the whole file: it parses
    assert d["totals"]["macs"] > 0 and len(d["layers"]) > 20
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic rename happened
    p = convcost("compare", str(EXAMPLES / "mobilenet_v1.yaml"), "--no-time", "-f", "csv")
    assert p.returncode == 0, p.stderr
    rows = list(csv.reader(io.StringIO(p.stdout)))
    assert rows[0][0] == "layer" and len(rows) > 50
    assert all(len(r) == len(rows[0]) for r in rows)  # no row cut short


def test_fast_exit_keeps_exit_codes(tmp_path):
    budget = tmp_path / "b.yaml"
    budget.write_text(f"version: 1\nchecks:\n  - name: t\n    model: {EXAMPLES / 'tiny.yaml'}\n"
                      "    limits: {params: 10}\n")
    junit = tmp_path / "j.xml"
    p = convcost("check", str(budget), "--junit", str(junit))
    assert p.returncode == 1 and "FAILED" in p.stdout
    assert junit.read_text().rstrip().endswith("</testsuites>")
    assert convcost("analyze", "nope.yaml").returncode == 2


@pytest.mark.parametrize(("source", "extra"), [
    (str(EXAMPLES / "tiny.yaml"), ()),
    ("examples/models.py:MobileNetV2", ("--input-shape", "1,3,32,32")),
])
def test_json_reports_load_only_what_they_need(source, extra):
    """No rich for JSON, no yaml for a model source, none of fvcore's unused modules."""
    code = ("import sys\n"
            "sys.argv = ['convcost', 'analyze', *sys.argv[1:], '--no-time', '-f', 'json']\n"
            "from convcost.cli import cli\n"
            "try:\n    cli.main(standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('rich', 'fvcore.nn.focal_loss', 'iopath', 'tabulate', 'yaml') "
            "if m in sys.modules]\n"
            "print('LOADED', bad)\n")
    p = subprocess.run([sys.executable, "-c", code, source, *extra], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CONVCOST_ISOLATION": "off"})
    assert p.returncode == 0, p.stderr
    want = "LOADED ['yaml']" if source.endswith(".yaml") else "LOADED []"
    assert want in p.stdout, p.stdout[-500:]
