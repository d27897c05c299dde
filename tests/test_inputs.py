"""Inputs beyond one tensor (issue 24): the --input grammar and inputs files, structured
outputs, data-dependent models, and torchvision's namespaces where torchvision is installed."""

from __future__ import annotations

import collections
import importlib.util
import json
import math

import pytest
import torch
from click.testing import CliRunner

from convcost.cli import cli
from convcost.counting.analysis import analyze_model, choose_counting
from convcost.errors import InputError
from convcost.inputs import Example, FlatCall, Seq, TensorSpec, parse_input, read_inputs_file
from convcost.timing.backends import OutputMismatch, check_against_eager
from tests.conftest import ROOT

FIX = ROOT / "tests" / "fixtures" / "structured_models.py"
HAS_TV = importlib.util.find_spec("torchvision") is not None


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def analyze_json(*args):
    r = run("analyze", "--no-time", *args, "-f", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# --------------------------------------------------------------------------- the grammar


@pytest.mark.parametrize("text,shapes,dtypes,batch", [
    ("1x3x224x224", [(1, 3, 224, 224)], ["float32"], 1),
    ("1,3,224,224", [(1, 3, 224, 224)], ["float32"], 1),
    ("[3x480x640, 3x320x320]", [(3, 480, 640), (3, 320, 320)], ["float32"] * 2, 2),
    ("[3x8x8]*3", [(3, 8, 8)] * 3, ["float32"] * 3, 3),
    ("2x128:int64<30522", [(2, 128)], ["int64"], 2),
    ("4x5:int32[3,9)", [(4, 5)], ["int32"], 4),
    ("1x8:bool", [(1, 8)], ["bool"], 1),
    ("2x3:fp16", [(2, 3)], ["float16"], 2),
])
def test_input_grammar(text, shapes, dtypes, batch):
    ex = parse_input([text])
    assert ex.shapes == shapes and [t.dtype for t in ex.tensors()] == dtypes
    assert ex.batch == batch
    call = ex.make()
    got = call.tensors()
    assert [tuple(t.shape) for t in got] == shapes
    assert [str(t.dtype).removeprefix("torch.") for t in got] == dtypes
    assert parse_input([ex.text()]) == ex  # the text form reads back


def test_integer_values_stay_in_their_range():
    (t,) = parse_input(["1000:int64[3,9)"]).make().tensors()
    assert int(t.min()) >= 3 and int(t.max()) <= 8
    (u,) = parse_input(["1000:int64"]).make().tensors()
    assert set(u.unique().tolist()) <= {0, 1}  # without a bound: valid indices anywhere


def test_plain_inputs_keep_the_old_seeded_values():
    g = torch.Generator().manual_seed(0)
    want = torch.randn(2, 3, 4, 4, generator=g)
    assert torch.equal(parse_input(["2x3x4x4"]).make().args[0], want)
    assert parse_input(["2x3x4x4"]).is_plain and not parse_input(["[3x4x4]"]).is_plain


def test_keywords_and_batch():
    ex = parse_input(["1x3x8x8", "mask=1x8:bool"])
    call = ex.make()
    assert call.kwargs["mask"].dtype == torch.bool and len(call.args) == 1
    assert ex.with_batch(4).shapes == [(4, 3, 8, 8), (4, 8)]
    imgs = parse_input(["[3x8x8,3x4x4]"]).with_batch(3)
    assert imgs.shapes == [(3, 8, 8), (3, 4, 4), (3, 8, 8)]


@pytest.mark.parametrize("values,needle", [
    (["1x0x3"], "from 1 to"),
    (["1x3:float8"], "dtype 'float8'"),
    (["1x3<5"], "integer tensors only"),
    (["1x3:int64<0"], "at least one value"),
    (["1x3:int64<9223372036854775808"], "fit int64"),
    (["1x3:uint8<257"], "fit uint8"),
    (["[]"], "empty list"),
    (["[3x4x4]*99999"], "at most"),
    (["1x2x3x4x5x6x7x8x9"], "at most 8"),
    (["k=1x2", "3x3"], "positional inputs come before"),
    (["a b=1x2"], "not a keyword"),
    (["k=1x2", "k=1x3"], "given twice"),
    (["1x3", "in.yaml"], "give it alone"),
    (["x" * 5000], "characters"),
])
def test_bad_input_values(values, needle):
    with pytest.raises(InputError, match=None) as e:
        parse_input(values)
    assert needle in str(e.value)


def test_bad_input_on_the_command_line_is_one_line_exit_2():
    r = run("analyze", "--no-time", f"{FIX}:TokenNet", "--input", "2x16:int99")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--input #1" in r.stderr and "int99" in r.stderr
    r = run("analyze", "--no-time", f"{FIX}:TokenNet", "--input", "2x16", "--input-shape",
            "2,16")
    assert r.exit_code == 2 and "give one" in r.stderr
    r = run("compare", "--no-time", "--input", "1x3x8x8")
    assert r.exit_code == 2 and "need a SOURCE" in r.stderr


def test_the_memory_guard_sees_every_tensor():
    r = run("analyze", "--no-time", f"{FIX}:ToyDetector", "--input",
            "[3x1048576x1048576, 3x1048576x1048576]")
    assert r.exit_code == 2 and "needs about" in r.stderr and "Traceback" not in r.output


# --------------------------------------------------------------------------- inputs files


def test_inputs_file(tmp_path):
    f = tmp_path / "in.yaml"
    f.write_text("args:\n  - [{shape: [3, 16, 16]}, '3x8x12']\n"
                 "  - {tuple: [{shape: [2], dtype: int64, low: 1, high: 5}, 7, null]}\n"
                 "kwargs:\n  mask: '1x8:bool'\n  opts: {dict: {a: {shape: [1], fill: ones}}}\n"
                 "  name: {str: hello}\n", encoding="utf-8")
    ex = read_inputs_file(str(f))
    call = ex.make()
    assert [tuple(t.shape) for t in call.args[0]] == [(3, 16, 16), (3, 8, 12)]
    assert call.args[1][1:] == (7, None) and isinstance(call.args[1], tuple)
    assert int(call.args[1][0].min()) >= 1
    assert torch.equal(call.kwargs["opts"]["a"], torch.ones(1))
    assert call.kwargs["name"] == "hello" and call.kwargs["mask"].dtype == torch.bool
    assert parse_input([str(f)]) == ex


@pytest.mark.parametrize("body,needles", [
    ("args: 3\n", ["'args' must be a list"]),
    ("args: []\nextra: 1\n", ["unknown key 'extra'"]),
    ("args:\n  - {shape: [1, 0]}\n", [":2:", "from 1 to"]),
    ("args:\n  - {shape: [1, 2], dtype: int64, high: x}\n", [":2:", "high must be an integer"]),
    ("args:\n  - {shape: [2], colour: red}\n", ["unknown key 'colour'"]),
    ("args:\n  - {foo: [1]}\n", ["a mapping is a tensor"]),
    ("kwargs:\n  1bad: '1x2'\n", ["not a keyword argument name"]),
    ("args:\n  - [[[[[[[[[[1x1]]]]]]]]]]\n", ["nested deeper"]),
    ("args: []\n", ["no inputs"]),
])
def test_bad_inputs_files_exit_2(tmp_path, body, needles):
    f = tmp_path / "in.yaml"
    f.write_text(body, encoding="utf-8")
    r = run("analyze", "--no-time", f"{FIX}:TokenNet", "--input", f)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and str(f) in err and "Traceback" not in r.output
    for n in needles:
        assert n in err, (n, err)


# --------------------------------------------------------------------------- counting


def test_toy_detector_counts_on_real_tensors_with_a_data_dependent_note():
    from tests.fixtures.structured_models import ToyDetector

    torch.manual_seed(0)
    model = ToyDetector().eval()
    ex = parse_input(["[3x32x32, 3x24x40]"])
    with torch.no_grad():
        kept = sum(len(o["boxes"]) for o in model(*ex.make().args))
    r = analyze_model(model, ex, source="toy", name="toy")
    assert r.counter == "fvcore"
    conv = sum(8 * 27 * (h // 2) * (w // 2) + 16 * 72 * (h // 4) * (w // 4) + 5 * 16 * (h // 4)
               * (w // 4) for h, w in ((32, 32), (24, 40)))
    assert r.by_operator["conv"] == conv
    assert r.by_operator.get("linear", 0) == 16 * 4 * kept
    assert any(n.startswith("data-dependent") for n in r.notes)
    assert r.inputs == "[3x32x32, 3x24x40]" and r.input_shapes == [[3, 32, 32], [3, 24, 40]]
    # auto never counts a structured call on meta tensors, however large
    assert choose_counting(model, parse_input(["[3x4000x4000]*64"])) == "real"
    meta = analyze_model(model, ex, source="toy", name="toy", count_on="meta")
    assert meta.macs == r.macs and any("counted on real tensors" in n for n in meta.notes)


def test_a_head_run_on_no_box_is_not_a_trace_failure():
    from tests.fixtures.structured_models import ToyDetector

    model = ToyDetector().eval()
    torch.nn.init.zeros_(model.head.weight)  # every score 0.5: no cell kept
    r = analyze_model(model, parse_input(["[3x32x32]"]), source="toy", name="toy")
    assert r.counter == "fvcore" and r.by_operator.get("linear", 0) == 0


def test_toy_detector_on_the_command_line():
    d = analyze_json(f"{FIX}:ToyDetector", "--input", "[3x32x32,3x24x40]")
    assert d["inputs"] == "[3x32x32, 3x24x40]" and d["counter"] == "fvcore"
    assert d["by_operator"]["conv"] > 0
    assert sum(x["macs"] for x in d["layers"]) == d["totals"]["macs"]
    r = run("analyze", "--no-time", f"{FIX}:ToyDetector", "--input", "[3x32x32]")
    assert r.exit_code == 0 and "[3x32x32]" in r.stdout


def test_toy_detector_timed_whole_model_and_layers():
    r = run("analyze", f"{FIX}:ToyDetector", "--input", "[3x32x32,3x24x40]", "--fresh",
            "--time-budget", "10", "--max-time", "0.3", "-f", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["totals"]["latency_ms"] is not None and d["totals"]["latency_ms"] > 0
    assert any(x["latency_ms"] for x in d["layers"] if x["op"] == "conv")


def test_compare_a_detector_backbone_with_whole_model_rows():
    r = run("compare", f"{FIX}:ToyDetector", "--input", "[3x32x32]", "--layers", "backbone.*",
            "--groups", "2", "--variants", "grouped", "--no-time", "-f", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert {x["name"] for x in d["layers"]} == {"backbone.0", "backbone.2"}
    assert d["baseline"]["layer"] == "(model)" and d["variants"][0]["variant"] == "grouped"
    assert d["variants"][0]["substituted"] == 1  # backbone.0 has C=3: kept


def test_keyword_inputs():
    d = analyze_json(f"{FIX}:KeywordNet", "--input", "1x3x8x8", "--input", "mask=1x8:bool")
    assert d["by_operator"]["conv"] == 4 * 27 * 64 and "mask=1x8:bool" in d["inputs"]
    r = run("analyze", "--no-time", f"{FIX}:KeywordNet", "--input", "1x3x8x8", "--input",
            "nope=1x8")
    assert r.exit_code == 3 and "nope" in r.stderr  # the model's own error, one line


def test_integer_inputs():
    d = analyze_json(f"{FIX}:TokenNet", "--input", "2x16:int64<100")
    assert d["by_operator"]["conv"] == 2 * 32 * 16 * 3 * 14
    assert d["by_operator"]["linear"] == 2 * 32 * 10
    r = run("analyze", "--no-time", f"{FIX}:TokenNet", "--input", "2x16:int64<1000")
    assert r.exit_code == 3 and "embed" in r.stderr  # ids past the vocabulary: its error


def test_two_positional_inputs_and_a_tuple_output_timed():
    r = run("analyze", f"{FIX}:PairNet", "--input", "1x3x8x8", "--input", "1x3x8x8", "--fresh",
            "--time-budget", "5", "--max-time", "0.2", "-f", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["totals"]["latency_ms"] is not None


def test_a_budget_can_name_a_detector_and_its_input(tmp_path):
    b = tmp_path / "budget.yaml"
    b.write_text(f"version: 1\nchecks:\n  - name: det\n    model: {FIX}:ToyDetector\n"
                 "    input: '[3x32x32, 3x24x40]'\n    limits: {params: '10k'}\n",
                 encoding="utf-8")
    r = run("check", b, "--no-time")
    assert r.exit_code == 0, r.output
    b.write_text(f"version: 1\nchecks:\n  - name: det\n    model: {FIX}:ToyDetector\n"
                 "    input: '[3x0x32]'\n    limits: {params: '10k'}\n", encoding="utf-8")
    r = run("check", b, "--no-time")
    assert r.exit_code == 2 and "budget.yaml:5" in r.stderr and "input" in r.stderr


# --------------------------------------------------------------------------- outputs


Pair = collections.namedtuple("Pair", "a b")


@pytest.mark.parametrize("out", [
    torch.ones(2, 3), (torch.ones(2), torch.zeros(3)), {"x": torch.ones(2), "y": [torch.ones(1)]},
    [{"boxes": torch.ones(4, 4), "labels": torch.arange(4)}], Pair(torch.ones(2), 3),
])
def test_output_check_accepts_the_same_structure(out):
    assert check_against_eager(out, out, "fp32") == 0.0


def test_output_check_names_what_differs():
    ref = [{"boxes": torch.ones(4, 4), "scores": torch.ones(4)}]
    bad = [{"boxes": torch.ones(4, 4), "scores": torch.ones(4) * 2}]
    with pytest.raises(OutputMismatch, match=r"\[0\]\['scores'\] differs"):
        check_against_eager(bad, ref, "fp32")
    with pytest.raises(OutputMismatch, match="shape"):
        check_against_eager([{"boxes": torch.ones(3, 4), "scores": torch.ones(4)}], ref, "fp32")
    with pytest.raises(OutputMismatch, match="values"):
        check_against_eager([{"boxes": torch.ones(4, 4)}], ref, "fp32")


def test_flat_call_round_trip():
    from tests.fixtures.structured_models import KeywordNet

    model = KeywordNet().eval()
    ex = parse_input(["1x3x8x8", "mask=1x8:bool"])
    call = ex.make()
    flat = FlatCall(model, call)
    outs = flat(*call.tensors())
    ref = call.run(model)
    assert torch.equal(outs[0], ref["out"]) and torch.equal(outs[1], ref["pooled"])
    assert flat.paths == ["['out']", "['pooled']"]
    assert flat.name_outputs("output [1] differs") == "output ['pooled'] differs"


def test_example_structures_are_values():
    ex = Example((Seq("list", (TensorSpec((3, 4, 4)),)),))
    assert ex == parse_input(["[3x4x4]"]) and hash(ex) == hash(parse_input(["[3x4x4]"]))
    assert ex.nbytes() == 4 * 48 and math.prod(ex.shapes[0]) == 48


# --------------------------------------------------------------------------- torchvision

tv = pytest.mark.skipif(not HAS_TV, reason="torchvision is not installed")


def _tv_weights(name):
    import torchvision

    return next(iter(torchvision.models.get_model_weights(name)))


@tv
@pytest.mark.parametrize("source,name,extra", [
    ("torchvision:r3d_18", "r3d_18", ["--count-on", "meta"]),
    ("torchvision.models.video:r3d_18", "r3d_18", ["--count-on", "meta"]),
    ("torchvision:lraspp_mobilenet_v3_large", "lraspp_mobilenet_v3_large", []),
    ("torchvision:ssdlite320_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large", []),
])
def test_torchvision_namespaces_match_published_figures(source, name, extra):
    d = analyze_json(source, *extra)
    w = _tv_weights(name)
    assert d["totals"]["params"] == w.meta["num_params"]
    assert abs(d["totals"]["paper_macs"] / 1e9 - w.meta["_ops"]) <= 0.0005 + 1e-9


@tv
def test_torchvision_detection_by_module_path_with_a_list_input():
    d = analyze_json("torchvision.models.detection:fasterrcnn_mobilenet_v3_large_320_fpn",
                     "--input", "[3x224x224]")
    assert d["counter"] == "fvcore" and d["inputs"] == "[3x224x224]"
    assert any(n.startswith("data-dependent") for n in d["notes"])


@tv
def test_torchvision_unknown_name_lists_what_there_is():
    r = run("analyze", "--no-time", "torchvision:resnet5O")
    assert r.exit_code == 3 and "resnet50" in r.stderr and "detection:" in r.stderr


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_int8_modules_are_counted_from_their_shapes():
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" not in engines and "qnnpack" not in engines:
        pytest.skip("no quantized engine in this torch")
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in engines else "qnnpack"

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.dq = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            y = self.conv(self.q(x)).mean((2, 3))
            return self.dq(self.fc(y))

    m = Tiny().eval()
    m.qconfig = torch.ao.quantization.get_default_qconfig(torch.backends.quantized.engine)
    torch.ao.quantization.prepare(m, inplace=True)
    m(torch.randn(1, 3, 8, 8))
    torch.ao.quantization.convert(m, inplace=True)
    r = analyze_model(m, [(1, 3, 8, 8)], source="q", name="q", count_on="real")
    assert r.by_operator["conv"] == 8 * 27 * 64 and r.by_operator["linear"] == 8 * 4
    assert any("2 int8 conv/linear module(s)" in n and "248 int8 weights" in n for n in r.notes)
    assert r.params == 0  # int8 weights are not trainable parameters


def test_torchvision_namespaces_have_their_published_default_inputs():
    from convcost.sources.tvmodels import default_example, namespace_of, no_download

    def builder(module: str):
        def f(*, weights=None, weights_backbone="download", num_classes=91):
            return None
        f.__module__ = module
        return f

    det = builder("torchvision.models.detection.faster_rcnn")
    assert namespace_of(det) == "detection" and default_example(det, "x").text() == "[3x224x224]"
    assert default_example(builder("torchvision.models.segmentation.fcn"), "x").shapes == [
        (1, 3, 520, 520)]
    assert default_example(builder("torchvision.models.optical_flow.raft"), "x").shapes == [
        (1, 3, 512, 512)] * 2
    assert default_example(builder("torchvision.models.resnet"), "x").shapes == [(1, 3, 224, 224)]
    assert default_example(builder("mypackage.models"), "x") is None
    assert no_download(det, {}) == {"weights": None, "weights_backbone": None}
    assert no_download(det, {"weights_backbone": "X"})["weights_backbone"] == "X"
