"""The work behind each command, as plain functions of plain requests: load a source, count it,
time it. They return report dataclasses and never print (progress goes through the factory the
caller passes). :func:`convcost.isolation.call` runs them in a child process for sources that
execute user code; the CLI renders what they return."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcost.isolation import TIMING_MARGIN_S, phase

ProgressFactory = Callable[[str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class TimingRequest:
    """How to time (device already validated). ``dtype`` None: the spec's, else fp32."""

    device: str
    dtype: str | None
    channels_last: bool | None
    threads: int | str | None  # None: torch's default; "auto": less the cores in use (CPU)
    cold: bool
    max_time_s: float
    budget_s: float | None
    fresh: bool = False
    use_table: bool = True
    backends: tuple[str, ...] = ("eager",)
    on_busy: str = "withhold"  # figures of a busy machine: withhold (marked) or accept
    threads_note: str = ""  # how "auto" chose the thread count (see resolved())
    table_only: bool = False  # plan --from-table: read the latency table, measure nothing
    target: str | None = None  # with table_only: the device whose figures to read (a name)
    pass_name: str = "inference"  # inference | training (forward + backward)

    def config(self, default_dtype: str = "fp32") -> Any:
        from convcost.timing.device import Numerics
        from convcost.timing.harness import TimingConfig

        dt = self.dtype or default_dtype
        cl = self.channels_last if self.channels_last is not None else (
            self.device.startswith("cuda") and dt in ("fp16", "bf16"))
        threads, note = self._threads()
        return TimingConfig(numerics=Numerics(self.device, dt, cl, threads), cold=self.cold,
                            max_time_s=self.max_time_s, threads_note=note,
                            pass_name=self.pass_name)

    def resolved(self) -> TimingRequest:
        """This request with ``auto`` threads read now, once: every phase of a command (a
        plan's candidates and its verification) then times with the same count."""
        if self.threads != "auto":
            return self
        from dataclasses import replace

        threads, note = self._threads()
        return replace(self, threads=threads, threads_note=note)

    def _threads(self) -> tuple[int | None, str]:
        """The thread count, and how it was chosen (``auto`` on the CPU: torch's default less
        the cores other tasks are using now; on CUDA: torch's default)."""
        if self.threads != "auto":
            return self.threads if isinstance(self.threads, int) else None, self.threads_note
        if self.device.startswith("cuda"):
            return None, ""
        import torch

        from convcost.timing.machine import auto_threads

        return auto_threads(torch.get_num_threads())

    def engines(self, cfg: Any, progress: Any) -> list[Any]:
        """One timing engine per backend, in the order asked, sharing the latency table."""
        from convcost.timing.engine import TimingEngine
        from convcost.timing.table import LatencyTable

        table = LatencyTable.open() if self.use_table else LatencyTable.disabled()
        several = len(self.backends) > 1
        target = target_device(table, self.target) if self.target is not None else None
        return [TimingEngine(cfg, table=table, budget_s=self.budget_s, fresh=self.fresh,
                             backend=b, progress=_Labelled(progress, b) if several else progress,
                             store_busy=self.on_busy == "accept", table_only=self.table_only,
                             target=target)
                for b in self.backends]


def target_device(table: Any, name: str) -> dict[str, Any]:
    """The one device (name and thread count) of the latency table whose name contains
    ``name`` (case-insensitive; ``NAME@THREADS`` picks a thread count); InputError listing
    what the table holds when none or several match."""
    from convcost.errors import InputError

    want, _, threads = name.partition("@")
    held_devs = table.devices()
    devs = [d for d in held_devs if isinstance(d["device_name"], str)
            and want.strip().lower() in d["device_name"].lower()
            and (not threads or str(d["threads"]) == threads.strip())]
    if len(devs) != 1:
        held = "; ".join(f"{d['device_name']}@{d['threads']} ({d['rows']} rows, torch "
                         f"{d['torch']})" for d in held_devs) or "nothing"
        what = "no device" if not devs else f"{len(devs)} devices"
        raise InputError(f"--target {name!r}: {what} of the latency table match; it holds: "
                         f"{held[:600]} (name a part of one, and @THREADS when several)")
    return devs[0]


