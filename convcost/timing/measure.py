"""What is timed: each conv (and linear) in isolation with its real input shape, each variant of
it, and the whole model forward (original vs substituted). Fills latency fields of the reports.

Ctrl-C stops the run and keeps every finished measurement (``interrupted`` is set); a callable
that fails (unsupported by the backend, out of memory, bad output) is marked in its row and the
run goes on (``failures``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from convcost.counting.analysis import AnalysisReport
from convcost.timing.device import fingerprint, numerics
from convcost.timing.harness import Bench, Measurement, TimingConfig, measure_interleaved
from convcost.timing.roofline import Peaks, compulsory_bytes, lookup, roofline
from convcost.variants.catalogue import Variant, build
from convcost.variants.compare import ORIGINAL, CompareReport, CompareRow, substitute


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, label: str) -> None: ...


class _NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, label: str) -> None:
        pass


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

    @property
    def incomplete(self) -> bool:
        return self.interrupted or bool(self.failures)

    def summary(self) -> dict[str, Any]:
        c = self.config
        return {
            "protocol": ("cuda events back-to-back, one sync per batch; cudnn.benchmark autotune "
                         "and warm-up outside timing; CUDA-graph figure under 20 us"
                         if c.numerics.is_cuda else
                         "blocked perf_counter timing, explicit thread count, warm-up outside "
                         "timing") + "; adaptive stop on IQR/median; interleaved",
            "cold_l2": c.cold, "max_time_s": c.max_time_s, "min_samples": c.min_samples,
            "rel_iqr_target": c.rel_iqr, "interrupted": self.interrupted,
            "failures": self.failures, "unconverged": self.unconverged, "missing": self.missing,
            "roofline_peaks": self.peaks.to_dict() if self.peaks else None,
        }


def prepare_module(module: nn.Module, cfg: TimingConfig) -> nn.Module:
    """A copy of ``module`` on the timing device, dtype and memory format, in eval mode."""
    n = cfg.numerics
    m = copy.deepcopy(module).to(device=n.device, dtype=n.torch_dtype).eval()
    if n.channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


def make_input(shape: tuple[int, ...] | list[int], cfg: TimingConfig) -> torch.Tensor:
    n = cfg.numerics
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(shape), generator=g).to(device=n.device, dtype=n.torch_dtype)
    if n.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def bench_module(module: nn.Module, shapes: list[tuple[int, ...]], cfg: TimingConfig,
                 expected: tuple[int, ...] | None = None) -> Bench:
    """A :class:`Bench` calling a device copy of ``module`` on fresh inputs of ``shapes``."""
    m = prepare_module(module, cfg)
    xs = [make_input(s, cfg) for s in shapes]
    return Bench(lambda: m(*xs), cfg, expected)


def _new_run(cfg: TimingConfig, batch: int | None) -> TimingRun:
    return TimingRun(config=cfg, device=fingerprint(cfg.numerics, batch), peaks=lookup(cfg.numerics))


def _record(run: TimingRun, name: str, m: Measurement) -> None:
    if m.error:
        run.failures.append(f"{name}: {m.error}")
    elif not m.converged:
        run.unconverged.append(f"{name} (IQR/median {m.rel_iqr:.1%} after {m.n} samples)")


def _safe_bench(name: str, make: Any, run: TimingRun) -> Bench | None:
    """Build a bench; a module that cannot even be moved to the device is a failure row."""
    try:
        return make()
    except KeyboardInterrupt:
        raise
    except Exception as e:
        run.failures.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None


# --------------------------------------------------------------------------- analyze


def time_analysis(report: AnalysisReport, model: nn.Module, inputs: tuple[torch.Tensor, ...],
                  cfg: TimingConfig, progress: Progress | None = None) -> TimingRun:
    """Time each conv/linear row in isolation, and the whole model forward."""
    progress = progress or _NoProgress()
    modules = dict(model.named_modules())
    rows = [r for r in report.layers if r.op in ("conv", "linear") and r.in_shape and r.calls >= 1
            and r.name in modules]
    batch = report.input_shapes[0][0] if report.input_shapes else None
    run = _new_run(cfg, batch)
    progress.start(len(rows) + 1)
    layer_ms: dict[str, float] = {}
    try:
        with numerics(cfg.numerics), torch.inference_mode():
            # whole model first: it is what the user ships
            shapes = [tuple(x.shape) for x in inputs]
            mb = _safe_bench("(model)", lambda: bench_module(model, shapes, cfg), run)
            if mb is not None:
                (m,) = measure_interleaved([mb])
                _record(run, "(model)", m)
                report.latency_ms = m.median_ms
                report.timing = {"model": m.to_dict()}
            progress.advance("whole model")
            for r in rows:
                out = tuple(r.out_shape) if r.out_shape else None
                b = _safe_bench(r.name, lambda r=r, out=out: bench_module(
                    modules[r.name], [tuple(r.in_shape)], cfg, out), run)
                if b is None:
                    progress.advance(r.name)
                    continue
                (m,) = measure_interleaved([b])
                _record(run, r.name, m)
                if m.median_ms is not None:
                    r.latency_ms = m.median_ms
                    layer_ms[r.name] = m.median_ms * r.calls
                r_d = {"measurement": m.to_dict()}
                rl = roofline(r.flops, compulsory_bytes(modules[r.name], r.in_shape, r.out_shape or [],
                                                        cfg.numerics.dtype), m.median_ms, run.peaks,
                              cfg.numerics.dtype)
                if rl:
                    r_d["roofline"] = rl
                r.timing = r_d
                progress.advance(r.name)
    except KeyboardInterrupt:
        run.interrupted = True
    run.missing = [r.name for r in rows if r.latency_ms is None and not any(
        f.startswith(r.name + ":") for f in run.failures)]
    report.device = run.device
    t = report.timing or {}
    t.update(run.summary())
    t["layers_sum_ms"] = sum(layer_ms.values()) if layer_ms else None
    t["layers_timed"] = len(layer_ms)
    report.timing = t
    return run


# --------------------------------------------------------------------------- compare


def _set_ratio(row: CompareRow, base_ms: float | None) -> None:
    if row.latency_ms is not None and base_ms:
        row.ratio_latency = row.latency_ms / base_ms


def time_compare(report: CompareReport, cfg: TimingConfig, model: nn.Module | None = None,
                 inputs: tuple[torch.Tensor, ...] | None = None,
                 progress: Progress | None = None) -> TimingRun:
    """Time every layer's original and variants (interleaved per layer), then the whole model,
    original vs substituted (interleaved)."""
    progress = progress or _NoProgress()
    modules = dict(model.named_modules()) if model is not None else {}
    batch = report.layers[0].layer.batch if report.layers else None
    run = _new_run(cfg, batch)
    n_layer = sum(1 + sum(1 for r in lc.rows if not r.skipped) for lc in report.layers)
    n_model = (1 + sum(1 for r in report.model_rows if not r.skipped)) if report.is_model else 0
    progress.start(n_layer + n_model)
    pending: list[CompareRow] = []
    try:
        with numerics(cfg.numerics), torch.inference_mode():
            for lc in report.layers:
                rows = [lc.baseline, *[r for r in lc.rows if not r.skipped]]
                pending += rows
                L = lc.layer
                orig = modules.get(lc.name) or nn.Conv2d(L.cin, L.cout, L.kernel, L.stride,
                                                         L.padding, L.dilation, L.groups, L.bias)
                mods = [orig] + [build(L, Variant(r.variant, r.groups)) for r in rows[1:]]
                _time_rows(run, rows, mods, [L.input_shape], L.output_shape, cfg, progress,
                           label=lc.name)
                for r in rows:
                    pending.remove(r)
                for r in lc.rows:
                    _set_ratio(r, lc.baseline.latency_ms)
            if report.is_model and model is not None and inputs is not None:
                rows = [report.model_baseline, *[r for r in report.model_rows if not r.skipped]]
                pending += rows
                mods = [model] + [substitute(model, report.layers, Variant(r.variant, r.groups))[0]
                                  for r in rows[1:]]
                _time_rows(run, rows, mods, [tuple(x.shape) for x in inputs], None, cfg, progress,
                           label="model")
                for r in report.model_rows:
                    _set_ratio(r, report.model_baseline.latency_ms)
                pending.clear()
    except KeyboardInterrupt:
        run.interrupted = True
    run.missing = [f"{r.layer} {r.label}" for r in pending if r.latency_ms is None
                   and not (r.timing or {}).get("error")]
    report.device = run.device
    report.timing = run.summary()
    if report.is_model:
        layer_sum = _layer_sums(report)
        report.timing["layers_sum_ms"] = layer_sum
    return run


def _layer_sums(report: CompareReport) -> dict[str, float | None]:
    """Sum of per-layer latencies of the selected convs, per variant (original included)."""
    sums: dict[str, float | None] = {ORIGINAL: None}
    vals = [lc.baseline.latency_ms for lc in report.layers]
    sums[ORIGINAL] = sum(vals) if vals and all(v is not None for v in vals) else None
    for v in report.variants:
        total = 0.0
        for lc in report.layers:
            row = next((r for r in lc.rows if r.variant == v.name and r.groups == v.groups), None)
            ms = (row.latency_ms if row is not None and not row.skipped else lc.baseline.latency_ms)
            if ms is None:
                total = None
                break
            total += ms
        sums[v.label] = total
    return sums


def _time_rows(run: TimingRun, rows: list[CompareRow], mods: list[nn.Module],
               in_shapes: list[tuple[int, ...]], expected: tuple[int, ...] | None,
               cfg: TimingConfig, progress: Progress, label: str) -> None:
    benches: list[Bench | None] = []
    for r, m in zip(rows, mods, strict=True):
        benches.append(_safe_bench(f"{label} {r.label}",
                                   lambda m=m: bench_module(m, in_shapes, cfg, expected), run))
    live = [(r, m, b) for r, m, b in zip(rows, mods, benches, strict=True) if b is not None]
    for r, b in zip(rows, benches, strict=True):
        if b is None:
            r.timing = {"error": run.failures[-1].split(": ", 1)[-1]}
            progress.advance(f"{label} {r.label}")

    def done(i: int, meas: Measurement) -> None:
        r, m, _ = live[i]
        _record(run, f"{label} {r.label}", meas)
        r.latency_ms = meas.median_ms
        r.timing = {"measurement": meas.to_dict()}
        if meas.error:
            r.timing["error"] = meas.error
        out_shape = expected
        if out_shape is not None and r.flops is not None:
            rl = roofline(r.flops, compulsory_bytes(m, in_shapes[0], out_shape, cfg.numerics.dtype),
                          meas.median_ms, run.peaks, cfg.numerics.dtype)
            if rl:
                r.timing["roofline"] = rl
        progress.advance(f"{label} {r.label}")

    measure_interleaved([b for _, _, b in live], on_done=done)
