"""MAC handles: a registry of small functions, one per operator, in fvcore's conventions.

Each handle takes the operator's arguments and output and returns ``{operator name: MACs}``.
The formulas are fvcore's (``fvcore.nn.jit_handles``): one fused multiply-add is one MAC, bias
adds are not counted, batch norm in eval is 1 MAC per element (2 with affine), norms in
training 4 (5 with affine), adaptive average pooling 1 per input element, nearest upsampling 1
per output element and bilinear 4. fvcore has no formula for attention or for ``padding='same'``
convolutions; convcost adds them here (attention: the two matmuls Q.K^T and P.V).

Three registries, by where an operator is seen:
- ``ATEN``: ATen operators under a ``TorchDispatchMode`` (the meta-tensor counter);
- ``FUNCTIONS``: torch functions that decompose before reaching ATen in a way that would lose
  their name (``F.adaptive_avg_pool2d(x, 1)`` becomes ``mean``), under a ``TorchFunctionMode``;
- ``JIT``: extra handles for fvcore's JIT-trace counter (the real-tensor fallback).

Operators that are pure data movement are in ``IGNORED`` (fvcore's list, plus the views and
copies that only appear below the JIT level); anything else without a handle is reported as
"not counted", never silently zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

MacCounts = dict[str, int]
AtenHandle = Callable[[tuple[Any, ...], dict[str, Any], Any], MacCounts]

# The papers' and torchvision's convention (meta["_ops"]): conv, linear and the matmuls of
# attention; every other counted operator (norms, pooling, upsampling) is left out.
PAPER_OPERATORS = frozenset({"conv", "linear", "matmul", "addmm", "mm", "bmm", "baddbmm",
                             "einsum", "attention", "lstm", "gru", "rnn_tanh", "rnn_relu"})


def _shape(t: Any) -> list[int]:
    return [int(d) for d in t.shape]


def _numel(t: Any) -> int:
    return math.prod(_shape(t))


def _is_param(t: Any) -> bool:
    """A parameter, or a view of one (``weight.t()`` inside F.linear)."""
    while isinstance(t, torch.Tensor):
        if isinstance(t, nn.Parameter):
            return True
        t = t._base
    return False


# --------------------------------------------------------------------------- ATen handles


def conv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """aten.convolution(input, weight, bias, stride, padding, dilation, transposed, ...):
    batch * prod(weight) * prod(spatial size), the output's (the input's when transposed)."""
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    spatial = (_shape(x) if transposed else _shape(out))[2:]
    return {"conv": _shape(x)[0] * _numel(w) * math.prod(spatial)}


def _mm_name(a: Any, b: Any) -> str:
    return "linear" if _is_param(a) or _is_param(b) else "matmul"


def mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """aten.mm(a [n, k], b [k, m]): n * k * m."""
    a, b = args[0], args[1]
    n, k = _shape(a)
    return {_mm_name(a, b): n * k * _shape(b)[1]}


def addmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """aten.addmm(bias, a [n, k], b [k, m]): n * k * m (the bias add is not counted)."""
    a, b = args[1], args[2]
    n, k = _shape(a)
    return {_mm_name(a, b): n * k * _shape(b)[1]}


def bmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """aten.bmm(a [b, n, k], c [b, k, m]): b * n * k * m."""
    a, c = args[0], args[1]
    bb, n, k = _shape(a)
    return {_mm_name(a, c): bb * n * k * _shape(c)[2]}


def baddbmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """aten.baddbmm(input, a [b, n, k], c [b, k, m]): b * n * k * m."""
    return bmm(args[1:3], kwargs, out)


def attention_macs(q: Any, k: Any, v: Any) -> int:
    """Scaled dot-product attention: Q.K^T (L x S x E per batch and head) + P.V (L x S x Ev)."""
    qs, ks, vs = _shape(q), _shape(k), _shape(v)
    batch = math.prod(qs[:-2])
    length, e = qs[-2], qs[-1]
    s, ev = ks[-2], vs[-1]
    return batch * length * s * e + batch * length * s * ev


def sdpa(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """Every flavour of aten scaled dot-product attention (math, flash, efficient, cuDNN):
    the first three arguments are query, key and value."""
    return {"attention": attention_macs(args[0], args[1], args[2])}


def _bn(x: Any, weight: Any, training: bool) -> MacCounts:
    n = _numel(x)
    if training:
        return {"batch_norm": n * (5 if weight is not None else 4)}
    return {"batch_norm": n * (2 if weight is not None else 1)}


def batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """aten.native_batch_norm / _native_batch_norm_legit(input, weight, bias, rm, rv,
    training, ...)."""
    training = bool(args[5]) if len(args) > 5 else bool(kwargs.get("training", False))
    return _bn(args[0], args[1], training)


def batch_norm_no_training(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """aten._native_batch_norm_legit_no_training(input, weight, bias, rm, rv, ...)."""
    return _bn(args[0], args[1], False)


def layer_norm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """aten.native_layer_norm(input, shape, weight, bias, eps): 5 per element (4 without
    affine)."""
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    return {"layer_norm": _numel(args[0]) * (5 if w is not None else 4)}


def group_norm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """aten.native_group_norm(input, weight, bias, N, C, HxW, group, eps)."""
    w = args[1] if len(args) > 1 else kwargs.get("weight")
    return {"group_norm": _numel(args[0]) * (5 if w is not None else 4)}


def adaptive_avg_pool(name: str) -> AtenHandle:
    def handle(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
        return {name: _numel(args[0])}
    return handle


def per_output(name: str, scale: int) -> AtenHandle:
    def handle(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
        o = out[0] if isinstance(out, (tuple, list)) else out
        return {name: scale * _numel(o)}
    return handle


def _aten(*names: str) -> list[Any]:
    """The overload packets that exist in this torch (names vary across versions)."""
    out = []
    for n in names:
        op = getattr(torch.ops.aten, n, None)
        if op is not None:
            out.append(op)
    return out


ATEN: dict[Any, AtenHandle] = {}
for _op in _aten("convolution", "_convolution", "convolution_overrideable", "cudnn_convolution",
                 "mkldnn_convolution", "miopen_convolution"):
    ATEN[_op] = conv
for _op in _aten("mm"):
    ATEN[_op] = mm
for _op in _aten("addmm"):
    ATEN[_op] = addmm
for _op in _aten("bmm"):
    ATEN[_op] = bmm
for _op in _aten("baddbmm"):
    ATEN[_op] = baddbmm
for _op in _aten("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_cudnn_attention",
                 "_scaled_dot_product_attention_math", "_scaled_dot_product_fused_attention_overrideable",
                 "scaled_dot_product_attention"):
    ATEN[_op] = sdpa
for _op in _aten("native_batch_norm", "_native_batch_norm_legit", "cudnn_batch_norm",
                 "miopen_batch_norm"):
    ATEN[_op] = batch_norm
for _op in _aten("_native_batch_norm_legit_no_training"):
    ATEN[_op] = batch_norm_no_training
for _op in _aten("native_layer_norm"):
    ATEN[_op] = layer_norm
for _op in _aten("native_group_norm"):
    ATEN[_op] = group_norm
for _n, _k in (("_adaptive_avg_pool2d", "adaptive_avg_pool2d"),
               ("_adaptive_avg_pool3d", "adaptive_avg_pool3d")):
    for _op in _aten(_n):
        ATEN[_op] = adaptive_avg_pool(_k)
for _op in _aten("upsample_nearest2d"):
    ATEN[_op] = per_output("upsample_nearest2d", 1)
for _op in _aten("upsample_bilinear2d"):
    ATEN[_op] = per_output("upsample_bilinear2d", 4)
for _op in _aten("grid_sampler_2d"):
    ATEN[_op] = per_output("grid_sampler", 4)


# --------------------------------------------------------------------------- function handles
FunctionHandle = Callable[[tuple[Any, ...], dict[str, Any], Any], MacCounts]


def _fn_adaptive_avg(name: str) -> FunctionHandle:
    def handle(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
        return {name: _numel(args[0] if args else kwargs["input"])}
    return handle


def _fn_interpolate(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """F.interpolate: fvcore counts nearest (1 per output element, 2-D) and bilinear (4)."""
    mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
    o = out if isinstance(out, torch.Tensor) else out[0]
    if mode == "nearest" and o.dim() == 4:
        return {"upsample_nearest2d": _numel(o)}
    if mode == "bilinear":
        return {"upsample_bilinear2d": 4 * _numel(o)}
    return {}


def _fn_sdpa(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    q = args[0] if args else kwargs["query"]
    k = args[1] if len(args) > 1 else kwargs["key"]
    v = args[2] if len(args) > 2 else kwargs["value"]
    return {"attention": attention_macs(q, k, v)}


# torch.nn.functional names: seen under a TorchFunctionMode when called directly, and through a
# counting wrapper put in place of the attribute while counting when another torch function
# calls them (nn.MultiheadAttention's forward calls scaled_dot_product_attention).
FUNCTIONS: dict[str, FunctionHandle] = {
    "adaptive_avg_pool1d": _fn_adaptive_avg("adaptive_avg_pool1d"),
    "adaptive_avg_pool2d": _fn_adaptive_avg("adaptive_avg_pool2d"),
    "adaptive_avg_pool3d": _fn_adaptive_avg("adaptive_avg_pool3d"),
    "interpolate": _fn_interpolate,
    "scaled_dot_product_attention": _fn_sdpa,
}


def _einsum_terms(equation: str, shapes: list[list[int]]) -> tuple[list[str], str, dict[str, int]]:
    """Operand subscripts (``...`` spelled out as upper-case letters, aligned from the right as
    broadcasting aligns them), the output's (implicit: the letters seen once, sorted) and each
    letter's size (the largest, as broadcasting makes it)."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"einsum {equation!r}: {len(terms)} subscripts, {len(shapes)} operands")
    n_ell = max((len(s) - (len(t) - 3) for t, s in zip(terms, shapes, strict=True) if "..." in t),
                default=0)
    ell = "".join(chr(ord("A") + i) for i in range(n_ell))
    spelled = []
    for t, s in zip(terms, shapes, strict=True):
        if "..." in t:
            k = len(s) - (len(t) - 3)
            t = t.replace("...", ell[n_ell - k:] if k else "")
        spelled.append(t)
    sizes: dict[str, int] = {}
    for t, s in zip(spelled, shapes, strict=True):
        for c, d in zip(t, s, strict=True):
            sizes[c] = max(sizes.get(c, 1), int(d))
    if arrow:
        out = out.replace("...", ell)
    else:
        once = sorted(c for c in set("".join(spelled)) if "".join(spelled).count(c) == 1
                      and c not in ell)
        out = ell + "".join(once)
    return spelled, out, sizes