@dataclass(frozen=True)
class SourceRequest:
    source: str
    input_shape: tuple[int, ...] | None = None
    batch: int | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    memory_check: bool = True
    count_on: str = "auto"
    plan: tuple[str, Any] | None = None  # (path, PlanFile): substituted after loading
    inputs: Any = None  # convcost.inputs.Example from --input (None: --input-shape or default)
    pass_name: str = "inference"  # training: the backward's MACs are counted too


@dataclass
class JobResult:
    """A command's report (AnalysisReport or CompareReport) and its timing run, if timed."""

    report: Any
    run: Any = None


def needs_isolation(source: str | None) -> bool:
    """Sources that run user code (everything but a YAML spec and the built-in layer)."""
    from convcost.sources.load import is_spec_path

    return source is not None and not is_spec_path(source)


def _load(src: SourceRequest) -> Any:
    from convcost.sources.load import load_source
    from convcost.startup import settle

    phase("loading the model")
    loaded = load_source(src.source, input_shape=src.input_shape, inputs=src.inputs,
                         batch=src.batch, memory_check=src.memory_check,
                         model_args=src.model_args)
    if src.plan is not None:
        from dataclasses import replace

        from convcost.plan.planfile import apply_plan

        path, plan = src.plan
        model, notes = apply_plan(loaded.model, loaded.example, plan, path)
        loaded = replace(loaded, model=model, notes=[*loaded.notes, *notes])
    settle()  # imports done and the model built: the GC may run again
    return loaded


def _spec_dtype(loaded: Any) -> str:
    return loaded.spec.dtype if loaded.spec is not None and loaded.spec.dtype else "fp32"


def run_analyze(src: SourceRequest, timing: TimingRequest | None, dtype: str | None,
                progress: ProgressFactory | None = None) -> JobResult:
    """Load, count and (when ``timing``) time SOURCE: the analyze command's work."""
    from convcost.counting.analysis import analyze_model

    loaded = _load(src)
    cfg = timing.config(_spec_dtype(loaded)) if timing else None
    if cfg is not None:  # refuse a timed run that cannot fit before any work
        loaded.guard_memory("timing")
    phase("counting the model")
    report = analyze_model(loaded.model, loaded.example, count_on=src.count_on,
                           make_inputs=lambda: loaded.inputs, source=src.source,
                           name=loaded.name, estimated_macs=loaded.estimated_macs,
                           dtype=cfg.numerics.dtype if cfg else (dtype or _spec_dtype(loaded)),
                           pass_name=src.pass_name)
    report.notes[:0] = loaded.notes
    run = None
    if timing is not None:
        from convcost.timing.measure import time_analysis

        phase("timing the model", _timing_allowance(timing))
        with _progress(progress) as prog:
            timed = time_analysis(report, loaded.model, loaded.example,
                                  timing.engines(cfg, prog))
        report, run = timed.attach(report), timed.run
    return JobResult(report, run)


@dataclass(frozen=True)
class CompareRequest:
    """What to compare: variants of the selected convs (and whole models) of a source."""

    variant_names: tuple[str, ...]
    groups: tuple[int, ...] | None
    globs: tuple[str, ...] = ()
    kernel_sizes: tuple[int, ...] = ()
    whole_model: bool = True


def run_compare(src: SourceRequest, what: CompareRequest, timing: TimingRequest | None,
                progress: ProgressFactory | None = None) -> JobResult:
    """Load SOURCE, count every variant of its selected convs and the substituted models, and
    time them (paired): the compare command's work for a SOURCE."""
    from convcost.errors import InputError
    from convcost.variants.catalogue import Skip
    from convcost.variants.compare import NothingSelected, VariantCounter, compare_model

    loaded = _load(src)
    built = VariantCounter()  # the modules counted, measured by timing
    if timing is not None:
        loaded.guard_memory("timing")
    phase("counting the model and its variants")
    try:
        report = compare_model(loaded.model, loaded.example, count_on=src.count_on,
                               make_inputs=lambda: loaded.inputs, source=src.source,
                               name=loaded.name, estimated_macs=loaded.estimated_macs,
                               variant_names=what.variant_names, groups=what.groups,
                               globs=what.globs, kernel_sizes=what.kernel_sizes,
                               whole_model=what.whole_model, counter=built)
    except Skip as e:
        why = f" ({'; '.join(loaded.notes)})" if loaded.notes else ""
        text = _nothing_selected(e) if isinstance(e, NothingSelected) else str(e)
        raise InputError(f"{src.source}: {text}{why}") from e
    report.notes[:0] = loaded.notes
    report = _with_costs(report, built, loaded.model, loaded.example, timing,
                         _spec_dtype(loaded), src.pass_name)
    if timing is None:
        return JobResult(report)
    return _time_compare(report, built, timing, _spec_dtype(loaded), loaded.model,
                         loaded.example, progress)


