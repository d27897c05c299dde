"""The variant catalogue: cheaper replacements for a conv (1-D, 2-D or 3-D) that keep its input and
output shapes.

Each variant is a small named builder returning real modules, with its closed-form weight count
and MAC count (docs/architecture.md). Conventions: MACs at the layer's *output* size H' x W', bias
adds ``out`` params and no MACs; closed forms below are exact for the modules built here.

| variant            | module                                          | weights            | vs dense    |
|--------------------|-------------------------------------------------|--------------------|-------------|
| dense              | Conv2d(C, N, K, groups=1)                       | N·C·K²             | 1           |
| grouped (g)        | Conv2d(C, N, K, groups=g)                       | N·(C/g)·K²         | 1/g         |
| depthwise          | Conv2d(C, N, K, groups=C), N = m·C              | N·K²               | 1/C         |
| separable          | depthwise K x K (layer's stride) + pointwise 1x1 | C·K² + C·N         | 1/N + 1/K²  |
| pointwise-grouped  | 1x1 Conv2d(C, N, 1, groups=g) (1x1 layers only) | N·C/g              | 1/g         |
| shuffle (g)        | grouped conv + channel shuffle(g)               | N·(C/g)·K²         | 1/g         |
| gdc                | depthwise conv with kernel = input H x W -> 1x1 | N·H·W              | 1/C         |
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

from torch import nn

from convcost.counting.formulas import conv_out_size
from convcost.sources.spec import ChannelShuffle

DENSE, GROUPED, DEPTHWISE, SEPARABLE, POINTWISE_GROUPED, SHUFFLE, GDC = (
    "dense", "grouped", "depthwise", "separable", "pointwise-grouped", "shuffle", "gdc")
VARIANTS = (DENSE, GROUPED, DEPTHWISE, SEPARABLE, POINTWISE_GROUPED, SHUFFLE, GDC)
GROUPED_VARIANTS = (GROUPED, POINTWISE_GROUPED, SHUFFLE)  # take a number of groups
DEFAULT_VARIANTS = (GROUPED, DEPTHWISE, SEPARABLE)
DEFAULT_GROUPS = (1, 2, 4, 8)


class Skip(Exception):
    """A variant that cannot replace this layer; the message is the reason shown to the user."""


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _prod(v: tuple[int, ...]) -> int:
    out = 1
    for x in v:
        out *= x
    return out


def _dims(v: tuple[int, ...]) -> str:
    return "x".join(map(str, v))


@dataclass(frozen=True)
class ConvLayer:
    """The conv a variant must replace: its hyper-parameters and its real input size.

    1-D, 2-D or 3-D: ``kernel``, ``stride``, ``padding``, ``dilation`` and ``in_hw`` (the
    spatial input size) have one entry per spatial dimension. ``batch`` and ``in_hw`` are those
    of the layer's input in the analysed model.
    """

    cin: int
    cout: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1
    bias: bool = False
    in_hw: tuple[int, ...] = (56, 56)
    batch: int = 1

    @property
    def dims(self) -> int:
        return len(self.kernel)

    @property
    def out_hw(self) -> tuple[int, ...]:
        return tuple(conv_out_size(self.in_hw[i], self.kernel[i], self.stride[i],
                                   self.padding[i], self.dilation[i]) for i in range(self.dims))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.cin, *self.in_hw)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.cout, *self.out_hw)

    @property
    def is_pointwise(self) -> bool:
        return all(k == 1 for k in self.kernel)

    def describe(self) -> str:
        s = f"/{_dims(self.stride)}" if any(x != 1 for x in self.stride) else ""
        g = f" g={self.groups}" if self.groups != 1 else ""
        d = "" if self.dims == 2 else f" ({self.dims}-D)"
        return (f"{self.cin}->{self.cout} {_dims(self.kernel)}{s}{g}{d} on {_dims(self.in_hw)}, "
                f"batch {self.batch}")

    @classmethod
    def from_module(cls, m: nn.Module, in_shape: list[int]) -> ConvLayer:
        """From a Conv1d/2d/3d and its real input shape (batch included)."""
        if isinstance(m.padding, str):  # 'same' / 'valid' given as a string in the model
            pad = tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size, strict=True)) \
                if m.padding == "same" else (0,) * len(m.kernel_size)
        else:
            pad = tuple(m.padding)
        return cls(m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride), pad,
                   tuple(m.dilation), m.groups, m.bias is not None, tuple(in_shape[2:]),
                   in_shape[0])


@dataclass(frozen=True)
class Variant:
    """One entry of a comparison: a variant name and, for grouped kinds, its number of groups."""

    name: str
    groups: int | None = None

    @property
    def label(self) -> str:
        if self.name == DENSE or self.groups is None:
            return self.name
        return f"{self.name} g={self.groups}"


@dataclass(frozen=True)
class ClosedForm:
    """Closed-form counts of a built variant: weights, bias params and MACs (exact)."""

    weights: int
    bias: int
    macs: int

    @property
    def params(self) -> int:
        return self.weights + self.bias


def expand_variants(names: tuple[str, ...], groups: tuple[int, ...]) -> list[Variant]:
    """The rows to build: grouped kinds once per g (any grouped kind at g = 1 is the dense conv)."""
    out: list[Variant] = []
    for n in names:
        if n in GROUPED_VARIANTS:
            for g in groups:
                v = Variant(DENSE, 1) if g == 1 else Variant(n, g)
                if v not in out:
                    out.append(v)
        elif n == DENSE:
            if Variant(DENSE, 1) not in out:
                out.append(Variant(DENSE, 1))
        elif Variant(n) not in out:
            out.append(Variant(n))
    return out


def _check_groups(layer: ConvLayer, g: int) -> None:
    if g < 1:
        raise Skip(f"groups must be >= 1, got {g}")
    if layer.cin % g or layer.cout % g:
        raise Skip(f"C={layer.cin} and N={layer.cout} are not both divisible by g={g}")


def conv_module(layer: ConvLayer, groups: int | None = None, bias: bool | None = None) -> nn.Module:
    """The ConvNd of ``layer`` (its own groups unless given)."""
    return _CONV[layer.dims](layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding,
                             layer.dilation, layer.groups if groups is None else groups,
                             layer.bias if bias is None else bias)


def _conv(layer: ConvLayer, groups: int, bias: bool | None = None) -> nn.Module:
    return conv_module(layer, groups, bias)


def build(layer: ConvLayer, v: Variant) -> nn.Module:
    """Build variant ``v`` of ``layer`` as real modules, or raise :class:`Skip` with the reason."""
    if v.name == DENSE:
        return _conv(layer, 1)
    if v.name == GROUPED:
        assert v.groups is not None
        _check_groups(layer, v.groups)
        return _conv(layer, v.groups)
    if v.name == DEPTHWISE:
        if layer.cout % layer.cin:
            raise Skip(f"N={layer.cout} is not a multiple of C={layer.cin}: a depthwise conv "
                       "cannot produce it (try separable)")
        return _conv(layer, layer.cin)
    if v.name == SEPARABLE:
        if layer.is_pointwise:
            raise Skip("a 1x1 conv has no spatial part to separate: separable would add a "
                       "per-channel 1x1 depthwise in front of the same 1x1 conv (more MACs, not "
                       "fewer)")
        conv = _CONV[layer.dims]
        dw = conv(layer.cin, layer.cin, layer.kernel, layer.stride, layer.padding,
                  layer.dilation, groups=layer.cin, bias=False)
        pw = conv(layer.cin, layer.cout, 1, bias=layer.bias)
        return nn.Sequential(OrderedDict(depthwise=dw, pointwise=pw))
    if v.name == POINTWISE_GROUPED:
        assert v.groups is not None
        if not layer.is_pointwise:
            raise Skip(f"applies to 1x1 convs; this one is {_dims(layer.kernel)} "
                       "(use grouped, shuffle or separable)")
        _check_groups(layer, v.groups)
        return _conv(layer, v.groups)
    if v.name == SHUFFLE:
        assert v.groups is not None
        _check_groups(layer, v.groups)
        return nn.Sequential(OrderedDict(conv=_conv(layer, v.groups),
                                         shuffle=ChannelShuffle(v.groups)))
    if v.name == GDC:
        if any(o != 1 for o in layer.out_hw):
            raise Skip(f"keeps the shapes only where the output is 1x1 (a head); this layer "
                       f"outputs {_dims(layer.out_hw)}")
        if layer.cout % layer.cin:
            raise Skip(f"N={layer.cout} is not a multiple of C={layer.cin}")
        return _CONV[layer.dims](layer.cin, layer.cout, layer.in_hw, 1, 0, 1, groups=layer.cin,
                                 bias=layer.bias)
    raise Skip(f"unknown variant {v.name!r}; known: {', '.join(VARIANTS)}")


def closed_form(layer: ConvLayer, v: Variant) -> ClosedForm:
    """Exact closed-form counts of ``build(layer, v)``; call it only for variants that built.
    K^d and H'W' stand for the products over the spatial dimensions."""
    out = _prod(layer.out_hw)
    k = _prod(layer.kernel)
    c, n, b = layer.cin, layer.cout, layer.batch
    bias = n if layer.bias else 0
    if v.name in (DENSE, GROUPED, POINTWISE_GROUPED, SHUFFLE, DEPTHWISE):
        g = {DENSE: 1, DEPTHWISE: c}.get(v.name, v.groups or 1)
        w = n * (c // g) * k
        return ClosedForm(w, bias, b * out * k * (c // g) * n)
    if v.name == SEPARABLE:
        return ClosedForm(c * k + c * n, bias, b * out * (k * c + c * n))
    if v.name == GDC:
        area = _prod(layer.in_hw)
        return ClosedForm(n * area, bias, b * n * area)
    raise Skip(f"unknown variant {v.name!r}")


def original_closed_form(layer: ConvLayer) -> ClosedForm:
    """Closed form of the layer as it is (its own groups)."""
    k = _prod(layer.kernel)
    g = layer.groups
    return ClosedForm(layer.cout * (layer.cin // g) * k, layer.cout if layer.bias else 0,
                      layer.batch * _prod(layer.out_hw) * k * (layer.cin // g) * layer.cout)


FORMULAS = {DENSE: "1", GROUPED: "1/g", POINTWISE_GROUPED: "1/g", SHUFFLE: "1/g",
            DEPTHWISE: "1/C", GDC: "1/C", SEPARABLE: "1/N + 1/K^2"}


def formula(layer: ConvLayer, v: Variant) -> str:
    """The closed-form ratio of ``v`` to the layer as it is (the analytic column's formula):
    1/g against a dense conv, g0/g against one with g0 groups; K^d for d spatial dimensions."""
    k = {1: "K", 2: "K^2", 3: "K^3"}.get(layer.dims, f"K^{layer.dims}")
    base = {DENSE: "1", GROUPED: "1/g", POINTWISE_GROUPED: "1/g", SHUFFLE: "1/g",
            DEPTHWISE: "1/C", GDC: "1/C", SEPARABLE: f"1/N + 1/{k}"}.get(v.name, "")
    g0 = layer.groups
    if g0 == 1 or not base:
        return base
    return {"1": f"{g0}", "1/g": f"{g0}/g", "1/C": f"{g0}/C"}.get(base, f"{g0}(1/N + 1/{k})")


def same_as_original(layer: ConvLayer, v: Variant) -> bool:
    """The variant builds the very conv the layer already is (no alternative to show)."""
    if v.name in (GROUPED, POINTWISE_GROUPED) and v.groups == layer.groups:
        return True
    if v.name == DENSE and layer.groups == 1:
        return True
    if v.name == DEPTHWISE and layer.groups == layer.cin and layer.cout % layer.cin == 0:
        return True
    return v.name == GDC and layer.groups == layer.cin and layer.kernel == layer.in_hw and \
        all(o == 1 for o in layer.out_hw)


def paper_ratio(layer: ConvLayer, v: Variant) -> Fraction:
    """The ratio the papers state against the *dense* conv, as an exact fraction.

    1/g for grouped kinds, 1/C for depthwise and GDC (at N = C), 1/N + 1/K^d for separable.
    """
    c, n, k2 = layer.cin, layer.cout, _prod(layer.kernel)
    if v.name == DENSE:
        return Fraction(1)
    if v.name in (GROUPED, POINTWISE_GROUPED, SHUFFLE):
        return Fraction(1, v.groups or 1)
    if v.name in (DEPTHWISE, GDC):
        return Fraction(1, c)
    if v.name == SEPARABLE:
        return Fraction(1, n) + Fraction(1, k2)
    raise Skip(f"unknown variant {v.name!r}")


def valid_groups(layer: ConvLayer) -> list[int]:
    """Every g that divides both C and N (what ``--groups all`` expands to)."""
    return [g for g in range(1, min(layer.cin, layer.cout) + 1)
            if layer.cin % g == 0 and layer.cout % g == 0]
