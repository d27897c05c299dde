"""Budget files and verdicts for CI (`convcost check`). See docs/budgets.md.

A budget names checks; each check is a model (any SOURCE form) with limits on params, macs,
flops and latency at an ``error`` and/or ``warn`` level, optional per-layer limits by name glob,
and optional regression limits against a stored baseline report. Counts are the same as
``analyze`` reports (MACs as fvcore counts them; FLOPs = 2 x MACs).
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcost import __version__
from convcost.errors import BudgetFileError, InputError
from convcost.sources.yamlio import LineDict, load_yaml_file
from convcost.units import fmt_ms, human, parse_count, parse_duration_ms, parse_percent

BUDGET_VERSION = 1
METRICS = ("params", "macs", "paper_macs", "flops", "latency")
LEVELS = ("error", "warn")
DROP_NOTICE = 0.10  # a metric 10% or more below its baseline: time to tighten the budget

MINIMAL_EXAMPLE = (
    "a minimal valid budget: version: 1 / checks: [{name: backbone, model: model.yaml, "
    "limits: {params: \"25M\", macs: {error: \"4.1G\", warn: \"4G\"}}}]")


@dataclass(frozen=True)
class Limit:
    """One threshold: ``value`` in the metric's unit (count, or ms for latency)."""

    level: str  # error | warn
    value: float
    text: str  # as written, e.g. "25M"
    key: str  # where it is in the file, e.g. "checks[0].limits.params.error"
    relative: bool = False  # regression: value is a fraction (0.05) when True, else an amount


@dataclass
class LatencyTarget:
    device: str = "cpu"
    dtype: str = "fp32"
    batch: int | None = None
    backend: str = "eager"


@dataclass
class LayerLimits:
    match: str
    limits: dict[str, list[Limit]]
    key: str


@dataclass
class Check:
    name: str
    model: str
    input: tuple[int, ...] | None
    limits: dict[str, list[Limit]]
    regression: dict[str, list[Limit]]
    layers: list[LayerLimits]
    latency: LatencyTarget | None
    key: str
    model_args: dict[str, Any] = field(default_factory=dict)


UNMEASURED_POLICIES = ("error", "warn", "skip")


@dataclass
class Budget:
    path: Path
    checks: list[Check]
    baseline: Path | None
    # a latency limit whose measurement failed (export, compile, run, output check): an
    # 'error' verdict (exit 4) by default; never a silent pass
    on_unmeasured: str = "error"


# --------------------------------------------------------------------------- parsing


class _P:
    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, msg: str, node: Any = None, key: Any = None, where: str = "") -> BudgetFileError:
        line = node.line_of(key) if isinstance(node, LineDict) and key is not None else (
            node.line if isinstance(node, LineDict) else None)
        loc = f"{self.path}" + (f":{line}" if line else "")
        return BudgetFileError(f"{loc}: {where}: {msg}" if where else f"{loc}: {msg}")

    def keys(self, d: Any, allowed: tuple[str, ...], where: str) -> None:
        if not isinstance(d, dict):
            raise self.err(f"must be a mapping with keys {', '.join(allowed)}; {MINIMAL_EXAMPLE}",
                           where=where)
        for k in d:
            if k not in allowed:
                raise self.err(f"unknown key {k!r}; allowed: {', '.join(allowed)}; "
                               f"{MINIMAL_EXAMPLE}", d, k, where)


def _quantity(p: _P, metric: str, v: Any, node: Any, key: str, where: str,
              regression: bool) -> tuple[float, bool]:
    """(value, relative) of a limit text; latency in ms; regression '+5%' or '+0.5M'."""
    try:
        if regression:
            if isinstance(v, str) and v.strip().endswith("%"):
                return parse_percent(v), True
            if isinstance(v, str):
                v = v.strip().lstrip("+")
            return (parse_duration_ms(v) if metric == "latency" else parse_count(v)), False
        return (parse_duration_ms(v) if metric == "latency" else parse_count(v)), False
    except ValueError as e:
        if regression:
            amount = "'+2 ms'" if metric == "latency" else "'+0.5M'"
            raise p.err(f"bad quantity {v!r} for {metric}: use a percentage such as '+5%' or an "
                        f"amount such as {amount}", node, key, where) from e
        raise p.err(f"bad quantity {v!r} for {metric}: {e}", node, key, where) from e


