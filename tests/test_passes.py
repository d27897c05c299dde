"""Issue 25: the training pass (backward MACs, forward + backward timing), memory figures,
tail percentiles, sweeps and the budget metrics that go with them."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from convcost.cli import cli
from convcost.counting.analysis import analyze_model
from convcost.counting.passes import (
    conv_backward_macs,
    count_pass,
    flop_counter,
    module_cost,
    peak_activation_bytes,
)
from convcost.inputs import as_example
from convcost.timing.device import Numerics
from convcost.timing.engine import FAILED, MEASURED, UNSUPPORTED, TimingEngine
from convcost.timing.harness import TimingConfig
from convcost.timing.kernel import Kernel, kernel_key
from convcost.timing.stats import tails
from convcost.timing.table import APPLICATION_ID, LatencyTable
from tests.conftest import EXAMPLES, stored_row


def _fwd_macs(conv: nn.Module, x_shape: tuple[int, ...]) -> int:
    """The forward's MACs, closed form: B x out spatial x C_out x K x C_in/g (conv), or
    B x in spatial x C_in x K x C_out/g (transposed)."""
    w = conv.weight
    k = 1
    for d in w.shape[2:]:
        k *= d
    with torch.no_grad():
        out = conv(torch.zeros(x_shape))
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        spatial = x_shape[0] * int(torch.tensor(x_shape[2:]).prod())
        return spatial * conv.in_channels * k * conv.out_channels // conv.groups
    spatial = out.shape[0] * int(torch.tensor(out.shape[2:]).prod())
    return spatial * conv.out_channels * k * conv.in_channels // conv.groups


FLAVOURS = [
    ("dense", nn.Conv2d(16, 32, 3, padding=1), (2, 16, 14, 14)),
    ("grouped", nn.Conv2d(16, 32, 3, padding=1, groups=4), (2, 16, 14, 14)),
    ("depthwise", nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), (2, 16, 14, 14)),
    ("pointwise", nn.Conv2d(16, 48, 1), (3, 16, 9, 9)),
    ("transposed", nn.ConvTranspose2d(16, 8, 3, stride=2), (2, 16, 7, 7)),
    ("transposed grouped", nn.ConvTranspose2d(16, 8, 4, stride=2, groups=2), (1, 16, 5, 5)),
    ("conv1d grouped", nn.Conv1d(12, 24, 5, groups=3), (2, 12, 40)),
    ("conv3d", nn.Conv3d(4, 8, 3, padding=1, groups=2), (1, 4, 6, 8, 8)),
]


@pytest.mark.parametrize("name,conv,shape", FLAVOURS, ids=[f[0] for f in FLAVOURS])
def test_backward_macs_closed_form_every_flavour(name, conv, shape):
    """grad-input + grad-weight = 2 x the forward's MACs (the bias gradient is a sum, no
    MACs); the weight gradient alone (an input that needs none) = 1 x."""
    fwd = _fwd_macs(conv, shape)
    c = module_cost(conv, [shape], backward=True)
    assert c is not None and c.backward_macs == 2 * fwd
    m = conv.to("meta")
    x = torch.empty(shape, device="meta")  # no input gradient: the weight's only
    pc = count_pass(m, lambda: m(x), list(m.parameters()))
    assert pc.forward_macs == fwd and pc.backward_macs == fwd
    assert pc.gradients == {"": 1}


def test_dense_conv_backward_agrees_with_uncorrected_flop_counter():
    """For g = 1 the correction changes nothing: the closed form is flop_counter's own."""
    from torch.utils.flop_counter import FlopCounterMode

    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    with FlopCounterMode(display=False) as raw:
        conv(x).sum().backward()
    with flop_counter() as ours:
        conv(x).sum().backward()
    assert ours.get_total_flops() == raw.get_total_flops()
    assert ours.get_total_flops() // 2 == 3 * _fwd_macs(conv, (2, 8, 10, 10))


def test_conv_backward_macs_function():
    # 1x1x4x4 input, 2 out channels, 3x3 kernel, stride 1 no padding: out 2x2, 2x1x3x3 weight
    assert conv_backward_macs((1, 2, 2, 2), (1, 1, 4, 4), (2, 1, 3, 3), False,
                              (True, True)) == 2 * 4 * 18
    assert conv_backward_macs((1, 2, 2, 2), (1, 1, 4, 4), (2, 1, 3, 3), False,
                              (False, True)) == 4 * 18


def test_linear_backward_is_twice_the_forward():
    c = module_cost(nn.Linear(64, 10), [(4, 64)], backward=True)
    assert c.backward_macs == 2 * 4 * 64 * 10


