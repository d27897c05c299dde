"""Each class of bad spec: exit 2, one line naming file, layer and key, no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from convcost.cli import cli

GOOD_HEAD = "name: t\ninput: [16, 8, 8]\nlayers:\n"

CASES = [
    # (id, yaml text, substrings the error line must hold)
    ("unknown-top-key", "name: t\ninputs: [3, 8, 8]\nlayers: [{act: relu}]\n",
     ["spec.yaml:2", "key 'inputs'", "allowed: name, description, input, batch, dtype, layers"]),
    ("unknown-conv-key", GOOD_HEAD + "  - conv: {out: 8, kernal: 3}\n",
     ["spec.yaml:4", "layers[0] 'conv1' (conv)", "key 'kernal'", "allowed: in, out, kernel"]),
    ("unknown-layer-key", GOOD_HEAD + "  - {convolution: {out: 8}}\n",
     ["layers[0]", "key 'convolution'", "conv, bn, act"]),
    ("two-ops", GOOD_HEAD + "  - {conv: {out: 8, kernel: 1}, bn: {}}\n",
     ["layers[0]", "exactly one op key", "found 2"]),
    ("wrong-type-out", GOOD_HEAD + "  - conv: {out: eight, kernel: 3}\n",
     ["layers[0] 'conv1' (conv)", "key 'out'", "'eight'", "must be an integer"]),
    ("wrong-type-bool", GOOD_HEAD + "  - conv: {out: 8, kernel: 3, bias: 1}\n",
     ["key 'bias'", "true or false"]),
    ("zero-size", GOOD_HEAD + "  - conv: {out: 0, kernel: 3}\n",
     ["key 'out'", "value 0 must be >= 1"]),
    ("negative-kernel", GOOD_HEAD + "  - conv: {out: 8, kernel: -3}\n",
     ["key 'kernel'", "value -3 must be >= 1"]),
    ("negative-input", "input: [3, -8, 8]\nlayers: [{act: relu}]\n",
     ["key 'input'", "positive sizes"]),
    ("huge-size", GOOD_HEAD + "  - conv: {out: 100000000000, kernel: 3}\n",
     ["key 'out'", "larger than the supported maximum"]),
    ("groups-not-divisible", GOOD_HEAD + "  - {name: g, conv: {out: 24, kernel: 3, groups: 5}}\n",
     ["spec.yaml:4", "layers[0] 'g' (conv)", "key 'groups'", "value 5", "divisible",
      "allowed groups here: 1, 2, 4, 8"]),
    ("collapse", GOOD_HEAD + "  - {name: big, conv: {out: 8, kernel: 11, padding: 0}}\n",
     ["layers[0] 'big' (conv)", "collapses to -2 x -2", "kernel [11, 11]"]),
    ("collapse-by-stride", "input: [3, 4, 4]\nlayers:\n  - conv: {out: 8, kernel: 3, stride: 2}\n"
     "  - conv: {out: 8, kernel: 3, stride: 2}\n  - {name: c3, conv: {out: 8, kernel: 3, "
     "padding: valid}}\n", ["layers[2] 'c3' (conv)", "collapses to -1 x -1", "input 1 x 1"]),
    ("shape-mismatch-in", GOOD_HEAD + "  - conv: {out: 32, kernel: 1}\n"
     "  - {name: second, conv: {in: 16, out: 8, kernel: 3}}\n",
     ["spec.yaml:5", "layers[1] 'second' (conv)", "key 'in'", "does not match the 32 channels"]),
    ("residual-mismatch", GOOD_HEAD + "  - name: blk\n    add:\n      layers:\n"
     "        - conv: {out: 32, kernel: 1}\n",
     ["layers[0] 'blk' (add)", "[32, 8, 8]", "[16, 8, 8]", "shortcut"]),
    ("nested-error", GOOD_HEAD + "  - add:\n      layers:\n        - conv: {out: 16, kernel: 3}\n"
     "        - {name: bad, conv: {out: 16, kernel: 3, groups: 3}}\n",
     ["layers[0].add.layers[1] 'bad' (conv)", "key 'groups'", "spec.yaml:7"]),
    ("linear-needs-flat", GOOD_HEAD + "  - linear: {out: 10}\n",
     ["'linear' needs a flat input", "flatten"]),
    ("bad-activation", GOOD_HEAD + "  - act: rectifier\n", ["key 'act'", "relu, relu6"]),
    ("bad-padding", GOOD_HEAD + "  - conv: {out: 8, kernel: 3, padding: full}\n",
     ["key 'padding'", "'same' or 'valid'"]),
    ("same-even-kernel", GOOD_HEAD + "  - conv: {out: 8, kernel: 2, padding: same}\n",
     ["key 'padding'", "odd kernel"]),
    ("no-input", "layers:\n  - conv: {out: 8, kernel: 3}\n", ["needs an input shape", "'input"]),
    ("layers-not-list", "input: [3, 8, 8]\nlayers: {conv: {out: 8}}\n",
     ["key 'layers'", "non-empty list"]),
    ("duplicate-name", GOOD_HEAD + "  - {name: a, act: relu}\n  - {name: a, act: relu}\n",
     ["layers[1] 'a' (act)", "duplicate layer name 'a'"]),
    ("duplicate-key", GOOD_HEAD + "  - conv: {out: 8, out: 9, kernel: 3}\n",
     ["spec.yaml:4", "duplicate key 'out'"]),
    ("yaml-syntax", "input: [3, 8, 8\nlayers: []\n", ["spec.yaml:", "YAML syntax error"]),
    ("not-a-mapping", "- just\n- a list\n", ["must be a mapping"]),
    ("bad-dtype", "input: [3, 8, 8]\ndtype: fp64\nlayers: [{act: relu}]\n",
     ["key 'dtype'", "fp32, tf32, fp16, bf16"]),
    ("shuffle-not-divisible", GOOD_HEAD + "  - channel_shuffle: 3\n",
     ["key 'channel_shuffle'", "not divisible"]),
    ("concat-hw-mismatch", GOOD_HEAD + "  - concat:\n      branches:\n        - []\n"
     "        - [{conv: {out: 8, kernel: 3, stride: 2}}]\n", ["same H x W"]),
]


@pytest.mark.parametrize("text,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_exits_2_with_one_clear_line(write_spec, text, needles):
    path = write_spec(text)
    result = CliRunner().invoke(cli, ["analyze", "--no-time", str(path)])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("convcost: error: ")
    assert str(path) in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert "Traceback" not in result.output


def test_traceback_flag_shows_the_exception(write_spec):
    path = write_spec(GOOD_HEAD + "  - conv: {out: 0, kernel: 3}\n")
    result = CliRunner().invoke(cli, ["analyze", "--no-time", str(path), "--traceback"])
    assert result.exit_code != 0
    from convcost.errors import SpecError

    assert isinstance(result.exception, SpecError)


def test_missing_and_empty_and_directory(tmp_path, write_spec):
    runner = CliRunner()
    r = runner.invoke(cli, ["analyze", "--no-time", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "no such spec file" in r.stderr
    r = runner.invoke(cli, ["analyze", "--no-time", str(write_spec(""))])
    assert r.exit_code == 2 and "empty spec file" in r.stderr
    d = tmp_path / "dir.yaml"
    d.mkdir()
    r = runner.invoke(cli, ["analyze", "--no-time", str(d)])
    assert r.exit_code == 2 and "is a directory" in r.stderr
