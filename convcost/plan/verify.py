"""Proof by measurement: each planned model (the substituted convs built afresh, every other
module and weight shared with the original) timed end to end against the original in
interleaved rounds, on each engine's backend, in one paired group per backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from convcost.plan.result import PlannedModel, Verified
from convcost.plan.solver import LayerOptions
from convcost.variants.catalogue import DENSE, GROUPED_VARIANTS, ConvLayer, Variant, build
from convcost.variants.compare import CompareReport, with_replacements


def variant_of(name: str, groups: int | None) -> Variant:
    """The catalogue variant of an option (dense is g = 1)."""
    if name == DENSE:
        return Variant(DENSE, 1)
    return Variant(name, groups if name in GROUPED_VARIANTS else None)


def planned_model(model: nn.Module, report: CompareReport, layers: Sequence[LayerOptions],
                  choice: Sequence[int]) -> nn.Module:
    """``model`` with each layer's chosen variant substituted (``model`` is not changed)."""
    conv: dict[str, ConvLayer] = {lc.name: lc.layer for lc in report.layers}
    new = {}
    for lay, i in zip(layers, choice, strict=True):
        o = lay.options[i]
        if o.variant is not None:
            new[lay.name] = build(conv[lay.name], variant_of(o.variant, o.groups)).eval()
    return with_replacements(model, new)


def verify(plans: list[PlannedModel], models: list[nn.Module], original: nn.Module,
           example: Any, engines: Sequence[Any], name: str) -> Any:
    """Time ``original`` and every planned model paired on each engine; fills each plan's
    ``verified`` (one :class:`Verified` per backend) and returns the timing run."""
    from convcost.timing.kernel import Kernel
    from convcost.timing.measure import is_busy, merge_runs, run_all

    kernels = [Kernel(original, example, None, None, f"model {name} original", "model")]
    kernels += [Kernel(m, example, None, round(p.totals.get("macs", 0)) or None,
                       f"model {name} plan {i + 1}", "model")
                for i, (p, m) in enumerate(zip(plans, models, strict=True))]
    keys = [e.add_group(kernels, paired=True, label="planned models") for e in engines]
    run_all(list(engines))
    for e, ks in zip(engines, keys, strict=True):
        base = e.kernel(ks[0])
        for plan, key in zip(plans, ks[1:], strict=True):
            kr, pr = e.kernel(key), e.pair(ks[0], key)
            busy = is_busy(kr.machine) or is_busy(pr.machine)
            err = kr.error or base.error
            if pr.ratio is None and not err:
                err = f"not measured ({pr.status})"
            plan.verified.append(Verified(
                e.backend, base.median_ms, kr.median_ms,
                pr.ratio.ratio if pr.ratio else None,
                (pr.ratio.lo, pr.ratio.hi) if pr.ratio else None,
                pr.ratio.rounds if pr.ratio else None, busy, err))
    from convcost.inputs import as_example

    return merge_runs(list(engines), as_example(example).batch)