def test_model_step_counts_each_layer_closed_form():
    """A training step: the first conv computes no input gradient (1 x), the others both
    (2 x); the total is flop_counter's (conv-corrected) and equals the rows' sum."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 8 * 8, 10))
    r = analyze_model(model, [(2, 3, 8, 8)], source="t", name="t", pass_name="training")
    rows = {x.name: x for x in r.layers}
    assert rows["0"].backward_macs == rows["0"].macs
    assert rows["3"].backward_macs == 2 * rows["3"].macs
    assert rows["6"].backward_macs == 2 * rows["6"].macs
    assert r.backward_macs == sum(x.backward_macs or 0 for x in r.layers)
    assert rows["1"].backward_macs is None  # batch norm: not a MAC op's row
    inf = analyze_model(model, [(2, 3, 8, 8)], source="t", name="t")
    assert inf.backward_macs is None and all(x.backward_macs is None for x in inf.layers)


def test_layer_memory_hand_counts():
    """weights = params x 4 B; activation = the output; MAC = hw(c_in + c_out) + k^2 c_in
    c_out / g (bias excluded), ShuffleNet V2's formula at stride 1, batch 1."""
    r = analyze_model(nn.Sequential(nn.Conv2d(32, 64, 3, padding=1, groups=4, bias=True)),
                      [(1, 32, 20, 20)], source="t", name="t", dtype="fp16")
    row = r.layers[0]
    mem = row.memory(2)
    assert mem["weight_bytes"] == (64 * 8 * 9 + 64) * 2
    assert mem["activation_bytes"] == 64 * 20 * 20 * 2
    assert mem["access_elements"] == 20 * 20 * (32 + 64) + 9 * 32 * 64 // 4
    assert mem["access_bytes"] == 2 * mem["access_elements"]


def test_separable_access_cost_is_both_convs():
    sep = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
                        nn.Conv2d(16, 32, 1, bias=False))
    c = module_cost(sep, [(1, 16, 10, 10)])
    dw = 100 * (16 + 16) + 9 * 16
    pw = 100 * (16 + 32) + 16 * 32
    assert c.access_elems == dw + pw
    assert c.out_elems == 32 * 100 and c.weight_elems == 9 * 16 + 16 * 32
    assert c.backward_macs is None


