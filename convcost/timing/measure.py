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
from convcost.figures import (
    KernelTiming,
    LatencyFigure,
    Lowering,
    MachineState,
    Measurement,
    ModelLatency,
)
from convcost.inputs import as_example
from convcost.timing.canary import Canaries
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
from convcost.timing.harness import TimingConfig
from convcost.timing.kernel import Kernel
from convcost.timing.roofline import Peaks, compulsory_bytes, lookup, roofline
from convcost.timing.status import Status
from convcost.variants.catalogue import ConvLayer, Variant
from convcost.variants.compare import (
    MODEL_ROWS,
    ORIGINAL,
    CompareReport,
    CompareRow,
    RowKey,
    VariantCounter,
    substitute,
)


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
    # measured while the machine was busy (other tasks, steal, a canary moved): shown and
    # marked, never quoted in a headline, never stored
    busy: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)  # what competed, over the run
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
            "pass": c.pass_name, "cold_l2": c.cold, "max_time_s": c.max_time_s, "min_samples": c.min_samples,
            "rel_iqr_target": c.rel_iqr, "interrupted": self.interrupted,
            "failures": self.failures, "unconverged": self.unconverged, "missing": self.missing,
            "not_measured_budget": self.over_budget, "undersampled": self.undersampled,
            "busy": self.busy, "machine": {**self.machine, "threads_auto": c.threads_note or None},
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


def machine_summary(windows: Sequence[MachineState], canaries: Canaries | None) -> dict[str, Any]:
    """What competed with the run's measurements: how many windows were busy and why, the
    other tasks' mean load over them, the canaries' reference."""
    busy = [w for w in windows if w.busy]
    others = [w.others_cores for w in windows if w.others_cores is not None]
    steal = [w.steal_cores for w in windows if w.steal_cores is not None]
    whys: dict[str, int] = {}
    for w in busy:
        for c in w.causes:
            whys[c] = whys.get(c, 0) + 1
    return {"windows": len(windows), "busy_windows": len(busy),
            "busy_by": whys, "cpus": windows[0].cpus if windows else None,
            "threads": windows[0].threads if windows else None,
            "others_cores_mean": round(sum(others) / len(others), 3) if others else None,
            "others_cores_busy_mean": round(sum(w.others_cores or 0.0 for w in busy)
                                            / len(busy), 3) if busy else None,
            "steal_cores_mean": round(sum(steal) / len(steal), 3) if steal else None,
            "canaries": canaries.to_dict() if canaries is not None else None}


def kernel_timing(kr: KernelResult, *, source: str | None = None,
                  pair: dict[str, Any] | None = None,
                  roofline: dict[str, Any] | None = None) -> KernelTiming:
    """A kernel's timing record: its measurement (or the error standing in for one), where the
    figure came from (``source`` overrides the kernel's status: ``same``), setup and checks."""
    m = kr.measurement or Measurement(error=kr.error or _status_text(kr.status))
    return KernelTiming(measurement=m, source=source or kr.status, setup_s=kr.setup_s,
                        output_check=kr.check, cached_at=kr.cached_at or None,
                        error=kr.error if kr.status == FAILED else None, pair=pair,
                        roofline=roofline or None, machine=kr.machine, lowering=kr.lowering)


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
    if first and kr.status == MEASURED and kr.machine is not None and kr.machine.busy:
        run.busy.append(name)
    if kr.status != MEASURED:
        return
    if first and kr.measurement and not kr.measurement.converged:
        m = kr.measurement
        iqr = f"{m.rel_iqr:.1%}" if m.rel_iqr is not None else "n/a"
        run.unconverged.append(f"{name} (IQR/median {iqr} after {m.n} samples)")
        if m.n < run.config.min_samples:
            run.undersampled.append(f"{name} ({m.n} of {run.config.min_samples} samples)")


# --------------------------------------------------------------------------- several backends


def _engines(engines: TimingEngine | Sequence[TimingEngine]) -> list[TimingEngine]:
    return [engines] if isinstance(engines, TimingEngine) else list(engines)


def run_all(engines: list[TimingEngine]) -> None:
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


