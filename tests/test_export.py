"""``.pt2`` programs as first-class sources: rows, names, kinds and MACs equal the eager model's,
no internal guard modules, ``compare`` substitutes their convs, and every rebuilt leaf computes
what the program computes."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convcost.cli import cli
from convcost.sources.exported import rebuild
from tests.conftest import EXAMPLES

ROW_FIELDS = ("name", "op", "kind", "in_shape", "out_shape", "groups", "kernel", "stride",
              "padding", "dilation", "params", "macs", "flops")


def _export(model: nn.Module, shape: tuple[int, ...], path) -> str:
    ep = torch.export.export(model.eval(), (torch.randn(*shape),))
    torch.export.save(ep, str(path))
    return str(path)


def _json(*args: str) -> dict:
    r = CliRunner().invoke(cli, [*args, "-f", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _rows(d: dict) -> list[tuple]:
    return [tuple(x.get(k) for k in ROW_FIELDS) for x in d["layers"]]


@pytest.mark.parametrize("name,shape", [("TinyNet", (1, 3, 64, 64)),
                                        ("MobileNetV2", (1, 3, 96, 96))])
def test_pt2_rows_equal_the_eager_models_rows(tmp_path, name, shape):
    import examples.models as zoo

    path = _export(getattr(zoo, name)(), shape, tmp_path / f"{name}.pt2")
    spec = ",".join(map(str, shape))
    eager = _json("analyze", "--no-time", f"{EXAMPLES}/models.py:{name}", "--input-shape", spec)
    prog = _json("analyze", "--no-time", path)
    assert prog["input_shape"] == list(shape)  # from the program's signature
    assert _rows(prog) == _rows(eager)
    assert prog["totals"] == eager["totals"]
    assert prog["by_operator"] == eager["by_operator"]
    assert prog["unsupported_ops"] == eager["unsupported_ops"]
    assert prog["never_called"] == eager["never_called"]
    names = [x["name"] for x in prog["layers"]]
    assert not any("guards" in n for n in names)
    assert all(x["macs"] > 0 for x in prog["layers"] if x["op"] == "conv")
    # the module tree keeps the original classes' names, not InterpreterModule
    top = _json("analyze", "--no-time", path, "--depth", "1")
    assert "InterpreterModule" not in json.dumps(top["modules"])
    assert [m["type"] for m in top["modules"]] == \
        [m["type"] for m in _json("analyze", "--no-time", f"{EXAMPLES}/models.py:{name}",
                                  "--input-shape", spec, "--depth", "1")["modules"]]


def test_pt2_compare_substitutes_like_the_eager_model(tmp_path):
    from examples.models import TinyNet

    path = _export(TinyNet(), (1, 3, 64, 64), tmp_path / "tiny.pt2")
    args = ("compare", "--no-time", "--groups", "1,2,4")
    prog = _json(*args, path)
    eager = _json(*args, f"{EXAMPLES}/models.py:TinyNet", "--input-shape", "1,3,64,64")
    assert [lc["name"] for lc in prog["layers"]] == ["stem.0", "grouped.0", "dw.0", "pw.0"]

    def figures(d):
        return ([(v["label"], v["params"], v["macs"], v.get("substituted")) for v in d["variants"]],
                [[(r["label"], r["macs"], r["skipped"]) for r in lc["variants"]]
                 for lc in d["layers"]])

    assert figures(prog) == figures(eager)
    assert any(v["macs"] and v["macs"] < prog["baseline"]["macs"] for v in prog["variants"])


def test_pt2_rebuilt_model_computes_what_the_program_computes():
    from examples.models import MobileNetV2, ShuffleNetV2

    for model in (MobileNetV2(), ShuffleNetV2()):
        x = torch.randn(1, 3, 64, 64)
        ep = torch.export.export(model.eval(), (x,))
        r = rebuild(ep)
        assert r.restored > 0
        with torch.no_grad():
            torch.testing.assert_close(r.model(x), ep.module()(x), rtol=0, atol=0)


class _ScaledConv(nn.Conv2d):
    """A conv subclass whose forward is more than one operator: cannot become an nn.Conv2d."""

    def forward(self, x):
        return super().forward(x) * 0.5


class _WithScaledConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = _ScaledConv(8, 8, 3)

    def forward(self, x):
        return self.b(self.a(x))


def test_a_leaf_that_is_not_one_operator_stays_a_graph_and_is_said(tmp_path):
    path = _export(_WithScaledConv(), (1, 3, 16, 16), tmp_path / "scaled.pt2")
    d = _json("analyze", "--no-time", path)
    rows = {x["name"]: x for x in d["layers"]}
    assert rows["a"]["op"] == "conv" and rows["a"]["kind"] == "dense"
    assert rows["b"]["op"] == "_ScaledConv"  # its original class name
    assert rows["b"]["macs"] == 12 * 12 * 9 * 8 * 8  # still counted, on its own row
    c = _json("compare", "--no-time", path, "--groups", "2")
    assert [lc["name"] for lc in c["layers"]] == ["a"]


# every conv flavour the builders know, through export and back
CONV_CASES = st.tuples(
    st.sampled_from([1, 2, 3]),               # spatial dims
    st.sampled_from([1, 2, 4]),               # groups
    st.integers(1, 3), st.integers(1, 2),     # kernel, stride
    st.integers(0, 2), st.integers(1, 2),     # padding, dilation
    st.booleans(), st.booleans(),             # bias, transposed
)


@settings(max_examples=25, deadline=None)
@given(CONV_CASES)
def test_rebuilt_convs_equal_the_originals(case):
    dims, g, k, s, p, d, bias, transposed = case
    cls = ({1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d} if transposed
           else {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d})[dims]
    kw = {"output_padding": min(s, d) - 1} if transposed else {}
    torch.manual_seed(0)
    conv = cls(4, 8, k, stride=s, padding=p, dilation=d, groups=g, bias=bias, **kw)
    net = nn.Sequential(conv, nn.BatchNorm1d(8) if dims == 1 else nn.Identity(), nn.ReLU())
    size = (k - 1) * d + 6
    x = torch.randn(1, 4, *([size] * dims))
    ep = torch.export.export(net.eval(), (x,))
    r = rebuild(ep)
    new = r.model.get_submodule("0")
    assert type(new) is cls
    assert new.extra_repr() == conv.extra_repr()
    assert new.weight is not None and new.weight.shape == conv.weight.shape
    with torch.no_grad():
        torch.testing.assert_close(r.model(x), net(x), rtol=1e-5, atol=1e-5)
