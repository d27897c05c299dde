"""A ``torch.export`` program as a module tree with the original names and real leaf modules.

``ExportedProgram.module()`` is one flat graph: every operator lands on the root, and the
convs are gone as modules. :func:`rebuild` instead unflattens the program
(``torch.export.unflatten``: one submodule per original module, named as in the original model,
from the graph's ``nn_module_stack``) and turns each leaf whose graph is a single known
operator (conv, linear, batch norm, activation, pool, ...) back into the ``torch.nn`` module
that computes it, sharing the program's weights. Rows then carry the original names, the
operator's kind and its MACs, and ``compare`` can substitute the convs like in an eager model.

Only ``torch.nn`` classes are built; nothing from the program's own code is imported. Leaves
that are not a single known operator stay graph modules (shown with their original class name),
so a row is never wrong, at worst less specific.

Builders follow fvcore's handle registry: ``BUILDERS`` maps an ATen operator name to a small
function from the operator's arguments (by schema name) to a module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# (op arguments by schema name, the leaf's tensors by attribute name, the original class name)
Builder = Callable[[dict[str, Any], dict[str, torch.Tensor], str], nn.Module | None]
BUILDERS: dict[str, Builder] = {}


@dataclass
class Rebuilt:
    """The module tree and what could not be restored (for the report's notes)."""

    model: nn.Module
    restored: int = 0
    kept: dict[str, str] = field(default_factory=dict)  # leaf name -> its original class
    notes: list[str] = field(default_factory=list)


def builder(*names: str) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        for n in names:
            BUILDERS[n] = fn
        return fn
    return register


def _spatial(name: str) -> int:
    """'aten.conv2d' -> 2, 'aten.max_pool3d' -> 3."""
    digits = [c for c in name if c.isdigit()]
    return int(digits[-1]) if digits else 2


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    """An int or a list of ints as an n-tuple (schema defaults are often a single int)."""
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) != 1 else (int(v[0]),) * n
    return (int(v),) * n


def _conv(cls_by_dims: dict[int, type[nn.Module]], a: dict[str, Any], t: dict[str, torch.Tensor],
          transposed: bool) -> nn.Module:
    w = a["weight"]
    dims = w.dim() - 2
    g = int(a.get("groups", 1))
    cin, cout = (w.shape[0], w.shape[1] * g) if transposed else (w.shape[1] * g, w.shape[0])
    pad = a.get("padding", 0)
    kw: dict[str, Any] = {"stride": _tuple(a.get("stride", 1), dims),
                          "padding": pad if isinstance(pad, str) else _tuple(pad, dims),
                          "dilation": _tuple(a.get("dilation", 1), dims), "groups": g,
                          "bias": a.get("bias") is not None}
    if transposed:
        kw["output_padding"] = _tuple(a.get("output_padding", 0), dims)
    return cls_by_dims[dims](cin, cout, tuple(w.shape[2:]), device="meta", **kw)


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


@builder("aten.conv1d", "aten.conv2d", "aten.conv3d")
def _convnd(a, t, orig):
    return _conv(_CONV, a, t, False)