def merge_runs(engines: list[TimingEngine], batch: int | None) -> TimingRun:
    run = _new_run(engines[0], batch)
    _finish_run(run, engines[0])
    run.interrupted = any(e.interrupted for e in engines)
    run.backends = {e.backend: _backend_summary(e) for e in engines}
    run.machine = {**machine_summary([w for e in engines for w in e.windows], engines[0].canaries),
                   "on_busy": "accept" if engines[0].store_busy else "withhold"}
    for e in engines[1:]:
        run.notices += [n for n in e.table.notices if n not in run.notices]
    for e in engines:
        if e.cfg.training and not e.runtime.trains:
            run.notices.append(f"{e.backend} runs no backward: no training figures on it (the "
                               "training pass runs on eager and inductor)")
    return run


def _backend_summary(e: TimingEngine) -> dict[str, Any]:
    c = e.counts()
    lowered = lowering_summary([r.lowering for r in e.results.values()])
    return {"fingerprint": {**e.backend_info, **({"lowering": lowered} if lowered else {})},
            "setup_s": round(e.setup_s, 3),
            "timing_s": round(e.elapsed_s, 3), "measured": c.get(MEASURED, 0),
            "cached": c.get(CACHED, 0), "failed": c.get(FAILED, 0),
            "not_measured_budget": c.get(BUDGET, 0), "interrupted": c.get(INTERRUPTED, 0),
            "time_budget_s": e.budget_slice_s}


def lowering_summary(lowerings: Sequence[Lowering | None]) -> dict[str, Any] | None:
    """What a delegate took over a run's kernels: kernels lowered and fully delegated, nodes
    inside the delegate and left on the portable kernels, the operators left (None: no kernel
    was lowered to a delegate)."""
    known = [lo for lo in lowerings if lo is not None]
    if not known:
        return None
    delegated = sum(lo.delegated_nodes for lo in known)
    portable = sum(lo.portable_nodes for lo in known)
    return {"delegate": known[0].delegate, "kernels": len(known),
            "fully_delegated": sum(lo.complete for lo in known),
            "delegated_nodes": delegated, "portable_nodes": portable,
            "portable_ops": sorted({op for lo in known for op in lo.portable_ops}),
            "delegated_share": round(delegated / (delegated + portable), 4)
            if delegated + portable else None}


# --------------------------------------------------------------------------- analyze


@dataclass
class AnalysisTiming:
    """What timing an analysis returns: per timed layer row (by its index in the report's
    layers) one figure per backend, the whole model's per backend, the run's summary (the
    report's ``timing`` object) and device; :meth:`AnalysisReport.with_figures` attaches them."""

    run: TimingRun
    layers: dict[int, dict[str, LatencyFigure]]
    model: dict[str, ModelLatency]
    summary: dict[str, Any]
    device: dict[str, Any]

    def attach(self, report: AnalysisReport) -> AnalysisReport:
        return report.with_figures(self.layers, self.model, device=self.device,
                                   timing=self.summary)