def _with_costs(report: Any, built: Any, model: Any, example: Any, timing: Any,
                default_dtype: str, pass_name: str) -> Any:
    """The comparison with memory figures at the timing's dtype (else the spec's) and, for the
    training pass, the backward's MACs."""
    from dataclasses import replace

    from convcost.variants.compare import with_costs

    dtype = timing.config(default_dtype).numerics.dtype if timing is not None else default_dtype
    out = with_costs(report, built, model, example, dtype=dtype,
                     training=pass_name == "training")
    return replace(out, dtype=dtype, pass_name=pass_name)


def _nothing_selected(e: Any) -> str:
    """compare's selection that matched no conv, in the command line's terms."""
    what = []
    if e.globs:
        what.append(f"--layers {','.join(e.globs)}")
    if e.kernel_sizes:
        what.append(f"--kernel-size {','.join(map(str, e.kernel_sizes))}")
    left = f" ({'; '.join(e.not_substituted)})" if e.not_substituted else ""
    return ("no Conv1d/Conv2d/Conv3d layer matches "
            + (" and ".join(what) if what else "in this model") + left)


def run_compare_layer(layer: Any, variants: list[Any], timing: TimingRequest | None,
                      progress: ProgressFactory | None = None,
                      pass_name: str = "inference") -> JobResult:
    """compare without a SOURCE: the variants of one standalone conv (no user code)."""
    from convcost.startup import settle
    from convcost.variants.compare import VariantCounter, compare_default

    settle()
    built = VariantCounter()
    report = _with_costs(compare_default(layer, variants, built), built, None, None, timing,
                         "fp32", timing.pass_name if timing is not None else pass_name)
    if timing is None:
        return JobResult(report)
    return _time_compare(report, built, timing, "fp32", None, None, progress)


def _time_compare(report: Any, built: Any, timing: TimingRequest, default_dtype: str,
                  model: Any, example: Any, progress: ProgressFactory | None) -> JobResult:
    """Time a comparison (the modules counting ``built``) and attach the figures."""
    from convcost.timing.measure import time_compare

    cfg = timing.config(default_dtype)
    phase("timing the variants", _timing_allowance(timing))
    with _progress(progress) as prog:
        timed = time_compare(report, timing.engines(cfg, prog), model, example, built)
    return JobResult(timed.attach(report), timed.run)


def _timing_allowance(timing: TimingRequest) -> float | None:
    """How long the timing phase may take before the parent gives up on the child."""
    if timing.budget_s is None:
        return None
    return timing.budget_s + TIMING_MARGIN_S


class _Labelled:
    """A progress that names the backend of each item (several backends in one run)."""

    def __init__(self, inner: Any, backend: str) -> None:
        self.inner, self.backend = inner, backend

    def start(self, total: int, budget_s: float | None = None,
              what: str | None = None) -> None:
        self.inner.start(total, budget_s, what=f"timing on {self.backend}")

    def advance(self, label: str) -> None:
        self.inner.advance(f"[{self.backend}] {label}")


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def start(self, total: int, budget_s: float | None = None,
              what: str | None = None) -> None:
        pass

    def advance(self, label: str) -> None:
        pass


def _progress(factory: ProgressFactory | None) -> AbstractContextManager[Any]:
    return factory("timing") if factory is not None else _NullProgress()


# --------------------------------------------------------------------------- check


@dataclass
class CheckMeasure:
    """What one check's model measured (sent back from its child process)."""

    metrics: dict[str, Any]
    layers: list[Any]