def _limits(p: _P, d: Any, where: str, *, regression: bool = False,
            metrics: tuple[str, ...] = METRICS) -> dict[str, list[Limit]]:
    p.keys(d, metrics, where)
    out: dict[str, list[Limit]] = {}
    for metric, spec in d.items():
        w = f"{where}.{metric}"
        if isinstance(spec, dict):
            extra = (("device", "dtype", "batch", "backend") if metric == "latency" and not regression
                     else ())
            p.keys(spec, (*LEVELS, *extra), w)
            items = [(lv, spec[lv]) for lv in LEVELS if lv in spec]
            if not items:
                raise p.err("needs an 'error' or a 'warn' level", spec, None, w)
            node = spec
        else:  # a bare value means error
            items, node = [("error", spec)], d
        lims = []
        for level, v in items:
            if isinstance(v, bool) or v is None or isinstance(v, (list, dict)):
                raise p.err(f"bad quantity {v!r} for {metric}", node, level if node is spec else metric, w)
            value, rel = _quantity(p, metric, v, node, level if node is spec else metric, w,
                                   regression)
            lims.append(Limit(level, value, str(v), f"{w}.{level}" if node is spec else w, rel))
        out[metric] = lims
    return out


def _shape(p: _P, v: Any, node: Any, key: str, where: str) -> tuple[int, ...]:
    if (not isinstance(v, list) or len(v) < 2
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 or x > 1 << 20 for x in v)):
        raise p.err(f"input {v!r} must be a list of positive integers such as [1, 3, 224, 224]",
                    node, key, where)
    return tuple(v)


