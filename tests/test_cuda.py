"""CUDA-only checks of the timing path (skipped without a GPU; the CPU tests cover the rest)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from convcost.cli import cli
from convcost.timing.device import Numerics, numerics
from convcost.timing.harness import TimingConfig, measure_one

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cuda_events_measure_a_conv_and_tf32_is_off_in_fp32():
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).cuda()
    x = torch.randn(8, 64, 56, 56, device="cuda")
    n = Numerics("cuda:0", "fp32")
    with numerics(n):
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cudnn.benchmark
        m = measure_one(lambda: conv(x), TimingConfig(numerics=n, max_time_s=0.5))
    assert m.error is None and m.n >= 10 and m.median_ms > 0
    assert m.min_ms <= m.median_ms <= m.max_ms


def test_cuda_graph_figure_for_tiny_kernels():
    x = torch.randn(64, device="cuda")
    n = Numerics("cuda:0", "fp32")
    m = measure_one(lambda: x * 2, TimingConfig(numerics=n, max_time_s=0.3))
    assert m.median_ms < 0.020
    assert m.graph_median_ms is not None and m.graph_median_ms < m.median_ms


def test_cold_flush_runs():
    conv = torch.nn.Conv2d(32, 32, 3, padding=1).cuda()
    x = torch.randn(4, 32, 28, 28, device="cuda")
    n = Numerics("cuda:0", "fp32")
    m = measure_one(lambda: conv(x), TimingConfig(numerics=n, cold=True, max_time_s=0.3))
    assert m.error is None and m.median_ms > 0


def test_compare_on_cuda_fp16_channels_last_default():
    r = CliRunner().invoke(cli, ["compare", "--device", "cuda", "--dtype", "fp16", "--groups", "32",
                                 "--max-time", "0.3", "-f", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["device"]["memory_format"] == "channels_last" and d["device"]["dtype"] == "fp16"
    assert d["device"]["compute_capability"] and d["device"]["name"]
    assert all(v["latency_ms"] > 0 for v in d["variants"])


def test_paired_group_on_cuda_bursts_and_one_sync_per_batch():
    from convcost.timing.harness import Bench, measure_group
    from convcost.timing.stats import paired_ratio

    n = Numerics("cuda:0", "fp16", True)
    cfg = TimingConfig(numerics=n, max_time_s=0.5)
    x = torch.randn(8, 64, 56, 56, device="cuda", dtype=torch.float16).contiguous(
        memory_format=torch.channels_last)
    mods = [torch.nn.Conv2d(64, 64, 3, padding=1, groups=g).cuda().half().to(
        memory_format=torch.channels_last).eval() for g in (1, 4, 64)]
    with numerics(n), torch.inference_mode():
        res = measure_group([Bench(lambda m=m: m(x), cfg) for m in mods], paired=True)
    assert all(m.error is None and m.median_ms > 0 and m.rounds >= 1 for m in res.measurements)
    assert len({len(r) for r in res.rounds}) == 1  # aligned rounds
    pr = paired_ratio(res.rounds[0], res.rounds[2])
    assert pr is not None and pr.lo <= pr.ratio <= pr.hi


def test_engine_and_latency_table_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVCOST_CACHE_DIR", str(tmp_path))
    args = ["compare", "--device", "cuda", "--dtype", "fp16", "--groups", "1,4", "--max-time",
            "0.3", "-f", "json"]
    d1 = json.loads(CliRunner().invoke(cli, args).stdout)
    assert d1["timing"]["engine"]["measured"] == 5 and d1["device"]["driver"] is not None
    assert all(v["latency_ratio_ci"] is not None for v in d1["variants"])
    d2 = json.loads(CliRunner().invoke(cli, args).stdout)
    assert d2["timing"]["engine"]["cached"] == 5
    assert [v["latency_ms"] for v in d1["variants"]] == [v["latency_ms"] for v in d2["variants"]]
    r = CliRunner().invoke(cli, ["cache", "list", "-f", "json"])
    rows = json.loads(r.stdout)["measurements"]
    assert rows and all(x["device"] == "cuda" and x["compute_capability"] for x in rows)


def test_analyze_resnet_on_cuda_dedups_kernels():
    from tests.conftest import EXAMPLES

    r = CliRunner().invoke(cli, ["analyze", f"{EXAMPLES}/models.py:ResNet50", "--device", "cuda",
                                 "--dtype", "fp16", "--batch", "8", "--max-time", "0.2", "-f",
                                 "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    e = d["timing"]["engine"]
    assert e["unique_kernels"] < 54  # 53 convs + fc + model share kernels
    assert d["totals"]["latency_ms"] > 0


def test_backends_on_cuda_outputs_checked():
    """inductor (triton) and onnxruntime (CUDA execution provider, on torch's stream, I/O bound
    to CUDA tensors) where installed: rows filled, outputs within tolerance of eager."""
    from convcost.timing import backends

    names = [b for b in ("inductor", "onnxruntime") if not backends.get(b).unavailable("cuda:0")]
    if not names:
        pytest.skip("neither triton nor onnxruntime-gpu is installed")
    r = CliRunner().invoke(cli, ["compare", "--device", "cuda", "--in", "16", "--out", "16",
                                 "--size", "16", "--batch", "4", "--groups", "1,4",
                                 "--variants", "grouped,depthwise", "--max-time", "0.1",
                                 "--backend", ",".join(["eager", *names]), "-f", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    for row in (d["baseline"], *d["variants"]):
        for b in names:
            fig = row["backends"][b]
            assert fig["latency_ms"] is not None, (b, row["label"], fig["timing"].get("error"))
            chk = fig["timing"]["output_check"]
            assert chk["max_rel_err"] <= chk["tolerance"]
    if "onnxruntime" in names:
        fp = d["timing"]["backends"]["onnxruntime"]["fingerprint"]
        assert fp["provider"] == "CUDAExecutionProvider"
