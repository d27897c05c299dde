"""Tracing real models: bundled reference CNNs, import forms, fallbacks, export round trip."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from convcost.cli import cli
from convcost.counting.analysis import analyze_model
from convcost.sources.load import load_source
from tests.conftest import EXAMPLES, ROOT

FIX = ROOT / "tests" / "fixtures" / "bad_models.py"


def _json(args):
    r = CliRunner().invoke(cli, ["analyze", "--no-time", *args, "-f", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("name,params,conv_fc_macs", [
    ("ResNet50", 25_557_032, 4_089_184_256),
    ("MobileNetV2", 3_504_872, 300_774_272),
    ("ShuffleNetV2", 2_278_604, 144_907_992),
])
def test_bundled_models_match_torchvision_architectures(name, params, conv_fc_macs):
    d = _json([f"{EXAMPLES}/models.py:{name}"])
    assert d["totals"]["params"] == params
    assert d["by_operator"]["conv"] + d["by_operator"]["linear"] == conv_fc_macs
    assert sum(x["macs"] for x in d["layers"]) == d["totals"]["macs"]
    assert sum(x["params"] for x in d["layers"]) == d["totals"]["params"]
    kinds = {x["kind"] for x in d["layers"] if x["op"] == "conv"}
    assert "dense" in kinds or "pointwise" in kinds
    if name != "ResNet50":
        assert "depthwise" in kinds


def test_resnet50_macs_within_1_percent_of_4_09g():
    d = _json([f"{EXAMPLES}/models.py:ResNet50"])
    assert abs(d["by_operator"]["conv"] + d["by_operator"]["linear"] - 4.09e9) / 4.09e9 < 0.01


def test_resnext_grouped_convs_are_classified():
    d = _json([f"{EXAMPLES}/models.py:ResNeXt50_32x4d"])
    grouped = [x for x in d["layers"] if x["kind"] == "grouped"]
    assert len(grouped) == 16 and all(x["groups"] == 32 for x in grouped)
    assert d["totals"]["params"] == 25_028_904


def test_package_module_form(monkeypatch):
    monkeypatch.chdir(ROOT)
    d = _json(["examples.models:TinyNet"])
    assert d["totals"]["params"] == 4858


def test_instance_and_factory_forms():
    d = _json([f"{FIX}:trainable_instance", "--input-shape", "2,3,16,16"])
    assert d["input_shape"] == [2, 3, 16, 16]
    assert d["layers"][0]["out_shape"] == [2, 4, 14, 14]


def test_training_mode_is_restored():
    loaded = load_source(f"{FIX}:trainable_instance", input_shape=(1, 3, 8, 8))
    loaded.model.train()
    analyze_model(loaded.model, loaded.inputs, source="x", name="x")
    assert loaded.model.training and loaded.model.bn.training


def test_input_shape_and_batch_must_agree():
    d = _json([f"{EXAMPLES}/models.py:TinyNet", "--input-shape", "3,3,64,64", "--batch", "3"])
    assert d["input_shape"] == [3, 3, 64, 64]
    d = _json([f"{EXAMPLES}/models.py:TinyNet", "--batch", "2"])
    assert d["input_shape"][0] == 2
    r = CliRunner().invoke(cli, ["analyze", "--no-time", f"{EXAMPLES}/models.py:TinyNet",
                                 "--input-shape", "1,3,64,64", "--batch", "3"])
    assert r.exit_code == 2
    assert "--batch 3 disagrees with --input-shape 1,3,64,64" in r.output


def test_conv1d_and_conv3d_counted_correctly():
    d = _json([f"{FIX}:Convs1d3d", "--input-shape", "1,4,6,5"])
    rows = {x["name"]: x for x in d["layers"]}
    assert rows["c1"]["macs"] == 30 * 3 * (4 // 2) * 8  # L=30, k=3, cin/g=2, cout=8
    assert rows["c1"]["params"] == 8 * 2 * 3
    assert rows["c3"]["macs"] == (2 * 6 * 5) * 27 * 4 * 6
    assert rows["c3"]["params"] == 6 * 4 * 27


def test_fallback_to_flop_counter_when_fvcore_cannot_trace():
    d = _json([f"{FIX}:DictOutput", "--input-shape", "1,3,8,8"])
    assert d["counter"] == "torch.utils.flop_counter"
    assert any("fvcore failed" in n for n in d["notes"])
    rows = {x["name"]: x for x in d["layers"]}
    assert rows["conv"]["macs"] == 8 * 8 * 9 * 3 * 8
    assert rows["fc"]["macs"] == 8 * 4
    assert d["totals"]["macs"] == 8 * 8 * 9 * 3 * 8 + 32
    r = CliRunner().invoke(cli, ["analyze", "--no-time", f"{FIX}:DictOutput", "--input-shape", "1,3,8,8"])
    assert "torch.utils.flop_counter" in r.stdout and "fvcore failed" in r.stdout


def test_silent_empty_trace_is_caught():
    d = _json([f"{FIX}:NoneOutput", "--input-shape", "1,3,8,8"])
    assert d["counter"] == "torch.utils.flop_counter"
    assert "trace saw no work" in " ".join(d["notes"])
    assert d["totals"]["macs"] == 6 * 6 * 27 * 8


def test_data_dependent_control_flow_is_counted():
    d = _json([f"{FIX}:DataDependent", "--input-shape", "1,3,8,8"])
    assert d["totals"]["macs"] == 8 * 8 * 9 * 3 * 8 + 8 * 8 * 8 * 8


def test_depth_collapses_hierarchy():
    r = CliRunner().invoke(cli, ["analyze", "--no-time", f"{EXAMPLES}/models.py:ResNet50", "--depth", "1"])
    assert r.exit_code == 0
    lines = [ln for ln in r.stdout.splitlines() if "layer" in ln and "Sequential" in ln]
    assert len(lines) == 4 and "layer3" in r.stdout and "layer3.0" not in r.stdout
    r0 = CliRunner().invoke(cli, ["analyze", "--no-time", f"{EXAMPLES}/models.py:TinyNet", "--depth", "0"])
    assert "(model)" in r0.stdout
    from convcost.counting.analysis import analyze_model
    from convcost.report.analyze import _collapse
    from convcost.sources.load import load_source

    loaded = load_source(f"{EXAMPLES}/models.py:MobileNetV2")
    rep = analyze_model(loaded.model, loaded.inputs, source="m", name="m")
    rows = _collapse(rep, 1)
    assert [r.name for r in rows] == ["features", "classifier", "(outside these modules)"]
    assert sum(r.macs for r in rows) == rep.macs and sum(r.params for r in rows) == rep.params
    assert rows[-1].macs == 1280 * 7 * 7  # the functional global average pool in forward()


def test_export_spec_round_trip(tmp_path):
    out = tmp_path / "convs.yaml"
    r = CliRunner().invoke(cli, ["analyze", "--no-time", f"{EXAMPLES}/models.py:MobileNetV2", "-f", "json",
                                 "--export-spec", str(out)])
    assert r.exit_code == 0, r.output
    orig = json.loads(r.stdout)
    again = _json([str(out)])
    conv = [x for x in orig["layers"] if x["op"] == "conv"]
    assert sum(x["params"] for x in conv) == again["totals"]["params"]
    assert sum(x["macs"] for x in conv) == again["totals"]["macs"]
    assert len(again["layers"]) == len(conv) == 52
    assert [x["kind"] for x in again["layers"]] == [x["kind"] for x in conv]


def test_torch_export_program_loads(tmp_path):
    from examples.models import TinyNet

    x = torch.randn(1, 3, 32, 32)
    ep = torch.export.export(TinyNet().eval(), (x,))
    path = tmp_path / "tiny.pt2"
    torch.export.save(ep, str(path))
    d = _json([str(path)])
    assert d["totals"]["params"] == 4858
    assert d["input_shape"] == [1, 3, 32, 32]
    conv = 16 * 16 * 27 * 16 + 16 * 16 * 9 * 4 * 32 + 8 * 8 * 9 * 32 + 8 * 8 * 32 * 64
    assert d["by_operator"]["conv"] == conv


@pytest.mark.parametrize("source,needle", [
    ("missing.py:Net", "no such file"),
    (f"{FIX}:Nope", "has no attribute 'Nope'"),
    (f"{FIX}:raising_factory", "factory exploded on purpose"),
    (f"{FIX}:NOT_A_MODULE", "is a int; a SOURCE names an nn.Module instance"),
    (f"{FIX}:returns_a_string", "returned a str, not an nn.Module"),
    (f"{FIX}:NeedsArgs", "calling NeedsArgs() failed: TypeError"),
    (f"{ROOT}/tests/fixtures/raises_on_import.py:X", "importing"),
    ("no_such_pkg_xyz.mod:Net", "no module named 'no_such_pkg_xyz'"),
    ("model.pt", "pickled model files are not loaded"),
])
def test_bad_sources_exit_3(source, needle):
    r = CliRunner().invoke(cli, ["analyze", "--no-time", source])
    assert r.exit_code == 3, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert "Traceback" not in r.output


def test_wrong_input_shape_names_the_module():
    r = CliRunner().invoke(cli, ["analyze", "--no-time", f"{EXAMPLES}/models.py:TinyNet", "--input-shape",
                                 "1,1,32,32"])
    assert r.exit_code == 3
    assert "failed in module 'stem.0'" in r.stderr and "RuntimeError" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_not_a_source_exits_2():
    r = CliRunner().invoke(cli, ["analyze", "--no-time", "resnet"])
    assert r.exit_code == 2 and "is not a SOURCE" in r.stderr


def test_broken_torchvision_install_is_a_load_error(tmp_path, monkeypatch):
    """An installed torchvision built for another torch raises at import: exit 3, not a crash."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "torchvision", raising=False)
    r = CliRunner().invoke(cli, ["analyze", "--no-time", "torchvision:resnet50"])
    assert r.exit_code == 3, r.output
    assert "fails to import" in r.stderr and "torchvision::nms" in r.stderr


def test_torchvision_missing_or_present():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        r = CliRunner().invoke(cli, ["analyze", "--no-time", "torchvision:resnet50"])
        assert r.exit_code == 3 and "pip install" in r.stderr and "torchvision" in r.stderr
        return
    d = _json(["torchvision:resnet50"])
    assert d["totals"]["params"] == 25_557_032


@pytest.mark.parametrize("name,params,macs_lo,macs_hi", [
    ("resnet50", 25_557_032, 4.05e9, 4.13e9),
    ("mobilenet_v2", 3_504_872, 0.30e9, 0.32e9),
    ("shufflenet_v2_x1_0", 2_278_604, 0.14e9, 0.16e9),
])
def test_torchvision_models(name, params, macs_lo, macs_hi):
    pytest.importorskip("torchvision")
    d = _json([f"torchvision:{name}"])
    assert d["totals"]["params"] == params
    assert macs_lo <= d["totals"]["macs"] <= macs_hi