@builder("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def _conv_transpose(a, t, orig):
    return _conv(_CONVT, a, t, True)


@builder("aten.convolution", "aten._convolution")
def _convolution(a, t, orig):
    if a.get("transposed"):
        return _conv(_CONVT, a, t, True)
    if any(int(p) for p in a.get("output_padding") or []):
        return None
    return _conv(_CONV, a, t, False)


@builder("aten.linear")
def _linear(a, t, orig):
    w = a["weight"]
    return nn.Linear(w.shape[1], w.shape[0], bias=a.get("bias") is not None, device="meta")


@builder("aten.batch_norm", "aten._native_batch_norm_legit_no_training")
def _batch_norm(a, t, orig):
    if a.get("training"):
        return None
    x = a["input"]
    dims = {2: 1, 3: 1, 4: 2, 5: 3}.get(x.dim())
    if dims is None:
        return None
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    stats = a.get("running_mean") is not None
    return cls(x.shape[1], eps=float(a.get("eps", 1e-5)), momentum=float(a.get("momentum", 0.1)),
               affine=a.get("weight") is not None, track_running_stats=stats, device="meta")


@builder("aten.layer_norm")
def _layer_norm(a, t, orig):
    w = a.get("weight")
    return nn.LayerNorm(list(a["normalized_shape"]), eps=float(a.get("eps", 1e-5)),
                        elementwise_affine=w is not None,
                        bias=a.get("bias") is not None, device="meta")


@builder("aten.group_norm")
def _group_norm(a, t, orig):
    return nn.GroupNorm(int(a["num_groups"]), a["input"].shape[1], eps=float(a.get("eps", 1e-5)),
                        affine=a.get("weight") is not None, device="meta")


def _simple(cls: type[nn.Module], **fixed: Any) -> Builder:
    def build(a, t, orig):
        return cls(**fixed)
    return build


for _op, _cls in (("relu", nn.ReLU), ("silu", nn.SiLU), ("hardswish", nn.Hardswish),
                  ("hardsigmoid", nn.Hardsigmoid), ("mish", nn.Mish)):
    BUILDERS[f"aten.{_op}"] = _simple(_cls)
    BUILDERS[f"aten.{_op}_"] = _simple(_cls, inplace=True)
BUILDERS["aten.sigmoid"] = _simple(nn.Sigmoid)
BUILDERS["aten.tanh"] = _simple(nn.Tanh)


@builder("aten.hardtanh", "aten.hardtanh_")
def _hardtanh(a, t, orig):
    lo, hi = float(a.get("min_val", -1.0)), float(a.get("max_val", 1.0))
    inplace = a["_op"].endswith("_")
    if (lo, hi) == (0.0, 6.0) and orig != "Hardtanh":
        return nn.ReLU6(inplace=inplace)
    return nn.Hardtanh(lo, hi, inplace=inplace)


@builder("aten.gelu", "aten.gelu_")
def _gelu(a, t, orig):
    return nn.GELU(approximate=a.get("approximate", "none"))


@builder("aten.leaky_relu", "aten.leaky_relu_")
def _leaky_relu(a, t, orig):
    return nn.LeakyReLU(float(a.get("negative_slope", 0.01)), inplace=a["_op"].endswith("_"))


@builder("aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d")
def _max_pool(a, t, orig):
    cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[_spatial(a["_op"])]
    n = _spatial(a["_op"])
    k = _tuple(a["kernel_size"], n)
    return cls(k, stride=_tuple(a.get("stride") or k, n), padding=_tuple(a.get("padding", 0), n),
               dilation=_tuple(a.get("dilation", 1), n), ceil_mode=bool(a.get("ceil_mode", False)))


@builder("aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d")
def _avg_pool(a, t, orig):
    n = _spatial(a["_op"])
    cls = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[n]
    k = _tuple(a["kernel_size"], n)
    kw: dict[str, Any] = {"stride": _tuple(a.get("stride") or k, n),
                          "padding": _tuple(a.get("padding", 0), n),
                          "ceil_mode": bool(a.get("ceil_mode", False)),
                          "count_include_pad": bool(a.get("count_include_pad", True))}
    if n > 1:
        kw["divisor_override"] = a.get("divisor_override")
    elif a.get("divisor_override") is not None:
        return None
    return cls(k, **kw)


@builder("aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d", "aten.adaptive_avg_pool3d",
         "aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d")
def _adaptive_avg_pool(a, t, orig):
    cls = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d,
           3: nn.AdaptiveAvgPool3d}[_spatial(a["_op"])]
    return cls(_tuple(a["output_size"], _spatial(a["_op"])))


@builder("aten.flatten")
def _flatten(a, t, orig):
    return nn.Flatten(int(a.get("start_dim", 0)), int(a.get("end_dim", -1)))


@builder("aten.dropout", "aten.feature_dropout")
def _dropout(a, t, orig):
    if a.get("train"):
        return None
    return (nn.Dropout2d if orig == "Dropout2d" else nn.Dropout)(float(a.get("p", 0.5)))


def _schema_args(node: torch.fx.Node) -> dict[str, Any]:
    """The operator's arguments by schema name, defaults filled in; fx nodes stand for tensors
    (their example values), so builders see shapes, never run anything."""
    schema = node.target._schema  # type: ignore[union-attr]
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            v = node.args[i]
        elif arg.name in node.kwargs:
            v = node.kwargs[arg.name]
        elif arg.has_default_value():
            v = arg.default_value
        else:
            continue
        out[arg.name] = v.meta.get("val") if isinstance(v, torch.fx.Node) else v
    return out


def _op_name(target: Any) -> str:
    """torch.ops.aten.conv2d.default -> 'aten.conv2d'."""
    packet = getattr(target, "overloadpacket", None)
    return str(packet) if packet is not None else str(target)


def _leaf_op(mod: nn.Module) -> tuple[torch.fx.Node, dict[str, torch.Tensor]] | None:
    """The leaf's single operator node and its tensors, when its graph is: one input, its own
    attributes, one operator on that input, returned as is."""
    graph = getattr(mod, "graph", None)
    if graph is None:
        return None
    nodes = list(graph.nodes)
    ph = [n for n in nodes if n.op == "placeholder"]
    calls = [n for n in nodes if n.op == "call_function"]
    outs = [n for n in nodes if n.op == "output"]
    others = [n for n in nodes if n.op not in ("placeholder", "call_function", "output", "get_attr")]
    if len(ph) != 1 or len(calls) != 1 or len(outs) != 1 or others:
        return None
    call = calls[0]
    ret = outs[0].args[0]
    if isinstance(ret, (tuple, list)):
        if len(ret) != 1:
            return None
        ret = ret[0]
    if ret is not call or not call.args or call.args[0] is not ph[0]:
        return None
    if not hasattr(call.target, "_schema"):
        return None
    tensors: dict[str, torch.Tensor] = {}
    for n in nodes:
        if n.op == "get_attr":
            try:
                tensors[str(n.target)] = getattr(mod, str(n.target))
            except AttributeError:
                return None
    return call, tensors


