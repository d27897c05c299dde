"""Budget files (`convcost check`): parse and validate into dataclasses. See docs/budgets.md.

A budget names checks; each check is a model (any SOURCE form) with limits on params, macs,
flops and latency at an ``error`` and/or ``warn`` level, optional per-layer limits by name glob,
and optional regression limits against a stored baseline report. Counts are the same as
``analyze`` reports (MACs as fvcore counts them; FLOPs = 2 x MACs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcost.errors import BudgetFileError, InputError
from convcost.sources.lines import FileValidator
from convcost.sources.yamlio import load_yaml_file
from convcost.timing.table import PASSES
from convcost.units import parse_bytes, parse_count, parse_duration_ms, parse_percent

BUDGET_VERSION = 1
METRICS = ("params", "macs", "paper_macs", "flops", "latency", "latency_p90", "latency_p99",
           "activation_memory", "weight_memory")
DTYPES = ("fp32", "tf32", "fp16", "bf16")
LATENCY_METRICS = ("latency", "latency_p90", "latency_p99")  # ms, measured
MEMORY_METRICS = ("activation_memory", "weight_memory")  # bytes, counted
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
    pass_name: str = "inference"  # inference | training (forward + backward)


@dataclass
class LayerLimits:
    match: str
    limits: dict[str, list[Limit]]
    key: str


@dataclass
class Check:
    name: str
    model: str
    input: Any  # a shape tuple, a convcost.inputs.Example, or None (the model's default)
    limits: dict[str, list[Limit]]
    regression: dict[str, list[Limit]]
    layers: list[LayerLimits]
    latency: LatencyTarget | None
    key: str
    model_args: dict[str, Any] = field(default_factory=dict)
    apply: tuple[str, Any] | None = None  # (path, PlanFile): a plan substituted first
    dtype: str = "fp32"  # of the memory figures (the latency limit's, else the defaults')
    pass_name: str = "inference"  # of the activation memory and latency figures


UNMEASURED_POLICIES = ("error", "warn", "skip")
# a latency measured while the machine was busy: measured once more, then unmeasured if still
# busy (remeasure, the default); unmeasured at once; or judged anyway with a note (accept)
BUSY_POLICIES = ("remeasure", "unmeasured", "accept")


@dataclass
class Budget:
    path: Path
    checks: list[Check]
    baseline: Path | None
    # a latency limit whose measurement failed (export, compile, run, output check): an
    # 'error' verdict (exit 4) by default; never a silent pass
    on_unmeasured: str = "error"
    # a latency limit measured while the machine was busy (see docs/timing.md): never a pass or
    # a fail on its own; remeasure once, then unmeasured (the default)
    on_busy: str = "remeasure"


# --------------------------------------------------------------------------- parsing


def default_on_busy() -> str:
    """``on_busy`` when the file does not say: ``remeasure``, or ``accept`` where
    CONVCOST_ON_BUSY=accept (a machine known to be shared; the same variable makes analyze and
    compare quote busy figures)."""
    import os

    return "accept" if os.environ.get("CONVCOST_ON_BUSY", "").strip() == "accept" else "remeasure"


class BudgetParser(FileValidator):
    """Where we are in a budget file, to build one-line errors naming the file, line and key."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.path = path

    def err(self, msg: str, node: Any = None, key: Any = None, where: str = "") -> BudgetFileError:
        line = self.line(node, key)
        loc = f"{self.path}" + (f":{line}" if line else "")
        return BudgetFileError(f"{loc}: {where}: {msg}" if where else f"{loc}: {msg}")

    def keys(self, d: Any, allowed: tuple[str, ...], where: str) -> None:
        if not isinstance(d, dict):
            raise self.err(f"must be a mapping with keys {', '.join(allowed)}; {MINIMAL_EXAMPLE}",
                           where=where)
        k = self.unknown_key(d, allowed)
        if k is not None:
            raise self.err(f"unknown key {k!r}; allowed: {', '.join(allowed)}; "
                           f"{MINIMAL_EXAMPLE}", d, k, where)


def _quantity(p: BudgetParser, metric: str, v: Any, node: Any, key: str, where: str,
              regression: bool) -> tuple[float, bool]:
    """(value, relative) of a limit text; latency in ms; regression '+5%' or '+0.5M'."""
    try:
        if regression:
            if isinstance(v, str) and v.strip().endswith("%"):
                return parse_percent(v), True
            if isinstance(v, str):
                v = v.strip().lstrip("+")
            return _parse(metric, v), False
        return _parse(metric, v), False
    except ValueError as e:
        if regression:
            amount = ("'+2 ms'" if metric in LATENCY_METRICS else
                      "'+4MiB'" if metric in MEMORY_METRICS else "'+0.5M'")
            raise p.err(f"bad quantity {v!r} for {metric}: use a percentage such as '+5%' or an "
                        f"amount such as {amount}", node, key, where) from e
        raise p.err(f"bad quantity {v!r} for {metric}: {e}", node, key, where) from e


