"""Backends (--backend eager,inductor,onnxruntime,openvino): real runtimes on small layers, their
outputs checked against eager before timing, per-backend rows and fingerprints, failures marked
per row, missing extras named before any work. No timing thresholds: only that figures exist."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from convcost.cli import cli
from convcost.timing import backends
from convcost.timing.backends import OutputMismatch, check_against_eager, parse_backends
from convcost.timing.engine import FAILED, MEASURED, TimingEngine
from convcost.timing.harness import TimingConfig
from convcost.timing.kernel import Kernel
from convcost.timing.table import LatencyTable
from tests.conftest import EXAMPLES
from tests.fixtures.backend_models import NumpyDetour, Unexportable
from tests.helpers import latency_budget

pytest.importorskip("onnxruntime", reason="the onnx extra (convcost[onnx]) is part of .[test]")

FIXTURES = "tests/fixtures/backend_models.py"
SMALL = ["--in", "8", "--out", "8", "--size", "8", "--batch", "2", "--max-time", "0.05",
         "--time-budget", "600"]  # a budget no loaded machine runs out of (setup counts in it)
FP_FIELDS = ("name", "version", "provider", "threads", "graph_opt")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def _cfg() -> TimingConfig:
    return TimingConfig(max_time_s=0.05, min_samples=3, min_rounds=2)


# ------------------------------------------------------------------ the output check


def test_check_against_eager_tolerance_per_dtype():
    ref = torch.ones(2, 3)
    assert check_against_eager(ref + 1e-5, ref, "fp32") == pytest.approx(1e-5, rel=1e-2)
    with pytest.raises(OutputMismatch, match="max relative error"):
        check_against_eager(ref + 2e-3, ref, "fp32")
    check_against_eager(ref + 2e-3, ref, "fp16")  # within fp16's 1e-2
    with pytest.raises(OutputMismatch, match="shape"):
        check_against_eager(torch.ones(3, 2), ref, "fp32")
    with pytest.raises(OutputMismatch, match="non-finite"):
        check_against_eager(ref * math.nan, ref, "fp32")
    assert backends.tolerance("bf16") > backends.tolerance("fp16") > backends.tolerance("fp32")


# ------------------------------------------------------------------ choosing backends


def test_parse_backends_names_order_and_dedup():
    assert parse_backends("eager") == ("eager",)
    assert parse_backends("onnxruntime, eager,onnxruntime", "cpu") == ("onnxruntime", "eager")


def test_unknown_backend_is_one_line_exit_2():
    r = invoke("compare", "--backend", "tensorrt", *SMALL)
    assert r.exit_code == 2
    assert "--backend 'tensorrt': use eager, inductor, onnxruntime, openvino" in r.output
    assert "Traceback" not in r.output


def test_missing_extra_is_named_before_any_work(monkeypatch):
    """A backend whose runtime is not installed: one line naming the extra, exit 2, and no
    counting or timing done (no report, no progress)."""
    monkeypatch.setattr(backends.OPENVINO, "needs", ("convcost_no_such_runtime",))
    r = invoke("analyze", str(EXAMPLES / "tiny.yaml"), "--backend", "eager,openvino")
    assert r.exit_code == 2
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert lines == ["convcost: error: --backend openvino: needs the openvino extra: pip install "
                     "'convcost[openvino]' (convcost_no_such_runtime is not installed)"]


def test_openvino_refuses_cuda_and_backend_needs_timing(monkeypatch):
    monkeypatch.setattr(backends.OPENVINO, "needs", ())  # as if installed (CI does not have it)
    assert backends.OPENVINO.unavailable("cuda:0") == "times on cpu only; use --device cpu"
    assert backends.OPENVINO.unavailable("cpu") is None
    r = invoke("compare", "--no-time", "--backend", "onnxruntime")
    assert r.exit_code == 2 and "drop --no-time" in r.output


# ------------------------------------------------------------------ the engine


def test_engine_onnxruntime_checks_output_and_records_setup():
    e = TimingEngine(_cfg(), backend="onnxruntime", budget_s=None)
    mods = [nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)]
    keys = e.add_group([Kernel(m, [(2, 8, 8, 8)], (2, 8, 8, 8)) for m in mods], paired=True)
    e.run()
    for k in keys:
        r = e.kernel(k)
        assert r.status == MEASURED and r.median_ms > 0
        assert r.setup_s is not None and r.setup_s > 0
        assert r.check["against"] == "eager" and r.check["max_rel_err"] <= r.check["tolerance"]
        assert r.check["exporter"] in ("torchscript", "dynamo")
    assert e.pair(*keys).ratio is not None
    for f in FP_FIELDS:
        assert e.backend_info[f] is not None, f
    assert e.backend_info["provider"] == "CPUExecutionProvider"


def test_export_failure_and_wrong_output_mark_their_kernel_and_the_rest_goes_on():
    e = TimingEngine(_cfg(), backend="onnxruntime", budget_s=None)
    conv = Kernel(nn.Conv2d(3, 3, 3, padding=1), [(1, 3, 8, 8)], (1, 3, 8, 8))
    bad = Kernel(Unexportable(), [(1, 3, 8, 8)])
    wrong = Kernel(NumpyDetour(), [(1, 3, 8, 8)], (1, 3, 8, 8))
    keys = [e.add_group([k], paired=False)[0] for k in (conv, bad, wrong)]
    e.run()
    ok, failed, mismatch = (e.kernel(k) for k in keys)
    assert ok.status == MEASURED
    assert failed.status == FAILED and failed.error.startswith("onnxruntime export failed")
    assert "linalg_eigvals" in failed.error
    assert mismatch.status == FAILED and "output differs from eager" in mismatch.error


def test_backend_is_part_of_the_key_and_the_table_keeps_each(tmp_path):
    k = Kernel(nn.Conv2d(4, 4, 3, padding=1), [(1, 4, 8, 8)], (1, 4, 8, 8))
    table = LatencyTable.open(tmp_path / "t.sqlite")
    # figures of a busy machine are stored too here (the test is about the keys, and must pass
    # beside busy processes)
    eager = TimingEngine(_cfg(), table=table, backend="eager", budget_s=None, store_busy=True)
    ort = TimingEngine(_cfg(), table=table, backend="onnxruntime", budget_s=None,
                       store_busy=True)
    assert eager.key(k) != ort.key(k)
    ort.add_group([k], paired=False)
    ort.run()
    again = TimingEngine(_cfg(), table=table, backend="onnxruntime", budget_s=None,
                         store_busy=True)
    (key,) = again.add_group([k], paired=False)
    again.run()
    assert again.kernel(key).status == "cached"
    fresh = TimingEngine(_cfg(), table=table, backend="eager", budget_s=None, store_busy=True)
    (key,) = fresh.add_group([k], paired=False)
    fresh.run()
    assert fresh.kernel(key).status == MEASURED  # eager's figure is not onnxruntime's


# ------------------------------------------------------------------ through the CLI


def test_compare_eager_and_onnxruntime_side_by_side():
    r = invoke("compare", *SMALL, "--groups", "1,2", "--variants", "grouped,depthwise",
               "--backend", "eager,onnxruntime", "-f", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    rows = [d["baseline"], *d["variants"]]
    for row in rows:
        assert set(row["backends"]) == {"eager", "onnxruntime"}
        for name, fig in row["backends"].items():
            assert fig["latency_ms"] is not None and fig["latency_ms"] > 0, (name, row["label"])
        assert row["latency_ms"] == row["backends"]["eager"]["latency_ms"]  # the first backend
        chk = row["backends"]["onnxruntime"]["timing"]["output_check"]
        assert chk["max_rel_err"] <= chk["tolerance"]
        assert row["backends"]["onnxruntime"]["timing"]["setup_s"] > 0
    for v in d["variants"]:
        assert v["backends"]["onnxruntime"]["ratio_latency"] is not None
    fp = d["timing"]["backends"]["onnxruntime"]["fingerprint"]
    assert {f: fp[f] for f in FP_FIELDS} == {
        "name": "onnxruntime", "version": fp["version"], "provider": "CPUExecutionProvider",
        "threads": d["device"]["threads"], "graph_opt": "ORT_ENABLE_ALL"}  # the run's (auto)
    table = invoke("compare", *SMALL, "--groups", "1,2", "--variants", "grouped",
                   "--backend", "eager,onnxruntime")
    assert table.exit_code == 0, table.output
    out = table.stdout
    for col in ("latency eager", "latency ratio eager", "latency onnxruntime",
                "latency ratio onnxruntime"):
        assert col in out
    assert "backend onnxruntime" in out and "setup (export + session)" in out
    assert "onnxruntime" in next(ln for ln in out.splitlines() if "grouped g=2" in ln)
    csv_out = invoke("compare", *SMALL, "--groups", "1,2", "--variants", "grouped",
                     "--backend", "eager,onnxruntime", "-f", "csv").stdout
    header = csv_out.splitlines()[0].split(",")
    assert "latency_ms:onnxruntime" in header and "ratio_latency:onnxruntime" in header


def test_analyze_model_whose_export_fails_marks_the_row_and_goes_on():
    r = invoke("analyze", f"{FIXTURES}:ConvEig", "--input-shape", "1,3,8,8", "--max-time",
               "0.05", "--backend", "eager,onnxruntime", "-f", "json")
    assert r.exit_code == 4, r.output  # incomplete: one measurement failed, the rest reported
    d = json.loads(r.stdout)
    conv = next(x for x in d["layers"] if x["name"] == "conv")
    assert conv["backends"]["eager"]["latency_ms"] > 0
    assert conv["backends"]["onnxruntime"]["latency_ms"] > 0
    assert d["backends"]["eager"]["latency_ms"] > 0
    model = d["backends"]["onnxruntime"]
    assert model["latency_ms"] is None
    assert "onnxruntime export failed" in model["timing"]["error"]
    assert any("(model) [onnxruntime]" in f for f in d["timing"]["failures"])


def test_budget_latency_on_onnxruntime(tmp_path):
    b = latency_budget(tmp_path / "budget.yaml", "onnxruntime")
    r = invoke("check", str(b), "--max-time", "0.05", "-f", "json")
    assert r.exit_code == 0, r.output
    lat = json.loads(r.stdout)["metrics"]["tiny"]["latency"]
    assert lat["backend"]["name"] == "onnxruntime" and lat["setup_s"] > 0
    b.write_text(b.read_text().replace("onnxruntime", "tvm"))
    r = invoke("check", str(b))
    assert r.exit_code == 2 and "latency backend 'tvm'; use one of eager" in r.output
    assert f"{b}:6:" in r.output


def _compare_on(backend: str) -> dict:
    """The JSON of a small grouped compare timed on ``backend`` alone (exit 0 checked)."""
    r = invoke("compare", *SMALL, "--groups", "1,2", "--variants", "grouped",
               "--backend", backend, "-f", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_inductor_compiles_small_layers_outputs_checked():
    if backends.INDUCTOR.unavailable("cpu"):
        pytest.skip(backends.INDUCTOR.unavailable("cpu"))
    d = _compare_on("inductor")
    for row in (d["baseline"], *d["variants"]):
        fig = row["backends"]["inductor"]
        assert fig["latency_ms"] > 0
        assert fig["timing"]["setup_s"] > 0  # the compile, outside the measurement
        assert fig["timing"]["output_check"]["max_rel_err"] <= 1e-3
    fp = d["timing"]["backends"]["inductor"]["fingerprint"]
    assert fp["name"] == "inductor" and "dynamic=False" in fp["graph_opt"]
    assert d["timing"]["backends"]["inductor"]["setup_s"] > 0


def test_inductor_gives_each_kernel_its_own_compiled_code():
    """Dynamo caches per code object: one shared entry point would hit the recompile limit
    after 8 kernels and silently run eager. Each kernel gets its own."""
    if backends.INDUCTOR.unavailable("cpu"):
        pytest.skip(backends.INDUCTOR.unavailable("cpu"))
    from convcost.timing.backends.inductor import _fresh_caller

    a, b = _fresh_caller(), _fresh_caller()
    assert a.__code__ is not b.__code__
    assert a(nn.Identity(), torch.ones(1)).item() == 1.0


def test_openvino_where_installed():
    pytest.importorskip("openvino", reason="openvino is an optional extra (convcost[openvino])")
    d = _compare_on("openvino")
    for row in (d["baseline"], *d["variants"]):
        fig = row["backends"]["openvino"]
        assert fig["latency_ms"] > 0
        assert fig["timing"]["output_check"]["max_rel_err"] <= 1e-3
    fp = d["timing"]["backends"]["openvino"]["fingerprint"]
    assert fp["provider"] == "CPU plugin" and fp["precision"] == "f32"


def test_plot_has_one_series_per_backend(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "b.png"
    r = invoke("compare", *SMALL, "--groups", "1,2", "--variants", "grouped",
               "--backend", "eager,onnxruntime", "--plot", str(png))
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cache_list_names_the_backend():
    r = invoke("compare", *SMALL, "--groups", "1", "--variants", "depthwise",
               "--backend", "eager,onnxruntime")
    assert r.exit_code == 0, r.output
    out = invoke("cache", "list", "--wide").stdout
    head = next(ln for ln in out.splitlines() if "kernel" in ln)
    assert "backend" in head
    rows = [ln for ln in out.splitlines() if "Conv2d" in ln]
    assert any(" onnxruntime " in ln for ln in rows) and any(" eager " in ln for ln in rows)


def test_analyze_table_has_a_column_and_a_whole_model_line_per_backend():
    r = invoke("analyze", str(EXAMPLES / "tiny.yaml"), "--max-time", "0.05",
               "--backend", "eager,onnxruntime")
    assert r.exit_code == 0, r.output
    out = r.stdout
    head = next(ln for ln in out.splitlines() if "layer" in ln and "MACs" in ln)
    assert "latency eager" in head and "latency onnxruntime" in head
    assert "whole model on onnxruntime: " in out
    assert "backend onnxruntime 1." in out and "CPUExecutionProvider" in out
