"""Costs beyond one forward's MACs: the backward's MACs, weight and activation memory, the
memory access cost of ShuffleNet V2, and a forward's peak activation memory. Counted on meta
tensors (shapes only, nothing computed or allocated); a module that cannot run there gets None.

Conventions (stated in every report that shows them):

- **backward MACs**: ``torch.utils.flop_counter`` over the backward's ATen ops, halved (one MAC
  = 2 FLOPs), with one correction: a convolution's backward is counted by its closed form,
  grad-input = grad-weight = the forward's MACs (:func:`conv_backward_macs`).
  ``flop_counter`` counts a grouped conv's weight gradient as if the conv were dense (g times
  the closed form, torch 2.13); convcost never reports that figure.
- **weight memory**: parameters x bytes per element of the report's dtype.
- **activation memory** of a layer: its output tensor's bytes.
- **memory access cost (MAC)**, ShuffleNet V2 (Ma et al. 2018), per conv/linear call: input +
  output + weight elements, ``hw(c_in + c_out) + k^2 c_in c_out / g`` for a stride-1 conv at
  batch 1 (the batch multiplies the activations, not the weights); a module's is the sum over
  the convs and linears it calls (a separable conv: both of its convs, the depthwise output
  written and read once).
- **peak activation memory** of a forward: the most bytes held at once by tensors the forward
  creates (parameters and inputs excluded); a training forward keeps what autograd saves for
  the backward.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MEMORY_CONVENTION = ("memory: weights = parameters x bytes of the dtype; activation = a layer's "
                     "output (bytes); MAC = memory access cost of ShuffleNet V2, per conv/linear "
                     "call input + output + weight elements (hw(c_in + c_out) + k^2 c_in c_out/g "
                     "at stride 1, batch 1), in bytes of the dtype")
BACKWARD_CONVENTION = ("backward MACs: torch.utils.flop_counter over the backward, a conv's "
                       "by its closed form (grad-input = grad-weight = forward MACs; "
                       "flop_counter counts a grouped conv's weight gradient g times)")
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout)


def training_mode(module: nn.Module) -> nn.Module:
    """``module`` in training mode with its dropout layers in eval mode (in place)."""
    module.train()
    for m in module.modules():
        if isinstance(m, DROPOUT_TYPES):
            m.eval()
    return module


LEAVES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
          nn.ConvTranspose3d, nn.Linear)


def meta_copy(module: nn.Module, float_dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``module`` whose parameters, buffers and tensor attributes are meta tensors
    (floating ones in ``float_dtype`` when given): the structure is copied, no data (a model
    of gigabytes costs nothing here)."""
    memo: dict[int, Any] = {}
    for m in module.modules():
        for store in (m._parameters, m._buffers, vars(m)):
            for t in store.values():
                if isinstance(t, torch.Tensor) and id(t) not in memo:
                    dt = float_dtype if float_dtype is not None and t.is_floating_point() \
                        else t.dtype
                    mt = torch.empty(t.shape, dtype=dt, device="meta")
                    memo[id(t)] = nn.Parameter(mt, requires_grad=t.requires_grad) \
                        if isinstance(t, nn.Parameter) else mt
    return copy.deepcopy(module, memo)


def conv_backward_macs(grad_out_shape: Sequence[int], x_shape: Sequence[int],
                       w_shape: Sequence[int], transposed: bool,
                       output_mask: Sequence[bool]) -> int:
    """MACs of a conv's backward, closed form: the forward's MACs (``N x prod(out spatial) x
    C_out x prod(w_shape[1:])`` for a conv; ``N x prod(in spatial) x prod(w_shape)`` for a
    transposed one) once for grad-input and once for grad-weight, as ``output_mask`` asks."""
    if transposed:  # each input element meets every weight of its group
        fwd = math.prod(x_shape[:1]) * math.prod(x_shape[2:]) * math.prod(w_shape)
    else:
        fwd = math.prod(grad_out_shape[:1]) * math.prod(grad_out_shape[2:]) * math.prod(w_shape)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _conv_backward_flops(grad_out_shape: Any, x_shape: Any, w_shape: Any, _bias: Any,
                         _stride: Any, _padding: Any, _dilation: Any, transposed: bool,
                         _output_padding: Any, _groups: Any, output_mask: Any,
                         out_shape: Any = None, **_: Any) -> int:
    """flop_counter's formula for aten.convolution_backward, replaced (2 FLOPs per MAC)."""
    return 2 * conv_backward_macs(grad_out_shape, x_shape, w_shape, transposed, output_mask)


