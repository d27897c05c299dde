"""Counted (fvcore on the real module) vs closed-form params and MACs, per DESIGN.md section 2."""

from __future__ import annotations

import pytest

from convcost.counting import formulas as F
from tests.helpers import conv_layer_report, spec_report


@pytest.mark.parametrize("g", [1, 2, 4, 8, 16, 32, 64])
def test_grouped_conv_is_one_over_g(g):
    r = conv_layer_report(64, 128, 3, 56, groups=g)
    row = r.layers[0]
    assert row.params == 128 * (64 // g) * 9 == F.conv_params(64, 128, 3, groups=g)
    assert row.macs == 56 * 56 * 9 * (64 // g) * 128 == F.conv_macs(64, 128, 3, 3, 56, 56, g)
    dense = conv_layer_report(64, 128, 3, 56).layers[0]
    assert row.macs * g == dense.macs and row.params * g == dense.params
    assert row.kind == {1: "dense", 64: "depthwise"}.get(g, "grouped")
    assert row.flops == 2 * row.macs


def test_dense_with_batch_and_bias():
    r = conv_layer_report(3, 32, 3, 224, stride=2, bias=True, batch=4)
    row = r.layers[0]
    assert row.out_shape == [4, 32, 112, 112]
    assert row.params == 32 * 3 * 9 + 32  # bias adds out params
    assert row.macs == 4 * 112 * 112 * 9 * 3 * 32  # and no MACs


def test_depthwise():
    row = conv_layer_report(256, 256, 3, 28, groups=256).layers[0]
    assert row.kind == "depthwise"
    assert row.params == 256 * 9
    assert row.macs == 28 * 28 * 9 * 256
    dense = conv_layer_report(256, 256, 3, 28).layers[0]
    assert dense.macs == row.macs * 256  # 1/C when N = C


def test_depthwise_channel_multiplier():
    row = conv_layer_report(32, 96, 3, 14, groups=32).layers[0]  # multiplier 3
    assert row.kind == "depthwise"
    assert row.params == 96 * 9 == F.conv_params(32, 96, 3, groups=32)
    assert row.macs == 14 * 14 * 9 * 96


@pytest.mark.parametrize("stride,size,out", [(2, 56, 28), (2, 57, 29), (3, 32, 11), (4, 224, 56)])
def test_strided(stride, size, out):
    row = conv_layer_report(16, 32, 3, size, stride=stride).layers[0]
    assert row.out_shape[2:] == [out, out]
    assert out == F.conv_out_size(size, 3, stride, 1)
    assert row.macs == out * out * 9 * 16 * 32


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_dilated_keeps_macs_per_output(dilation):
    row = conv_layer_report(16, 16, 3, 32, dilation=dilation).layers[0]  # padding = dilation
    assert row.out_shape[2:] == [32, 32]
    assert row.macs == 32 * 32 * 9 * 16 * 16
    assert row.dilation == [dilation, dilation]


def test_separable_is_one_over_n_plus_one_over_k2():
    c, n, k, hw = 128, 256, 3, 28
    r = spec_report(f"""
input: [{c}, {hw}, {hw}]
layers:
  - {{name: dw, conv: {{out: {c}, kernel: {k}, groups: {c}}}}}
  - {{name: pw, conv: {{out: {n}, kernel: 1}}}}
""")
    assert [row.kind for row in r.layers] == ["depthwise", "pointwise"]
    assert r.params == F.separable_params(c, n, k) == c * k * k + c * n
    assert r.macs == F.separable_macs(c, n, k, hw, hw) == hw * hw * (k * k * c + c * n)
    dense_macs = F.conv_macs(c, n, k, k, hw, hw)
    assert r.macs / dense_macs == pytest.approx(1 / n + 1 / k**2, rel=1e-12)


def test_global_depthwise_conv():
    row = conv_layer_report(512, 512, 7, 7, groups=512, padding=0).layers[0]
    assert row.kind == "gdc"
    assert row.out_shape == [1, 512, 1, 1]
    assert row.params == F.gdc_params(512, 7, 7) == 512 * 7 * 7
    assert row.macs == F.gdc_macs(512, 7, 7) == 512 * 7 * 7


def test_pointwise_grouped():
    row = conv_layer_report(240, 480, 1, 14, groups=3).layers[0]
    assert row.kind == "pointwise-grouped"
    assert row.params == 480 * 240 // 3
    assert row.macs == 14 * 14 * 240 * 480 // 3


def test_mobilenet_v1_matches_paper(tmp_path):
    """MobileNetV1 1.0-224: the paper gives 4.2M params and 569M mult-adds (conv + fc)."""
    from convcost.counting.analysis import analyze_model
    from convcost.sources.spec import build_model, example_inputs, load_spec
    from tests.conftest import EXAMPLES

    spec = load_spec(EXAMPLES / "mobilenet_v1.yaml")
    r = analyze_model(build_model(spec), example_inputs(spec), source="x", name="x")
    assert r.params == 4_231_976
    conv_fc = r.by_operator["conv"] + r.by_operator["linear"]
    assert conv_fc == 568_740_352  # 569M mult-adds, as published
    assert sum(row.params for row in r.layers) == r.params
    assert sum(row.macs for row in r.layers) == r.macs
