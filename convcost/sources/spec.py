"""YAML layer spec: parse and validate into dataclasses, propagate shapes, build a real ``nn.Module``.

One source of truth: every count convcost reports comes from the built module (via fvcore); the
closed-form formulas in :mod:`convcost.counting.formulas` are the cross-check. See ``docs/spec.md``.

Shapes are per sample, without the batch: ``(C, H, W)`` for feature maps, ``(F,)`` after
``flatten``. Conv padding defaults to ``dilation * (k - 1) // 2`` ("same" for odd kernels).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convcost.counting.formulas import conv_out_size
from convcost.errors import InputError, SpecError
from convcost.sources.lines import FileValidator, LineDict

Shape = tuple[int, ...]

MAX_DIM = 1 << 20  # a channel count or spatial size above this is a typo, not a design
MAX_LAYERS = 10_000
DTYPES = ("fp32", "tf32", "fp16", "bf16")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=False),
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "mish": nn.Mish,
    "identity": nn.Identity,
}
TOP_KEYS = ("name", "description", "input", "batch", "dtype", "layers")
LAYER_KEYS = ("name", "input")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")  # used with fullmatch (no trailing newline)
# names that would shadow nn.Module's own attributes when the layer becomes a submodule
RESERVED_NAMES = frozenset(n for n in dir(nn.Module()) if not n.startswith("__"))


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class ConvOp:
    """2-D convolution. ``in_channels`` is inferred from the previous layer when omitted."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False


@dataclass(frozen=True)
class BNOp:
    num_features: int


@dataclass(frozen=True)
class ActOp:
    kind: str


@dataclass(frozen=True)
class PoolOp:
    type: str  # "max" | "avg"
    kernel: tuple[int, int] | None  # None for global
    stride: tuple[int, int] | None
    padding: tuple[int, int] = (0, 0)
    global_: bool = False


@dataclass(frozen=True)
class LinearOp:
    in_features: int
    out_features: int
    bias: bool = True


@dataclass(frozen=True)
class FlattenOp:
    pass


@dataclass(frozen=True)
class ShuffleOp:
    groups: int


@dataclass
class AddOp:
    """Residual block: ``body(x) + shortcut(x)``; an empty shortcut is the identity."""

    body: list[Layer]
    shortcut: list[Layer]


@dataclass
class ConcatOp:
    """Channel concatenation of branches; an empty branch passes its input through."""

    branches: list[list[Layer]]


Op = ConvOp | BNOp | ActOp | PoolOp | LinearOp | FlattenOp | ShuffleOp | AddOp | ConcatOp


@dataclass
class Layer:
    """One validated layer: its op, where it is in the file, and its per-sample shapes."""

    name: str
    path: str  # e.g. "layers[3]" or "layers[4].add.layers[1]" (for messages)
    op_name: str
    op: Op
    in_shape: Shape
    out_shape: Shape
    line: int | None = None
    own_input: bool = False  # declared its own ``input`` (starts a new independent segment)


@dataclass
class Spec:
    """A validated spec: layers with shapes, grouped into segments of chained layers."""

    name: str
    source: str
    batch: int
    dtype: str | None
    layers: list[Layer]
    segments: list[tuple[Shape, list[Layer]]] = field(default_factory=list)
    description: str | None = None

    @property
    def input_shapes(self) -> list[Shape]:
        """Per-sample input shape of each independent segment."""
        return [s for s, _ in self.segments]


# --------------------------------------------------------------------------- parsing


class SpecContext(FileValidator):
    """Where we are in the spec file, to build precise one-line errors (SpecError)."""

    def __init__(self, file: str) -> None:
        super().__init__(file)
        self.count = 0

    def err(
        self,
        msg: str,
        *,
        node: Any = None,
        key: str | None = None,
        layer: str | None = None,
        line: int | None = None,
    ) -> SpecError:
        if line is None:
            line = self.line(node, key)
        return SpecError(msg, file=self.file, line=line, layer=layer, key=key)