def _parse(metric: str, v: Any) -> float:
    """A limit's value in the metric's unit: ms for latencies, bytes for memory, else a count."""
    if metric in LATENCY_METRICS:
        return parse_duration_ms(v)
    if metric in MEMORY_METRICS:
        return parse_bytes(v)
    return parse_count(v)


def _limits(p: BudgetParser, d: Any, where: str, *, regression: bool = False,
            metrics: tuple[str, ...] = METRICS) -> dict[str, list[Limit]]:
    p.keys(d, metrics, where)
    out: dict[str, list[Limit]] = {}
    for metric, spec in d.items():
        w = f"{where}.{metric}"
        if isinstance(spec, dict):
            extra = (("device", "dtype", "batch", "backend", "pass")
                     if metric == "latency" and not regression else ())
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


def _shape(p: BudgetParser, v: Any, node: Any, key: str, where: str) -> Any:
    """A check's input: a shape ``[1, 3, 224, 224]`` (a tuple), or the ``--input`` grammar
    (docs/inputs.md): one text, or a list of texts (several inputs, ``NAME=SPEC`` keywords),
    or an inputs file (a path relative to the budget) -> :class:`~convcost.inputs.Example`."""
    texts = [v] if isinstance(v, str) else v
    if isinstance(texts, list) and texts and all(isinstance(x, str) for x in texts):
        from convcost.inputs import parse_input

        if len(texts) == 1 and texts[0].strip().lower().endswith((".yaml", ".yml")):
            texts = [str(p.file.parent / texts[0].strip())]
        try:
            return parse_input(texts)
        except InputError as e:
            raise p.err(str(e).replace("--input #1", "input", 1).replace("--input", "input", 1),
                        node, key, where) from None
    if (not isinstance(v, list) or len(v) < 2
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 or x > 1 << 20 for x in v)):
        raise p.err(f"input {repr(v)[:80]} must be a list of positive integers such as "
                    "[1, 3, 224, 224], or inputs as --input takes them, e.g. '[3x224x224]'",
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
    p = BudgetParser(path)
    p.keys(data, ("version", "defaults", "baseline", "checks", "on_unmeasured", "on_busy"), "")
    for key, allowed, default in (("on_unmeasured", UNMEASURED_POLICIES, "error"),
                                  ("on_busy", BUSY_POLICIES, default_on_busy())):
        v = data.get(key, default)
        if not isinstance(v, str) or v not in allowed:
            raise p.err(f"{key!r} is {str(v)[:40]!r}; use one of {', '.join(allowed)}", data, key)
    if data.get("version") != BUDGET_VERSION:
        raise p.err(f"'version' must be {BUDGET_VERSION} (got {data.get('version')!r})", data,
                    "version" if "version" in data else None)
    defaults = data.get("defaults") or {}
    p.keys(defaults, ("input", "device", "dtype", "batch", "backend", "pass"), "defaults")
    for key, allowed in (("dtype", DTYPES), ("pass", PASSES)):  # checked once, here
        if key in defaults and defaults[key] not in allowed:
            raise p.err(f"{key} {str(defaults[key])[:40]!r}; use {', '.join(allowed)}", defaults,
                        key, "defaults")
    checks_raw = data.get("checks")
    if not isinstance(checks_raw, list) or not checks_raw:
        raise p.err(f"'checks' must be a non-empty list; {MINIMAL_EXAMPLE}", data,
                    "checks" if "checks" in data else None)
    names: set[str] = set()
    checks = [_parse_check(p, c, f"checks[{i}]", defaults, names) for i, c in enumerate(checks_raw)]
    base = data.get("baseline")
    if base is not None and not isinstance(base, str):
        raise p.err(f"'baseline' must be a path, got {base!r}", data, "baseline")
    return Budget(path, checks, (path.parent / base) if isinstance(base, str) else None,
                  data.get("on_unmeasured", "error"), data.get("on_busy", default_on_busy()))


def _parse_check(p: BudgetParser, c: Any, where: str, defaults: dict[str, Any],
                 names: set[str]) -> Check:
    """One entry of ``checks``: its name (unique), model, input, model_args and limits."""
    p.keys(c, ("name", "model", "model_args", "input", "limits", "layers", "regression",
               "apply"), where)
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
    d_input = _shape(p, defaults["input"], defaults, "input", "defaults") if "input" in defaults \
        else None
    inp = _shape(p, c["input"], c, "input", where) if "input" in c else d_input
    margs = c.get("model_args") or {}
    if not isinstance(margs, dict) or any(
            not isinstance(k, str) or not k.isidentifier() or isinstance(v, (list, dict))
            for k, v in margs.items()):
        raise p.err(f"'model_args' must map argument names to scalars, e.g. {{aux_logits: "
                    f"false}}; got {margs!r}", c, "model_args", where)
    limits = _limits(p, c.get("limits") or {}, f"{where}.limits")
    regression = _limits(p, c.get("regression") or {}, f"{where}.regression", regression=True)
    layers = _layer_limits(p, c, where)
    if not (limits or regression or layers):
        raise p.err("has no 'limits', 'layers' or 'regression': nothing to check", c, None, where)
    lat = None
    if any(m in limits or m in regression for m in LATENCY_METRICS):
        lat = _latency_target(p, c, where, defaults)
    dtype = lat.dtype if lat is not None else str(defaults.get("dtype", "fp32"))
    pass_name = lat.pass_name if lat is not None else str(defaults.get("pass", "inference"))
    return Check(name, _resolve_model(model, p.path), inp, limits, regression, layers, lat,
                 where, dict(margs), _plan(p, c, where), dtype, pass_name)


def _plan(p: BudgetParser, c: Any, where: str) -> tuple[str, Any] | None:
    """``apply: plan.yaml`` (relative to the budget file): read and validated now."""
    if "apply" not in c:
        return None
    from convcost.plan.planfile import read_plan

    raw = c["apply"]
    if not isinstance(raw, str) or not raw:
        raise p.err("'apply' must be the path of a plan file (convcost plan -o plan.yaml)", c,
                    "apply", where)
    path = Path(raw) if Path(raw).is_absolute() else p.path.parent / raw
    try:
        return str(path), read_plan(path)
    except InputError as e:
        raise p.err(f"'apply': {e}", c, "apply", where) from e


def _layer_limits(p: BudgetParser, c: Any, where: str) -> list[LayerLimits]:
    layers_raw = c.get("layers") or []
    if not isinstance(layers_raw, list):
        raise p.err(f"'layers' must be a list of {{match: GLOB, params/macs/flops: LIMIT}} "
                    f"mappings, got {layers_raw!r}", c, "layers", where)
    layers = []
    for j, lay in enumerate(layers_raw):
        lw = f"{where}.layers[{j}]"
        p.keys(lay, ("match", "params", "macs", "flops"), lw)
        if not isinstance(lay.get("match"), str):
            raise p.err("needs 'match': a layer-name glob such as 'layer4.*'", lay, None, lw)
        lims = _limits(p, {k: v for k, v in lay.items() if k != "match"}, lw,
                       metrics=("params", "macs", "flops"))
        layers.append(LayerLimits(lay["match"], lims, lw))
    return layers


def _latency_target(p: BudgetParser, c: Any, where: str,
                    defaults: dict[str, Any]) -> LatencyTarget:
    """Where a latency limit is measured: device, dtype, batch and backend (the limit's own,
    else the budget's defaults), each validated."""
    lat_spec = (c.get("limits") or {}).get("latency")
    src = lat_spec if isinstance(lat_spec, dict) else {}
    lat = LatencyTarget(device=str(src.get("device", defaults.get("device", "cpu"))),
                        dtype=str(src.get("dtype", defaults.get("dtype", "fp32"))),
                        batch=src.get("batch", defaults.get("batch")),
                        backend=str(src.get("backend", defaults.get("backend", "eager"))),
                        pass_name=str(src.get("pass", defaults.get("pass", "inference"))))
    lw = f"{where}.limits.latency"
    if lat.pass_name not in PASSES:
        raise p.err(f"latency pass {lat.pass_name!r}; use {' or '.join(PASSES)}", src or c,
                    "pass", lw)
    if lat.dtype not in DTYPES:
        raise p.err(f"latency dtype {lat.dtype!r}; use fp32, tf32, fp16 or bf16", src or c,
                    "dtype", lw)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", lat.device):
        raise p.err(f"latency device {lat.device!r}; use cpu, cuda or cuda:N", src or c,
                    "device", lw)
    _check_backend(p, lat, src or c, lw)
    b = lat.batch
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 1 << 20):
        raise p.err(f"latency batch {b!r}: use a positive integer (at most {1 << 20})",
                    src or c, "batch", lw)
    return lat


