"""What is timed in a report: each conv (and linear) kernel with its real input shape, each
variant of it paired with the original, and the whole model (original vs substituted, paired).
Fills the latency fields of the reports from a :class:`~convcost.timing.engine.TimingEngine`.

Identical kernels are measured once and share their figure; a variant identical to its original
is the original's measurement (``same``). Ctrl-C and an exhausted time budget keep what
finished; a callable that fails is marked in its row and the run goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from convcost.timing.status import Status
from convcost.variants.catalogue import Variant, build, conv_module
from convcost.variants.compare import ORIGINAL, CompareReport, CompareRow, LatencyFigure, substitute


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
    # measured with fewer than min_samples samples and not converged (the budget ran out
    # mid-measurement): quoted with a mark, never stored, and the run is incomplete (exit 4)
    undersampled: list[str] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    backends: dict[str, Any] = field(default_factory=dict)  # name: fingerprint, setup, counts

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
            "not_measured_budget": self.over_budget, "undersampled": self.undersampled,
            "engine": self.engine,
            "notices": self.notices, "backends": self.backends,
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
        "backend": engine.backend, "setup_s": round(engine.setup_s, 3),
    }
    run.notices = list(engine.table.notices)


def _timing_dict(kr: KernelResult) -> dict[str, Any]:
    """The row's ``timing`` object: measurement (or error), where the figure came from."""
    m = kr.measurement or Measurement(error=kr.error or _status_text(kr.status))
    d: dict[str, Any] = {"measurement": m.to_dict(), "source": kr.status}
    if kr.setup_s is not None:
        d["setup_s"] = kr.setup_s  # compile / export / session: outside the measurement
    if kr.check is not None:
        d["output_check"] = kr.check
    if kr.cached_at:
        d["cached_at"] = kr.cached_at
    if kr.status == FAILED:
        d["error"] = kr.error
    return d


def _status_text(status: str) -> str:
    return Status(status).missing_text


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
        if m.n < run.config.min_samples:
            run.undersampled.append(f"{name} ({m.n} of {run.config.min_samples} samples)")


# --------------------------------------------------------------------------- several backends


def _engines(engines: TimingEngine | Sequence[TimingEngine]) -> list[TimingEngine]:
    return [engines] if isinstance(engines, TimingEngine) else list(engines)


def _run_all(engines: list[TimingEngine]) -> None:
    """Run the engines one after the other (one per backend), sharing the whole-run budget:
    each gets what is left divided by the backends still to run. After Ctrl-C the rest are
    marked interrupted."""
    total = engines[0].budget_s
    spent = 0.0
    for i, e in enumerate(engines):
        if i and engines[i - 1].interrupted:
            e.abandon(INTERRUPTED)
            e.interrupted = True
            continue
        if total is not None:
            e.budget_s = e.budget_slice_s = max(0.0, total - spent) / (len(engines) - i)
        e.run()
        spent += e.elapsed_s
    if total is not None:
        for e in engines:
            e.budget_s = total


def _tag(name: str, engine: TimingEngine, several: bool) -> str:
    return f"{name} [{engine.backend}]" if several else name


def _merge_runs(engines: list[TimingEngine], batch: int | None) -> TimingRun:
    run = _new_run(engines[0], batch)
    _finish_run(run, engines[0])
    run.interrupted = any(e.interrupted for e in engines)
    run.backends = {e.backend: _backend_summary(e) for e in engines}
    for e in engines[1:]:
        run.notices += [n for n in e.table.notices if n not in run.notices]
    return run


def _backend_summary(e: TimingEngine) -> dict[str, Any]:
    c = e.counts()
    return {"fingerprint": e.backend_info, "setup_s": round(e.setup_s, 3),
            "timing_s": round(e.elapsed_s, 3), "measured": c.get(MEASURED, 0),
            "cached": c.get(CACHED, 0), "failed": c.get(FAILED, 0),
            "not_measured_budget": c.get(BUDGET, 0), "interrupted": c.get(INTERRUPTED, 0),
            "time_budget_s": e.budget_slice_s}


# --------------------------------------------------------------------------- analyze


