"""What is timed in a report: each conv (and linear) kernel with its real input shape, each
variant of it paired with the original, and the whole model (original vs substituted, paired).
Fills the latency fields of the reports from a :class:`~convcost.timing.engine.TimingEngine`.

Identical kernels are measured once and share their figure; a variant identical to its original
is the original's measurement (``same``). Ctrl-C and an exhausted time budget keep what
finished; a callable that fails is marked in its row and the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from convcost.counting.analysis import AnalysisReport
from convcost.timing.engine import (
    BUDGET,
    CACHED,
    FAILED,
    INTERRUPTED,
    MEASURED,
    SAME,
    KernelResult,
    PairResult,
    TimingEngine,
)
from convcost.timing.harness import Measurement, TimingConfig
from convcost.timing.kernel import Kernel
from convcost.timing.roofline import Peaks, compulsory_bytes, lookup, roofline
from convcost.variants.catalogue import Variant, build, conv_module
from convcost.variants.compare import ORIGINAL, CompareReport, CompareRow, substitute


@dataclass
class TimingRun:
    """What happened during timing, for the report and the exit code."""

    config: TimingConfig
    device: dict[str, Any]
    peaks: Peaks | None
    interrupted: bool = False
    failures: list[str] = field(default_factory=list)  # "name: error"
    unconverged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # not measured (interrupted)
    over_budget: list[str] = field(default_factory=list)  # not measured (budget)
    engine: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    @property
    def incomplete(self) -> bool:
        return self.interrupted or bool(self.failures) or bool(self.over_budget)

    def summary(self) -> dict[str, Any]:
        c = self.config
        return {
            "protocol": ("cuda events back-to-back, one sync per batch of rounds; cudnn.benchmark "
                         "autotune and warm-up outside timing; CUDA-graph figure under 20 us"
                         if c.numerics.is_cuda else
                         "blocked perf_counter timing, explicit thread count, warm-up outside "
                         "timing") + "; interleaved rounds, paired ratios (median of per-round "
                         "ratios, bootstrap 95% interval); adaptive stop on IQR/median; each "
                         "unique kernel measured once",
            "cold_l2": c.cold, "max_time_s": c.max_time_s, "min_samples": c.min_samples,
            "rel_iqr_target": c.rel_iqr, "interrupted": self.interrupted,
            "failures": self.failures, "unconverged": self.unconverged, "missing": self.missing,
            "not_measured_budget": self.over_budget, "engine": self.engine,
            "notices": self.notices,
            "roofline_peaks": self.peaks.to_dict() if self.peaks else None,
        }


def _new_run(engine: TimingEngine, batch: int | None) -> TimingRun:
    return TimingRun(config=engine.cfg, device={**engine.device, "batch": batch},
                     peaks=lookup(engine.cfg.numerics))


def _finish_run(run: TimingRun, engine: TimingEngine) -> None:
    run.interrupted = engine.interrupted
    c = engine.counts()
    run.engine = {
        "unique_kernels": len(engine.results), "groups": len(engine.groups),
        "measured": c.get(MEASURED, 0), "cached": c.get(CACHED, 0), "failed": c.get(FAILED, 0),
        "not_measured_budget": c.get(BUDGET, 0), "interrupted": c.get(INTERRUPTED, 0),
        "pairs_measured": sum(p.status == MEASURED for p in engine.pairs.values()),
        "pairs_cached": sum(p.status == CACHED for p in engine.pairs.values()),
        "time_budget_s": engine.budget_s, "timing_s": round(engine.elapsed_s, 3),
        "budget_exhausted": engine.budget_exhausted, "fresh": engine.fresh,
        "latency_table": str(engine.table.path) if engine.table.con is not None else None,
        "backend": engine.backend,
    }
    run.notices = list(engine.table.notices)


def _timing_dict(kr: KernelResult) -> dict[str, Any]:
    """The row's ``timing`` object: measurement (or error), where the figure came from."""
    m = kr.measurement or Measurement(error=kr.error or _status_text(kr.status))
    d: dict[str, Any] = {"measurement": m.to_dict(), "source": kr.status}
    if kr.cached_at:
        d["cached_at"] = kr.cached_at
    if kr.status == FAILED:
        d["error"] = kr.error
    return d