def _check_backend(p: BudgetParser, lat: LatencyTarget, node: Any, where: str) -> None:
    """One backend per latency limit, known and installed (its extra named when missing)."""
    from convcost.timing.backends import BACKENDS, parse_backends

    if lat.backend not in BACKENDS:
        raise p.err(f"latency backend {lat.backend!r}; use one of {', '.join(BACKENDS)}",
                    node, "backend", where)
    if lat.pass_name == "training" and not BACKENDS[lat.backend].trains:
        raise p.err(f"latency backend {lat.backend!r} runs no backward: a training latency "
                    "is measured on eager or inductor", node, "backend", where)
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



def limits_document(budget: Budget) -> list[dict[str, Any]]:
    """Every limit of every check, for the JSON report (written passing or not)."""
    def lims(d: dict[str, list[Limit]]) -> dict[str, Any]:
        return {m: {lim.level: {"value": lim.value, "text": lim.text, "key": lim.key,
                                "relative": lim.relative} for lim in ls} for m, ls in d.items()}
    return [{"name": c.name, "model": c.model, "limits": lims(c.limits),
             "regression": lims(c.regression),
             "layers": [{"match": ll.match, "limits": lims(ll.limits)} for ll in c.layers],
             "latency_target": None if c.latency is None else vars(c.latency)} for c in budget.checks]
