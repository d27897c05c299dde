"""The training pass: a timed call is one forward plus its backward (no optimizer step).

A kernel (one conv or linear, a variant of it) is timed as it runs inside a network: the
gradients of its weights *and of its input* are computed. A whole model is timed as a training
step: the gradients of its trainable parameters (its input needs none), the model in training
mode (batch norm on the batch's statistics) with its dropout layers off, so that every backend
computes the same function and its output and gradients can be checked against eager.

The backward is ``torch.autograd.grad`` of every floating output leaf with a fixed upstream
gradient (seeded normal values, made once, outside the timing; ones would make a batch norm's
input gradient vanish): no ``.grad`` accumulation, no zeroing. The timed callable returns the
forward's tensors followed by the gradients; :func:`check_step` compares them with eager's, each
gradient at the scale of the step's largest gradient (a bias followed by batch norm has a
gradient that is zero up to rounding, which no relative test can compare).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

CONVENTION = ("training: forward + backward of one call (torch.autograd.grad, a fixed random "
              "upstream gradient, no optimizer step); a layer's kernel computes the gradients "
              "of its weights and of its input, a whole model those of its trainable "
              "parameters, in training mode (batch statistics) with dropout off")


def _flat(out: Any) -> list[torch.Tensor]:
    from convcost.inputs import output_leaves

    if isinstance(out, torch.Tensor):
        return [out]
    return [t for _, t in output_leaves(out) if isinstance(t, torch.Tensor)]


def targets_of(module: nn.Module, inputs: Sequence[torch.Tensor],
               input_grads: bool) -> list[torch.Tensor]:
    """What the backward differentiates: the trainable parameters (and, for a kernel, its
    floating inputs, which are made to require a gradient here)."""
    targets = [p for p in module.parameters() if p.requires_grad]
    if input_grads:
        for x in inputs:
            if x.is_floating_point() and x.is_leaf:
                x.requires_grad_(True)
                targets.append(x)
    return targets


class TrainStep:
    """``step()`` runs ``forward()`` and the backward to ``targets`` and returns the forward's
    tensors then the gradients, flat (``n_out``: how many are the forward's, known after the
    first call). Raises when nothing is differentiable."""

    def __init__(self, forward: Callable[[], Any], targets: list[torch.Tensor]) -> None:
        if not targets:
            raise RuntimeError("nothing to differentiate: no parameter or input requires a "
                               "gradient")
        self.forward, self.targets = forward, targets
        self.upstream: list[torch.Tensor] = []
        self.n_out = 0

    def __call__(self) -> tuple[torch.Tensor, ...]:
        outs = _flat(self.forward())
        diff = [t for t in outs if t.requires_grad]
        if not diff:
            raise RuntimeError("the output does not depend on any parameter or input with a "
                               "gradient: no backward to run")
        if not self.upstream:
            g = torch.Generator().manual_seed(0)
            self.upstream = [torch.randn(t.shape, generator=g).to(t.device, t.dtype)
                             for t in diff]
            self.n_out = len(outs)
        grads = torch.autograd.grad(diff, self.targets, grad_outputs=self.upstream,
                                    allow_unused=True)
        return (*[t.detach() for t in outs], *[g for g in grads if g is not None])


def check_step(out: Sequence[torch.Tensor], ref: Sequence[torch.Tensor], n_out: int,
               dtype: str) -> float:
    """Compare a backend's training step with eager's: the forward's tensors as any output
    (:func:`~convcost.timing.backends.check_against_eager`), each gradient relative to the
    largest gradient magnitude of eager's step; returns the largest relative error."""
    from convcost.timing.backends.base import OutputMismatch, check_against_eager, tolerance

    if len(out) != len(ref):
        raise OutputMismatch(f"the training step gave {len(out)} tensors, eager's {len(ref)}")
    worst = check_against_eager(tuple(out[:n_out]), tuple(ref[:n_out]), dtype)
    grads = list(zip(out[n_out:], ref[n_out:], strict=True))
    scale = max((float(r.detach().abs().max()) for _, r in grads if r.numel()), default=0.0)
    for i, (o, r) in enumerate(grads):
        if tuple(o.shape) != tuple(r.shape):
            raise OutputMismatch(f"gradient [{i}] shape {list(o.shape)} != eager "
                                 f"{list(r.shape)}")
        err = float((o.detach().float().to(r.device) - r.detach().float()).abs().max()) \
            if r.numel() else 0.0
        rel = err / scale if scale > 0 else err
        if not rel <= tolerance(dtype):  # nan fails too
            raise OutputMismatch(f"gradient [{i}] differs from eager: max error {rel:.2g} of "
                                 f"the largest gradient > {tolerance(dtype):g} ({dtype})")
        worst = max(worst, rel)
    return worst