def _status_text(status: str) -> str:
    return {BUDGET: "not measured (budget)", INTERRUPTED: "not measured (interrupted)"}.get(
        status, "not measured")


def _record(run: TimingRun, name: str, kr: KernelResult, key: str, seen: set[str]) -> None:
    """Failures and missing figures per row; an unconverged kernel once (rows share it)."""
    first = key not in seen
    seen.add(key)
    if kr.status == FAILED:
        run.failures.append(f"{name}: {kr.error}")
    elif kr.status == BUDGET:
        run.over_budget.append(name)
    elif kr.status == INTERRUPTED:
        run.missing.append(name)
    elif first and kr.status == MEASURED and kr.measurement and not kr.measurement.converged:
        m = kr.measurement
        iqr = f"{m.rel_iqr:.1%}" if m.rel_iqr is not None else "n/a"
        run.unconverged.append(f"{name} (IQR/median {iqr} after {m.n} samples)")


# --------------------------------------------------------------------------- analyze


def time_analysis(report: AnalysisReport, model: nn.Module, input_shapes: list[tuple[int, ...]],
                  engine: TimingEngine) -> TimingRun:
    """Time the whole model forward and each conv/linear row's kernel in isolation."""
    modules = dict(model.named_modules())
    rows = [r for r in report.layers if r.op in ("conv", "linear") and r.in_shape and r.calls >= 1
            and r.name in modules]
    shapes = [tuple(s) for s in input_shapes]
    model_key = engine.add_group([Kernel(model, shapes, None, report.macs, f"model {report.name}",
                                         "model")], paired=False, label="whole model")[0]
    row_keys = []
    for r in rows:
        k = Kernel(modules[r.name], [tuple(r.in_shape)], tuple(r.out_shape) if r.out_shape else None,
                   r.macs // max(1, r.calls))
        row_keys.append(engine.add_group([k], paired=False, label=r.name)[0])
    engine.run()
    run = _new_run(engine, shapes[0][0] if shapes and shapes[0] else None)
    mk = engine.kernel(model_key)
    seen: set[str] = set()
    _record(run, "(model)", mk, model_key, seen)
    report.latency_ms = mk.median_ms
    report.timing = {"model": _timing_dict(mk)["measurement"], "model_source": mk.status}
    layer_ms: dict[str, float] = {}
    dtype = engine.cfg.numerics.dtype
    for r, key in zip(rows, row_keys, strict=True):
        kr = engine.kernel(key)
        _record(run, r.name, kr, key, seen)
        r.timing = _timing_dict(kr)
        if kr.median_ms is not None:
            r.latency_ms = kr.median_ms
            layer_ms[r.name] = kr.median_ms * r.calls
            rl = roofline(r.flops // max(1, r.calls), compulsory_bytes(
                modules[r.name], r.in_shape, r.out_shape or [], dtype), kr.median_ms, run.peaks,
                dtype)
            if rl:
                r.timing["roofline"] = rl
    _finish_run(run, engine)
    report.device = run.device
    t = report.timing
    t.update(run.summary())
    t["layers_sum_ms"] = sum(layer_ms.values()) if layer_ms else None
    t["layers_timed"] = len(layer_ms)
    return run


# --------------------------------------------------------------------------- compare


def _fill_row(row: CompareRow, kr: KernelResult, pr: PairResult | None, *, same: bool,
              roof: dict[str, Any] | None = None) -> None:
    row.timing = _timing_dict(kr)
    row.latency_ms = kr.median_ms
    row.latency_source = SAME if same else kr.status
    row.cached_at = kr.cached_at
    if same:
        row.timing["source"] = SAME
        row.ratio_latency, row.latency_ci = 1.0, (1.0, 1.0)
    elif pr is not None and pr.ratio is not None:
        row.ratio_latency, row.latency_ci = pr.ratio.ratio, (pr.ratio.lo, pr.ratio.hi)
        row.latency_rounds = pr.ratio.rounds
        row.timing["pair"] = {**pr.ratio.to_dict(), "source": pr.status}
        if pr.cached_at:
            row.timing["pair"]["cached_at"] = pr.cached_at
    if roof:
        row.timing["roofline"] = roof


