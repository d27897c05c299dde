"""Variant catalogue: shapes kept, counted ratios == closed form, skip reasons, substitution."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convcost.sources.load import load_source
from convcost.variants.catalogue import (
    ConvLayer,
    Skip,
    Variant,
    build,
    expand_variants,
    paper_ratio,
    same_as_original,
    valid_groups,
)
from convcost.variants.compare import compare_layer, compare_model
from tests.conftest import EXAMPLES


@st.composite
def layers(draw):
    g0 = draw(st.sampled_from([1, 2, 3, 4, 8]))
    cin = g0 * draw(st.integers(1, 6))
    cout = cin * draw(st.integers(1, 3)) if draw(st.booleans()) else g0 * draw(st.integers(1, 6))
    k = draw(st.sampled_from([1, 3, 5]))
    s = draw(st.integers(1, 2))
    d = draw(st.sampled_from([1, 2, 2, 3]))  # Conv1d, Conv2d, Conv3d
    hw = draw(st.integers(k, 12 if d < 3 else 7))
    return ConvLayer(cin, cout, (k,) * d, (s,) * d, (k // 2,) * d, (1,) * d, in_hw=(hw,) * d,
                     batch=draw(st.integers(1, 2)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers(), st.sampled_from([1, 2, 3, 4, 6, 8]))
def test_counted_ratio_equals_closed_form_and_shapes_are_kept(layer, g):
    vs = expand_variants(("dense", "grouped", "depthwise", "separable", "pointwise-grouped",
                          "shuffle", "gdc"), (g,))
    lc = compare_layer("x", layer, vs)
    x = torch.randn(layer.input_shape)
    assert [(r.variant, r.groups) for r in lc.rows] == [
        (v.name, v.groups) for v in vs if not (v.name == "dense" and layer.groups == 1)]
    for row in lc.rows:
        v = Variant(row.variant, row.groups)
        if row.skipped and same_as_original(layer, v):
            assert "already is this conv" in row.skipped  # not listed as an alternative
            continue
        if row.skipped:
            with pytest.raises(Skip):
                build(layer, v)
            continue
        assert not row.warnings, row.warnings
        assert row.ratio_params == row.analytic_params  # bias-free: exact agreement
        assert row.ratio_macs == row.analytic_macs
        with torch.no_grad():
            y = build(layer, v)(x)
        assert tuple(y.shape) == layer.output_shape
        assert torch.isfinite(y).all()
        if v.name in ("grouped", "shuffle", "pointwise-grouped"):
            assert Fraction(row.macs, lc.baseline.macs) == Fraction(1, g)


def test_separable_formula():
    layer = ConvLayer(128, 256, (3, 3), padding=(1, 1), in_hw=(28, 28))
    lc = compare_layer("x", layer, [Variant("separable")])
    row = lc.rows[0]
    assert row.ratio_macs == pytest.approx(1 / 256 + 1 / 9, rel=1e-12)
    assert row.params == 128 * 9 + 128 * 256
    assert paper_ratio(layer, Variant("separable")) == Fraction(1, 256) + Fraction(1, 9)


def test_strided_separable_keeps_stride_in_depthwise():
    layer = ConvLayer(32, 64, (3, 3), (2, 2), (1, 1), in_hw=(16, 16))
    m = build(layer, Variant("separable"))
    assert m.depthwise.stride == (2, 2) and m.pointwise.kernel_size == (1, 1)
    assert tuple(m(torch.randn(layer.input_shape)).shape) == (1, 64, 8, 8)


def test_depthwise_channel_multiplier_and_skip():
    ok = compare_layer("x", ConvLayer(16, 48, (3, 3), padding=(1, 1), in_hw=(8, 8)),
                       [Variant("depthwise")]).rows[0]
    assert ok.skipped is None and ok.params == 48 * 9
    bad = compare_layer("x", ConvLayer(16, 24, (3, 3), padding=(1, 1), in_hw=(8, 8)),
                        [Variant("depthwise")]).rows[0]
    assert "N=24 is not a multiple of C=16" in bad.skipped


def test_skip_reasons():
    layer = ConvLayer(24, 36, (3, 3), padding=(1, 1), in_hw=(8, 8))
    rows = {r.label: r for r in compare_layer("x", layer, expand_variants(
        ("grouped", "pointwise-grouped", "shuffle", "gdc"), (1, 5, 6))).rows}
    assert "not both divisible by g=5" in rows["grouped g=5"].skipped
    assert rows["grouped g=6"].skipped is None
    assert "applies to 1x1 convs" in rows["pointwise-grouped g=6"].skipped
    assert "shuffle g=1" not in rows and "dense" not in rows  # g=1 is the original (dense) row
    assert "output is 1x1" in rows["gdc"].skipped
    assert valid_groups(layer) == [1, 2, 3, 4, 6, 12]


def test_gdc_on_a_head_layer():
    layer = ConvLayer(512, 512, (7, 7), in_hw=(7, 7))  # a 7x7 conv on a 7x7 map -> 1x1
    row = compare_layer("head", layer, [Variant("gdc")]).rows[0]
    assert row.skipped is None
    assert row.params == 512 * 49 and row.macs == 512 * 49
    assert row.ratio_macs == row.analytic_macs == 1 / 512
    assert row.formula == "1/C"


def test_bias_is_explained_not_hidden():
    layer = ConvLayer(64, 64, (3, 3), padding=(1, 1), in_hw=(8, 8), bias=True)
    row = compare_layer("x", layer, [Variant("grouped", 4)]).rows[0]
    assert row.params == 64 * 16 * 9 + 64
    assert row.ratio_params == (64 * 16 * 9 + 64) / (64 * 64 * 9 + 64)
    assert row.analytic_params == 0.25
    assert row.ratio_macs == 0.25  # bias adds no MACs
    assert any("bias" in w for w in row.warnings)


def test_shufflenet_unit_pointwise_grouped_and_shuffle():
    loaded = load_source(str(EXAMPLES / "shufflenet_unit.yaml"))
    rep = compare_model(loaded.model, loaded.inputs, source="s", name="s",
                        variant_names=("pointwise-grouped", "shuffle"), groups=(3, 6))
    by = {lc.name: lc for lc in rep.layers}
    g1 = {r.label: r for r in by["unit.gconv1"].rows}  # a 1x1 conv with g=3 already
    assert g1["pointwise-grouped g=6"].ratio_macs == 0.5  # 1/6 vs the original 1/3
    assert g1["pointwise-grouped g=6"].analytic_macs == 0.5
    assert g1["shuffle g=3"].ratio_macs == 1.0  # shuffle: 0 MACs on top of the conv
    dw = {r.label: r for r in by["unit.dw"].rows}
    assert "applies to 1x1 convs" in dw["pointwise-grouped g=3"].skipped


def test_whole_model_substitution_params_equal_sum_over_layers():
    loaded = load_source(f"{EXAMPLES}/models.py:ResNet50")
    rep = compare_model(loaded.model, loaded.inputs, source="r", name="r",
                        variant_names=("grouped",), groups=(32,), kernel_sizes=(3,))
    assert len(rep.layers) == 16
    (row,) = rep.model_rows
    assert row.substituted == 16 and not row.kept
    delta = sum(r.params - lc.baseline.params for lc in rep.layers for r in lc.rows)
    delta_macs = sum(r.macs - lc.baseline.macs for lc in rep.layers for r in lc.rows)
    assert row.params == rep.model_baseline.params + delta
    assert row.macs == rep.model_baseline.macs + delta_macs
    assert not row.warnings
    # ResNeXt-like: the 3x3 convs shrink 32x, the whole model only to about half
    assert row.analytic_macs == pytest.approx(1 / 32)
    assert 0.5 < row.ratio_macs < 0.6


def test_whole_model_keeps_invalid_layers_and_says_so():
    loaded = load_source(f"{EXAMPLES}/models.py:TinyNet")
    rep = compare_model(loaded.model, loaded.inputs, source="t", name="t",
                        variant_names=("grouped",), groups=(8,))
    (row,) = rep.model_rows
    assert row.substituted == 3 and [k for k, _ in row.kept] == ["stem.0"]
    assert "not both divisible by g=8" in row.kept[0][1]
    assert any("1 of 4 selected convs kept" in w for w in row.warnings)


@pytest.mark.parametrize("dims", [1, 3])
def test_nd_variants_against_closed_forms(dims):
    """Conv1d and Conv3d: grouped, depthwise and separable per spatial dimension."""
    k, size, c, n, b = 3, 8, 16, 32, 2
    layer = ConvLayer(c, n, (k,) * dims, (1,) * dims, (1,) * dims, (1,) * dims, in_hw=(size,) * dims,
                      batch=b)
    lc = compare_layer("x", layer, expand_variants(("grouped", "depthwise", "separable"), (4,)))
    out = size ** dims
    assert lc.baseline.macs == b * out * k**dims * c * n
    rows = {(r.variant, r.groups): r for r in lc.rows}
    assert rows[("grouped", 4)].macs == b * out * k**dims * (c // 4) * n
    assert rows[("depthwise", None)].macs == b * out * k**dims * n
    sep = rows[("separable", None)]
    assert sep.macs == b * out * (k**dims * c + c * n)
    assert sep.formula == f"1/N + 1/{'K' if dims == 1 else 'K^3'}"
    assert not any(r.warnings for r in lc.rows)
    assert "(1-D)" in layer.describe() if dims == 1 else "(3-D)" in layer.describe()


def test_formula_is_relative_to_the_original():
    layer = ConvLayer(64, 64, (3, 3), padding=(1, 1), groups=32, in_hw=(8, 8))
    lc = compare_layer("x", layer, expand_variants(("dense", "grouped", "depthwise"), (8, 32)))
    rows = {(r.variant, r.groups): r for r in lc.rows}
    assert rows[("dense", 1)].formula == "32" and rows[("dense", 1)].analytic_macs == 32
    assert rows[("grouped", 8)].formula == "32/g" and rows[("grouped", 8)].analytic_macs == 4
    assert rows[("grouped", 32)].skipped and "already is this conv" in rows[("grouped", 32)].skipped
    assert rows[("depthwise", None)].formula == "32/C"
    assert rows[("depthwise", None)].analytic_macs == 0.5
    pw = ConvLayer(64, 64, (1, 1), in_hw=(8, 8))
    sep = compare_layer("p", pw, [Variant("separable")]).rows[0]
    assert "no spatial part to separate" in sep.skipped


def test_conv1d_models_are_compared_and_transposed_convs_listed():
    from torch import nn

    class Audio(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv1d(8, 16, 5, padding=2)
            self.b = nn.Conv1d(16, 16, 3, padding=1)
            self.up = nn.ConvTranspose1d(16, 8, 2, stride=2)

        def forward(self, x):
            return self.up(self.b(self.a(x)))

    rep = compare_model(Audio().eval(), [(1, 8, 100)], source="a", name="a",
                        variant_names=("grouped", "depthwise", "separable"), groups=(2,))
    assert [lc.name for lc in rep.layers] == ["a", "b"]
    assert any("not substituted: up (ConvTranspose1d)" in n for n in rep.notes)
    g2 = next(r for r in rep.model_rows if r.variant == "grouped")
    assert g2.substituted == 2 and g2.ratio_macs < 1


def test_meta_prefetch_counts_equal_fvcore_per_layer_counts(monkeypatch):
    """A model counted on meta tensors gets its layers' variants counted in one meta pass
    (``VariantCounter.prefetch``, no fvcore trace per module): every figure equals fvcore's trace of
    each module alone."""
    import convcost.variants.compare as cmp

    loaded = load_source(str(EXAMPLES / "mobilenet_v2_block.yaml"))
    traced: list[int] = []
    real_count = cmp.count_fvcore

    def spy(*a, **k):
        traced.append(1)
        return real_count(*a, **k)

    monkeypatch.setattr(cmp, "count_fvcore", spy)
    reports = {}
    for how in ("meta", "real"):
        traced.clear()
        reports[how] = compare_model(
            loaded.model, loaded.input_shapes, source="s", name="n",
            variant_names=("grouped", "depthwise", "separable", "shuffle", "pointwise-grouped"),
            groups=(1, 2, 4), count_on=how, make_inputs=lambda: loaded.inputs)
        assert bool(traced) == (how == "real")  # meta: every variant from the one meta pass
    meta, real = reports["meta"], reports["real"]

    def figures(rep):
        return [(r.layer, r.label, r.params, r.macs, r.skipped, r.warnings)
                for lc in rep.layers for r in [lc.baseline, *lc.rows]]

    assert figures(meta) == figures(real) and any(f[3] for f in figures(meta))
    assert [(r.params, r.macs) for r in meta.model_rows] == [(r.params, r.macs)
                                                              for r in real.model_rows]