def time_analysis(report: AnalysisReport, model: nn.Module, inputs: Any,
                  engines: TimingEngine | Sequence[TimingEngine]) -> AnalysisTiming:
    """Time the whole model forward (on ``inputs``: an :class:`~convcost.inputs.Example` or
    shapes) and each conv/linear row's kernel in isolation, on each engine's backend (the
    first backend's figures are the report's own latency fields)."""
    engines = _engines(engines)
    several = len(engines) > 1
    modules = dict(model.named_modules())
    rows = [(i, r) for i, r in enumerate(report.layers) if r.op in ("conv", "linear")
            and r.in_shape and r.calls >= 1 and r.name in modules]
    example = as_example(inputs)
    model_kernel = Kernel(model, example, None, report.macs, f"model {report.name}", "model")
    row_kernels = [Kernel(modules[r.name], [tuple(r.in_shape)],
                          tuple(r.out_shape) if r.out_shape else None, r.macs // max(1, r.calls))
                   for _, r in rows]
    keys = []
    for e in engines:
        mk = e.add_group([model_kernel], paired=False, label="whole model")[0]
        keys.append((mk, [e.add_group([k], paired=False, label=r.name)[0]
                          for (_, r), k in zip(rows, row_kernels, strict=True)]))
    run_all(engines)
    run = merge_runs(engines, example.batch)
    out = AnalysisTiming(run, {}, {}, {}, run.device)
    for e, (model_key, row_keys) in zip(engines, keys, strict=True):
        seen: set[str] = set()
        mk = e.kernel(model_key)
        _record(run, _tag("(model)", e, several), mk, model_key, seen)
        layer_ms: dict[str, float] = {}
        for (i, r), key in zip(rows, row_keys, strict=True):
            kr = e.kernel(key)
            _record(run, _tag(r.name, e, several), kr, key, seen)
            rl = None
            if kr.median_ms is not None:
                layer_ms[r.name] = kr.median_ms * r.calls
            if kr.median_ms is not None and not e.cfg.training:  # forward FLOPs and bytes
                rl = roofline(r.flops // max(1, r.calls), compulsory_bytes(
                    modules[r.name], r.in_shape, r.out_shape or [], e.cfg.numerics.dtype),
                    kr.median_ms, run.peaks, e.cfg.numerics.dtype)
            busy = is_busy(kr.machine)
            out.layers.setdefault(i, {})[e.backend] = LatencyFigure(
                latency_ms=kr.median_ms, timing=kernel_timing(kr, roofline=rl), busy=busy,
                withheld=_withheld(busy, e))
        out.model[e.backend] = ModelLatency(mk.median_ms, kernel_timing(mk),
                                            sum(layer_ms.values()) if layer_ms else None,
                                            len(layer_ms))
    _dedupe(run)
    first = next(iter(out.model.values()))
    out.summary = {"model": first.timing.measurement.to_dict() if first.timing else None,
                   "model_source": first.timing.source if first.timing else None,
                   "model_busy": bool(first.timing and first.timing.busy),
                   **run.summary(), "layers_sum_ms": first.layers_sum_ms,
                   "layers_timed": first.layers_timed}
    return out


# --------------------------------------------------------------------------- compare


def _figure(kr: KernelResult, pr: PairResult | None, e: TimingEngine, *, same: bool,
            base: bool, roof: dict[str, Any] | None) -> LatencyFigure:
    """One row's figure on engine ``e``: the kernel's median and, for a variant, its paired
    ratio to the original (``same``: the original's own kernel, ratio 1 by definition)."""
    if same:
        busy = is_busy(kr.machine)
        return LatencyFigure(kr.median_ms, 1.0, (1.0, 1.0), None, SAME, kr.cached_at,
                             kernel_timing(kr, source=SAME, roofline=roof), busy,
                             _withheld(busy, e))
    ratio = ci = rounds = pair = None
    busy = is_busy(kr.machine)
    if base:
        ratio = 1.0 if kr.median_ms is not None else None
    elif pr is not None and pr.ratio is not None:
        ratio, ci, rounds = pr.ratio.ratio, (pr.ratio.lo, pr.ratio.hi), pr.ratio.rounds
        pair = {**pr.ratio.to_dict(), "source": pr.status}
        if pr.cached_at:
            pair["cached_at"] = pr.cached_at
        if pr.machine is not None:
            pair["busy"] = pr.machine.busy
        busy = busy or is_busy(pr.machine)
    return LatencyFigure(kr.median_ms, ratio, ci, rounds, kr.status, kr.cached_at,
                         kernel_timing(kr, pair=pair, roofline=roof), busy, _withheld(busy, e))


def is_busy(m: MachineState | None) -> bool:
    """Measured while the machine was busy (None: a cached figure, never marked)."""
    return m is not None and m.busy


def _withheld(busy: bool, e: TimingEngine) -> bool:
    """A busy figure stays out of headlines unless the run accepts busy figures."""
    return busy and not e.store_busy


@dataclass
class CompareTiming:
    """What timing a comparison returns: one figure per backend for each row (keyed as
    :meth:`CompareReport.keyed_rows`), the run's summary and device;
    :meth:`CompareReport.with_figures` attaches them."""

    run: TimingRun
    figures: dict[RowKey, dict[str, LatencyFigure]]
    summary: dict[str, Any]
    device: dict[str, Any]
    dtype: str

    def attach(self, report: CompareReport) -> CompareReport:
        return report.with_figures(self.figures, device=self.device, timing=self.summary,
                                   dtype=self.dtype)


@dataclass
class _Plan:
    """One paired group: the rows (original first), their keys, kernels and modules."""

    rows: list[tuple[RowKey, CompareRow]]
    kernels: list[Kernel]
    modules: list[nn.Module]
    layer: ConvLayer | None  # None: the whole model
    label: str