def time_compare(report: CompareReport, engine: TimingEngine, model: nn.Module | None = None,
                 input_shapes: list[tuple[int, ...]] | None = None) -> TimingRun:
    """Time every layer's original and variants (paired, one group per unique layer), then the
    whole model, original vs each substituted model (paired)."""
    modules = dict(model.named_modules()) if model is not None else {}
    dtype = engine.cfg.numerics.dtype
    plans: list[tuple[list[CompareRow], list[str], list[nn.Module], Any]] = []
    for lc in report.layers:
        rows = [lc.baseline, *[r for r in lc.rows if not r.skipped]]
        L = lc.layer
        orig = modules.get(lc.name) or conv_module(L)
        mods = [orig] + [build(L, Variant(r.variant, r.groups)) for r in rows[1:]]
        kernels = [Kernel(m, [L.input_shape], L.output_shape, r.macs) for m, r in
                   zip(mods, rows, strict=True)]
        keys = engine.add_group(kernels, paired=True, label=lc.name)
        plans.append((rows, keys, mods, L))
    if report.is_model and model is not None and input_shapes is not None:
        rows = [report.model_baseline, *[r for r in report.model_rows if not r.skipped]]
        shapes = [tuple(s) for s in input_shapes]
        mods = [model] + [substitute(model, report.layers, Variant(r.variant, r.groups))[0]
                          for r in rows[1:]]
        kernels = [Kernel(m, shapes, None, r.macs, f"model {report.name} {r.label}", "model")
                   for m, r in zip(mods, rows, strict=True)]
        plans.append((rows, engine.add_group(kernels, paired=True, label="model"), mods, None))
    engine.run()
    run = _new_run(engine, report.layers[0].layer.batch if report.layers else None)
    seen: set[str] = set()
    for rows, keys, mods, L in plans:
        base_key = keys[0]
        label = rows[0].layer
        for i, (r, key, m) in enumerate(zip(rows, keys, mods, strict=True)):
            kr = engine.kernel(key)
            same = i > 0 and key == base_key
            if not same:
                _record(run, f"{label} {r.label}" if i else f"{label} {ORIGINAL}", kr, key, seen)
            roof = None
            if L is not None and kr.median_ms is not None and r.flops is not None:
                roof = roofline(r.flops, compulsory_bytes(m, L.input_shape, L.output_shape, dtype),
                                kr.median_ms, run.peaks, dtype)
            _fill_row(r, kr, engine.pair(base_key, key) if i else None, same=same, roof=roof)
        rows[0].ratio_latency = 1.0 if rows[0].latency_ms is not None else None
    _dedupe(run)
    _finish_run(run, engine)
    report.device = run.device
    report.timing = run.summary()
    if report.is_model:
        report.timing["layers_sum_ms"] = _layer_sums(report)
    return run


def _dedupe(run: TimingRun) -> None:
    """A shared kernel that failed is listed once per row; keep the order, drop repeats."""
    for name in ("failures", "unconverged", "missing", "over_budget"):
        seen: set[str] = set()
        out = []
        for x in getattr(run, name):
            if x not in seen:
                seen.add(x)
                out.append(x)
        setattr(run, name, out)


def _layer_sums(report: CompareReport) -> dict[str, float | None]:
    """Sum of per-layer latencies of the selected convs, per variant (original included)."""
    sums: dict[str, float | None] = {ORIGINAL: None}
    vals = [lc.baseline.latency_ms for lc in report.layers]
    sums[ORIGINAL] = sum(vals) if vals and all(v is not None for v in vals) else None
    for v in report.variants:
        total: float | None = 0.0
        for lc in report.layers:
            row = next((r for r in lc.rows if r.variant == v.name and r.groups == v.groups), None)
            ms = (row.latency_ms if row is not None and not row.skipped else lc.baseline.latency_ms)
            if ms is None or total is None:
                total = None
                break
            total += ms
        sums[v.label] = total
    return sums