def load_budget(path: str | Path) -> Budget:
    """Read and validate a budget file (``BudgetFileError``, exit 2, on any problem)."""
    path = Path(path)
    try:
        data = load_yaml_file(path, "budget file")
    except BudgetFileError:
        raise
    except InputError as e:
        raise BudgetFileError(str(e)) from e
    p = _P(path)
    p.keys(data, ("version", "defaults", "baseline", "checks", "on_unmeasured"), "")
    policy = data.get("on_unmeasured", "error")
    if policy not in UNMEASURED_POLICIES:
        raise p.err(f"'on_unmeasured' is {str(policy)[:40]!r}; use one of "
                    f"{', '.join(UNMEASURED_POLICIES)}", data, "on_unmeasured")
    if data.get("version") != BUDGET_VERSION:
        raise p.err(f"'version' must be {BUDGET_VERSION} (got {data.get('version')!r})", data,
                    "version" if "version" in data else None)
    defaults = data.get("defaults") or {}
    p.keys(defaults, ("input", "device", "dtype", "batch", "backend"), "defaults")
    d_input = _shape(p, defaults["input"], defaults, "input", "defaults") if "input" in defaults else None
    checks_raw = data.get("checks")
    if not isinstance(checks_raw, list) or not checks_raw:
        raise p.err(f"'checks' must be a non-empty list; {MINIMAL_EXAMPLE}", data,
                    "checks" if "checks" in data else None)
    names: set[str] = set()
    checks = []
    for i, c in enumerate(checks_raw):
        where = f"checks[{i}]"
        p.keys(c, ("name", "model", "model_args", "input", "limits", "layers", "regression"),
               where)
        name = c.get("name")
        if not isinstance(name, str) or not name:
            raise p.err("needs a 'name' (a non-empty string)", c, "name" if "name" in c else None, where)
        if name in names:
            raise p.err(f"duplicate check name {name!r}", c, "name", where)
        names.add(name)
        model = c.get("model")
        if not isinstance(model, str) or not model:
            raise p.err("needs a 'model': a spec path or a SOURCE such as file.py:Name", c,
                        "model" if "model" in c else None, where)
        inp = _shape(p, c["input"], c, "input", where) if "input" in c else d_input
        margs = c.get("model_args") or {}
        if not isinstance(margs, dict) or any(
                not isinstance(k, str) or not k.isidentifier() or isinstance(v, (list, dict))
                for k, v in margs.items()):
            raise p.err(f"'model_args' must map argument names to scalars, e.g. {{aux_logits: "
                        f"false}}; got {margs!r}", c, "model_args", where)
        limits = _limits(p, c.get("limits") or {}, f"{where}.limits")
        regression = _limits(p, c.get("regression") or {}, f"{where}.regression", regression=True)
        layers = []
        layers_raw = c.get("layers") or []
        if not isinstance(layers_raw, list):
            raise p.err(f"'layers' must be a list of {{match: GLOB, params/macs/flops: LIMIT}} "
                        f"mappings, got {layers_raw!r}", c, "layers", where)
        for j, lay in enumerate(layers_raw):
            lw = f"{where}.layers[{j}]"
            p.keys(lay, ("match", "params", "macs", "flops"), lw)
            if not isinstance(lay.get("match"), str):
                raise p.err("needs 'match': a layer-name glob such as 'layer4.*'", lay, None, lw)
            lims = _limits(p, {k: v for k, v in lay.items() if k != "match"}, lw,
                           metrics=("params", "macs", "flops"))
            layers.append(LayerLimits(lay["match"], lims, lw))
        if not (limits or regression or layers):
            raise p.err("has no 'limits', 'layers' or 'regression': nothing to check", c, None, where)
        lat = None
        lat_spec = (c.get("limits") or {}).get("latency")
        if "latency" in limits or "latency" in regression:
            src = lat_spec if isinstance(lat_spec, dict) else {}
            lat = LatencyTarget(device=str(src.get("device", defaults.get("device", "cpu"))),
                                dtype=str(src.get("dtype", defaults.get("dtype", "fp32"))),
                                batch=src.get("batch", defaults.get("batch")),
                                backend=str(src.get("backend", defaults.get("backend", "eager"))))
            lw = f"{where}.limits.latency"
            if lat.dtype not in ("fp32", "tf32", "fp16", "bf16"):
                raise p.err(f"latency dtype {lat.dtype!r}; use fp32, tf32, fp16 or bf16", src or c,
                            "dtype", lw)
            if not re.fullmatch(r"cpu|cuda(:\d+)?", lat.device):
                raise p.err(f"latency device {lat.device!r}; use cpu, cuda or cuda:N", src or c,
                            "device", lw)
            _check_backend(p, lat, src or c, lw)
            b = lat.batch
            if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not
                                  1 <= b <= 1 << 20):
                raise p.err(f"latency batch {b!r}: use a positive integer (at most {1 << 20})",
                            src or c, "batch", lw)
        checks.append(Check(name, _resolve_model(model, path), inp, limits, regression, layers, lat,
                            where, dict(margs)))
    base = data.get("baseline")
    if base is not None and not isinstance(base, str):
        raise p.err(f"'baseline' must be a path, got {base!r}", data, "baseline")
    return Budget(path, checks, (path.parent / base) if isinstance(base, str) else None,
                  policy)


def _check_backend(p: _P, lat: LatencyTarget, node: Any, where: str) -> None:
    """One backend per latency limit, known and installed (its extra named when missing)."""
    from convcost.timing.backends import BACKENDS, parse_backends

    if lat.backend not in BACKENDS:
        raise p.err(f"latency backend {lat.backend!r}; use one of {', '.join(BACKENDS)}",
                    node, "backend", where)
    try:  # a CUDA limit on a machine without CUDA is skipped later, not refused here
        parse_backends(lat.backend, lat.device if lat.device == "cpu" else None,
                       what="backend")
    except InputError as e:
        raise p.err(str(e), node, "backend", where) from e