def flop_counter() -> Any:
    """A ``FlopCounterMode`` with the conv-backward correction (no display)."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: _conv_backward_flops})


@dataclass(frozen=True)
class PassCount:
    """MACs of one forward and of its backward, and per conv/linear module (qualified name)
    the gradients its backward computes, summed over its calls: 1 for the weight's (when it
    requires one) plus 1 for the input's (when it requires one). A conv's or linear's backward
    MACs are its forward MACs per call times that number (the closed form)."""

    forward_macs: int
    backward_macs: int
    gradients: dict[str, int]


def count_pass(module: nn.Module, run: Callable[[], Any],
               targets: Sequence[torch.Tensor]) -> PassCount:
    """Count ``run()`` (a forward of ``module``) and its backward to ``targets``. The backward
    runs through ``torch.autograd.backward`` (flop_counter's module tracker cannot follow
    ``autograd.grad`` to a leaf); gradients accumulated into ``.grad`` are cleared after."""
    grads: dict[str, int] = {}
    names = {id(m): n for n, m in module.named_modules()}

    def pre(mod: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        w = getattr(mod, "weight", None)
        n = int(bool(x is not None and x.requires_grad)) + int(bool(
            isinstance(w, torch.Tensor) and w.requires_grad))
        key = names.get(id(mod), "")
        grads[key] = grads.get(key, 0) + n

    hooks = [m.register_forward_pre_hook(pre) for m in module.modules() if isinstance(m, LEAVES)]
    fc = flop_counter()
    try:
        with fc:
            out = run()
            fwd = fc.get_total_flops()
            leaves = [t for t in tree_flatten(out)[0]
                      if isinstance(t, torch.Tensor) and t.requires_grad]
            if leaves:
                torch.autograd.backward(leaves, [torch.ones_like(t) for t in leaves])
    finally:
        for h in hooks:
            h.remove()
        for t in targets:
            t.grad = None
    return PassCount(fwd // 2, (fc.get_total_flops() - fwd) // 2, grads)


@dataclass(frozen=True)
class ModuleCost:
    """One module on one input (elements, not bytes: multiply by the dtype's size)."""

    backward_macs: int | None
    weight_elems: int
    out_elems: int
    access_elems: int  # memory access cost: sum over conv/linear calls of in + out + weights

    def to_dict(self, itemsize: int) -> dict[str, int | None]:
        return {"weight_bytes": self.weight_elems * itemsize,
                "activation_bytes": self.out_elems * itemsize,
                "access_bytes": self.access_elems * itemsize,
                "access_elements": self.access_elems, "backward_macs": self.backward_macs}


def module_cost(module: nn.Module, input_shapes: Sequence[Sequence[int]], *,
                backward: bool = False) -> ModuleCost | None:
    """The costs of ``module`` on inputs of ``input_shapes`` (a layer or a variant of it): on
    a meta copy; the backward (when asked) with the input's gradient, as inside a network.
    None when the module cannot run on meta tensors."""
    try:
        m = meta_copy(module)
        xs = [torch.empty(tuple(s), device="meta", requires_grad=backward) for s in input_shapes]
        access = _access_hooks(m)
        outs: list[Any] = []

        def run() -> Any:
            outs.append(m(*xs))
            return outs[-1]

        bwd = None
        with torch.enable_grad() if backward else torch.no_grad():
            if backward:
                bwd = count_pass(m, run, [*m.parameters(), *xs]).backward_macs
            else:
                run()
    except Exception:  # a module meta tensors cannot run: its costs are unknown
        return None
    out = sum(t.numel() for t in tree_flatten(outs[0])[0] if isinstance(t, torch.Tensor))
    weights = sum(p.numel() for p in module.parameters())
    return ModuleCost(bwd, weights, out, access.total)


class _Access:
    """Forward hooks summing conv/linear calls' in + out + weight elements."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        w = sum(p.numel() for p in mod.parameters(recurse=False) if p.dim() > 1)
        o = out.numel() if isinstance(out, torch.Tensor) else 0
        self.total += (x.numel() if x is not None else 0) + o + w


def _access_hooks(m: nn.Module) -> _Access:
    acc = _Access()
    for sub in m.modules():
        if isinstance(sub, LEAVES):
            sub.register_forward_hook(acc)
    return acc


class _LiveBytes(TorchDispatchMode):
    """Bytes held by the tensors ops create, by storage (views share one), freed when the last
    tensor of a storage is collected; the most held at once in :attr:`peak`."""

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        self.exclude = exclude
        self.live: dict[int, list[int]] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = st._cdata
        if key in self.exclude:
            return
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [st.nbytes(), 0]
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.now -= entry[0]
            del self.live[key]


def peak_activation_bytes(model: nn.Module, call: Any, *, training: bool = False,
                          float_dtype: torch.dtype = torch.float32) -> int | None:
    """The peak bytes a forward of ``model`` on ``call`` (a :class:`convcost.inputs.Call` of
    meta tensors) holds in tensors it creates, on a meta copy (nothing allocated); with
    ``training``, in training mode with autograd on (saved activations stay). None when the
    model cannot run on meta tensors (data-dependent code)."""
    try:
        m = meta_copy(model, float_dtype)
        training_mode(m) if training else m.eval()
        own = {t.untyped_storage()._cdata for t in [*m.parameters(), *m.buffers(),
                                                     *call.tensors()]}
        mode = _LiveBytes(own)
        with torch.enable_grad() if training else torch.no_grad(), mode:
            out = call.run(m)
        del out
        return mode.peak
    except Exception:
        return None


ITEMSIZE = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}


def itemsize(dtype: str) -> int:
    """Bytes per element of a report's dtype (fp32/tf32: 4, fp16/bf16: 2)."""
    return ITEMSIZE.get(dtype, 4)


@dataclass(frozen=True)
class ModelPass:
    """A whole model's pass costs: the backward count (training; None for inference or when it
    could not be counted), the forward's peak activation bytes (None: not computable on meta
    tensors), and why a figure is missing."""

    backward: PassCount | None
    peak_activation_bytes: int | None
    notes: tuple[str, ...] = ()


def model_pass(model: nn.Module, example: Any, *, training: bool,
               real_call: Callable[[], Any] | None = None, dtype: str = "fp32") -> ModelPass:
    """Count a model's training step (forward + backward to its trainable parameters, in
    training mode with dropout off) on a meta copy, or on real tensors (``real_call()``, a
    Call) when meta tensors cannot run it; and its forward's peak activation memory (meta)."""
    from convcost.errors import first_line

    notes: list[str] = []
    from convcost.timing.device import DTYPES

    fd = DTYPES.get(dtype, torch.float32)
    peak = peak_activation_bytes(model, example.on_meta(fd), training=training, float_dtype=fd)
    if peak is None:
        notes.append("peak activation memory not computed: the model does not run on meta "
                     "tensors (its work depends on values)")
    if not training:
        return ModelPass(None, peak, tuple(notes))
    err = ""
    for where in ("meta", "cpu"):
        if where == "cpu" and real_call is None:
            break
        try:
            m = training_mode(meta_copy(model) if where == "meta" else copy.deepcopy(model))
            call = example.on_meta() if where == "meta" else real_call()
            params = [p for p in m.parameters() if p.requires_grad]
            with torch.enable_grad():
                return ModelPass(count_pass(m, partial(call.run, m), params), peak,
                                 tuple(notes))
        except Exception as e:  # meta cannot run it: on real tensors; they fail too: a note
            err = first_line(e, 160)
    notes.append(f"backward MACs not counted: the training step failed ({err})")
    return ModelPass(None, peak, tuple(notes))


def model_cost_row(model: nn.Module, example: Any, dtype: str,
                   training: bool) -> tuple[int | None, dict[str, int | None]]:
    """A whole model's (backward MACs, memory) for a report row at ``dtype``: weight bytes,
    the pass's peak activation bytes (meta tensors)."""
    mp = model_pass(model, example, training=training, dtype=dtype)
    return (mp.backward.backward_macs if mp.backward is not None else None,
            {"weight_bytes": sum(p.numel() for p in model.parameters()) * itemsize(dtype),
             "peak_activation_bytes": mp.peak_activation_bytes})