def test_peak_activation_memory_of_a_chain():
    """conv -> relu -> conv, no gradient: at most two activations live at once."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    call = as_example([(1, 3, 16, 16)]).on_meta()
    act = 8 * 16 * 16 * 4
    assert peak_activation_bytes(m, call) == 2 * act
    train = peak_activation_bytes(m, call, training=True)
    assert train is not None and train >= 2 * act  # saved for the backward


def test_peak_activation_memory_of_data_dependent_model_is_none():
    class Picky(nn.Module):
        def forward(self, x):
            return x[x > 0]

    assert peak_activation_bytes(Picky(), as_example([(1, 4)]).on_meta()) is None


def test_tails_need_enough_samples():
    assert tails([1.0] * 9) == (None, None, None)
    p10, p90, p99 = tails([float(i) for i in range(1, 21)])
    assert p10 is not None and p90 is not None and p99 is None and p10 < p90
    p10, p90, p99 = tails([float(i) for i in range(1, 101)])
    assert p99 == pytest.approx(99.01)


def _cfg(pass_name: str) -> TimingConfig:
    return TimingConfig(Numerics("cpu", "fp32", False, 1), max_time_s=0.05, min_samples=5,
                        pass_name=pass_name)


def test_training_pass_timed_on_eager_with_its_own_key():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    k = Kernel(conv, [(1, 8, 8, 8)], (1, 8, 8, 8), 1)
    e_inf, e_train = TimingEngine(_cfg("inference")), TimingEngine(_cfg("training"))
    (ki,), (kt,) = e_inf.add_group([k], paired=False), e_train.add_group([k], paired=False)
    assert ki != kt
    assert ki == kernel_key(k.signature, k.in_shapes, _cfg("inference").numerics, e_inf.device,
                            backend="eager")  # inference keys are as before the pass existed
    e_train.run()
    r = e_train.kernel(kt)
    assert r.status == MEASURED and r.median_ms > 0 and r.measurement.p10_ms is not None


def test_training_pass_refused_per_row_by_an_inference_runtime():
    pytest.importorskip("onnxruntime")
    e = TimingEngine(_cfg("training"), backend="onnxruntime")
    (key,) = e.add_group([Kernel(nn.Conv2d(4, 4, 1), [(1, 4, 4, 4)], None, 1)], paired=False)
    e.run()
    assert e.kernel(key).status == UNSUPPORTED


def test_training_step_of_a_model_with_batchnorm_and_dropout():
    """The whole model in training mode (batch statistics) with dropout off: the step is the
    same function on every call (its gradients match eager's own second call)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.Flatten())
    e = TimingEngine(_cfg("training"))
    (key,) = e.add_group([Kernel(model, [(2, 3, 8, 8)], None, 1, scope="model")], paired=False)
    e.run()
    assert e.kernel(key).status == MEASURED, e.kernel(key).error


def test_nothing_to_differentiate_fails_that_row():
    frozen = nn.Conv2d(4, 4, 1)
    frozen.requires_grad_(False)
    e = TimingEngine(_cfg("training"))
    (key,) = e.add_group([Kernel(frozen, [(1, 4, 4, 4)], None, 1, scope="model")],
                         paired=False)
    e.run()
    assert e.kernel(key).status == FAILED and "differentiate" in e.kernel(key).error


def test_latency_table_keeps_tails_and_migrates_schema_1(tmp_path):
    path = tmp_path / "latency.sqlite"
    con = sqlite3.connect(path)
    con.executescript(f"""
CREATE TABLE kernels (
    key TEXT PRIMARY KEY, label TEXT, scope TEXT, signature TEXT, in_shapes TEXT, dtype TEXT,
    memory_format TEXT, backend TEXT, cold INTEGER, device TEXT, device_name TEXT,
    compute_capability TEXT, driver TEXT, torch TEXT, cuda TEXT, cudnn TEXT, onednn TEXT,
    threads INTEGER, macs INTEGER, median_ms REAL, q1_ms REAL, q3_ms REAL, min_ms REAL,
    max_ms REAL, n INTEGER, calls_per_sample INTEGER, converged INTEGER, graph_median_ms REAL,
    measured_at TEXT, convcost TEXT);
CREATE TABLE pairs (
    base_key TEXT, var_key TEXT, ratio REAL, lo REAL, hi REAL, rounds INTEGER, measured_at TEXT,
    PRIMARY KEY (base_key, var_key));
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = 1;
""")
    old = stored_row("a" * 32)
    con.execute(f"INSERT INTO kernels ({', '.join(old)}) VALUES ({', '.join('?' * len(old))})",
                [json.dumps(v) if k == "in_shapes" else v for k, v in old.items()])
    con.commit()
    con.close()
    t = LatencyTable.open(path)
    assert not t.notices, t.notices  # migrated in place, not set aside
    assert t.get_kernel("a" * 32)["median_ms"] == 1.0
    t.put_kernel(stored_row("b" * 32, p10_ms=0.85, p90_ms=1.15, p99_ms=1.19, **{"pass": "training"}))
    row = t.get_kernel("b" * 32)
    assert (row["p90_ms"], row["pass"]) == (1.15, "training")
    t.put_kernel(stored_row("c" * 32, p90_ms=1.3))  # above the maximum: invalid
    assert t.get_kernel("c" * 32) is None and any("out of order" in n for n in t.notices)


# --------------------------------------------------------------------------- the command line


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_analyze_training_json_and_csv():
    r = invoke("analyze", str(EXAMPLES / "tiny.yaml"), "--pass", "training", "--no-time",
               "-f", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["pass"] == "training"
    rows = {x["name"]: x for x in d["layers"]}
    assert rows["stem"]["backward_macs"] == rows["stem"]["macs"]  # no input gradient
    assert rows["pw"]["backward_macs"] == 2 * rows["pw"]["macs"]
    assert d["totals"]["backward_macs"] == sum(x.get("backward_macs", 0) for x in d["layers"])
    assert d["memory"]["weight_bytes"] == 4 * d["totals"]["params"]
    assert d["memory"]["peak_activation_bytes"] > 0
    c = invoke("analyze", str(EXAMPLES / "tiny.yaml"), "--pass", "training", "--no-time",
               "-f", "csv")
    head = c.stdout.splitlines()[0].split(",")
    assert {"backward_macs", "weight_bytes", "activation_bytes", "access_bytes"} <= set(head)
    assert all(len(line.split(",")) == len(head) for line in c.stdout.splitlines()
               if "," in line and '"' not in line)


def test_compare_training_rows_count_backward_and_memory():
    r = invoke("compare", "--no-time", "--pass", "training", "--groups", "2", "--variants",
               "grouped,separable", "--size", "14", "--batch", "2", "-f", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["pass"] == "training"
    base = d["baseline"]
    assert base["backward_macs"] == 2 * base["macs"]
    assert base["memory"]["weight_bytes"] == 4 * 64 * 64 * 9
    for v in d["variants"]:
        assert v["backward_macs"] == 2 * v["macs"]
    sep = next(v for v in d["variants"] if v["variant"] == "separable")
    hw, c = 14 * 14 * 2, 64
    assert sep["memory"]["access_elements"] == hw * (c + c) + 9 * c + hw * (c + c) + c * c


def test_compare_batch_sweep_summary_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "sweep.png"
    r = invoke("compare", "--batch", "1,4", "--groups", "2", "--variants", "grouped",
               "--size", "8", "--in", "8", "--out", "8", "--max-time", "0.02",
               "--threads", "1", "-f", "json", "--plot", str(png))
    assert r.exit_code in (0, 4), r.output
    d = json.loads(r.stdout)
    assert d["sweep"]["batches"] == [1, 4]
    assert [p["batch"] for p in d["points"]] == [1, 4]
    rows = [x for x in d["summary"] if x["row"] == "grouped g=2"]
    assert [x["batch"] for x in rows] == [1, 4]
    assert all(x["macs_ratio"] == 0.5 for x in rows)
    assert rows[1]["macs"] == 4 * rows[0]["macs"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_batch_sweep_without_timing():
    r = invoke("analyze", str(EXAMPLES / "tiny.yaml"), "--batch", "1,2", "--no-time",
               "-f", "csv")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("row,batch,threads,macs") and len(lines) == 3


@pytest.mark.parametrize("args,text", [
    (("compare", "--threads", "1,2", "--no-time"), "timing sweep"),
    (("plan", str(EXAMPLES / "tiny.yaml"), "--batch", "1,2", "--minimize", "params",
      "--no-time"), "plan takes one batch size"),
    (("compare", "--batch", "0,2", "--no-time"), "not a batch size"),
    (("compare", "--threads", "1,x"), "not a thread count"),
    (("analyze", str(EXAMPLES / "tiny.yaml"), "--pass", "backward"), "Invalid value"),
])
def test_sweep_and_pass_refusals(args, text):
    r = invoke(*args)
    assert r.exit_code == 2 and text in r.output, r.output


def _budget(tmp_path, limits: str, extra: str = "") -> str:
    p = tmp_path / "budget.yaml"
    p.write_text(f"version: 1\n{extra}checks:\n  - name: tiny\n    model: "
                 f"{EXAMPLES / 'tiny.yaml'}\n    limits: {limits}\n")
    return str(p)


def test_budget_memory_limits(tmp_path):
    r = invoke("check", _budget(tmp_path, "{weight_memory: 40KiB, activation_memory: 10MiB}"),
               "-f", "json")
    d = json.loads(r.stdout)
    assert r.exit_code == 1, r.output  # 52.5 KiB of weights > 40 KiB
    verdicts = {x["metric"]: x["verdict"] for x in d["results"]}
    assert verdicts == {"weight_memory": "fail", "activation_memory": "pass"}
    fp16 = invoke("check", _budget(tmp_path, "{weight_memory: 40KiB}",
                                   "defaults: {dtype: fp16}\n"))
    assert fp16.exit_code == 0, fp16.output  # 2 bytes per weight: 26 KiB


@pytest.mark.parametrize("limits,text", [
    ("{weight_memory: 3k}", "not a size"),
    ("{latency: {error: 5ms, pass: sideways}}", "use inference or training"),
])
def test_budget_refusals(tmp_path, limits, text):
    r = invoke("check", _budget(tmp_path, limits))
    assert r.exit_code == 2 and text in r.output, r.output


def test_budget_training_latency_refused_on_an_inference_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    r = invoke("check", _budget(tmp_path, "{latency: {error: 5ms, pass: training, "
                                          "backend: onnxruntime}}"))
    assert r.exit_code == 2 and "runs no backward" in r.output, r.output


def test_budget_tail_latency_limits(tmp_path):
    r = invoke("check", _budget(tmp_path, "{latency_p90: 10s, latency_p99: 10s}"),
               "--max-time", "0.3", "-f", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    m = d["metrics"]["tiny"]
    assert m["latency_p99_ms"] >= m["latency_p90_ms"] > 0
    assert m["latency"]["n"] >= 100  # a p99 needs 100 samples


@pytest.mark.parametrize("defaults,text", [("{pass: sideways}", "pass 'sideways'"),
                                           ("{dtype: fp99}", "dtype 'fp99'")])
def test_budget_defaults_refused_without_a_latency_limit(tmp_path, defaults, text):
    """weight_memory reads the defaults' dtype and activation_memory their pass: a bad one is
    refused even when no latency limit reads them."""
    r = invoke("check", _budget(tmp_path, "{weight_memory: 1MiB}", f"defaults: {defaults}\n"))
    assert r.exit_code == 2 and text in r.output and "defaults" in r.output, r.output