def _resolve_model(model: str, budget_path: Path) -> str:
    """Paths in a budget are relative to the budget file's folder."""
    if model.lower().endswith((".yaml", ".yml", ".pt2", ".pt", ".pth")):
        p = Path(model)
        return str(p if p.is_absolute() else budget_path.parent / p)
    m = re.match(r"^(.+\.py):(.+)$", model)
    if m:
        p = Path(m.group(1))
        return f"{p if p.is_absolute() else budget_path.parent / p}:{m.group(2)}"
    return model


# --------------------------------------------------------------------------- evaluation


@dataclass
class Result:
    """One verdict row."""

    check: str
    metric: str
    scope: str  # "model" or "layer GLOB (worst: NAME)"
    actual: float | None
    limit: Limit | None
    verdict: str  # pass | warn | fail | skip | error
    kind: str = "absolute"  # absolute | regression
    baseline: float | None = None
    threshold: float | None = None  # the limit in the metric's unit (regression resolved)
    message: str = ""

    def headroom_pct(self) -> float | None:
        """(threshold - actual) / threshold in %; negative is an overage."""
        if self.actual is None or not self.threshold:
            return None
        return 100.0 * (self.threshold - self.actual) / self.threshold


@dataclass
class BudgetReport:
    budget: str
    results: list[Result] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # per check, for baselines
    errors: list[tuple[str, int, str]] = field(default_factory=list)  # (check, exit status, why)
    interrupted: bool = False
    terminated: bool = False
    not_checked: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """130/143 interrupted; 3 a model could not be measured; 2 a bad input; 1 a limit
        exceeded; 0 otherwise."""
        from convcost.errors import ExitStatus

        if self.interrupted:
            return int(ExitStatus.TERMINATED if self.terminated else ExitStatus.INTERRUPTED)
        codes = {code for _, code, _ in self.errors}
        for code in (int(ExitStatus.MODEL_ERROR), int(ExitStatus.BAD_INPUT)):
            if code in codes:
                return code
        if codes:
            return max(codes)
        return int(ExitStatus.BUDGET_EXCEEDED) if self.failed else 0

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.verdict == "fail"]

    @property
    def warned(self) -> list[Result]:
        return [r for r in self.results if r.verdict == "warn"]