def time_analysis(report: AnalysisReport, model: nn.Module, input_shapes: list[tuple[int, ...]],
                  engines: TimingEngine | Sequence[TimingEngine]) -> TimingRun:
    """Time the whole model forward and each conv/linear row's kernel in isolation, on each
    engine's backend; the first backend's figures are the report's own latency fields."""
    engines = _engines(engines)
    several = len(engines) > 1
    modules = dict(model.named_modules())
    rows = [r for r in report.layers if r.op in ("conv", "linear") and r.in_shape and r.calls >= 1
            and r.name in modules]
    shapes = [tuple(s) for s in input_shapes]
    model_kernel = Kernel(model, shapes, None, report.macs, f"model {report.name}", "model")
    row_kernels = [Kernel(modules[r.name], [tuple(r.in_shape)],
                          tuple(r.out_shape) if r.out_shape else None, r.macs // max(1, r.calls))
                   for r in rows]
    keys = []
    for e in engines:
        mk = e.add_group([model_kernel], paired=False, label="whole model")[0]
        keys.append((mk, [e.add_group([k], paired=False, label=r.name)[0]
                          for r, k in zip(rows, row_kernels, strict=True)]))
    _run_all(engines)
    run = _merge_runs(engines, shapes[0][0] if shapes and shapes[0] else None)
    dtype = engines[0].cfg.numerics.dtype
    first_sums: dict[str, float] = {}
    for n, (e, (model_key, row_keys)) in enumerate(zip(engines, keys, strict=True)):
        mk = e.kernel(model_key)
        seen: set[str] = set()
        _record(run, _tag("(model)", e, several), mk, model_key, seen)
        mtiming = _timing_dict(mk)
        report.backends[e.backend] = {"latency_ms": mk.median_ms, "timing": mtiming}
        layer_ms: dict[str, float] = {}
        for r, key in zip(rows, row_keys, strict=True):
            kr = e.kernel(key)
            _record(run, _tag(r.name, e, several), kr, key, seen)
            t = _timing_dict(kr)
            if kr.median_ms is not None:
                layer_ms[r.name] = kr.median_ms * r.calls
                rl = roofline(r.flops // max(1, r.calls), compulsory_bytes(
                    modules[r.name], r.in_shape, r.out_shape or [], dtype), kr.median_ms,
                    run.peaks, dtype)
                if rl:
                    t["roofline"] = rl
            r.backends[e.backend] = {"latency_ms": kr.median_ms, "timing": t}
            if n == 0:
                r.timing, r.latency_ms = t, kr.median_ms
        report.backends[e.backend]["layers_sum_ms"] = sum(layer_ms.values()) if layer_ms else None
        report.backends[e.backend]["layers_timed"] = len(layer_ms)
        if n == 0:
            report.latency_ms = mk.median_ms
            report.timing = {"model": mtiming["measurement"], "model_source": mk.status}
            first_sums = layer_ms
    _dedupe(run)
    report.device = run.device
    t = report.timing
    t.update(run.summary())
    t["layers_sum_ms"] = sum(first_sums.values()) if first_sums else None
    t["layers_timed"] = len(first_sums)
    return run


# --------------------------------------------------------------------------- compare


def _fill_row(row: CompareRow, kr: KernelResult, pr: PairResult | None, *, same: bool,
              roof: dict[str, Any] | None = None, backend: str = "eager",
              primary: bool = True) -> None:
    """Write one backend's figure of ``row`` (and, for the first backend, the row's own latency
    fields)."""
    fig = LatencyFigure(timing=_timing_dict(kr), latency_ms=kr.median_ms,
                        latency_source=SAME if same else kr.status, cached_at=kr.cached_at)
    if same:
        fig.timing["source"] = SAME
        fig.ratio_latency, fig.latency_ci = 1.0, (1.0, 1.0)
    elif pr is not None and pr.ratio is not None:
        fig.ratio_latency, fig.latency_ci = pr.ratio.ratio, (pr.ratio.lo, pr.ratio.hi)
        fig.latency_rounds = pr.ratio.rounds
        fig.timing["pair"] = {**pr.ratio.to_dict(), "source": pr.status}
        if pr.cached_at:
            fig.timing["pair"]["cached_at"] = pr.cached_at
    if roof:
        fig.timing["roofline"] = roof
    row.backends[backend] = fig
    if primary:
        row.show(fig)