def _plans(report: CompareReport, built: VariantCounter, model: nn.Module | None,
           inputs: Any) -> list[_Plan]:
    """A paired group per layer (its original and unskipped variants) and one for the whole
    model, measuring the modules counting built."""
    modules = dict(model.named_modules()) if model is not None else {}
    plans = []
    for i, lc in enumerate(report.layers):
        rows = [((i, j), r) for j, r in enumerate(lc.all_rows) if j == 0 or not r.skipped]
        L = lc.layer
        mods = [modules.get(lc.name) or built.module(L, None)]
        mods += [built.module(L, Variant(r.variant, r.groups)) for _, r in rows[1:]]
        kernels = [Kernel(m, [L.input_shape], L.output_shape, r.macs)
                   for m, (_, r) in zip(mods, rows, strict=True)]
        plans.append(_Plan(rows, kernels, mods, L, lc.name))
    if report.is_model and model is not None and inputs is not None:
        rows = [((MODEL_ROWS, j), r) for j, r in
                enumerate([report.model_baseline, *report.model_rows]) if j == 0 or not r.skipped]
        example = as_example(inputs)
        mods = [model] + [built.models.get(Variant(r.variant, r.groups))
                          or substitute(model, report.layers, Variant(r.variant, r.groups))[0]
                          for _, r in rows[1:]]
        kernels = [Kernel(m, example, None, r.macs, f"model {report.name} {r.label}", "model")
                   for m, (_, r) in zip(mods, rows, strict=True)]
        plans.append(_Plan(rows, kernels, mods, None, "model"))
    return plans


def time_compare(report: CompareReport, engines: TimingEngine | Sequence[TimingEngine],
                 model: nn.Module | None = None,
                 inputs: Any = None,
                 built: VariantCounter | None = None) -> CompareTiming:
    """Time every layer's original and variants (paired, one group per unique layer), then the
    whole model, original vs each substituted model (paired), on each engine's backend.
    ``built`` holds the modules counting built (they are measured; others are built here)."""
    engines = _engines(engines)
    several = len(engines) > 1
    plans = _plans(report, built or VariantCounter(), model, inputs)
    keys = [[e.add_group(p.kernels, paired=True, label=p.label) for p in plans] for e in engines]
    run_all(engines)
    run = merge_runs(engines, report.layers[0].layer.batch if report.layers else None)
    out = CompareTiming(run, {}, {}, run.device, engines[0].cfg.numerics.dtype)
    for e, gkeys_of in zip(engines, keys, strict=True):
        seen: set[str] = set()
        for p, gkeys in zip(plans, gkeys_of, strict=True):
            for i, ((rk, r), key, m) in enumerate(zip(p.rows, gkeys, p.modules, strict=True)):
                kr = e.kernel(key)
                same = i > 0 and key == gkeys[0]
                if not same:
                    name = f"{p.rows[0][1].layer} {r.label if i else ORIGINAL}"
                    _record(run, _tag(name, e, several), kr, key, seen)
                roof = None
                if p.layer is not None and kr.median_ms is not None and r.flops is not None \
                        and not e.cfg.training:  # the roofline is the forward's
                    dt = e.cfg.numerics.dtype
                    roof = roofline(r.flops, compulsory_bytes(m, p.layer.input_shape,
                                                              p.layer.output_shape, dt),
                                    kr.median_ms, run.peaks, dt)
                out.figures.setdefault(rk, {})[e.backend] = _figure(
                    kr, e.pair(gkeys[0], key) if i else None, e, same=same, base=i == 0,
                    roof=roof)
    _dedupe(run)
    out.summary = run.summary()
    if report.is_model:
        timed = report.with_figures(out.figures, device=None, timing=None)
        out.summary["layers_sum_ms"] = _layer_sums(timed)
        if several:
            for e in engines:
                out.summary["backends"][e.backend]["layers_sum_ms"] = _layer_sums(timed,
                                                                                  e.backend)
    return out


def _dedupe(run: TimingRun) -> None:
    """A shared kernel that failed is listed once per row; keep the order, drop repeats."""
    for name in ("failures", "unconverged", "missing", "over_budget", "undersampled", "busy"):
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