def fmt_metric(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    if metric == "latency":
        return fmt_ms(v)
    return human(v)


def _judge(check: str, metric: str, scope: str, actual: float, limits: list[Limit],
           kind: str = "absolute", baseline: float | None = None) -> Result:
    """The strictest exceeded level wins: error -> fail, warn -> warn, else pass."""
    verdict, hit, thr_hit = "pass", None, None
    by_level = {lim.level: lim for lim in limits}
    for level, v in (("error", "fail"), ("warn", "warn")):
        lim = by_level.get(level)
        if lim is None:
            continue
        thr = _threshold(lim, baseline)
        if actual > thr:
            verdict, hit, thr_hit = v, lim, thr
            break
    if hit is None:  # report against the tightest limit for headroom
        lims = [(lim, _threshold(lim, baseline)) for lim in limits]
        hit, thr_hit = min(lims, key=lambda t: t[1])
    r = Result(check, metric, scope, actual, hit, verdict, kind, baseline, thr_hit)
    if verdict != "pass":
        over = actual - thr_hit
        pct = 100.0 * over / thr_hit if thr_hit else float("inf")
        what = "regression limit" if kind == "regression" else f"{hit.level} limit"
        base = f" (baseline {fmt_metric(metric, baseline)} {hit.text})" if kind == "regression" else ""
        r.message = (f"{'FAIL' if verdict == 'fail' else 'WARN'} {check}: {metric}"
                     f"{'' if scope == 'model' else ' ' + scope} {fmt_metric(metric, actual)} > "
                     f"{what} {fmt_metric(metric, thr_hit)}{base}: over by "
                     f"{fmt_metric(metric, over)} ({pct:+.1f}%); to accept it, change {hit.key}")
    return r


def _threshold(lim: Limit, baseline: float | None) -> float:
    if baseline is None:
        return lim.value
    return baseline * (1 + lim.value) if lim.relative else baseline + lim.value


def load_baseline(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    from convcost.files import read_bounded

    try:
        data = json.loads(read_bounded(path, 64 * 1024 * 1024, "baseline").decode("utf-8"))
    except RecursionError as e:
        raise BudgetFileError(f"{path}: baseline is JSON nested too deep; rewrite it with "
                              "convcost check --update-baseline") from e
    except (OSError, ValueError) as e:
        raise BudgetFileError(f"{path}: baseline is not valid JSON ({e}); rewrite it with "
                              "convcost check --update-baseline") from e
    if not isinstance(data, dict) or not isinstance(data.get("checks"), dict):
        raise BudgetFileError(f"{path}: not a convcost baseline (no 'checks'); rewrite it with "
                              "convcost check --update-baseline")
    for name, metrics in data["checks"].items():
        if not isinstance(metrics, dict):
            raise BudgetFileError(f"{path}: checks.{name} is not a mapping of metrics; rewrite "
                                  "the baseline with convcost check --update-baseline")
        for key in ("params", "macs", "paper_macs", "flops", "latency_ms"):
            v = metrics.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v) or v < 0):
                raise BudgetFileError(f"{path}: checks.{name}.{key} is {v!r}, not a count; "
                                      "rewrite the baseline with convcost check "
                                      "--update-baseline")
    return data


