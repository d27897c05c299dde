"""Small helpers shared by tests: count one conv layer through the real pipeline."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convcost.counting.analysis import analyze_model
from convcost.sources.spec import build_model, example_inputs, spec_from_text


def spec_report(text: str, batch: int | None = None):
    spec = spec_from_text(text)
    model = build_model(spec)
    return analyze_model(model, example_inputs(spec, batch), source="<test>", name=spec.name)


def conv_layer_report(cin, cout, k, size, *, stride=1, padding=None, dilation=1, groups=1,
                      bias=False, batch=1):
    pad = "" if padding is None else f", padding: {padding}"
    text = (f"input: [{cin}, {size}, {size}]\nbatch: {batch}\nlayers:\n"
            f"  - {{name: c, conv: {{out: {cout}, kernel: {k}, stride: {stride}, "
            f"dilation: {dilation}, groups: {groups}, bias: {str(bias).lower()}{pad}}}}}\n")
    return spec_report(text)


def latency_budget(path: Path, backend: str, *, name: str = "tiny", model: str | None = None,
                   defaults: str = "") -> Path:
    """Write a budget with one check of ``model`` (default: examples/tiny.yaml) whose only
    limit is a 10 s latency on ``backend``; returns ``path``. ``defaults``: YAML lines."""
    model = model or str(Path(__file__).resolve().parent.parent / "examples" / "tiny.yaml")
    path.write_text(f"version: 1\n{defaults}checks:\n  - name: {name}\n    model: {model}\n"
                    f"    limits:\n      latency: {{error: '10 s', backend: {backend}}}\n")
    return path


def flop_counter_flops(module: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(x)
    return int(fc.get_total_flops())