def run_check(check: Any, measure_latency: bool, max_time_s: float,
              memory_check: bool, on_busy: str = "remeasure") -> CheckMeasure:
    """Load and count one check's model, and time it when a latency limit asks for it: the
    check command's work for one model (in a child process, see :mod:`convcost.isolation`)."""
    from convcost.counting.analysis import analyze_model
    from convcost.inputs import Example
    from convcost.sources.load import is_spec_path

    given = None if is_spec_path(check.model) else check.input
    shape = given if isinstance(given, tuple) else None
    loaded = _load(SourceRequest(check.model, shape, None, check.model_args, memory_check,
                                 plan=check.apply,
                                 inputs=given if isinstance(given, Example) else None))
    phase("counting the model")
    a = analyze_model(loaded.model, loaded.example,
                      make_inputs=lambda: loaded.inputs, estimated_macs=loaded.estimated_macs,
                      source=check.model, name=check.name, dtype=check.dtype,
                      pass_name=check.pass_name)
    from convcost.counting.passes import itemsize

    metrics: dict[str, Any] = {"params": a.params, "macs": a.macs, "paper_macs": a.paper_macs,
                               "flops": a.flops, "latency_ms": None, "model": check.model,
                               "input_shapes": a.input_shapes,
                               "weight_memory": a.params * itemsize(check.dtype),
                               "activation_memory": a.peak_activation_bytes, "pass": a.pass_name}
    if a.peak_activation_bytes is None:
        metrics["activation_memory_failed"] = ("the peak activation memory is computed on meta "
                                               "tensors, and this model does not run on them")
    if check.latency is not None:
        metrics.update(_check_latency(check, loaded, a.macs, measure_latency, max_time_s,
                                      memory_check, on_busy))
    return CheckMeasure(metrics, a.layers)


def _check_latency(check: Any, loaded: Any, macs: int, measure_latency: bool,
                   max_time_s: float, memory_check: bool, on_busy: str) -> dict[str, Any]:
    """The latency of a check's whole model, measured fresh (no latency table, no budget: the
    cap bounds it), or why not (``latency_skip``: not asked or no device; ``latency_failed``:
    the measurement failed, or the machine was busy and ``on_busy`` says so; both judged by
    the budget's ``on_unmeasured``). ``latency_busy`` says what competed, when anything did."""
    import torch

    from convcost.counting.meta import model_estimate
    from convcost.memory import guard

    lat = check.latency
    if not measure_latency:
        return {"latency_skip": "not measured (--no-time)"}
    if lat.device.startswith("cuda") and not torch.cuda.is_available():
        return {"latency_skip": f"no CUDA device on this machine for the {lat.device} limit"}
    device = lat.device if lat.device != "cuda" else "cuda:0"
    example = loaded.example.with_batch(lat.batch) if lat.batch else loaded.example
    est, why = model_estimate(loaded.model, example) if memory_check else (0, "")
    guard(est, why, what=f"{check.name}: the latency measurement", device=device,
          enabled=memory_check)
    phase("timing the model", None)
    out = _time_check_model(check, loaded.model, example, macs, device, max_time_s)
    busy = out.pop("machine_busy", None)
    if busy and on_busy == "remeasure":  # once more: a neighbour's burst may have passed
        out = _time_check_model(check, loaded.model, example, macs, device, max_time_s)
        busy = out.pop("machine_busy", None)
        if busy:
            busy = f"{busy}, measured twice"
    if not busy or "latency_failed" in out:
        return out
    out["latency_busy"] = f"the machine was busy: {busy}; on_busy: {on_busy}"
    if on_busy == "accept":
        return out
    return {"latency_failed": out["latency_busy"], "latency_busy": out["latency_busy"]}