def baseline_document(report: BudgetReport) -> dict[str, Any]:
    return {"schema_version": 1, "tool": f"convcost {__version__}",
            "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "checks": report.metrics}


def _unmeasured(check: Check, metric: str, lim: Limit, why: str, policy: str,
                report: BudgetReport) -> Result:
    """A limit whose measurement failed, judged by the budget's ``on_unmeasured`` policy:
    ``error`` (exit 4), ``warn`` or ``skip``; it never passes."""
    from convcost.errors import ExitStatus

    verdict = {"error": "error", "warn": "warn", "skip": "skip"}[policy]
    msg = (f"{'ERROR' if verdict == 'error' else verdict.upper()} {check.name}: {metric} could "
           f"not be measured ({why}); on_unmeasured: {policy}")
    if verdict == "error":
        report.errors.append((check.name, int(ExitStatus.INCOMPLETE), msg))
    return Result(check.name, metric, "model", None, lim, verdict, message=msg)


def evaluate_check(check: Check, metrics: dict[str, Any], layers: list[Any],
                   baseline: dict[str, Any] | None, baseline_path: Path | None,
                   report: BudgetReport, updating: bool = False,
                   on_unmeasured: str = "error") -> None:
    """Judge one check's measured ``metrics`` (params, macs, flops, latency_ms or None)."""
    values = {"params": metrics.get("params"), "macs": metrics.get("macs"),
              "paper_macs": metrics.get("paper_macs"),
              "flops": metrics.get("flops"), "latency": metrics.get("latency_ms")}
    for metric, lims in check.limits.items():
        v = values[metric]
        if v is None and metrics.get(f"{metric}_failed"):
            report.results.append(_unmeasured(check, metric, lims[0],
                                              metrics[f"{metric}_failed"], on_unmeasured, report))
            continue
        if v is None:
            report.results.append(Result(check.name, metric, "model", None, lims[0], "skip",
                                         message=metrics.get("latency_skip", "not measured")))
            continue
        report.results.append(_judge(check.name, metric, "model", v, lims))
    for ll in check.layers:
        matching = [r for r in layers if fnmatch.fnmatchcase(r.name, ll.match)]
        if not matching:
            report.notices.append(f"{check.name}: no layer matches {ll.match!r} ({ll.key}.match)")
            continue
        for metric, lims in ll.limits.items():
            worst = max(matching, key=lambda r: getattr(r, metric))
            report.results.append(_judge(check.name, metric,
                                         f"layers {ll.match} (worst: {worst.name})",
                                         getattr(worst, metric), lims))
    base = ((baseline or {}).get("checks") or {}).get(check.name)
    for metric, lims in check.regression.items():
        v = values[metric]
        bkey = "latency_ms" if metric == "latency" else metric
        b = (base or {}).get(bkey)
        if v is None and metrics.get(f"{metric}_failed") and not updating:
            report.results.append(_unmeasured(check, metric, lims[0],
                                              metrics[f"{metric}_failed"], on_unmeasured, report))
            continue
        if b is None or v is None:
            if updating:
                why = "not judged: --update-baseline is writing the baseline"
            elif b is None:
                why = (f"no baseline for '{check.name}' in {baseline_path}; write one with "
                       "convcost check --update-baseline")
            else:
                why = "not measured"
            report.results.append(Result(check.name, metric, "model", v, lims[0], "skip",
                                         "regression", b, message=why))
            continue
        report.results.append(_judge(check.name, metric, "model", v, lims, "regression", b))
    if base:
        for metric, bkey in (("params", "params"), ("macs", "macs"), ("paper_macs", "paper_macs"),
                             ("latency", "latency_ms")):
            v, b = values[metric], base.get(bkey)
            if v is not None and b and v < b * (1 - DROP_NOTICE):
                report.notices.append(
                    f"{check.name}: {metric} {fmt_metric(metric, v)} is {100 * (1 - v / b):.0f}% "
                    f"below the baseline {fmt_metric(metric, b)}: time to tighten the budget "
                    "(and --update-baseline)")


@dataclass
class CheckMeasure:
    """What one check's model measured (sent back from its child process)."""

    metrics: dict[str, Any]
    layers: list[Any]
    notices: list[str] = field(default_factory=list)


def measure_check(check: Check, measure_latency: bool, max_time_s: float,
                  memory_check: bool) -> CheckMeasure:
    """Load and count one check's model, and time it when a latency limit asks for it (a job:
    it runs in a child process, see :mod:`convcost.isolation`)."""
    import torch

    from convcost.counting.analysis import analyze_model
    from convcost.isolation import phase
    from convcost.memory import guard, model_estimate
    from convcost.sources.load import is_spec_path, load_source
    from convcost.timing.device import Numerics
    from convcost.timing.engine import TimingEngine
    from convcost.timing.harness import TimingConfig
    from convcost.timing.kernel import Kernel

    shape = None if is_spec_path(check.model) else check.input
    phase("loading the model")
    loaded = load_source(check.model, input_shape=shape, memory_check=memory_check,
                         model_args=check.model_args)
    from convcost.startup import settle

    settle()
    phase("counting the model")
    a = analyze_model(loaded.model, loaded.input_shapes,
                      make_inputs=lambda: loaded.inputs, estimated_macs=loaded.estimated_macs,
                      source=check.model, name=check.name)
    metrics: dict[str, Any] = {"params": a.params, "macs": a.macs, "paper_macs": a.paper_macs,
                               "flops": a.flops, "latency_ms": None, "model": check.model,
                               "input_shapes": a.input_shapes}
    notices: list[str] = []
    if check.latency is not None:
        lat = check.latency
        dev = lat.device
        if not measure_latency:
            metrics["latency_skip"] = "not measured (--no-time)"
        elif dev.startswith("cuda") and not torch.cuda.is_available():
            metrics["latency_skip"] = f"no CUDA device on this machine for the {dev} limit"
        else:
            n = Numerics(dev if dev != "cuda" else "cuda:0", lat.dtype,
                         channels_last=dev.startswith("cuda") and lat.dtype in ("fp16", "bf16"))
            cfg = TimingConfig(numerics=n, max_time_s=max_time_s)
            shapes = [tuple(s) for s in loaded.input_shapes]
            if lat.batch:
                shapes = [(lat.batch, *s[1:]) for s in shapes]
            est, why = model_estimate(loaded.model, shapes) if memory_check else (0, "")
            guard(est, why, what=f"{check.name}: the latency measurement", device=n.device,
                  enabled=memory_check)
            phase("timing the model", None)
            # a gate measures fresh: no latency table, no budget (the cap bounds it)
            engine = TimingEngine(cfg, budget_s=None, backend=lat.backend)
            (key,) = engine.add_group([Kernel(loaded.model, shapes, None, a.macs,
                                              f"model {check.name}", "model")], paired=False)
            engine.run()
            kr = engine.kernel(key)
            if engine.interrupted:
                raise KeyboardInterrupt
            meas = kr.measurement
            if meas is None or meas.median_ms is None:
                err = kr.error or "not measured"
                metrics["latency_failed"] = f"timing failed: {err}"
            else:
                metrics["latency_ms"] = meas.median_ms
                metrics["latency"] = {"device": dev, "dtype": lat.dtype, "iqr_ms": meas.iqr_ms,
                                      "n": meas.n, "converged": meas.converged,
                                      "backend": engine.backend_info, "setup_s": kr.setup_s}
    return CheckMeasure(metrics, a.layers, notices)


def run_budget(budget: Budget, *, measure_latency: bool = True, update_baseline: bool = False,
               baseline_path: Path | None = None, max_time_s: float = 1.0,
               memory_check: bool = True, timeout_s: float = 600.0) -> BudgetReport:
    """Measure every check's model (each in its own child process), judge every limit.

    Nothing is lost: a model that cannot be loaded, counted or timed (or whose code ends the
    process) is an ``error`` row naming why, and the other checks go on; Ctrl-C or SIGTERM stop
    after the finished checks (``report.interrupted``). A latency limit for a device that is
    absent here is skipped with a visible notice (CI usually has no GPU).
    """
    from convcost import isolation
    from convcost.errors import ConvcostError

    bpath = baseline_path or budget.baseline
    baseline = None if update_baseline else load_baseline(bpath)
    report = BudgetReport(budget=str(budget.path))
    for i, check in enumerate(budget.checks):
        try:
            m = isolation.call(measure_check, check, measure_latency, max_time_s, memory_check,
                               isolate=True, label=check.model, timeout_s=timeout_s)
        except ConvcostError as e:
            report.results.append(Result(check.name, "model", "model", None, None, "error",
                                         message=str(e)))
            report.errors.append((check.name, int(e.exit_status), str(e)))
            continue
        except KeyboardInterrupt:
            report.interrupted = True
            report.terminated = isolation.TERMINATED["flag"]
            report.not_checked = [c.name for c in budget.checks[i:]]
            break
        report.notices.extend(m.notices)
        report.metrics[check.name] = {k: v for k, v in m.metrics.items()
                                      if k not in ("latency_skip", "latency_failed")}
        evaluate_check(check, m.metrics, m.layers, baseline, bpath, report, update_baseline,
                       budget.on_unmeasured)
    return report


def limits_document(budget: Budget) -> list[dict[str, Any]]:
    """Every limit of every check, for the JSON report (written passing or not)."""
    def lims(d: dict[str, list[Limit]]) -> dict[str, Any]:
        return {m: {lim.level: {"value": lim.value, "text": lim.text, "key": lim.key,
                                "relative": lim.relative} for lim in ls} for m, ls in d.items()}
    return [{"name": c.name, "model": c.model, "limits": lims(c.limits),
             "regression": lims(c.regression),
             "layers": [{"match": ll.match, "limits": lims(ll.limits)} for ll in c.layers],
             "latency_target": None if c.latency is None else vars(c.latency)} for c in budget.checks]
