"""The variant catalogue: cheaper replacements for a Conv2d that keep its input and output shapes.

Each variant is a small named builder returning real modules, with its closed-form weight count
and MAC count (DESIGN.md section 2). Conventions: MACs at the layer's *output* size H' x W', bias
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


@dataclass(frozen=True)
class ConvLayer:
    """The conv a variant must replace: its hyper-parameters and its real input size.

    ``batch`` and ``in_hw`` are those of the layer's input in the analysed model.
    """

    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    in_hw: tuple[int, int] = (56, 56)
    batch: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        return (conv_out_size(self.in_hw[0], self.kernel[0], self.stride[0], self.padding[0],
                              self.dilation[0]),
                conv_out_size(self.in_hw[1], self.kernel[1], self.stride[1], self.padding[1],
                              self.dilation[1]))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.cin, *self.in_hw)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.cout, *self.out_hw)

    @property
    def is_pointwise(self) -> bool:
        return self.kernel == (1, 1)

    def describe(self) -> str:
        k = f"{self.kernel[0]}x{self.kernel[1]}"
        s = f"/{self.stride[0]}" if self.stride != (1, 1) else ""
        g = f" g={self.groups}" if self.groups != 1 else ""
        return (f"{self.cin}->{self.cout} {k}{s}{g} on {self.in_hw[0]}x{self.in_hw[1]}, "
                f"batch {self.batch}")

    @classmethod
    def from_module(cls, m: nn.Conv2d, in_shape: list[int]) -> ConvLayer:
        if isinstance(m.padding, str):  # 'same' / 'valid' given as a string in the model
            pad = tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size, strict=True)) \
                if m.padding == "same" else (0, 0)
        else:
            pad = tuple(m.padding)
        return cls(m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride), pad,
                   tuple(m.dilation), m.groups, m.bias is not None, (in_shape[2], in_shape[3]),
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


def _conv(layer: ConvLayer, groups: int, bias: bool | None = None) -> nn.Conv2d:
    return nn.Conv2d(layer.cin, layer.cout, layer.kernel, layer.stride, layer.padding,
                     layer.dilation, groups, layer.bias if bias is None else bias)


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
        dw = nn.Conv2d(layer.cin, layer.cin, layer.kernel, layer.stride, layer.padding,
                       layer.dilation, groups=layer.cin, bias=False)
        pw = nn.Conv2d(layer.cin, layer.cout, 1, bias=layer.bias)
        return nn.Sequential(OrderedDict(depthwise=dw, pointwise=pw))
    if v.name == POINTWISE_GROUPED:
        assert v.groups is not None
        if not layer.is_pointwise:
            raise Skip(f"applies to 1x1 convs; this one is {layer.kernel[0]}x{layer.kernel[1]} "
                       "(use grouped, shuffle or separable)")
        _check_groups(layer, v.groups)
        return _conv(layer, v.groups)
    if v.name == SHUFFLE:
        assert v.groups is not None
        _check_groups(layer, v.groups)
        return nn.Sequential(OrderedDict(conv=_conv(layer, v.groups),
                                         shuffle=ChannelShuffle(v.groups)))
    if v.name == GDC:
        h, w = layer.in_hw
        if layer.out_hw != (1, 1):
            raise Skip(f"keeps the shapes only where the output is 1x1 (a head); this layer "
                       f"outputs {layer.out_hw[0]}x{layer.out_hw[1]}")
        if layer.cout % layer.cin:
            raise Skip(f"N={layer.cout} is not a multiple of C={layer.cin}")
        return nn.Conv2d(layer.cin, layer.cout, (h, w), 1, 0, 1, groups=layer.cin, bias=layer.bias)
    raise Skip(f"unknown variant {v.name!r}; known: {', '.join(VARIANTS)}")


def closed_form(layer: ConvLayer, v: Variant) -> ClosedForm:
    """Exact closed-form counts of ``build(layer, v)``; call it only for variants that built."""
    ho, wo = layer.out_hw
    kh, kw = layer.kernel
    c, n, b = layer.cin, layer.cout, layer.batch
    bias = n if layer.bias else 0
    if v.name in (DENSE, GROUPED, POINTWISE_GROUPED, SHUFFLE, DEPTHWISE):
        g = {DENSE: 1, DEPTHWISE: c}.get(v.name, v.groups or 1)
        w = n * (c // g) * kh * kw
        return ClosedForm(w, bias, b * ho * wo * kh * kw * (c // g) * n)
    if v.name == SEPARABLE:
        return ClosedForm(c * kh * kw + c * n, bias, b * ho * wo * (kh * kw * c + c * n))
    if v.name == GDC:
        h, w_ = layer.in_hw
        return ClosedForm(n * h * w_, bias, b * n * h * w_)
    raise Skip(f"unknown variant {v.name!r}")


def original_closed_form(layer: ConvLayer) -> ClosedForm:
    """Closed form of the layer as it is (its own groups)."""
    ho, wo = layer.out_hw
    kh, kw = layer.kernel
    g = layer.groups
    return ClosedForm(layer.cout * (layer.cin // g) * kh * kw, layer.cout if layer.bias else 0,
                      layer.batch * ho * wo * kh * kw * (layer.cin // g) * layer.cout)


FORMULAS = {DENSE: "1", GROUPED: "1/g", POINTWISE_GROUPED: "1/g", SHUFFLE: "1/g",
            DEPTHWISE: "1/C", GDC: "1/C", SEPARABLE: "1/N + 1/K^2"}


def paper_ratio(layer: ConvLayer, v: Variant) -> Fraction:
    """The ratio the papers state against the *dense* conv, as an exact fraction.

    1/g for grouped kinds, 1/C for depthwise and GDC (at N = C), 1/N + 1/K² for separable.
    """
    c, n, k2 = layer.cin, layer.cout, layer.kernel[0] * layer.kernel[1]
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
