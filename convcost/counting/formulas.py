"""Closed-form parameter and MAC counts for 2-D convolutions (the formulas in docs/architecture.md).

Conventions: a MAC is one fused multiply-add; FLOPs = 2 x MACs. ``h_out``/``w_out`` are the
*output* spatial sizes. Bias adds ``out`` parameters and no MACs (fvcore's convention).
"""

from __future__ import annotations


def conv_out_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                  dilation: int = 1) -> int:
    """Output length of a convolution or pooling window along one axis (PyTorch's floor rule)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_params(cin: int, cout: int, kh: int, kw: int | None = None, groups: int = 1,
                bias: bool = False) -> int:
    """Weights ``cout * (cin / groups) * kh * kw`` plus ``cout`` for a bias."""
    kw = kh if kw is None else kw
    if cin % groups or cout % groups:
        raise ValueError(f"cin={cin} and cout={cout} must be divisible by groups={groups}")
    return cout * (cin // groups) * kh * kw + (cout if bias else 0)


def conv_macs(cin: int, cout: int, kh: int, kw: int | None, h_out: int, w_out: int,
              groups: int = 1, batch: int = 1) -> int:
    """MACs ``B * H_out * W_out * kh * kw * (cin / groups) * cout`` (bias not counted)."""
    kw = kh if kw is None else kw
    return batch * h_out * w_out * kh * kw * (cin // groups) * cout


def separable_params(cin: int, cout: int, k: int, multiplier: int = 1) -> int:
    """Depthwise ``k x k`` (``cin * multiplier`` outputs) then pointwise 1x1 to ``cout``, no bias."""
    mid = cin * multiplier
    return mid * k * k + mid * cout


def separable_macs(cin: int, cout: int, k: int, h_out: int, w_out: int, batch: int = 1,
                   multiplier: int = 1) -> int:
    """MACs of depthwise ``k x k`` + pointwise 1x1 at output size ``h_out x w_out``."""
    mid = cin * multiplier
    return batch * h_out * w_out * (k * k * mid + mid * cout)


def gdc_params(channels: int, h: int, w: int) -> int:
    """Global depthwise conv: one ``h x w`` filter per channel, no bias."""
    return channels * h * w


def gdc_macs(channels: int, h: int, w: int, batch: int = 1) -> int:
    """Global depthwise conv MACs: each input element is used once."""
    return batch * channels * h * w


