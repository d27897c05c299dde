"""Counting beyond plain CNNs, and counting without computing: attention against closed forms,
padding='same', never-called modules, the papers' total, and the meta-tensor counter against
fvcore's real trace (examples, test models, random specs)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from convcost.cli import cli
from convcost.counting.analysis import analyze_model
from convcost.counting.counters import META, count_fvcore, count_meta
from convcost.sources.load import load_source
from convcost.sources.spec import build_model, spec_from_text
from tests.conftest import EXAMPLES

BOTH = ("meta", "real")


def encoder_layer_macs(b: int, seq: int, d: int, ff: int) -> tuple[int, int]:
    """(conv + linear + attention MACs, layer-norm MACs) of one nn.TransformerEncoderLayer in
    eval: in_proj 3d^2, Q.K^T and P.V L*d each, out_proj d^2, the FFN 2*d*ff, per token; two
    layer norms with affine, 5 per element (fvcore's convention)."""
    tokens = b * seq
    paper = tokens * (3 * d * d + 2 * seq * d + d * d + 2 * d * ff)
    norms = 2 * 5 * tokens * d
    return paper, norms


@pytest.mark.parametrize("count_on", BOTH)
def test_transformer_encoder_against_the_closed_form(count_on):
    b, seq, d, heads, ff, layers = 2, 10, 64, 4, 128, 2
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, ff, batch_first=True),
                                layers, enable_nested_tensor=False).eval()
    r = analyze_model(enc, [(b, seq, d)], source="enc", name="enc", count_on=count_on)
    paper, norms = encoder_layer_macs(b, seq, d, ff)
    assert r.paper_macs == layers * paper  # 1,688,192 would be the issue's own example size
    assert r.macs == layers * (paper + norms)
    assert r.by_operator["attention"] == layers * 2 * b * seq * seq * d
    assert set(r.unsupported_ops) <= {"aten::add", "aten::softmax", "aten::_softmax",
                                      "aten::mul", "aten::div", "aten::gelu"}
    assert not r.never_called  # nn.ModuleList is iterated, never called: its layers ran


class ViTBlock(nn.Module):
    """A hand-written pre-norm ViT block with an explicit F.scaled_dot_product_attention."""

    def __init__(self, d: int = 48, heads: int = 3, mlp: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, mlp * d), nn.Linear(mlp * d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PatchViT(nn.Module):
    def __init__(self, d: int = 48, depth: int = 2, patch: int = 8, classes: int = 10):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, patch)
        self.blocks = nn.Sequential(*[ViTBlock(d) for _ in range(depth)])
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(x).mean(1))


@pytest.mark.parametrize("count_on", BOTH)
def test_hand_written_vit_against_the_closed_form(count_on):
    b, size, patch, d, depth, classes = 2, 32, 8, 48, 2, 10
    n = (size // patch) ** 2
    r = analyze_model(PatchViT(d, depth, patch, classes).eval(), [(b, 3, size, size)],
                      source="vit", name="vit", count_on=count_on)
    per_block = b * n * (3 * d * d + d * d + 2 * 4 * d * d) + 2 * b * n * n * d
    conv = b * n * (3 * patch * patch) * d
    assert r.paper_macs == conv + depth * per_block + b * d * classes
    assert r.by_operator["attention"] == depth * 2 * b * n * n * d
    assert r.macs == r.paper_macs + depth * 2 * 5 * b * n * d  # plus the layer norms


class SameNet(nn.Module):
    def __init__(self, same: bool):
        super().__init__()
        pad = "same" if same else 1
        self.c1 = nn.Conv2d(3, 8, 3, padding=pad)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=pad, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.c2(torch.relu(self.bn(self.c1(x)))))


@pytest.mark.parametrize("count_on", BOTH)
def test_padding_same_gives_the_same_totals_as_explicit_padding(count_on):
    a = analyze_model(SameNet(True).eval(), [(2, 3, 16, 16)], source="a", name="a",
                      count_on=count_on)
    b = analyze_model(SameNet(False).eval(), [(2, 3, 16, 16)], source="b", name="b",
                      count_on=count_on)
    assert a.macs == b.macs and a.by_operator == b.by_operator and a.counter == b.counter
    assert a.by_operator["batch_norm"] > 0 and a.by_operator["adaptive_avg_pool2d"] > 0
    assert [r.macs for r in a.layers] == [r.macs for r in b.layers]
    assert a.counter in ("fvcore", META)  # never the whole-model fallback


