"""Property test: over random valid conv layers, fvcore MACs == closed form ==
torch.utils.flop_counter FLOPs / 2, and params == closed form."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convcost.counting import formulas as F
from convcost.counting.analysis import analyze_model
from convcost.sources.spec import build_model, example_inputs, spec_from_text
from tests.helpers import flop_counter_flops


@st.composite
def conv_layers(draw):
    g = draw(st.sampled_from([1, 1, 2, 3, 4, 8]))
    cin = g * draw(st.integers(1, 6))
    cout = g * draw(st.integers(1, 6))
    if draw(st.booleans()):  # depthwise, maybe with a channel multiplier
        g, cout = cin, cin * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    min_h = dil[0] * (kh - 1) + 1 - 2 * pad[0]
    min_w = dil[1] * (kw - 1) + 1 - 2 * pad[1]
    h = draw(st.integers(max(1, min_h), 20))
    w = draw(st.integers(max(1, min_w), 20))
    batch = draw(st.integers(1, 3))
    bias = draw(st.booleans())
    return dict(cin=cin, cout=cout, k=(kh, kw), stride=stride, dil=dil, pad=pad, h=h, w=w,
                g=g, batch=batch, bias=bias)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_layers())
def test_counts_agree_with_closed_form_and_flop_counter(c):
    text = (f"input: [{c['cin']}, {c['h']}, {c['w']}]\nbatch: {c['batch']}\nlayers:\n"
            f"  - {{name: c, conv: {{out: {c['cout']}, kernel: {list(c['k'])}, "
            f"stride: {list(c['stride'])}, padding: {list(c['pad'])}, "
            f"dilation: {list(c['dil'])}, groups: {c['g']}, bias: {str(c['bias']).lower()}}}}}\n")
    spec = spec_from_text(text)
    model = build_model(spec)
    (x,) = example_inputs(spec)
    report = analyze_model(model, (x,), source="<h>", name="h")
    row = report.layers[0]
    ho = F.conv_out_size(c["h"], c["k"][0], c["stride"][0], c["pad"][0], c["dil"][0])
    wo = F.conv_out_size(c["w"], c["k"][1], c["stride"][1], c["pad"][1], c["dil"][1])
    closed = F.conv_macs(c["cin"], c["cout"], c["k"][0], c["k"][1], ho, wo, c["g"], c["batch"])
    assert row.out_shape == [c["batch"], c["cout"], ho, wo] == list(model(x).shape)
    assert row.macs == closed
    assert flop_counter_flops(model, x) == 2 * closed
    assert row.params == F.conv_params(c["cin"], c["cout"], *c["k"], groups=c["g"],
                                       bias=c["bias"])
    assert row.params == sum(p.numel() for p in model.parameters())
    assert torch.isfinite(model(x)).all()


_CELLS = st.sampled_from(["", "x", "yyyy", "1.2 ms", "x0.5 [0.4, 0.6]", "±3%", "µs", "原"])


@given(ncol=st.integers(1, 6), data=st.data())
@settings(max_examples=60, deadline=None)
def test_plain_table_text_is_rich_table_text(ncol, data):
    """Files and pipes get tables drawn directly (fast): the same characters as rich's."""
    from convcost.report.layout import Col, PlainTable, _table, _titled, plain_text

    cols = [Col(data.draw(_CELLS), data.draw(st.sampled_from(["left", "right"])), 50,
                data.draw(_CELLS)) for _ in range(ncol)]
    rows = data.draw(st.lists(st.lists(_CELLS, min_size=ncol, max_size=ncol), max_size=6))
    sections = set(data.draw(st.lists(st.integers(0, max(0, len(rows) - 1)), max_size=2)))
    title = data.draw(st.sampled_from(["", "convcost compare: x"]))
    foot = data.draw(st.booleans())
    mine = "\n".join(PlainTable(cols, rows, sections, title, foot).lines()) + "\n"
    assert mine == plain_text([_titled(title, _table(cols, rows, sections, show_footer=foot))])
