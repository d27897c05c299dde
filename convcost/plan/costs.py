"""What each selected conv may become, with its exact counts and measured latency: the
planner's options, read from a counted (and timed) comparison, and the limits of a plan.

A layer's options are "keep it" and every variant that counting built and timing measured;
a variant identical to the layer is the same as keeping it, and a variant that was skipped,
failed or was not measured is no option (named in the notes). A variant's latency is the
layer's own median times the paired ratio (the pairing cancels the machine's drift), with the
ratio's 95% interval; the rest of the model (everything but the selected convs, and the work
between them) is the whole model's measured median less the selected convs' own.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from convcost.errors import InputError
from convcost.plan.solver import LayerOptions, Option
from convcost.timing.status import Status
from convcost.units import parse_count, parse_duration_ms
from convcost.variants.compare import CompareReport, CompareRow, LayerCompare

_RATIO = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*x\s*$")


@dataclass(frozen=True)
class Limit:
    """A limit as given (``0.6x`` of the original, or an absolute figure) and resolved."""

    metric: str
    text: str
    ratio: float | None  # relative to the original model
    value: float | None = None  # absolute: params, MACs or ms (resolved against the original)

    def resolved(self, original: float) -> Limit:
        v = self.value if self.ratio is None else self.ratio * original
        return Limit(self.metric, self.text, self.ratio, v)


def parse_limit(metric: str, text: str) -> Limit:
    """``0.6x`` (a ratio to the original) or ``12M`` / ``2G`` / ``15ms``; raises InputError."""
    option = f"--max-{metric}"
    m = _RATIO.match(text)
    if m:
        r = float(m.group(1))
        if not 0 < r < 1e6:
            raise InputError(f"{option} {text!r}: a ratio must be above 0 (e.g. 0.6x)")
        return Limit(metric, text.strip(), r)
    try:
        v = parse_duration_ms(text) if metric == "latency" else parse_count(text)
    except ValueError as e:
        unit = "'15ms', '800us'" if metric == "latency" else "'12M', '2G'"
        raise InputError(f"{option} {text!r}: use a ratio to the original such as 0.6x or a "
                         f"figure such as {unit} ({e})") from e
    if v <= 0:
        raise InputError(f"{option} {text!r}: must be above 0")
    return Limit(metric, text.strip(), None, v)


@dataclass
class Options:
    """The layers' options, the rest of the model, and what was left out."""

    layers: list[LayerOptions]
    rest: dict[str, float]
    original: dict[str, float]  # the whole model: params, macs, latency (ms) when timed
    notes: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # options planned from busy figures


def _option(row: CompareRow, base: CompareRow, timed: bool) -> tuple[Option | None, str]:
    """A row as an option, or why it is none."""
    if row.skipped:
        return None, row.skipped
    if row.params is None or row.macs is None:
        return None, "not counted"
    if row.latency_source == "same":
        return None, "the same kernel as the layer"
    ms = ci = None
    if timed:
        if base.latency_ms is None or row.latency_ms is None:
            return None, f"not measured ({row.latency_source or 'no figure'})"
        ms, ci = row.latency_ms, None
        if row.ratio_latency is not None and row is not base:
            ms = base.latency_ms * row.ratio_latency
            if row.latency_ci is not None:
                ci = (base.latency_ms * row.latency_ci[0], base.latency_ms * row.latency_ci[1])
    label = "keep" if row is base else row.label
    variant = None if row is base else row.variant
    return Option(label, variant, None if row is base else row.groups, row.params, row.macs,
                  ms, ci, row.figure.busy), ""


def layer_options(lc: LayerCompare, timed: bool, keep: tuple[str, ...],
                  notes: list[str]) -> LayerOptions | None:
    """One selected conv's options (None when even keeping it has no figure)."""
    keep_opt, why = _option(lc.baseline, lc.baseline, timed)
    if keep_opt is None:
        notes.append(f"{lc.name}: left out of the plan, the layer itself has no figure ({why})")
        return None
    opts = [keep_opt]
    for r in lc.rows:
        o, why = _option(r, lc.baseline, timed)
        if o is not None:
            opts.append(o)
        elif why and not r.skipped:
            notes.append(f"{lc.name} {r.label}: not a candidate ({why})")
    pinned = any(fnmatch.fnmatchcase(lc.name, g) for g in keep)
    return LayerOptions(lc.name, lc.layer.describe(), tuple(opts), pinned)


def options_of(report: CompareReport, keep: tuple[str, ...], timed: bool) -> Options:
    """The planner's options from a comparison whose whole-model baseline row holds the
    original model's counts (and its measured latency when ``timed``)."""
    mb = report.model_baseline
    if mb is None or mb.params is None or mb.macs is None:
        raise ValueError("the comparison has no whole-model baseline")
    notes: list[str] = []
    layers = [lo for lc in report.layers
              if (lo := layer_options(lc, timed, keep, notes)) is not None]
    original: dict[str, float] = {"params": mb.params, "macs": mb.macs}
    rest = {"params": mb.params - sum(lay.options[0].params for lay in layers),
            "macs": mb.macs - sum(lay.options[0].macs for lay in layers)}
    if timed:
        if mb.latency_ms is None:
            status = Status.of(mb.latency_source)
            why = status.missing_text if status is not None else "no figure"
            raise InputError(f"{report.source}: the whole model has no latency ({why}); a "
                             "latency plan needs it")
        original["latency"] = mb.latency_ms
        rest["latency"] = mb.latency_ms - sum(lay.options[0].latency_ms or 0.0 for lay in layers)
    busy = [f"{lay.name} {o.label}" for lay in layers for o in lay.options if o.busy]
    unmatched = [g for g in keep if not any(fnmatch.fnmatchcase(lay.name, g) for lay in layers)]
    notes += [f"--keep {g}: matches no selected conv" for g in unmatched]
    return Options(layers, rest, original, notes, busy)


