"""Timing harness on the CPU: structure of measurements, fingerprint, faults, Ctrl-C, plots."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from convcost.cli import cli
from convcost.errors import InputError
from convcost.timing.device import Numerics, fingerprint, fingerprint_line, resolve_device
from convcost.timing.harness import (
    Bench,
    OutputCheckError,
    TimingConfig,
    check_output,
    measure_interleaved,
    measure_one,
    summarize,
)
from tests.conftest import EXAMPLES, ROOT, default_signals

FAULTY = ROOT / "tests" / "fixtures" / "faulty.py"
FAST = ["--max-time", "0.05"]


def test_summarize_quartiles():
    med, q1, q3, lo, hi = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (med, q1, q3, lo, hi) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert summarize([7.0]) == (7.0, 7.0, 7.0, 7.0, 7.0)


def test_measurement_structure_on_a_small_conv():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(1, 8, 16, 16)
    cfg = TimingConfig(max_time_s=0.2, min_samples=5, rel_iqr=0.5)
    m = measure_one(lambda: conv(x), cfg, expected_shape=(1, 8, 16, 16))
    assert m.error is None
    assert m.n >= 5 and m.calls_per_sample >= 1
    assert m.min_ms <= m.q1_ms <= m.median_ms <= m.q3_ms <= m.max_ms
    assert m.iqr_ms == pytest.approx(m.q3_ms - m.q1_ms)
    # the flag follows the stop rule that ended it (IQR, a known median, or a settled one:
    # which one depends on the machine's noise, the flag's meaning does not)
    assert m.converged == (m.stop in ("iqr", "median", "settled"))
    if m.stop == "iqr":
        assert m.n >= 5 and m.rel_iqr <= 0.5
    d = m.to_dict()
    assert {"median_ms", "iqr_ms", "n", "converged", "rel_iqr"} <= set(d)


def test_convergence_rule_on_given_samples():
    """The stop rule itself, on fixed samples (no timing involved)."""
    cfg = TimingConfig(min_samples=5, rel_iqr=0.03)
    b = Bench(lambda: torch.ones(1), cfg)
    b.samples = [1.0, 1.01, 0.99, 1.0, 1.0]
    assert b.converged and b.done
    b.samples = [1.0, 1.0, 1.0, 1.0]  # below the floor on samples
    assert not b.converged and not b.done
    b.samples = [1.0, 2.0, 1.0, 2.0, 1.5, 1.2]  # IQR/median far above 3%
    assert not b.converged and not b.done
    b.spent = cfg.max_time_s  # the cap ends it, unconverged
    assert b.done and not b.result().converged


def test_unconverged_is_flagged():
    calls = [0]

    def drifting():  # every call slower than the last: no median ever settles
        calls[0] += 1
        time.sleep(0.0005 + 0.00005 * calls[0])
        return torch.ones(1)

    cfg = TimingConfig(max_time_s=0.05, min_samples=10, rel_iqr=1e-6, median_rse=1e-6)
    m = measure_one(drifting, cfg)
    assert not m.converged and m.stop == "cap" and m.n >= 10 and m.median_ms is not None


def test_interleaving_alternates_callables():
    order: list[str] = []
    one = torch.ones(1)

    def call(tag: str) -> torch.Tensor:
        order.append(tag)
        return one

    a = Bench(lambda: call("a"), TimingConfig(max_time_s=0.02, min_samples=1000))
    b = Bench(lambda: call("b"), TimingConfig(max_time_s=0.02, min_samples=1000))
    measure_interleaved([a, b])
    runs = 1 + sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert runs >= 4  # a...b...a...b: rounds alternate, not all a then all b


def test_output_check():
    check_output(torch.ones(2, 3), (2, 3))
    with pytest.raises(OutputCheckError, match="shape"):
        check_output(torch.ones(2, 3), (2, 4))
    with pytest.raises(OutputCheckError, match="non-finite"):
        check_output(torch.tensor([1.0, float("inf")]), None)
    with pytest.raises(OutputCheckError, match="not a tensor"):
        check_output("x", None)


def test_failing_callable_is_reported_and_others_go_on():
    def boom():
        raise RuntimeError("kernel not supported")

    ok = Bench(lambda: torch.ones(4) * 2, TimingConfig(max_time_s=0.02))
    bad = Bench(boom, TimingConfig(max_time_s=0.02))
    m_ok, m_bad = measure_interleaved([ok, bad])
    assert m_ok.error is None and m_ok.median_ms is not None
    assert m_bad.error == "RuntimeError: kernel not supported" and m_bad.median_ms is None


def test_fingerprint_fields():
    fp = fingerprint(Numerics("cpu", "fp32", False, 2), batch=4)
    for key in ("device", "name", "torch", "cuda", "cudnn", "onednn", "threads", "tf32", "dtype",
                "memory_format", "batch", "compute_capability", "driver"):
        assert key in fp
    assert fp["threads"] == 2 and fp["batch"] == 4 and fp["tf32"] == {"matmul": False, "cudnn": False}
    assert "2 threads" in fingerprint_line(fp) and "TF32 off" in fingerprint_line(fp)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_bad_device_option_exits_2():
    r = CliRunner().invoke(cli, ["compare", "--device", "gpu"])
    assert r.exit_code == 2 and "use auto, cpu, cuda or cuda:N" in r.stderr


def test_analyze_timed_json_latency_fields():
    r = CliRunner().invoke(cli, ["analyze", f"{EXAMPLES}/tiny.yaml", "-f", "json", "--device",
                                 "cpu", "--threads", "1", *FAST])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["totals"]["latency_ms"] > 0
    convs = [x for x in d["layers"] if x["op"] in ("conv", "linear")]
    assert all(x["latency_ms"] > 0 for x in convs)
    assert all(x["latency_ms"] is None for x in d["layers"] if x["op"] not in ("conv", "linear"))
    m = convs[0]["timing"]["measurement"]
    assert m["min_ms"] <= m["median_ms"] <= m["max_ms"] and m["n"] >= 1
    assert convs[0]["timing"]["roofline"]["achieved_tflops"] > 0
    assert d["device"]["threads"] == 1 and d["device"]["dtype"] == "fp32"
    assert d["timing"]["layers_timed"] == len(convs)
    assert d["timing"]["layers_sum_ms"] > 0


def test_compare_timed_json_and_headline():
    r = CliRunner().invoke(cli, ["compare", "--in", "16", "--out", "16", "--size", "16",
                                 "--batch", "2", "--groups", "1,4", "-f", "json", *FAST])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["baseline"]["latency_ms"] > 0
    for v in d["variants"]:
        assert v["latency_ms"] > 0
        lo, hi = v["latency_ratio_ci"]  # paired: median of per-round ratios, 95% interval
        assert lo <= v["ratio"]["latency"] <= hi
        assert v["timing"]["pair"]["rounds"] >= 1 and v["latency_source"] == "measured"
        assert "measurement" in v["timing"]
    t = CliRunner().invoke(cli, ["compare", "--in", "16", "--out", "16", "--size", "16",
                                 "--groups", "4", *FAST])
    assert ("MACs x0.250, latency x" in t.stdout or "MACs x0.250, noisy: x" in t.stdout)
    assert "device:" in t.stdout


def test_compare_model_timed_whole_model_and_layer_sums():
    r = CliRunner().invoke(cli, ["compare", f"{EXAMPLES}/models.py:TinyNet", "--input-shape",
                                 "1,3,32,32", "--groups", "2", "--variants", "grouped",
                                 "-f", "json", *FAST])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["baseline"]["latency_ms"] > 0
    (g2,) = d["variants"]
    assert g2["latency_ms"] > 0 and g2["ratio"]["latency"] > 0
    sums = d["timing"]["layers_sum_ms"]
    assert sums["original"] > 0 and sums["grouped g=2"] > 0


def test_failure_rows_are_marked_and_run_goes_on(tmp_path):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["analyze", f"{FAULTY}:FaultyNet", "--input-shape", "1,3,16,16",
                                 "--dtype", "bf16", "-f", "json", "-o", str(out), *FAST])
    assert r.exit_code == 4, r.output
    assert "incomplete: 3 measurement(s) failed" in r.stderr
    d = json.loads(out.read_text())
    rows = {x["name"]: x for x in d["layers"]}
    assert rows["conv1"]["latency_ms"] > 0 and rows["conv3"]["latency_ms"] > 0
    assert rows["bad"]["latency_ms"] is None
    assert "no bf16 kernel" in rows["bad"]["timing"]["measurement"]["error"]
    assert "non-finite" in rows["nan"]["timing"]["measurement"]["error"]
    assert any("(model)" in f for f in d["timing"]["failures"])


def test_failure_in_compare_table_says_failed():
    r = CliRunner().invoke(cli, ["compare", f"{FAULTY}:FaultyNet", "--input-shape", "1,3,16,16",
                                 "--layers", "bad", "--groups", "2", "--variants", "grouped",
                                 "--dtype", "bf16", "--no-model", *FAST])
    assert r.exit_code == 4
    assert "timing failed: RuntimeError: simulated backend" in r.stdout
    assert "grouped g=2" in r.stdout


def test_plot_files(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "cmp.png"
    r = CliRunner().invoke(cli, ["compare", "--in", "16", "--out", "16", "--size", "16",
                                 "--groups", "2,4", "--plot", str(png), *FAST])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    png2 = tmp_path / "an.png"
    r = CliRunner().invoke(cli, ["analyze", f"{EXAMPLES}/tiny.yaml", "--plot", str(png2), *FAST])
    assert r.exit_code == 0 and png2.read_bytes()[:4] == b"\x89PNG"


def test_calibrate_then_roofline_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVCOST_CACHE_DIR", str(tmp_path))
    r = CliRunner().invoke(cli, ["calibrate", "--device", "cpu", "--quick", "-f", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["bandwidth_gbs"] > 0 and d["tflops"]["fp32"] > 0
    assert (tmp_path / "peaks.json").exists()
    # the peaks are per thread count: time with calibrate's (torch's default), not --threads
    # auto's, which takes fewer on a busy machine
    same = ["--threads", str(torch.get_num_threads())]
    r = CliRunner().invoke(cli, ["compare", "--in", "16", "--out", "16", "--size", "16",
                                 "--groups", "4", "-f", "json", *FAST, *same])
    v = json.loads(r.stdout)["variants"][0]["timing"]["roofline"]
    assert v["bound"] in ("memory", "compute") and v["pct_of_bound"] > 0 and v["bound_ms"] > 0
    t = CliRunner().invoke(cli, ["compare", "--in", "16", "--out", "16", "--size", "16",
                                 "--groups", "4", *FAST, *same])
    assert "% bound" in t.stdout and "run `convcost calibrate`" not in t.stdout


@pytest.mark.parametrize("to_file", [True, False])
def test_sigint_keeps_finished_rows(tmp_path, to_file):
    marker = tmp_path / "timing-started"
    out = tmp_path / "partial.json"
    env = {**os.environ, "CONVCOST_TEST_MARKER": str(marker), "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "convcost", "compare", f"{FAULTY}:SlowNet",
                          "--input-shape", "1,4,8,8", "--groups", "2", "--variants", "grouped",
                          "--max-time", "3", "-f", "json", *(["-o", str(out)] if to_file else [])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=default_signals)
    try:
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), p.stderr.read() if p.poll() is not None else "no marker"
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    if to_file:
        assert "the finished rows are written to -o" in stderr and stdout == ""
        d = json.loads(out.read_text())
    else:  # no -o: never claims a file was written
        assert "the finished rows are printed above" in stderr and "-o" not in stderr
        d = json.loads(stdout)
    assert d["timing"]["interrupted"] is True
    fast = next(x for x in d["layers"] if x["name"] == "fast")
    assert fast["baseline"]["latency_ms"] > 0  # finished before the interrupt: kept
    noisy = next(x for x in d["layers"] if x["name"] == "noisy")
    assert noisy["baseline"]["latency_ms"] is None  # under way when interrupted: missing
    assert any("noisy" in m for m in d["timing"]["missing"])