def time_compare(report: CompareReport, engines: TimingEngine | Sequence[TimingEngine],
                 model: nn.Module | None = None,
                 input_shapes: list[tuple[int, ...]] | None = None) -> TimingRun:
    """Time every layer's original and variants (paired, one group per unique layer), then the
    whole model, original vs each substituted model (paired), on each engine's backend."""
    engines = _engines(engines)
    several = len(engines) > 1
    modules = dict(model.named_modules()) if model is not None else {}
    dtype = engines[0].cfg.numerics.dtype
    plans: list[tuple[list[CompareRow], list[Kernel], list[nn.Module], Any, str]] = []
    for lc in report.layers:
        rows = [lc.baseline, *[r for r in lc.rows if not r.skipped]]
        L = lc.layer
        orig = modules.get(lc.name) or conv_module(L)
        mods = [orig] + [build(L, Variant(r.variant, r.groups)) for r in rows[1:]]
        kernels = [Kernel(m, [L.input_shape], L.output_shape, r.macs) for m, r in
                   zip(mods, rows, strict=True)]
        plans.append((rows, kernels, mods, L, lc.name))
    if report.is_model and model is not None and input_shapes is not None:
        rows = [report.model_baseline, *[r for r in report.model_rows if not r.skipped]]
        shapes = [tuple(s) for s in input_shapes]
        mods = [model] + [substitute(model, report.layers, Variant(r.variant, r.groups))[0]
                          for r in rows[1:]]
        kernels = [Kernel(m, shapes, None, r.macs, f"model {report.name} {r.label}", "model")
                   for m, r in zip(mods, rows, strict=True)]
        plans.append((rows, kernels, mods, None, "model"))
    keys = [[e.add_group(kernels, paired=True, label=label) for _, kernels, _, _, label in plans]
            for e in engines]
    _run_all(engines)
    run = _merge_runs(engines, report.layers[0].layer.batch if report.layers else None)
    for n, e in enumerate(engines):
        seen: set[str] = set()
        for (rows, _, mods, L, _), gkeys in zip(plans, keys[n], strict=True):
            base_key = gkeys[0]
            label = rows[0].layer
            for i, (r, key, m) in enumerate(zip(rows, gkeys, mods, strict=True)):
                kr = e.kernel(key)
                same = i > 0 and key == base_key
                if not same:
                    _record(run, _tag(f"{label} {r.label}" if i else f"{label} {ORIGINAL}", e,
                                      several), kr, key, seen)
                roof = None
                if L is not None and kr.median_ms is not None and r.flops is not None:
                    roof = roofline(r.flops, compulsory_bytes(m, L.input_shape, L.output_shape,
                                                              dtype), kr.median_ms, run.peaks, dtype)
                _fill_row(r, kr, e.pair(base_key, key) if i else None, same=same, roof=roof,
                          backend=e.backend, primary=n == 0)
            base = rows[0].backends[e.backend]
            base.ratio_latency = 1.0 if base.latency_ms is not None else None
            if n == 0:
                rows[0].ratio_latency = base.ratio_latency
    _dedupe(run)
    report.device = run.device
    report.timing = run.summary()
    if report.is_model:
        report.timing["layers_sum_ms"] = _layer_sums(report)
        if several:
            for e in engines:
                report.timing["backends"][e.backend]["layers_sum_ms"] = _layer_sums(report,
                                                                                    e.backend)
    return run


def _dedupe(run: TimingRun) -> None:
    """A shared kernel that failed is listed once per row; keep the order, drop repeats."""
    for name in ("failures", "unconverged", "missing", "over_budget", "undersampled"):
        seen: set[str] = set()
        out = []
        for x in getattr(run, name):
            if x not in seen:
                seen.add(x)
                out.append(x)
        setattr(run, name, out)


def _layer_sums(report: CompareReport, backend: str | None = None) -> dict[str, float | None]:
    """Sum of per-layer latencies of the selected convs, per variant (original included), on
    ``backend`` (None: the first)."""
    sums: dict[str, float | None] = {ORIGINAL: None}
    vals = [lc.baseline.on(backend).latency_ms for lc in report.layers]
    sums[ORIGINAL] = sum(vals) if vals and all(v is not None for v in vals) else None
    for v in report.variants:
        total: float | None = 0.0
        for lc in report.layers:
            row = next((r for r in lc.rows if r.variant == v.name and r.groups == v.groups), None)
            ms = (row.on(backend).latency_ms if row is not None and not row.skipped
                  else lc.baseline.on(backend).latency_ms)
            if ms is None or total is None:
                total = None
                break
            total += ms
        sums[v.label] = total
    return sums