def _original_types(ep: Any) -> dict[str, str]:
    """Module path -> its original class, qualified ('stem.0' -> 'torch.nn.modules.conv.Conv2d')."""
    out: dict[str, str] = {}
    for node in ep.graph.nodes:
        for path, typ in (node.meta.get("nn_module_stack") or {}).values():
            out.setdefault(str(path), typ if isinstance(typ, str) else getattr(typ, "__qualname__", ""))
    return out


def _adopt(new: nn.Module, call: torch.fx.Node, tensors: dict[str, torch.Tensor]) -> bool:
    """Give ``new`` (built on the meta device) the leaf's own tensors; False if they do not fit."""
    # the graph names each tensor argument by the leaf's attribute; map schema name -> attribute
    by_arg: dict[str, str] = {}
    schema = call.target._schema  # type: ignore[union-attr]
    for i, arg in enumerate(schema.arguments):
        v = call.args[i] if i < len(call.args) else call.kwargs.get(arg.name)
        if isinstance(v, torch.fx.Node) and v.op == "get_attr":
            by_arg[arg.name] = str(v.target)
    own = dict(new.named_parameters(recurse=False)) | dict(new.named_buffers(recurse=False))
    used = set()
    for name, current in own.items():
        attr = by_arg.get(name)
        if attr is None:
            if name == "num_batches_tracked":
                new.register_buffer(name, torch.zeros((), dtype=torch.long))
                continue
            return False
        src = tensors[attr]
        if tuple(src.shape) != tuple(current.shape):
            return False
        if isinstance(current, nn.Parameter):
            setattr(new, name, src if isinstance(src, nn.Parameter)
                    else nn.Parameter(src, requires_grad=src.requires_grad))
        else:
            setattr(new, name, src)
        used.add(attr)
    return used == set(by_arg.values())


def _display_class(base: type[nn.Module], qualified: str) -> type[nn.Module]:
    """A subclass of ``base`` named like the original class, so rows read 'ConvBNAct', not
    'InterpreterModule' (nothing of the original class is imported)."""
    short = qualified.rsplit(".", 1)[-1] or base.__name__
    if not short.isidentifier():
        return base
    key = (base, qualified)
    cls = _DISPLAY.get(key)
    if cls is None:
        cls = type(short, (base,), {"__module__": __name__, "__qualname__": short,
                                    "original_class": qualified})
        _DISPLAY[key] = cls
    return cls


_DISPLAY: dict[tuple[type, str], type[nn.Module]] = {}


def rebuild(ep: Any) -> Rebuilt:
    """Unflatten ``ep`` and restore its single-operator leaves as ``torch.nn`` modules."""
    import warnings

    with warnings.catch_warnings():  # torch's notices about its own pytree internals
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.export.unflatten(ep)
    types = _original_types(ep)
    out = Rebuilt(model)
    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    for name, mod in leaves:
        orig = types.get(name, "")
        short = orig.rsplit(".", 1)[-1]
        found = _leaf_op(mod)
        new = None
        if found is not None:
            call, tensors = found
            fn = BUILDERS.get(_op_name(call.target))
            if fn is not None:
                try:
                    args = {**_schema_args(call), "_op": _op_name(call.target)}
                    new = fn(args, tensors, short)
                    if new is not None and not _adopt(new, call, tensors):
                        new = None
                except Exception:  # an argument this builder does not understand: keep the graph
                    new = None
        if new is not None:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new.eval())
            out.restored += 1
        else:
            out.kept[name] = orig or type(mod).__name__
            if orig:
                mod.__class__ = _display_class(type(mod), orig)
    for name, mod in model.named_modules():
        if mod.__class__.__module__.startswith("torch.export") and (name in types or not name):
            mod.__class__ = _display_class(type(mod), types.get(name, ""))
    for mod in model.modules():  # run generated Python code, not fx's per-node interpreter
        if getattr(mod, "_run_with_interpreter", False) and hasattr(mod, "finalize"):
            try:  # regenerate: unflatten's code predates its own renaming of repeated calls
                mod.finalize()
                mod._run_with_interpreter = False
            except Exception:  # pragma: no cover - the interpreter still runs it correctly
                pass
    convs = [n for n, typ in out.kept.items() if typ.rsplit(".", 1)[-1] in
             ("Conv1d", "Conv2d", "Conv3d")]
    if convs:
        out.notes.append(f"{len(convs)} conv module(s) of the program could not be restored as "
                         f"nn.Conv (their graph is not a single conv): {', '.join(convs[:5])}"
                         f"{' ...' if len(convs) > 5 else ''}; counted, not substitutable")
    return out


def example_shapes(ep: Any) -> list[tuple[int, ...]] | None:
    """The user inputs' shapes the program was exported with (None if any is symbolic)."""
    user = [s.arg.name for s in ep.graph_signature.input_specs
            if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    try:
        shapes = [tuple(int(d) for d in v.shape) for v in vals if v is not None]
    except (TypeError, ValueError):
        return None
    return shapes if shapes and all(math.prod(s) >= 0 for s in shapes) else None