def einsum_macs(equation: str, shapes: list[list[int]]) -> int:
    """MACs of ``torch.einsum`` (one formula for both counters): operands contracted pairwise,
    left to right, each pair costing the product of the sizes of every letter either holds (a
    matmul ``ik,kj->ij`` is i*k*j, an outer product ``i,j->ij`` i*j, a batched one b*i*j); a
    single operand (a transpose, trace or sum) is 0."""
    terms, out, sizes = _einsum_terms(equation, shapes)
    total, acc = 0, terms[0]
    for i, t in enumerate(terms[1:], 1):
        both = set(acc) | set(t)
        total += math.prod(sizes[c] for c in both)
        later = set(out) | set("".join(terms[i + 1:]))
        acc = "".join(sorted(c for c in both if c in later))
    return total


def _operands(args: tuple[Any, ...]) -> list[Any]:
    flat: list[Any] = []
    for a in args:
        flat.extend(a if isinstance(a, (list, tuple)) else [a])
    return flat


def _fn_einsum(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
    """torch.einsum(equation, *operands): :func:`einsum_macs`."""
    ops = _operands(args[1:])
    return {"einsum": einsum_macs(args[0], [_shape(t) for t in ops])}


def rnn_macs(input_shape: list[int], weight_shapes: list[list[int]]) -> int:
    """MACs of an LSTM / GRU / RNN call (``aten::lstm``, ``gru``, ``rnn_tanh``, ``rnn_relu``):
    every step (one time step of one sequence: numel(input) / input size, packed sequences
    included) multiplies by every weight matrix of every layer and direction once
    (W_ih, W_hh and LSTM's projection W_hr): steps * sum(numel of the 2-D weights). Gate
    nonlinearities and bias adds are not MACs."""
    steps = math.prod(input_shape) // max(int(input_shape[-1]), 1)
    return steps * sum(math.prod(w) for w in weight_shapes if len(w) == 2)


def _fn_rnn(name: str) -> FunctionHandle:
    def handle(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> MacCounts:
        weights = [_shape(t) for a in args if isinstance(a, (list, tuple)) for t in a
                   if isinstance(t, torch.Tensor)]
        return {name: rnn_macs(_shape(args[0]), weights)}
    return handle


# torch functions (not torch.nn.functional) that are counted whole, by name: their ATen
# decomposition would lose the name (einsum) or spread the count over gate ops (RNNs)
TORCH_FUNCTIONS: dict[str, FunctionHandle] = {
    "einsum": _fn_einsum,
    **{n: _fn_rnn(n) for n in ("lstm", "gru", "rnn_tanh", "rnn_relu")},
}


# --------------------------------------------------------------------------- fvcore JIT handles


def _jit_shape(v: Any) -> list[int] | None:
    return v.type().sizes() if v.isCompleteTensor() else None


def jit_sdpa(inputs: list[Any], outputs: list[Any]) -> MacCounts:
    """aten::scaled_dot_product_attention and its flavours in a JIT trace."""
    q, k, v = (_jit_shape(x) for x in inputs[:3])
    fake = [torch.empty(s, device="meta") for s in (q, k, v)]  # shapes only, no memory
    return {"attention": attention_macs(*fake)}


def jit_conv_mode(inputs: list[Any], outputs: list[Any]) -> MacCounts:
    """aten::_convolution_mode (padding given as 'same'/'valid'): as aten::_convolution."""
    x, w, o = _jit_shape(inputs[0]), _jit_shape(inputs[1]), _jit_shape(outputs[0])
    return {"conv": x[0] * math.prod(w) * math.prod(o[2:])}


def jit_baddbmm(inputs: list[Any], outputs: list[Any]) -> MacCounts:
    a, c = _jit_shape(inputs[1]), _jit_shape(inputs[2])
    return {"bmm": a[0] * a[1] * a[2] * c[2]}


def _jit_list(v: Any) -> list[Any]:
    """The values of a traced list (``prim::ListConstruct``), else []."""
    node = v.node()
    return list(node.inputs()) if node.kind() == "prim::ListConstruct" else []


def jit_einsum(inputs: list[Any], outputs: list[Any]) -> MacCounts:
    """aten::einsum(equation, [operands]): :func:`einsum_macs` (fvcore's own handle goes
    through numpy's path optimiser, whose counts are not MACs)."""
    eq = inputs[0].toIValue()
    return {"einsum": einsum_macs(eq, [_jit_shape(x) for x in _jit_list(inputs[1])])}


def jit_rnn(name: str) -> Callable[[list[Any], list[Any]], MacCounts]:
    def handle(inputs: list[Any], outputs: list[Any]) -> MacCounts:
        weights = [_jit_shape(x) for v in inputs for x in _jit_list(v)
                   if x.isCompleteTensor()]
        return {name: rnn_macs(_jit_shape(inputs[0]), [w for w in weights if w is not None])}
    return handle


JIT: dict[str, Callable[[list[Any], list[Any]], MacCounts]] = {
    "aten::einsum": jit_einsum,
    **{f"aten::{n}": jit_rnn(n) for n in ("lstm", "gru", "rnn_tanh", "rnn_relu")},
    "aten::scaled_dot_product_attention": jit_sdpa,
    "aten::_scaled_dot_product_flash_attention": jit_sdpa,
    "aten::_scaled_dot_product_efficient_attention": jit_sdpa,
    "aten::_scaled_dot_product_flash_attention_for_cpu": jit_sdpa,
    "aten::_convolution_mode": jit_conv_mode,
    "aten::conv1d": jit_conv_mode,
    "aten::conv2d": jit_conv_mode,
    "aten::conv3d": jit_conv_mode,
    "aten::baddbmm": jit_baddbmm,
}


# --------------------------------------------------------------------------- not counted, by design

# ATen names of operators whose JIT (fvcore) name differs, for the "not counted" list
ALIASES = {"max_pool1d_with_indices": "max_pool1d", "max_pool2d_with_indices": "max_pool2d",
           "max_pool3d_with_indices": "max_pool3d"}

# fvcore's _IGNORED_OPS (truly 0 MACs: shape manipulation, integer ops, copies), plus views and
# copies that only appear below the JIT level.
IGNORED = frozenset({
    "Int", "ScalarImplicit", "__and__", "arange", "bitwise_not", "cat", "chunk", "clamp",
    "clamp_", "constant_pad_nd", "contiguous", "copy_", "detach", "dropout", "empty", "eq",
    "expand", "flatten", "floor", "floor_divide", "full", "full_like", "gather", "ge", "gt",
    "index", "index_put_", "masked_fill", "max", "narrow", "new_empty", "new_full",
    "new_zeros", "nonzero", "ones", "permute", "relu", "relu_", "remainder", "reshape", "roll",
    "select", "size", "slice", "split", "split_with_sizes", "squeeze", "stack", "t", "to",
    "transpose", "type_as", "unbind", "unsqueeze", "unsqueeze_", "view", "zeros", "zeros_like",
    # below the JIT level
    "_to_copy", "_unsafe_view", "alias", "as_strided", "clone", "detach_", "empty_like",
    "empty_strided", "expand_as", "lift_fresh", "lift_fresh_copy", "new_ones", "ones_like",
    "sym_size", "sym_stride", "sym_numel", "_reshape_alias", "view_as", "squeeze_",
    "unsqueeze_copy", "view_copy", "split_copy", "slice_copy", "select_copy", "transpose_copy",
    "permute_copy", "t_copy", "expand_copy", "_local_scalar_dense", "fill_", "zero_", "copy",
    "unfold", "_assert_async", "_assert_tensor_metadata", "_native_batch_norm_legit_functional",
    "resize_", "set_", "dropout_", "native_dropout", "feature_dropout", "alpha_dropout",
    "_has_compatible_shallow_copy_type", "is_same_size",
}) | frozenset({"unflatten", "movedim"})

# views that fvcore's list misses: ignored in its JIT trace too, so both counters agree
VIEWS = frozenset({"unflatten", "movedim"})


# --------------------------------------------------------------------------- data-dependent

# Functions that select by value: no MACs of their own, but how much work follows them depends
# on the input's values (a count holds for these inputs only). Seen by :class:`SelectionWatch`.
SELECTIONS = {
    "nms": "non-maximum suppression keeps a data-dependent number of boxes",
    "batched_nms": "non-maximum suppression keeps a data-dependent number of boxes",
    "nonzero": "keeps the elements that pass a test (score thresholds, masks)",
    "argwhere": "keeps the elements that pass a test",
    "where": "keeps the elements that pass a test (torch.where with one argument)",
    "masked_select": "keeps the elements that pass a test",
    "unique": "keeps the distinct values",
    "__getitem__": "indexing by a boolean mask keeps the elements that pass a test",
}


def _selects(name: str, args: tuple[Any, ...]) -> bool:
    if name == "where":
        return len(args) == 1
    if name == "__getitem__":
        idx = args[1] if len(args) > 1 else None
        items = idx if isinstance(idx, tuple) else (idx,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)
    return name in SELECTIONS


class SelectionWatch(TorchFunctionMode):
    """While a forward runs: the :data:`SELECTIONS` it calls (``seen``, by name)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in SELECTIONS and _selects(name, args):
            self.seen.add(name)
        return func(*args, **(kwargs or {}))

    def note(self) -> str | None:
        """The report's note when the forward selected by value (None when it did not)."""
        if not self.seen:
            return None
        what = "; ".join(f"{n}: {SELECTIONS[n]}" for n in sorted(self.seen))
        return (f"data-dependent: the count holds for these inputs' values only ({what}); the "
                "work after a selection (e.g. the boxes kept for the RoI heads) changes with "
                "them")


# --------------------------------------------------------------------------- int8 modules


def _quantized_kinds() -> tuple[tuple[type, str], ...]:
    """(class, operator) of torch's int8 conv and linear modules (their fused ReLU forms
    subclass them): the JIT trace and flop_counter see packed weights, not these MACs."""
    try:
        from torch.ao.nn.quantized import Linear
        from torch.ao.nn.quantized.modules.conv import _ConvNd
    except ImportError:  # pragma: no cover - older torch
        return ()
    return ((_ConvNd, "conv"), (Linear, "linear"))


def quantized_macs(m: nn.Module, out_shape: list[int] | None) -> tuple[str, int, int] | None:
    """(operator, MACs, int8 weights) of one call of an int8 conv or linear module with output
    ``out_shape``: conv, out elements x C_in/g x prod(kernel); linear, out elements x in
    features (fvcore's formulas; bias adds none). None for any other module."""
    for cls, op in _quantized_kinds():
        if isinstance(m, cls) and out_shape:
            per = (m.in_channels // m.groups * math.prod(m.kernel_size) if op == "conv"
                   else m.in_features)
            return op, math.prod(out_shape) * per, int(m.weight().numel())
    return None