def _describe(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _int(ctx: SpecContext, v: Any, key: str, node: Any, layer: str, *, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.err(f"value {_describe(v)} must be an integer >= {minimum}", node=node, key=key,
                      layer=layer)
    if v < minimum:
        raise ctx.err(f"value {_describe(v)} must be >= {minimum}", node=node, key=key, layer=layer)
    if v > MAX_DIM:
        raise ctx.err(f"value {_describe(v)} is larger than the supported maximum {MAX_DIM}", node=node,
                      key=key, layer=layer)
    return v


def _pair(ctx: SpecContext, v: Any, key: str, node: Any, layer: str, *, minimum: int = 1) -> tuple[int, int]:
    if isinstance(v, list):
        if len(v) != 2:
            raise ctx.err(f"value {_describe(v)} must be an integer or a pair [h, w]", node=node,
                          key=key, layer=layer)
        return (_int(ctx, v[0], key, node, layer, minimum=minimum),
                _int(ctx, v[1], key, node, layer, minimum=minimum))
    x = _int(ctx, v, key, node, layer, minimum=minimum)
    return (x, x)


def _bool(ctx: SpecContext, v: Any, key: str, node: Any, layer: str) -> bool:
    if not isinstance(v, bool):
        raise ctx.err(f"value {_describe(v)} must be true or false", node=node, key=key, layer=layer)
    return v


def _shape(ctx: SpecContext, v: Any, key: str, node: Any, layer: str | None) -> Shape:
    if (
        not isinstance(v, list)
        or len(v) != 3
        or any(isinstance(x, bool) or not isinstance(x, int) for x in v)
    ):
        raise ctx.err(f"value {_describe(v)} must be a list [C, H, W] of positive integers",
                      node=node, key=key, layer=layer)
    for x in v:
        if x < 1:
            raise ctx.err(f"value {v} must hold positive sizes", node=node, key=key, layer=layer)
        if x > MAX_DIM:
            raise ctx.err(f"value {v}: {x} is larger than the supported maximum {MAX_DIM}",
                          node=node, key=key, layer=layer)
    return tuple(v)


def _check_keys(ctx: SpecContext, d: dict, allowed: tuple[str, ...], what: str, layer: str | None) -> None:
    k = ctx.unknown_key(d, allowed)
    if k is not None:
        raise ctx.err(f"unknown key in {what}; allowed: {', '.join(allowed)}", node=d,
                      key=str(k), layer=layer)


def _op_args(ctx: SpecContext, raw: dict, op: str, label: str, allowed: tuple[str, ...]) -> dict:
    """The mapping under an op key; ``null``/``true``/``{}`` mean "no options"."""
    v = raw[op]
    if v is None or v is True:
        v = LineDict()
        v.line = raw.line_of(op) if isinstance(raw, LineDict) else None
        v.key_lines = {}
    if not isinstance(v, dict):
        raise ctx.err(f"value {_describe(v)} must be a mapping of {{{', '.join(allowed)}}}",
                      node=raw, key=op, layer=label)
    _check_keys(ctx, v, allowed, f"'{op}'", label)
    return v


def _need_map(ctx: SpecContext, shape: Shape, label: str, op: str, node: Any) -> None:
    if len(shape) != 3:
        raise ctx.err(f"'{op}' needs a C x H x W input but the previous layer gives a flat "
                      f"{shape[0]}-vector (remove the 'flatten' or move it after this layer)",
                      node=node, key=op, layer=label)


_OPS = ("conv", "bn", "act", "pool", "linear", "flatten", "channel_shuffle", "add", "concat")
# (the registry below, SPEC_OPS, holds exactly these, in this order for messages)


def _parse_layer(ctx: SpecContext, raw: Any, path: str, index: int, in_shape: Shape | None,
                 names: dict[str, str], counters: dict[str, int], top: bool) -> Layer:
    ctx.count += 1
    if ctx.count > MAX_LAYERS:
        raise ctx.err(f"more than {MAX_LAYERS} layers; a spec this large is not supported")
    if not isinstance(raw, dict):
        raise ctx.err(f"{path}: each layer must be a mapping with one op key "
                      f"({', '.join(_OPS)}), got {_describe(raw)}")
    ops = [k for k in raw if k in _OPS]
    allowed_keys = (*LAYER_KEYS, *_OPS) if top else ("name", *_OPS)
    unknown = [k for k in raw if k not in allowed_keys]
    label0 = f"{path}" + (f" '{raw['name']}'" if isinstance(raw.get("name"), str) else "")
    if unknown:
        extra = "" if top or unknown[0] != "input" else " ('input' is only allowed on top-level layers)"
        raise ctx.err(f"unknown key; a layer has one op ({', '.join(_OPS)}) plus "
                      f"{' and '.join(allowed_keys[: 2 if top else 1])}{extra}",
                      node=raw, key=str(unknown[0]), layer=label0)
    if len(ops) != 1:
        raise ctx.err(f"a layer needs exactly one op key ({', '.join(_OPS)}), found "
                      f"{len(ops)}{': ' + ', '.join(ops) if ops else ''}", node=raw, layer=label0)
    op = ops[0]
    if "name" in raw:
        name = raw["name"]
    else:  # auto name: op plus a per-level counter, skipping names already taken
        while True:
            counters[op] = counters.get(op, 0) + 1
            name = f"{op}{counters[op]}"
            if name not in names:
                break
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ctx.err(f"value {_describe(name)} must be a name of letters, digits, '_' or '-' "
                      "starting with a letter or '_'", node=raw, key="name", layer=path)
    if name in RESERVED_NAMES:
        raise ctx.err(f"value {name!r} is the name of an nn.Module attribute (the layer becomes "
                      f"a submodule of that name); pick another, e.g. {name}_", node=raw,
                      key="name", layer=path)
    if name in ("shortcut",) or re.fullmatch(r"branch\d+", name):
        raise ctx.err(f"value {name!r} is reserved inside blocks; pick another name", node=raw,
                      key="name", layer=path)
    label = f"{path} '{name}' ({op})"
    if name in names:
        raise ctx.err(f"duplicate layer name {name!r} (also used by {names[name]})", node=raw,
                      key="name", layer=label)
    names[name] = path
    own_input = "input" in raw
    if own_input:
        in_shape = _shape(ctx, raw["input"], "input", raw, label)
    line = raw.line_of(op) if isinstance(raw, LineDict) else None
    parsed, out_shape, in_shape = _parse_op(ctx, raw, op, label, path, in_shape)
    return Layer(name=name, path=path, op_name=op, op=parsed, in_shape=in_shape,
                 out_shape=out_shape, line=line, own_input=own_input)


# --------------------------------------------------------------------------- the op registry
# One small parser and builder per op, like counting/handles.py: a parser validates the op's
# mapping against the incoming per-sample shape and returns (op, out_shape); a builder makes
# the nn.Module; ``children`` lists a block's nested layer lists (for :func:`iter_layers`).

Parser = Callable[["SpecContext", dict, str, str, Shape], tuple["Op", Shape]]
Builder = Callable[["Layer"], nn.Module]


@dataclass(frozen=True)
class SpecOp:
    """How one op of a spec is read and built."""

    parse: Parser
    build: Builder
    children: Callable[[Any], list[list[Layer]]] = lambda op: []


SPEC_OPS: dict[str, SpecOp] = {}


def spec_op(name: str, build: Builder,
            children: Callable[[Any], list[list[Layer]]] | None = None) -> Callable[[Parser], Parser]:
    def register(parse: Parser) -> Parser:
        SPEC_OPS[name] = SpecOp(parse, build, children or (lambda op: []))
        return parse
    return register


def _conv_padding(ctx: SpecContext, a: dict, k: tuple[int, int], d: tuple[int, int],
                  label: str) -> tuple[int, int]:
    """None -> dilation * (k - 1) // 2; 'same' (odd kernels); 'valid' -> 0; an int or [h, w]."""
    pv = a.get("padding")
    if pv is None or pv == "same":
        if pv == "same" and (k[0] % 2 == 0 or k[1] % 2 == 0):
            raise ctx.err(f"padding 'same' needs an odd kernel, got {list(k)}; give the padding "
                          "as an integer or [h, w]", node=a, key="padding", layer=label)
        return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    if pv == "valid":
        return (0, 0)
    if isinstance(pv, str):
        raise ctx.err(f"value {pv!r} is not allowed; use an integer, a pair [h, w], "
                      "'same' or 'valid'", node=a, key="padding", layer=label)
    return _pair(ctx, pv, "padding", a, label, minimum=0)


def _window_out(ctx: SpecContext, a: dict, in_shape: Shape, k: tuple[int, int], s: tuple[int, int],
                p: tuple[int, int], d: tuple[int, int] | None, label: str) -> tuple[int, int]:
    """Output H x W of a conv window (``d`` its dilation) or a pool window (``d`` None); a
    collapse to nothing is an error naming the window."""
    dd = d or (1, 1)
    h, w = (conv_out_size(in_shape[1], k[0], s[0], p[0], dd[0]),
            conv_out_size(in_shape[2], k[1], s[1], p[1], dd[1]))
    if h < 1 or w < 1:
        more = f", padding {list(p)}, dilation {list(d)}" if d is not None else ""
        raise ctx.err(f"output size collapses to {h} x {w}: input {in_shape[1]} x {in_shape[2]}, "
                      f"kernel {list(k)}, stride {list(s)}{more}", node=a, key="kernel",
                      layer=label)
    return h, w


def _build_conv(layer: Layer) -> nn.Module:
    op = layer.op
    return nn.Conv2d(op.in_channels, op.out_channels, op.kernel, op.stride, op.padding,
                     op.dilation, op.groups, op.bias)


@spec_op("conv", _build_conv)
def _parse_conv(ctx: SpecContext, raw: dict, label: str, path: str, in_shape: Shape) -> tuple[Op, Shape]:
    a = _op_args(ctx, raw, "conv", label, ("in", "out", "kernel", "stride", "padding",
                                           "dilation", "groups", "bias"))
    for req in ("out", "kernel"):
        if req not in a:
            raise ctx.err(f"'conv' needs '{req}'", node=a, key=req, layer=label)
    _need_map(ctx, in_shape, label, "conv", raw)
    cin = _int(ctx, a["in"], "in", a, label) if "in" in a else in_shape[0]
    if cin != in_shape[0]:
        raise ctx.err(f"value {cin} does not match the {in_shape[0]} channels coming in "
                      f"(input shape {list(in_shape)}); drop 'in' to infer it", node=a,
                      key="in", layer=label)
    cout = _int(ctx, a["out"], "out", a, label)
    k = _pair(ctx, a["kernel"], "kernel", a, label)
    s = _pair(ctx, a.get("stride", 1), "stride", a, label)
    d = _pair(ctx, a.get("dilation", 1), "dilation", a, label)
    g = _int(ctx, a.get("groups", 1), "groups", a, label)
    bias = _bool(ctx, a.get("bias", False), "bias", a, label)
    p = _conv_padding(ctx, a, k, d, label)
    if cin % g or cout % g:
        raise ctx.err(f"value {g}: in ({cin}) and out ({cout}) must both be divisible by "
                      f"groups; allowed groups here: {_common_divisors(cin, cout)}", node=a,
                      key="groups", layer=label)
    h, w = _window_out(ctx, a, in_shape, k, s, p, d, label)
    return ConvOp(cin, cout, k, s, p, d, g, bias), (cout, h, w)


def _build_bn(layer: Layer) -> nn.Module:
    n = layer.op.num_features
    return nn.BatchNorm2d(n) if len(layer.in_shape) == 3 else nn.BatchNorm1d(n)


@spec_op("bn", _build_bn)
def _parse_bn(ctx: SpecContext, raw: dict, label: str, path: str, in_shape: Shape) -> tuple[Op, Shape]:
    _op_args(ctx, raw, "bn", label, ())
    return BNOp(in_shape[0]), in_shape


@spec_op("act", lambda layer: ACTIVATIONS[layer.op.kind]())
def _parse_act(ctx: SpecContext, raw: dict, label: str, path: str, in_shape: Shape) -> tuple[Op, Shape]:
    v = raw["act"]
    if isinstance(v, dict):
        _check_keys(ctx, v, ("type",), "'act'", label)
        v = v.get("type")
    if not isinstance(v, str) or v not in ACTIVATIONS:
        raise ctx.err(f"value {_describe(v)} is not an activation; allowed: "
                      f"{', '.join(ACTIVATIONS)}", node=raw, key="act", layer=label)
    return ActOp(v), in_shape


def _build_pool(layer: Layer) -> nn.Module:
    op = layer.op
    if op.global_:
        return nn.AdaptiveAvgPool2d(1) if op.type == "avg" else nn.AdaptiveMaxPool2d(1)
    cls = nn.MaxPool2d if op.type == "max" else nn.AvgPool2d
    return cls(op.kernel, op.stride, op.padding)


@spec_op("pool", _build_pool)
def _parse_pool(ctx: SpecContext, raw: dict, label: str, path: str, in_shape: Shape) -> tuple[Op, Shape]:
    a = _op_args(ctx, raw, "pool", label, ("type", "kernel", "stride", "padding", "global"))
    _need_map(ctx, in_shape, label, "pool", raw)
    glob = _bool(ctx, a.get("global", False), "global", a, label)
    typ = a.get("type", "avg" if glob else None)
    if typ not in ("max", "avg"):
        raise ctx.err(f"value {_describe(typ)} must be 'max' or 'avg'", node=a, key="type",
                      layer=label)
    if glob:
        extra = [k for k in ("kernel", "stride", "padding") if k in a]
        if extra:
            raise ctx.err("a global pool takes no kernel, stride or padding", node=a,
                          key=extra[0], layer=label)
        return PoolOp(typ, None, None, (0, 0), True), (in_shape[0], 1, 1)
    if "kernel" not in a:
        raise ctx.err("'pool' needs 'kernel' (or 'global: true')", node=a, key="kernel",
                      layer=label)
    k = _pair(ctx, a["kernel"], "kernel", a, label)
    s = _pair(ctx, a.get("stride", list(k)), "stride", a, label)
    p = _pair(ctx, a.get("padding", 0), "padding", a, label, minimum=0)
    if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
        raise ctx.err(f"value {list(p)}: padding must be at most half the kernel {list(k)}",
                      node=a, key="padding", layer=label)
    h, w = _window_out(ctx, a, in_shape, k, s, p, None, label)
    return PoolOp(typ, k, s, p, False), (in_shape[0], h, w)


@spec_op("linear", lambda layer: nn.Linear(layer.op.in_features, layer.op.out_features,
                                           layer.op.bias))
def _parse_linear(ctx: SpecContext, raw: dict, label: str, path: str,
                  in_shape: Shape) -> tuple[Op, Shape]:
    a = _op_args(ctx, raw, "linear", label, ("in", "out", "bias"))
    if len(in_shape) != 1:
        raise ctx.err(f"'linear' needs a flat input but gets {list(in_shape)}; add "
                      "'- flatten: {}' before it", node=raw, key="linear", layer=label)
    if "out" not in a:
        raise ctx.err("'linear' needs 'out'", node=a, key="out", layer=label)
    fin = _int(ctx, a["in"], "in", a, label) if "in" in a else in_shape[0]
    if fin != in_shape[0]:
        raise ctx.err(f"value {fin} does not match the {in_shape[0]} features coming in",
                      node=a, key="in", layer=label)
    fout = _int(ctx, a["out"], "out", a, label)
    bias = _bool(ctx, a.get("bias", True), "bias", a, label)
    return LinearOp(fin, fout, bias), (fout,)


@spec_op("flatten", lambda layer: nn.Flatten(1))
def _parse_flatten(ctx: SpecContext, raw: dict, label: str, path: str,
                   in_shape: Shape) -> tuple[Op, Shape]:
    _op_args(ctx, raw, "flatten", label, ())
    return FlattenOp(), (math.prod(in_shape),)


@spec_op("channel_shuffle", lambda layer: ChannelShuffle(layer.op.groups))
def _parse_shuffle(ctx: SpecContext, raw: dict, label: str, path: str,
                   in_shape: Shape) -> tuple[Op, Shape]:
    v = raw["channel_shuffle"]
    node, key = raw, "channel_shuffle"
    if isinstance(v, dict):
        _check_keys(ctx, v, ("groups",), "'channel_shuffle'", label)
        if "groups" not in v:
            raise ctx.err("'channel_shuffle' needs 'groups'", node=v, key="groups", layer=label)
        node, key, v = v, "groups", v["groups"]
    g = _int(ctx, v, key, node, label)
    _need_map(ctx, in_shape, label, "channel_shuffle", raw)
    if in_shape[0] % g:
        raise ctx.err(f"value {g}: the {in_shape[0]} channels are not divisible by it; allowed: "
                      f"{_common_divisors(in_shape[0], in_shape[0])}", node=node, key=key,
                      layer=label)
    return ShuffleOp(g), in_shape


def _build_add(layer: Layer) -> nn.Module:
    op = layer.op
    body = OrderedDict((sub.name, build_layer(sub)) for sub in op.body)
    return AddBlock(body, _seq(op.shortcut) if op.shortcut else None)


@spec_op("add", _build_add, children=lambda op: [op.body, op.shortcut])
def _parse_add(ctx: SpecContext, raw: dict, label: str, path: str, in_shape: Shape) -> tuple[Op, Shape]:
    a = _op_args(ctx, raw, "add", label, ("layers", "shortcut"))
    body = _parse_list(ctx, a.get("layers"), f"{path}.add.layers", in_shape, a, "layers", label,
                       required=True)
    sc = _parse_list(ctx, a.get("shortcut", []), f"{path}.add.shortcut", in_shape, a,
                     "shortcut", label, required=False)
    out_b = body[-1].out_shape
    out_s = sc[-1].out_shape if sc else in_shape
    if out_b != out_s:
        hint = "" if sc else " (give a 'shortcut' that projects the input, e.g. a 1x1 conv)"
        raise ctx.err(f"the block's layers give {list(out_b)} but the shortcut gives "
                      f"{list(out_s)}; both must match to be added{hint}", node=raw, key="add",
                      layer=label)
    return AddOp(body, sc), out_b


@spec_op("concat", lambda layer: ConcatBlock([_seq(b) if b else nn.Identity()
                                              for b in layer.op.branches]),
         children=lambda op: list(op.branches))
def _parse_concat(ctx: SpecContext, raw: dict, label: str, path: str,
                  in_shape: Shape) -> tuple[Op, Shape]:
    a = _op_args(ctx, raw, "concat", label, ("branches",))
    br = a.get("branches")
    if not isinstance(br, list) or len(br) < 2:
        raise ctx.err(f"value {_describe(br)} must be a list of at least 2 branches, each a "
                      "list of layers ([] passes the input through)", node=a, key="branches",
                      layer=label)
    branches = [_parse_list(ctx, b, f"{path}.concat.branches[{i}]", in_shape, a, "branches",
                            label, required=False) for i, b in enumerate(br)]
    outs = [b[-1].out_shape if b else in_shape for b in branches]
    if any(len(o) != 3 for o in outs) or len({o[1:] for o in outs}) != 1:
        raise ctx.err(f"branch outputs {[list(o) for o in outs]} must all be C x H x W with the "
                      "same H x W to be concatenated", node=raw, key="concat", layer=label)
    return ConcatOp(branches), (sum(o[0] for o in outs), *outs[0][1:])


def _parse_op(ctx: SpecContext, raw: dict, op: str, label: str, path: str,
              in_shape: Shape | None) -> tuple[Op, Shape, Shape]:
    """Validate one op through its registered parser: (op, out_shape, in_shape used)."""
    if in_shape is None:
        first = op == "conv" and "in" not in (raw.get("conv") or {})
        raise ctx.err("the first layer needs an input shape: set top-level 'input: [C, H, W]' "
                      "or this layer's own 'input'" if first else
                      "no input shape to chain from: set top-level 'input: [C, H, W]' or this "
                      "layer's own 'input'", node=raw, layer=label)
    parsed, out_shape = SPEC_OPS[op].parse(ctx, raw, label, path, in_shape)
    return parsed, out_shape, in_shape


def iter_layers(layers: list[Layer]) -> Iterator[Layer]:
    """Every layer of a spec tree, depth first (a block, then its nested layers): the one
    walker over the tree, used by the memory estimate and the closed-form MACs."""
    stack = list(reversed(layers))
    while stack:
        layer = stack.pop()
        yield layer
        for sub in reversed(SPEC_OPS[layer.op_name].children(layer.op)):
            stack.extend(reversed(sub))


def _parse_list(ctx: SpecContext, raw: Any, path: str, in_shape: Shape, parent: Any, key: str,
                label: str, *, required: bool) -> list[Layer]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ctx.err(f"value {_describe(raw)} must be a list of layers", node=parent, key=key,
                      layer=label)
    if required and not raw:
        raise ctx.err("must hold at least one layer", node=parent, key=key, layer=label)
    out: list[Layer] = []
    names: dict[str, str] = {}
    counters: dict[str, int] = {}
    shape = in_shape
    for i, item in enumerate(raw):
        layer = _parse_layer(ctx, item, f"{path}[{i}]", i, shape, names, counters, top=False)
        out.append(layer)
        shape = layer.out_shape
    return out


def _common_divisors(a: int, b: int) -> str:
    divs = [g for g in range(1, min(a, b) + 1) if a % g == 0 and b % g == 0]
    if len(divs) > 12:
        divs = [*divs[:6], "...", *divs[-3:]]
    return ", ".join(str(d) for d in divs)


def parse_spec(data: Any, source: str = "<spec>") -> Spec:
    """Validate already-loaded YAML data (see :func:`load_spec`)."""
    ctx = SpecContext(source)
    if not isinstance(data, dict):
        raise ctx.err(f"a spec must be a mapping with keys {', '.join(TOP_KEYS)}; got "
                      f"{type(data).__name__}")
    _check_keys(ctx, data, TOP_KEYS, "the spec", None)
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise ctx.err(f"value {_describe(name)} must be a string", node=data, key="name")
    desc = data.get("description")
    if desc is not None and not isinstance(desc, str):
        raise ctx.err(f"value {_describe(desc)} must be a string", node=data, key="description")
    batch = data.get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1 or batch > MAX_DIM:
        raise ctx.err(f"value {_describe(batch)} must be an integer between 1 and {MAX_DIM}",
                      node=data, key="batch")
    dtype = data.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ctx.err(f"value {_describe(dtype)} is not allowed; use one of {', '.join(DTYPES)}",
                      node=data, key="dtype")
    top_in = _shape(ctx, data["input"], "input", data, None) if "input" in data else None
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ctx.err(f"value {_describe(raw_layers)} must be a non-empty list of layers",
                      node=data, key="layers")
    layers: list[Layer] = []
    segments: list[tuple[Shape, list[Layer]]] = []
    names: dict[str, str] = {}
    counters: dict[str, int] = {}
    shape = top_in
    for i, item in enumerate(raw_layers):
        layer = _parse_layer(ctx, item, f"layers[{i}]", i, shape, names, counters, top=True)
        if layer.own_input or not segments:
            segments.append((layer.in_shape, []))
        segments[-1][1].append(layer)
        layers.append(layer)
        shape = layer.out_shape
    return Spec(name=name, source=source, batch=batch, dtype=dtype, layers=layers,
                segments=segments, description=desc)


def load_spec(path: str | Path) -> Spec:
    """Load and validate a YAML spec file (raises ``SpecError``/``InputError`` with one line)."""
    from convcost.sources.yamlio import load_yaml_file  # yaml only where a spec is read

    return parse_spec(load_yaml_file(path, "spec file"), str(path))


def spec_from_text(text: str, source: str = "<spec>") -> Spec:
    """Validate a spec given as YAML text (tests, stdin)."""
    from convcost.sources.yamlio import load_yaml_text

    data = load_yaml_text(text, source)
    if data is None:
        raise InputError(f"{source}: empty spec")
    return parse_spec(data, source)


# --------------------------------------------------------------------------- building


class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle: view as (g, C/g), transpose, flatten. 0 MACs; moves 2x the data."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *rest = x.shape  # any number of spatial dimensions (1-D, 2-D, 3-D)
        x = x.view(b, self.groups, c // self.groups, *rest).transpose(1, 2).contiguous()
        return x.view(b, c, *rest)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class AddBlock(nn.Module):
    """Residual block: body layers as named children, plus an optional ``shortcut`` Sequential."""

    def __init__(self, body: OrderedDict[str, nn.Module], shortcut: nn.Module | None) -> None:
        super().__init__()
        self._body = list(body)
        for n, m in body.items():
            self.add_module(n, m)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for n in self._body:
            y = getattr(self, n)(y)
        return y + (x if self.shortcut is None else self.shortcut(x))


class ConcatBlock(nn.Module):
    """Concatenate branch outputs along channels; an empty branch is the identity."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        for i, b in enumerate(branches, 1):
            self.add_module(f"branch{i}", b)
        self.n = len(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(1, self.n + 1)], dim=1)


class SpecModel(nn.Module):
    """The module a spec describes. ``forward`` takes one tensor per independent segment.

    Layers are direct children under their spec names, so fvcore's per-module keys are the
    spec's layer names ("conv1", "block1.conv2", ...).
    """

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec_name = spec.name
        self._segments: list[list[str]] = []
        for _, seg in spec.segments:
            self._segments.append([layer.name for layer in seg])
            for layer in seg:
                self.add_module(layer.name, build_layer(layer))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outs = []
        for x, seg in zip(xs, self._segments, strict=False):
            for n in seg:
                x = getattr(self, n)(x)
            outs.append(x)
        return outs[0] if len(outs) == 1 else tuple(outs)


def _seq(layers: list[Layer]) -> nn.Sequential:
    return nn.Sequential(OrderedDict((layer.name, build_layer(layer)) for layer in layers))


def build_layer(layer: Layer) -> nn.Module:
    """Build the ``nn.Module`` for one validated layer (its op's registered builder)."""
    return SPEC_OPS[layer.op_name].build(layer)


def build_model(spec: Spec) -> SpecModel:
    """Build the spec's module in eval mode (deterministic init for repeatable reports)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SpecModel(spec)
    return model.eval()


def conv_linear_macs(spec: Spec, batch: int | None = None) -> int:
    """Closed-form conv + linear MACs of the spec at ``batch`` (an estimate of the cost of a real
    forward; the counts convcost reports always come from the built module)."""
    total = 0
    for layer in iter_layers(spec.layers):
        op = layer.op
        if isinstance(op, ConvOp):
            total += math.prod(layer.out_shape) * op.kernel[0] * op.kernel[1] * (
                op.in_channels // op.groups)
        elif isinstance(op, LinearOp):
            total += op.in_features * op.out_features
    return (batch or spec.batch) * total


def memory_estimate(spec: Spec, batch: int) -> tuple[int, str]:
    """(bytes, explanation) a real forward of the spec allocates at ``batch``: parameters, the
    inputs and the largest live activations (a layer's input + output, twice inside a block,
    whose input stays alive for its shortcut or other branches), at 4 bytes per element."""
    from convcost.memory import fmt_bytes

    params = peak = 0
    for layer in iter_layers(spec.layers):
        op = layer.op
        if isinstance(op, ConvOp):
            params += op.out_channels * (op.in_channels // op.groups) * op.kernel[0] * op.kernel[1]
        elif isinstance(op, LinearOp):
            params += op.in_features * op.out_features
        live = math.prod(layer.in_shape) + math.prod(layer.out_shape)
        block = bool(SPEC_OPS[layer.op_name].children(op))
        peak = max(peak, live * (2 if block else 1))
    inputs = sum(math.prod(s) for s in spec.input_shapes)
    acts = 4 * batch * (peak + inputs)
    return 4 * params + acts, (f"params {fmt_bytes(4 * params)} + activations "
                               f"{fmt_bytes(acts)} at batch {batch}")


def example_inputs(spec: Spec, batch: int | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """One random input per segment, shape ``(batch, *input_shape)``."""
    from convcost.inputs import seeded_inputs

    b = batch or spec.batch
    return seeded_inputs([(b, *s) for s in spec.input_shapes], dtype)
