"""`convcost check`: verdicts, baselines, CI outputs and bad budget files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from convcost.cli import cli
from tests.conftest import EXAMPLES

TINY = EXAMPLES / "tiny.yaml"  # 13,450 params, 3,293,824 MACs, 6,587,648 FLOPs


def budget(tmp_path, body: str, name: str = "budget.yaml"):
    p = tmp_path / name
    p.write_text("version: 1\n" + body, encoding="utf-8")
    return p


def check(*args, env=None):
    return CliRunner(env=env).invoke(cli, ["check", *map(str, args)])


def test_pass(tmp_path):
    b = budget(tmp_path, f"checks:\n  - name: tiny\n    model: {TINY}\n    limits:\n"
                         "      params: {error: '20k', warn: '15k'}\n      macs: '4M'\n")
    r = check(b)
    assert r.exit_code == 0, r.output
    assert "PASSED: 0 failed, 0 warned, 2 passed" in r.stdout
    assert "10.3% left" in r.stdout  # params: (15k - 13.45k) / 15k against the tighter warn limit


def test_warn_passes_with_exit_0(tmp_path):
    b = budget(tmp_path, f"checks:\n  - name: tiny\n    model: {TINY}\n    limits:\n"
                         "      params: {error: '20k', warn: '13k'}\n")
    r = check(b)
    assert r.exit_code == 0
    assert "WARN tiny: params 13.4k > warn limit 13.0k: over by 450 (+3.5%); to accept it, change " \
           "checks[0].limits.params.warn" in r.stdout


def test_fail_exits_1_and_names_the_key(tmp_path):
    b = budget(tmp_path, f"checks:\n  - name: tiny\n    model: {TINY}\n    limits:\n"
                         "      macs: {error: '3M'}\n      flops: '10M'\n")
    r = check(b)
    assert r.exit_code == 1
    line = ("FAIL tiny: macs 3.29M > error limit 3.00M: over by 294k (+9.8%); to accept it, "
            "change checks[0].limits.macs.error")
    assert line in r.stdout and line in r.stderr
    assert "FAILED: 1 failed" in r.stdout


def test_per_layer_limit_judges_the_worst_layer(tmp_path):
    b = budget(tmp_path, f"checks:\n  - name: tiny\n    model: {TINY}\n    layers:\n"
                         "      - match: 'gro*'\n        params: '9k'\n")
    r = check(b)
    assert r.exit_code == 1 and "layers gro* (worst: grouped)" in r.stdout


def test_baseline_round_trip_and_regression_fail(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text(TINY.read_text())
    b = budget(tmp_path, "baseline: base.json\nchecks:\n  - name: net\n    model: net.yaml\n"
                         "    regression:\n      params: {error: '+2%'}\n      macs: {error: '+5%'}\n")
    r = check(b)
    assert r.exit_code == 0 and "no baseline" in r.stdout
    r = check(b, "--update-baseline")
    assert r.exit_code == 0 and (tmp_path / "base.json").exists()
    base = json.loads((tmp_path / "base.json").read_text())
    assert base["checks"]["net"]["params"] == 13450 and base["checks"]["net"]["macs"] == 3293824
    r = check(b)
    assert r.exit_code == 0 and "PASSED" in r.stdout
    # the model grows: the linear layer gets wider output (10 -> 40 classes)
    spec.write_text(TINY.read_text().replace("linear: {out: 10}", "linear: {out: 40}"))
    r = check(b, "-f", "json")
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    fail = next(x for x in d["results"] if x["verdict"] == "fail")
    assert fail["kind"] == "regression" and fail["metric"] == "params"
    assert fail["baseline"] == 13450 and fail["threshold"] == pytest.approx(13450 * 1.02)
    assert "checks[0].regression.params.error" in fail["message"]


def test_drop_below_baseline_notice(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text(TINY.read_text())
    b = budget(tmp_path, "baseline: base.json\nchecks:\n  - name: net\n    model: net.yaml\n"
                         "    regression:\n      params: '+2%'\n")
    check(b, "--update-baseline")
    spec.write_text(TINY.read_text().replace("conv: {out: 64, kernel: 3, groups: 4}",
                                             "conv: {out: 64, kernel: 3, groups: 16}"))
    r = check(b)
    assert r.exit_code == 0 and "below the baseline" in r.stdout and "tighten" in r.stdout


def test_json_always_written_with_limits(tmp_path):
    b = budget(tmp_path, f"checks:\n  - name: tiny\n    model: {TINY}\n    limits:\n"
                         "      params: '1k'\n")
    out = tmp_path / "report.json"
    r = check(b, "-o", out)
    assert r.exit_code == 1
    d = json.loads(out.read_text())
    assert d["passed"] is False and d["summary"]["fail"] == 1
    assert d["limits"][0]["limits"]["params"]["error"]["text"] == "1k"
    assert d["results"][0]["limit"]["key"] == "checks[0].limits.params"


def test_junit_xml_is_readable(tmp_path):
    b = budget(tmp_path, f"checks:\n  - name: tiny\n    model: {TINY}\n    limits:\n"
                         "      params: '1k'\n      macs: '10M'\n"
                         "      latency: {warn: '1 s', device: 'cuda:0'}\n")
    junit = tmp_path / "junit.xml"
    r = check(b, "--junit", junit)
    assert r.exit_code == 1
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "3" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["params", "macs", "latency"]
    assert cases[0].find("failure") is not None
    assert "checks[0].limits.params" in cases[0].find("failure").get("message")
    assert cases[1].find("failure") is None and cases[1].find("skipped") is None
    if not __import__("torch").cuda.is_available():
        assert cases[2].find("skipped") is not None


def test_latency_on_absent_device_is_skipped_with_notice(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    b = budget(tmp_path, f"checks:\n  - name: tiny\n    model: {TINY}\n    limits:\n"
                         "      latency: {error: '1 us', device: cuda, dtype: fp16}\n")
    r = check(b)
    assert r.exit_code == 0
    assert "SKIP tiny: latency: no CUDA device on this machine for the cuda limit" in r.stdout
    assert r.stdout.count("no CUDA device") == 1  # one line per skip, no repeat as a notice
    assert "SKIP" in r.stdout


def test_cpu_latency_limit_is_measured(tmp_path):
    b = budget(tmp_path, f"checks:\n  - name: tiny\n    model: {TINY}\n    limits:\n"
                         "      latency: {error: '1000 s', device: cpu}\n")
    r = check(b, "-f", "json", "--max-time", "0.05")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["results"][0]["actual"] > 0 and d["metrics"]["tiny"]["latency"]["device"] == "cpu"


def test_step_summary_appended(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    b = budget(tmp_path, f"checks:\n  - name: tiny\n    model: {TINY}\n    limits:\n"
                         "      params: '1k'\n")
    r = check(b, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert r.exit_code == 1
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "### convcost check: FAILED" in text
    assert "| tiny | params |" in text and "- FAIL tiny: params" in text
    other = tmp_path / "other.md"
    check(b, "--summary", other)
    assert "convcost check" in other.read_text()


def test_models_resolve_relative_to_the_budget(tmp_path):
    (tmp_path / "sub").mkdir()
    b = budget(tmp_path / "sub", "checks:\n  - name: tinynet\n    model: ../../m.py:TinyNet\n"
                                 "    limits: {params: '10k'}\n")
    (tmp_path / "m.py").write_text((EXAMPLES / "models.py").read_text())
    r = check(b)
    # sub/budget.yaml -> ../../m.py resolves to tmp_path.parent/m.py: does not exist
    assert r.exit_code == 3 and "no such file" in r.stderr
    b2 = budget(tmp_path / "sub", "checks:\n  - name: tinynet\n    model: ../m.py:TinyNet\n"
                                  "    input: [1, 3, 64, 64]\n    limits: {params: '10k'}\n",
                name="b2.yaml")
    assert check(b2).exit_code == 0


@pytest.mark.parametrize("body,needles", [
    ("checks:\n  - name: a\n    model: x.yaml\n    limits: {parms: '1M'}\n",
     ["budget.yaml:5", "unknown key 'parms'", "allowed: params, macs, paper_macs, flops, latency",
      "a minimal valid budget"]),
    ("chekcs: []\n", ["unknown key 'chekcs'", "allowed: version, defaults, baseline, checks"]),
    ("checks:\n  - name: a\n    model: x.yaml\n    limits: {params: 'lots'}\n",
     ["bad quantity 'lots' for params", "k/M/G/T"]),
    ("checks:\n  - name: a\n    model: x.yaml\n    limits: {latency: '12 parsecs'}\n",
     ["bad quantity '12 parsecs' for latency", "'12 ms'"]),
    ("checks:\n  - name: a\n    model: x.yaml\n    regression: {macs: 'five percent'}\n",
     ["bad quantity 'five percent' for macs", "'+5%'"]),
    ("checks:\n  - name: a\n    model: x.yaml\n    limits: {params: [1, 2]}\n",
     ["bad quantity [1, 2] for params"]),
    ("checks:\n  - name: a\n    model: x.yaml\n    limits: {params: {fatal: '1M'}}\n",
     ["unknown key 'fatal'", "allowed: error, warn"]),
    ("checks: {name: a}\n", ["'checks' must be a non-empty list"]),
    ("checks:\n  - model: x.yaml\n    limits: {params: '1M'}\n", ["needs a 'name'"]),
    ("checks:\n  - name: a\n    limits: {params: '1M'}\n", ["needs a 'model'"]),
    ("checks:\n  - name: a\n    model: x.yaml\n", ["nothing to check"]),
    ("checks:\n  - {name: a, model: x.yaml, limits: {params: 1M}}\n"
     "  - {name: a, model: y.yaml, limits: {params: 1M}}\n", ["duplicate check name 'a'"]),
    ("defaults: {input: [1, 3, 0, 224]}\nchecks:\n  - {name: a, model: m.py:N, limits: {params: 1M}}\n",
     ["input [1, 3, 0, 224] must be a list of positive integers"]),
])
def test_bad_budget_files_exit_2(tmp_path, body, needles):
    b = budget(tmp_path, body)
    r = check(b)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in r.output
    for n in needles:
        assert n in err, (n, err)


def test_wrong_version_and_unreadable_budget(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("version: 2\nchecks: []\n")
    r = check(p)
    assert r.exit_code == 2 and "'version' must be 1" in r.stderr
    r = check(tmp_path / "missing.yaml")
    assert r.exit_code == 2 and "no such budget file" in r.stderr


def test_missing_model_exits_3(tmp_path):
    b = budget(tmp_path, "checks:\n  - name: a\n    model: nope.py:Net\n    limits: {params: 1M}\n")
    r = check(b)
    assert r.exit_code == 3 and "no such file" in r.stderr


def test_example_budget_passes():
    r = check(EXAMPLES / "budget.yaml", "--max-time", "0.05")
    assert r.exit_code == 0, r.output


def test_paper_macs_limit_and_regression(tmp_path):
    """The papers' convention (conv + linear + attention) can be limited apart from fvcore's."""
    from tests.conftest import EXAMPLES as EX

    b = tmp_path / "b.yaml"
    b.write_text(f"version: 1\nchecks:\n  - name: tiny\n    model: {EX}/tiny.yaml\n"
                 "    limits: {paper_macs: {error: '3.2M'}, macs: {error: '3.2M'}}\n"
                 "    regression: {paper_macs: {error: '+1%'}}\n")
    r = CliRunner().invoke(cli, ["check", "--no-time", str(b), "-f", "json"])
    d = json.loads(r.stdout)
    by = {x["metric"]: x for x in d["results"] if x["kind"] == "absolute"}
    assert by["paper_macs"]["verdict"] == "pass" and by["paper_macs"]["actual"] == 3_179_136
    assert by["macs"]["verdict"] == "fail" and by["macs"]["actual"] == 3_293_824
    assert r.exit_code == 1
    CliRunner().invoke(cli, ["check", "--no-time", str(b), "--update-baseline"])
    base = json.loads((tmp_path / ".convcost" / "baseline.json").read_text())
    assert base["checks"]["tiny"]["paper_macs"] == 3_179_136