def _time_check_model(check: Any, model: Any, example: Any, macs: int,
                      device: str, max_time_s: float) -> dict[str, Any]:
    """One fresh measurement of a check's model: its figure (``machine_busy`` says why the
    machine was busy, if it was) or ``latency_failed``."""
    from convcost.timing.kernel import Kernel
    from convcost.timing.stats import TAIL_MIN_SAMPLES

    lat = check.latency
    from dataclasses import replace

    timing = TimingRequest(device, lat.dtype, None, None, False, max_time_s, None,
                           use_table=False, backends=(lat.backend,), pass_name=lat.pass_name)
    cfg = timing.config()
    if "latency_p99" in check.limits or "latency_p99" in check.regression:
        cfg = replace(cfg, min_samples=max(cfg.min_samples, TAIL_MIN_SAMPLES[99]))
    (engine,) = timing.engines(cfg, _NullProgress())
    (key,) = engine.add_group([Kernel(model, example, None, macs, f"model {check.name}",
                                      "model")], paired=False)
    engine.run()
    if engine.interrupted:
        raise KeyboardInterrupt
    kr = engine.kernel(key)
    meas = kr.measurement
    if meas is None or meas.median_ms is None:
        return {"latency_failed": f"timing failed: {kr.error or 'not measured'}"}
    out: dict[str, Any] = {
        "latency_ms": meas.median_ms, "latency_p90_ms": meas.p90_ms,
        "latency_p99_ms": meas.p99_ms,
        "latency": {"device": lat.device, "dtype": lat.dtype, "pass": lat.pass_name,
                    "iqr_ms": meas.iqr_ms, "n": meas.n, "converged": meas.converged,
                    "p10_ms": meas.p10_ms, "p90_ms": meas.p90_ms, "p99_ms": meas.p99_ms,
                    "backend": engine.backend_info, "setup_s": kr.setup_s,
                    "machine": kr.machine.to_dict() if kr.machine else None}}
    if kr.lowering is not None:  # what a delegate (XNNPACK) took of the model
        out["latency"]["lowering"] = kr.lowering.to_dict()
    for p in (90, 99):
        if getattr(meas, f"p{p}_ms") is None:
            out[f"latency_p{p}_failed"] = (f"{meas.n} samples: a p{p} needs "
                                           f"{TAIL_MIN_SAMPLES[p]} (raise --max-time)")
    if kr.machine is not None and kr.machine.busy:
        out["machine_busy"] = "; ".join(kr.machine.why)
    return out


# --------------------------------------------------------------------------- compare's built-in layer


@dataclass(frozen=True)
class LayerRequest:
    """compare without a SOURCE: the built-in layer (``--in/--out/--kernel/--size/--stride/
    --batch``) and the variants asked for."""

    cin: int
    cout: int
    kernel: int
    size: int
    stride: int
    batch: int | None
    groups: tuple[int, ...] | None
    variant_names: tuple[str, ...]
    memory_check: bool = True


