"""Example inputs: seeded random tensors, the same values wherever a model is run (counting on
real tensors, timing, a spec's examples), so that figures are repeatable."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def seeded_inputs(shapes: Sequence[Sequence[int]],
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """One standard-normal tensor per shape, from one generator seeded with 0 (CPU)."""
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(tuple(s), generator=g, dtype=dtype) for s in shapes)