class WithAux(nn.Module):
    """An auxiliary head that never runs in eval (as googlenet's)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3)
        self.aux = nn.Sequential(nn.Conv2d(8, 16, 1), nn.Flatten(), nn.Linear(16 * 14 * 14, 10))
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        y = self.body(x)
        if self.training:
            return y, self.aux(y)
        return y


@pytest.mark.parametrize("count_on", BOTH)
def test_never_called_params_are_reported_with_their_modules(count_on):
    r = analyze_model(WithAux().eval(), [(1, 3, 16, 16)], source="m", name="m", count_on=count_on)
    aux = 8 * 16 + 16 + 16 * 14 * 14 * 10 + 10
    assert dict(r.never_called) == {"aux": aux, "unused": 4 * 4 + 4}
    assert r.params_never_called == aux + 20
    assert r.params == 3 * 8 * 9 + 8 + aux + 20  # still every trainable parameter


def test_never_called_in_every_format(tmp_path):
    f = tmp_path / "aux.py"
    f.write_text("from tests.test_counting import WithAux\n")
    src = f"{f}:WithAux"
    d = json.loads(CliRunner().invoke(cli, ["analyze", src, "--input-shape", "1,3,16,16",
                                            "--no-time", "-f", "json"]).stdout)
    assert d["totals"]["params_never_called"] == 31_514 + 20
    assert {x["name"] for x in d["never_called"]} == {"aux", "unused"}
    t = CliRunner().invoke(cli, ["analyze", src, "--input-shape", "1,3,16,16", "--no-time"])
    assert "params in modules never called during the forward: 31.5k" in t.stdout
    assert "aux (31.5k), unused (20)" in t.stdout
    c = CliRunner().invoke(cli, ["analyze", src, "--input-shape", "1,3,16,16", "--no-time",
                                 "-f", "csv"]).stdout
    assert "aux,,never called" in c
    dd = CliRunner().invoke(cli, ["analyze", src, "--input-shape", "1,3,16,16", "--no-time",
                                  "--depth", "1"]).stdout
    assert "(not called)" in dd


def test_papers_total_in_json_and_table():
    d = json.loads(CliRunner().invoke(cli, ["analyze", f"{EXAMPLES}/models.py:ResNet50",
                                            "--no-time", "-f", "json"]).stdout)
    assert d["totals"]["paper_macs"] == 4_089_184_256  # conv + fc: the published 4.09 G
    assert d["totals"]["macs"] == 4_111_512_576  # plus batch norm and pooling (fvcore)
    assert "paper_macs" in d["conventions"]


# --------------------------------------------------------------------------- meta == real

SOURCES = [str(p) for p in sorted(EXAMPLES.glob("*.yaml")) if p.name != "budget.yaml"] + [
    f"{EXAMPLES}/models.py:{n}" for n in ("TinyNet", "ResNet50", "MobileNetV2", "ShuffleNetV2",
                                          "ResNeXt50_32x4d")]


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.rsplit("/", 1)[-1])
def test_meta_counting_equals_fvcore_on_real_tensors(source):
    loaded = load_source(source)
    real = count_fvcore(loaded.model, loaded.inputs)
    meta, _ = count_meta(loaded.model, loaded.input_shapes)
    assert meta.macs == real.macs
    assert meta.by_operator == real.by_operator
    assert {k: v for k, v in meta.by_module.items() if v} == {
        k: v for k, v in real.by_module.items() if v}
    assert meta.unsupported_ops == real.unsupported_ops
    assert meta.params == real.params and meta.uncalled == real.uncalled
    a = analyze_model(loaded.model, loaded.input_shapes, source="m", name="m", count_on="meta")
    b = analyze_model(loaded.model, loaded.inputs, source="m", name="m", count_on="real")
    assert [(r.name, r.macs, r.params, r.in_shape, r.out_shape, r.kind) for r in a.layers] == \
        [(r.name, r.macs, r.params, r.in_shape, r.out_shape, r.kind) for r in b.layers]


OPS = st.sampled_from(["conv", "conv", "bn", "act", "pool", "shuffle"])


@st.composite
def random_specs(draw):
    c = draw(st.sampled_from([4, 8, 12, 16]))
    size = draw(st.integers(6, 20))
    lines = [f"input: [{c}, {size}, {size}]", f"batch: {draw(st.integers(1, 3))}", "layers:"]
    for i in range(draw(st.integers(1, 6))):
        op = draw(OPS)
        if op == "conv":
            g = draw(st.sampled_from([x for x in (1, 2, 4) if c % x == 0]))
            out = g * draw(st.integers(1, 4))
            if draw(st.booleans()):
                g, out = c, c
            k = draw(st.sampled_from([1, 3]))
            lines.append(f"  - {{name: l{i}, conv: {{out: {out}, kernel: {k}, groups: {g}, "
                         f"bias: {str(draw(st.booleans())).lower()}}}}}")
            c = out
        elif op == "bn":
            lines.append(f"  - {{name: l{i}, bn: {{}}}}")
        elif op == "act":
            act = draw(st.sampled_from(["relu", "relu6", "hardswish", "silu"]))
            lines.append(f"  - {{name: l{i}, act: {act}}}")
        elif op == "pool" and size >= 4:
            kind = draw(st.sampled_from(["max", "avg"]))
            lines.append(f"  - {{name: l{i}, pool: {{type: {kind}, kernel: 2, stride: 2}}}}")
            size //= 2
        elif op == "shuffle" and c % 2 == 0:
            lines.append(f"  - {{name: l{i}, channel_shuffle: {{groups: 2}}}}")
    lines.append("  - {name: head, pool: {type: avg, global: true}}")
    lines += ["  - {name: flat, flatten: {}}", "  - {name: fc, linear: {out: 5}}"]
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_specs())
def test_meta_equals_real_on_random_specs(text):
    spec = spec_from_text(text)
    model = build_model(spec)
    shapes = [(spec.batch, *s) for s in spec.input_shapes]
    a = analyze_model(model, shapes, source="s", name="s", count_on="meta")
    b = analyze_model(model, shapes, source="s", name="s", count_on="real")
    assert a.counter == META and b.counter == "fvcore"
    assert (a.macs, a.params, a.by_operator, a.unsupported_ops) == \
        (b.macs, b.params, b.by_operator, b.unsupported_ops)
    assert [(r.name, r.macs, r.out_shape) for r in a.layers] == \
        [(r.name, r.macs, r.out_shape) for r in b.layers]


def test_meta_cost_does_not_depend_on_batch_or_resolution():
    """Counts scale exactly with the batch; a size this machine could never run counts fine."""
    m = load_source(f"{EXAMPLES}/models.py:ResNet50").model
    one = analyze_model(m, [(1, 3, 224, 224)], source="r", name="r", count_on="meta")
    big = analyze_model(m, [(4096, 3, 1024, 1024)], source="r", name="r", count_on="meta")
    assert big.params == one.params and big.counter == META
    assert big.by_operator["conv"] > 4096 * one.by_operator["conv"] * 20  # 1024^2 vs 224^2


def test_model_that_needs_real_values_falls_back_with_a_note():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.c(x)
            return y if float(y.sum()) > -1e30 else y * 2  # needs a real value

    r = analyze_model(DataDependent().eval(), [(1, 3, 8, 8)], source="d", name="d",
                      count_on="meta")
    assert r.counter == "fvcore" and any("counted on real tensors" in n for n in r.notes)
    assert r.macs == 6 * 6 * 27 * 4


def test_huge_input_counts_without_memory():
    """ResNet-50 at batch 4096 and 1024 x 1024: its activations would need terabytes."""
    r = CliRunner().invoke(cli, ["analyze", f"{EXAMPLES}/models.py:ResNet50", "--no-time",
                                 "--input-shape", "4096,3,1024,1024", "-f", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["counter"] == "meta" and d["totals"]["params"] == 25_557_032
    assert d["totals"]["macs"] == 351_770_505_117_696  # = 4096 x ResNet-50 at 1024 x 1024


def test_meta_counting_puts_the_real_parameters_back():
    m = SameNet(False).eval()
    before = {n: p for n, p in m.named_parameters()}
    analyze_model(m, [(1, 3, 8, 8)], source="m", name="m", count_on="meta")
    assert all(p is before[n] and p.device.type == "cpu" for n, p in m.named_parameters())
    assert all(b.device.type == "cpu" for b in m.buffers())

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x).tolist()  # fails on meta tensors

    b = Boom().eval()
    w = b.c.weight
    r = analyze_model(b, [(1, 3, 8, 8)], source="b", name="b", count_on="meta")
    assert b.c.weight is w and w.device.type == "cpu" and r.counter != META  # real fallback


# --------------------------------------------------------------------------- builder arguments

NET = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width: int = 8, aux: bool = True, image_size: int = 32):
        super().__init__()
        self.image_size = image_size
        self.c = nn.Conv2d(3, width, 3)
        self.aux = nn.Linear(4, 4) if aux else None

    def forward(self, x):
        torch._assert(x.shape[-1] == self.image_size,
                      f"Wrong image height! Expected {self.image_size} but got {x.shape[-1]}!")
        return self.c(x)

def build(width=4):
    return Net(width=width)

instance = Net()
'''


@pytest.fixture
def netfile(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(NET)
    return f


def _totals(args):
    r = CliRunner().invoke(cli, ["analyze", "--no-time", "-f", "json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["totals"]


def test_model_args_reach_classes_and_factories(netfile):
    t = _totals([f"{netfile}:Net", "--input-shape", "1,3,32,32", "--model-arg", "width=16",
                 "--model-arg", "aux=false"])
    assert t["params"] == 3 * 16 * 9 + 16 and t["params_never_called"] == 0
    t = _totals([f"{netfile}:build", "--input-shape", "1,3,32,32", "--model-arg", "width=2"])
    assert t["params"] == 3 * 2 * 9 + 2 + 20 and t["params_never_called"] == 20
    t = _totals([f"{netfile}:Net", "--input-shape", "1,3,64,64", "--model-arg", "image_size=64"])
    assert t["macs"] == 62 * 62 * 27 * 8


def test_model_arg_errors(netfile):
    cases = [
        (["--model-arg", "bad"], 2, "use KEY=VALUE"),
        (["--model-arg", "x=[1,2]"], 2, "must be a scalar"),
        (["--model-arg", "width=2", "--model-arg", "width=3"], 2, "given twice"),
        (["--model-arg", "nope=1"], 3, "unexpected keyword argument 'nope'"),
    ]
    for extra, code, needle in cases:
        r = CliRunner().invoke(cli, ["analyze", "--no-time", f"{netfile}:Net", *extra])
        assert r.exit_code == code and needle in r.stderr and "Traceback" not in r.output, extra
    r = CliRunner().invoke(cli, ["analyze", "--no-time", f"{netfile}:instance", "--model-arg",
                                 "width=2"])
    assert r.exit_code == 2 and "module instance" in r.stderr
    r = CliRunner().invoke(cli, ["analyze", "--no-time", f"{EXAMPLES}/tiny.yaml", "--model-arg",
                                 "width=2"])
    assert r.exit_code == 2 and "already built" in r.stderr


def test_input_size_error_names_the_expected_size(netfile):
    r = CliRunner().invoke(cli, ["analyze", "--no-time", f"{netfile}:Net", "--input-shape",
                                 "1,3,48,48"])
    assert r.exit_code == 3 and len(r.stderr.strip().splitlines()) == 1
    assert "the model expects 32 x 32 inputs: pass --input-shape 1,3,32,32" in r.stderr


def test_budget_model_args(netfile, tmp_path):
    b = tmp_path / "b.yaml"
    b.write_text(f"version: 1\ndefaults: {{input: [1, 3, 32, 32]}}\nchecks:\n"
                 f"  - name: n\n    model: {netfile}:Net\n    model_args: {{width: 16, aux: false}}\n"
                 "    limits: {params: '500'}\n")
    r = CliRunner().invoke(cli, ["check", "--no-time", str(b), "-f", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metrics"]["n"]["params"] == 448
    b.write_text(f"version: 1\nchecks:\n  - name: n\n    model: {netfile}:Net\n"
                 "    model_args: [width]\n    limits: {params: '500'}\n")
    r = CliRunner().invoke(cli, ["check", "--no-time", str(b)])
    assert r.exit_code == 2 and "'model_args' must map argument names to scalars" in r.stderr


# --------------------------------------------------------------------------- large tables


def _table_spec(tmp_path, n, nested=False):
    lines = ["batch: 1", "layers:"]
    for i in range(n):
        lines.append(f"  - {{name: l{i}, input: [8, 8, 8], conv: {{out: {8 + 8 * (i % 3)}, "
                     "kernel: 1}}")
    p = tmp_path / f"t{n}.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_large_tables_are_collapsed_with_a_note_and_all_lists_them(tmp_path):
    spec = _table_spec(tmp_path, 450)
    t = CliRunner().invoke(cli, ["analyze", "--no-time", str(spec)]).stdout
    assert "450 layers: the 300 with the most MACs are listed in order" in t
    assert "(150 smaller layers)" in t and " l449 " not in t.replace("\n", " ")[-10:]
    full = CliRunner().invoke(cli, ["analyze", "--no-time", str(spec), "--all"]).stdout
    assert "l449" in full and "smaller layers" not in full
    d = json.loads(CliRunner().invoke(cli, ["analyze", "--no-time", str(spec), "-f",
                                            "json"]).stdout)
    assert len(d["layers"]) == 450  # files keep every layer


def test_large_models_collapse_to_the_hierarchy():
    from convcost.report.analyze import table_rows

    big = nn.Sequential(*[nn.Sequential(*[nn.Conv2d(4, 4, 1) for _ in range(4)])
                          for _ in range(100)])
    r = analyze_model(big.eval(), [(1, 4, 4, 4)], source="b", name="b")
    rows, note = table_rows(r, None, False)
    assert len(r.layers) == 400 and len(rows) == 100 and "depth 1" in note
    assert sum(x.macs for x in rows) == r.macs