def builtin_layer(req: LayerRequest) -> tuple[Any, list[Any]]:
    """The built-in layer (padding K//2) and its variants, refused before any work when its
    input and output would not fit in memory."""
    from convcost.errors import InputError
    from convcost.memory import guard, tensor_estimate
    from convcost.variants.catalogue import ConvLayer, expand_variants, valid_groups
    from convcost.variants.compare import DEFAULT_LAYER

    if req.kernel > req.size:
        raise InputError(f"--kernel {req.kernel} is larger than --size {req.size}")
    k, s = req.kernel, req.stride
    layer = ConvLayer(req.cin, req.cout, (k, k), (s, s), (k // 2,) * 2, in_hw=(req.size,) * 2,
                      batch=req.batch or DEFAULT_LAYER.batch)
    guard(2 * tensor_estimate([layer.input_shape, layer.output_shape])
          + 4 * req.cin * req.cout * k * k,
          f"input {'x'.join(map(str, layer.input_shape))} and output "
          f"{'x'.join(map(str, layer.output_shape))}, twice", what="the built-in layer",
          enabled=req.memory_check)
    gs = req.groups if req.groups is not None else tuple(valid_groups(layer))
    return layer, expand_variants(req.variant_names, gs)


# --------------------------------------------------------------------------- calibrate


@dataclass
class Calibration:
    """calibrate's result: the measured peaks and where they were kept (None: not kept)."""

    peaks: Any
    path: Any = None


def run_calibrate(device: str, quick: bool, threads: int | None,
                  notice: Callable[[str], None]) -> Calibration:
    """Measure the device's peaks and keep them in the cache folder. ``notice`` is told, before
    the measurement, when the result cannot be kept, and after it, when a full calibration is
    kept instead of a quick one."""
    import os

    import torch

    from convcost.errors import InputError
    from convcost.paths import cache_dir
    from convcost.timing.device import resolve_device
    from convcost.timing.roofline import calibrate, save

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        usable = os.access(folder, os.W_OK | os.X_OK)
    except OSError:
        usable = False
    if not usable:
        notice(f"the cache folder {folder} cannot be used; the peaks will be printed but not "
               "kept (set CONVCOST_CACHE_DIR to a writable folder)")
    peaks = calibrate(dev, copy_mib=64 if quick else None, gemm_n=512 if quick else None,
                      max_time_s=0.3 if quick else 1.0, quick=quick)
    if not usable:
        return Calibration(peaks)
    try:
        path, kept = save(peaks)
    except InputError as e:
        notice(f"{e}; the peaks are printed but not kept")
        return Calibration(peaks)
    if kept is not None:
        notice(f"the full calibration of {kept.get('measured_at', '?')} is kept; these --quick "
               "figures are printed but not stored (run without --quick to replace it)")
        return Calibration(peaks)
    return Calibration(peaks, path)


# --------------------------------------------------------------------------- doctor


def run_doctor(sample_s: float) -> list[Any]:
    """doctor's work: the machine's findings (see :func:`convcost.timing.machine.survey`)."""
    import torch

    from convcost.timing.machine import survey

    return survey(torch.get_num_threads(), sample_s)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlanRequest:
    """What to plan: the candidates (as compare selects them), the limits as given (``0.6x``
    or a figure), the objective, pinned layers, how many plans along the front, whether to
    verify by timing the planned model."""

    candidates: CompareRequest
    limits: tuple[tuple[str, str], ...]  # (metric, text)
    objective: str | None = None
    keep: tuple[str, ...] = ()
    frontier: int = 1
    verify: bool = True
    from_table: bool = False  # figures from the latency table alone (nothing measured)


def plan_objective(req: PlanRequest) -> str:
    """latency by default; params when --max-latency is the only limit."""
    if req.objective:
        return req.objective
    return "params" if [m for m, _ in req.limits] == ["latency"] else "latency"


def run_plan(src: SourceRequest, req: PlanRequest, timing: TimingRequest | None,
             progress: ProgressFactory | None = None) -> JobResult:
    """Load SOURCE, count (and time) every candidate of its selected convs, solve for the
    plan(s) exactly, and time each planned model end to end against the original: the plan
    command's work."""
    from convcost.plan.costs import options_of, parse_limit
    from convcost.plan.result import PlanReport
    from convcost.variants.compare import VariantCounter

    limits = [parse_limit(m, t) for m, t in req.limits]
    loaded = _load(src)
    if timing is not None:
        loaded.guard_memory("timing")
    phase("counting the model and its candidates")
    built = VariantCounter()
    report = _plan_candidates(loaded, src, req.candidates, built)
    run = None
    if timing is not None:
        timed = _time_compare(report, built, timing, _spec_dtype(loaded), loaded.model,
                              loaded.example, progress)
        report, run = timed.report, timed.run
    opts = options_of(report, req.keep, timing is not None)
    limits = [x.resolved(opts.original[x.metric]) for x in limits]
    plans = _solve_plans(opts, limits, plan_objective(req), req.frontier)
    out = PlanReport(src.source, loaded.name, plan_objective(req), limits, opts, plans,
                     timing is not None, req.verify and timing is not None,
                     notes=[*loaded.notes, *report.notes, *opts.notes], device=report.device,
                     timing=report.timing,
                     backends=list(timing.backends) if timing is not None else [],
                     from_table=_table_source(report) if req.from_table else None)
    if out.verify:
        run = _verify_plans(out, report, loaded, timing, run, progress)
    return JobResult(out, run)


def _table_source(report: Any) -> str:
    """Where a --from-table plan's figures came from: the device and the newest figure."""
    from convcost.timing.device import fingerprint_line

    dev = report.device or {}
    stamps = [r.cached_at for _, r in report.keyed_rows() if r.cached_at]
    when = f", measured up to {max(stamps)[:10]}" if stamps else ""
    return f"{fingerprint_line(dev) if dev else 'this machine'}{when}"


def _plan_candidates(loaded: Any, src: SourceRequest, what: CompareRequest, built: Any) -> Any:
    """The comparison the plan chooses from: every candidate of every selected conv, and the
    original model's row (no substituted whole models)."""
    from convcost.errors import InputError
    from convcost.variants.catalogue import Skip
    from convcost.variants.compare import NothingSelected, compare_model

    try:
        return compare_model(loaded.model, loaded.example, count_on=src.count_on,
                             make_inputs=lambda: loaded.inputs, source=src.source,
                             name=loaded.name, estimated_macs=loaded.estimated_macs,
                             variant_names=what.variant_names, groups=what.groups,
                             globs=what.globs, kernel_sizes=what.kernel_sizes, whole_model=True,
                             counter=built, substitute_whole=False)
    except Skip as e:
        text = _nothing_selected(e) if isinstance(e, NothingSelected) else str(e)
        raise InputError(f"{src.source}: {text}") from e


def _solve_plans(opts: Any, limits: list[Any], objective: str, frontier: int) -> list[Any]:
    """The optimum, or ``frontier`` plans along the Pareto front, with their totals."""
    from convcost.plan.result import PlannedModel
    from convcost.plan.solver import Problem, solve
    from convcost.plan.solver import frontier as front

    problem = Problem(tuple(opts.layers), opts.rest, {x.metric: x.value for x in limits},
                      objective)
    sols = front(problem, frontier) if frontier > 1 else [solve(problem)]
    return [PlannedModel(s.choice, s.totals,
                         {m: v / opts.original[m] for m, v in s.totals.items()
                          if opts.original.get(m)}) for s in sols]


def _verify_plans(out: Any, report: Any, loaded: Any, timing: TimingRequest, run: Any,
                  progress: ProgressFactory | None) -> Any:
    """Time each planned model against the original, end to end, on every backend asked
    (what is left of the time budget, at least a tenth of it)."""
    from dataclasses import replace

    from convcost.plan.verify import planned_model, verify

    spent = run.engine.get("timing_s", 0.0) if run is not None else 0.0
    left = None if timing.budget_s is None else max(timing.budget_s - spent,
                                                    timing.budget_s / 10)
    req = replace(timing, budget_s=left)
    models = [planned_model(loaded.model, report, out.options.layers, p.choice)
              for p in out.plans]
    phase("timing the planned model", _timing_allowance(req))
    with _progress(progress) as prog:
        return verify(out.plans, models, loaded.model,
                      loaded.example,
                      req.engines(req.config(_spec_dtype(loaded)), prog), loaded.name)


# --------------------------------------------------------------------------- cache import

MAX_IMPORT_BYTES = 256 << 20
MAX_REFUSED_LINES = 50


@dataclass
class Imported:
    """What `cache import` merged, and one line per refused row."""

    kernels: int
    pairs: int
    table: str
    refused: list[str]


def run_cache_import(path: Any) -> Imported:
    """Validate every row of an exported latency table (JSON) and merge the valid ones into
    this machine's table, keys and fingerprints as they are: the figures of another device,
    for `plan --from-table --target`."""
    import json

    from convcost.errors import InputError
    from convcost.files import read_bounded
    from convcost.timing.table import (
        KERNEL_FIELDS,
        OPTIONAL_KERNEL_FIELDS,
        LatencyTable,
        imported_kernel_problem,
        imported_pair_problem,
    )

    data = read_bounded(Path(path), MAX_IMPORT_BYTES, "latency table export")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{path}: not a JSON export of a latency table ({type(e).__name__})") \
            from e
    if not isinstance(doc, dict) or not isinstance(doc.get("measurements"), list) or \
            not isinstance(doc.get("pairs", []), list):
        raise InputError(f"{path}: not a latency table export (a JSON object with a "
                         "'measurements' list, as `convcost cache export FILE.json` writes)")
    table = LatencyTable.open()
    if table.con is None or not table.writable:
        raise InputError(f"cannot import into the latency table: "
                         f"{'; '.join(table.notices) or table.path}")
    refused: list[str] = []
    n_k = n_p = 0
    for i, row in enumerate(doc["measurements"]):
        why = imported_kernel_problem(row)
        if why:
            refused.append(f"{path}: measurements[{i}]: {why}; not imported")
            continue
        table.put_kernel({f: row.get(f) for f in (*KERNEL_FIELDS, *OPTIONAL_KERNEL_FIELDS)})
        n_k += 1
    for i, p in enumerate(doc.get("pairs", [])):
        why = imported_pair_problem(p)
        if why:
            refused.append(f"{path}: pairs[{i}]: {why}; not imported")
            continue
        table.put_pair(p["base_key"], p["var_key"], p["ratio"], p["lo"], p["hi"], p["rounds"],
                       p["measured_at"])
        n_p += 1
    if len(refused) > MAX_REFUSED_LINES:
        refused = [*refused[:MAX_REFUSED_LINES],
                   f"{path}: ... and {len(refused) - MAX_REFUSED_LINES} more refused row(s)"]
    return Imported(n_k, n_p, str(table.path), refused)
