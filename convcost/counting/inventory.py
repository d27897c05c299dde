"""Walk a model with a sample input: record every leaf module's shapes, and classify convolutions.

The model runs once in eval mode without grad; its previous training mode is restored.
Shapes include the batch dimension.
"""

from __future__ import annotations

from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from convcost.inputs import as_call
from convcost.sources.spec import AddBlock, ChannelShuffle, ConcatBlock

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
    if isinstance(m, (ChannelShuffle, nn.ChannelShuffle)):
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
        return [int(d) for d in x.shape]  # sizes may be traced 0-d tensors under jit.trace
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


_get_tracing = getattr(torch._C, "_get_tracing_state", None)
_set_tracing = getattr(torch._C, "_set_tracing_state", None)


def _shape_untraced(x: Any) -> list[int] | None:
    """``_first_shape`` with the JIT tracer paused: reading sizes while fvcore traces would
    otherwise add size/Int nodes to its graph and double the cost of the trace."""
    state = _get_tracing() if _get_tracing is not None and _set_tracing is not None else None
    if state is None:
        return _first_shape(x)
    _set_tracing(None)
    try:
        return _first_shape(x)
    finally:
        _set_tracing(state)


@contextmanager
def eval_mode(model: nn.Module):
    """Put every submodule in eval mode and restore each one's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    with suppress(NotImplementedError):  # torch.export's modules refuse eval(); already fixed
        model.eval()
    try:
        yield model
    finally:
        for m, t in modes:
            m.training = t


class ForwardError(Exception):
    """A model's forward raised; ``module`` is the innermost module that was running."""

    def __init__(self, module: str, error: BaseException) -> None:
        super().__init__(f"{module}: {error}")
        self.module, self.error = module, error


class ShapeRecorder:
    """Context manager: forward hooks on every module record first-call shapes and call counts.

    Used around any forward (a plain one, or fvcore's JIT trace, which runs the real forward),
    so shapes cost no extra pass. ``running`` is the stack of modules currently executing: after
    an exception its top names the innermost module that failed.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.records: dict[str, ModuleRecord] = {}
        self.running: list[str] = []
        self._handles: list[Any] = []

    def __enter__(self) -> ShapeRecorder:
        for name, mod in self.model.named_modules():
            self._handles.append(mod.register_forward_pre_hook(self._pre(name)))
            self._handles.append(mod.register_forward_hook(self._post(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, name: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            self.running.append(name)
        return hook

    def _post(self, name: str):
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            if self.running and self.running[-1] == name:
                self.running.pop()
            rec = self.records.get(name)
            if rec is None:
                self.records[name] = ModuleRecord(name, mod, _shape_untraced(args),
                                                  _shape_untraced(out), 1, len(self.records) + 1)
            else:
                rec.calls += 1
        return hook

    def ordered(self) -> dict[str, ModuleRecord]:
        """Records in the model's definition order."""
        rank = {n: i for i, (n, _) in enumerate(self.model.named_modules())}
        return dict(sorted(self.records.items(), key=lambda kv: rank.get(kv[0], 1 << 30)))


def record_modules(model: nn.Module, inputs: Any) -> dict[str, ModuleRecord]:
    """Run ``model`` once on ``inputs`` (a :class:`~convcost.inputs.Call` or positional
    values; eval, no grad) and return every module's record by qualified
    name in definition order. The root module has the name ``""``.

    Raises :class:`ForwardError` naming the innermost module that was running when it failed.
    """
    with ShapeRecorder(model) as rec:
        try:
            with eval_mode(model), torch.no_grad():
                as_call(inputs).run(model)
        except Exception as e:
            where = rec.running[-1] if rec.running else ""
            raise ForwardError(where or f"(top-level {type(model).__name__})", e) from e
    return rec.ordered()


def is_leaf(m: nn.Module) -> bool:
    """A module with no children, or a spec block (add/concat) is reported through its children."""
    return next(iter(m.children()), None) is None


class ParamUse(TorchFunctionMode):
    """Records which parameters a forward uses: any torch function that receives one (or a view
    of one) as an argument. nn.MultiheadAttention uses its out_proj's weight without calling
    out_proj; an auxiliary head that never runs uses none of its own."""

    def __init__(self, recorder: ShapeRecorder | None = None) -> None:
        super().__init__()
        self.used: set[int] = set()
        self.recorder = recorder  # when given: only calls inside a module's forward count

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.recorder is not None and not self.recorder.running:
            return func(*args, **kwargs)  # the tracer's own handling of the module state
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor):
                self._note(a)
            elif isinstance(a, (list, tuple)):
                for x in a:
                    if isinstance(x, torch.Tensor):
                        self._note(x)
        return func(*args, **kwargs)

    def _note(self, t: torch.Tensor) -> None:
        while t is not None:
            if isinstance(t, nn.Parameter):
                self.used.add(id(t))
                return
            t = t._base

    def used_names(self, model: nn.Module) -> set[str]:
        """Qualified names of the used parameters of ``model``."""
        return {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in self.used}


def called_names(records: dict[str, Any]) -> set[str]:
    """Modules that ran, with their ancestors: a container (nn.ModuleList) is iterated, never
    called, but its children run."""
    out: set[str] = {""}
    for n in records:
        parts = n.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def uncalled_modules(model: nn.Module, records: dict[str, Any]) -> list[str]:
    """Names of the modules that took no part in the forward (nor a descendant), sorted."""
    ran = called_names(records)
    return sorted(n for n, _ in model.named_modules() if n and n not in ran)
