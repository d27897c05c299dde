"""Walk a model with a sample input: record every leaf module's shapes, and classify convolutions.

The model runs once in eval mode without grad; its previous training mode is restored.
Shapes include the batch dimension.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convcost.spec import AddBlock, ChannelShuffle, ConcatBlock

# Kinds of convolution (the ``kind`` column and JSON field).
DENSE, GROUPED, DEPTHWISE, POINTWISE, POINTWISE_GROUPED, GDC = (
    "dense", "grouped", "depthwise", "pointwise", "pointwise-grouped", "gdc")

_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
         nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU, nn.Softmax, nn.Hardtanh)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
          nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
          nn.modules.instancenorm._InstanceNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def conv_kind(m: nn.Module, in_shape: list[int] | None = None,
              out_shape: list[int] | None = None) -> str:
    """Classify a ConvNd: dense, grouped, depthwise, pointwise, pointwise-grouped or gdc.

    gdc (global depthwise) is a depthwise conv whose kernel covers the whole input, leaving 1x1.
    A 1x1 kernel with groups == 1 is pointwise; depthwise means groups == in_channels > 1.
    """
    cin, g = m.in_channels, m.groups
    pointwise = all(k == 1 for k in m.kernel_size)
    if g == 1:
        return POINTWISE if pointwise else DENSE
    if g == cin:
        if (in_shape is not None and out_shape is not None and not pointwise
                and list(m.kernel_size) == list(in_shape[2:]) and all(o == 1 for o in out_shape[2:])):
            return GDC
        return DEPTHWISE
    return POINTWISE_GROUPED if pointwise else GROUPED


def describe(m: nn.Module, in_shape: list[int] | None = None,
             out_shape: list[int] | None = None) -> tuple[str, str]:
    """(op, kind) of a leaf module, e.g. ("conv", "depthwise"), ("act", "relu6"), ("pool", "max 3x3/2")."""
    if isinstance(m, _CONVS):
        return "conv", conv_kind(m, in_shape, out_shape)
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "conv_transpose", DENSE if m.groups == 1 else GROUPED
    if isinstance(m, nn.Linear):
        return "linear", ""
    if isinstance(m, _NORMS):
        return "bn" if isinstance(m, nn.modules.batchnorm._BatchNorm) else "norm", type(m).__name__
    if isinstance(m, _ACTS):
        name = type(m).__name__.lower()
        return "act", {"silu": "silu", "relu6": "relu6"}.get(name, name)
    if isinstance(m, _POOLS):
        typ = "max" if "Max" in type(m).__name__ else "avg"
        if "Adaptive" in type(m).__name__:
            osz = m.output_size
            glob = osz == 1 or (isinstance(osz, tuple) and all(o == 1 for o in osz))
            return "pool", f"global {typ}" if glob else f"adaptive {typ}"
        return "pool", f"{typ} {_dims(m.kernel_size)}/{_dims(m.stride)}"
    if isinstance(m, nn.Flatten):
        return "flatten", ""
    if isinstance(m, ChannelShuffle):
        return "channel_shuffle", f"g={m.groups}"
    if isinstance(m, nn.ChannelShuffle):
        return "channel_shuffle", f"g={m.groups}"
    if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return type(m).__name__.lower(), ""
    if isinstance(m, AddBlock):
        return "add", "block"
    if isinstance(m, ConcatBlock):
        return "concat", "block"
    return type(m).__name__, ""


def _dims(v: Any) -> str:
    """(3, 3) -> '3x3', (2, 2) stride -> '2', 3 -> '3'."""
    if isinstance(v, (tuple, list)):
        return str(v[0]) if len(set(v)) == 1 else "x".join(map(str, v))
    return str(v)


@dataclass
class ModuleRecord:
    """Shapes seen at a module's first call (batch included) and how often it ran."""

    name: str
    module: nn.Module
    in_shape: list[int] | None
    out_shape: list[int] | None
    calls: int = 0
    order: int = 0
    extra_inputs: list[list[int]] = field(default_factory=list)


def _first_shape(x: Any) -> list[int] | None:
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, (list, tuple)):
        for item in x:
            s = _first_shape(item)
            if s is not None:
                return s
    if isinstance(x, dict):
        for item in x.values():
            s = _first_shape(item)
            if s is not None:
                return s
    return None


@contextmanager
def eval_mode(model: nn.Module):
    """Put every submodule in eval mode and restore each one's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in modes:
            m.training = t


def record_modules(model: nn.Module, inputs: tuple[Any, ...]) -> dict[str, ModuleRecord]:
    """Run ``model(*inputs)`` once (eval, no grad) with hooks on every module; returns records by
    qualified name in first-call order. The root module has the name ``""``.
    """
    records: dict[str, ModuleRecord] = {}
    counter = [0]
    handles = []

    def make_hook(name: str):
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            rec = records.get(name)
            if rec is None:
                counter[0] += 1
                records[name] = ModuleRecord(name, mod, _first_shape(args), _first_shape(out),
                                             1, counter[0])
            else:
                rec.calls += 1
        return hook

    for name, mod in model.named_modules():
        handles.append(mod.register_forward_hook(make_hook(name)))
    try:
        with eval_mode(model), torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    # forward hooks fire on exit, so parents come after children; order by first *entry* instead
    names = [n for n, _ in model.named_modules()]
    rank = {n: i for i, n in enumerate(names)}
    return dict(sorted(records.items(), key=lambda kv: rank.get(kv[0], 1 << 30)))


def is_leaf(m: nn.Module) -> bool:
    """A module with no children, or a spec block (add/concat) is reported through its children."""
    return next(iter(m.children()), None) is None
