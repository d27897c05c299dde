"""`compare`: build each variant of each selected conv as real modules, count it with fvcore, and
put the counted ratio next to the closed-form one; optionally substitute whole models.

Ratios are ``variant / baseline``; the baseline of a layer is the layer as it is in the source
(for the built-in default layer: a dense conv). The analytic ratio is the closed form of the
weights (the papers' convention); with a bias the counted params ratio differs by the bias terms,
which the report explains. Counted and closed form must agree exactly, else a warning is shown.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from convcost.counting.analysis import LayerRow, analyze_model, given_call
from convcost.counting.counters import META, count_fvcore, count_meta
from convcost.counting.meta import MetaCountError
from convcost.errors import first_line
from convcost.figures import LatencyFigure, TimedRow
from convcost.inputs import as_call, as_example
from convcost.variants.catalogue import (
    DENSE,
    FORMULAS,
    ClosedForm,
    ConvLayer,
    Skip,
    Variant,
    build,
    closed_form,
    conv_module,
    expand_variants,
    formula,
    original_closed_form,
    paper_ratio,
    same_as_original,
    valid_groups,
)

ORIGINAL = "original"
DEFAULT_LAYER = ConvLayer(cin=64, cout=64, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                          in_hw=(56, 56), batch=32)


@dataclass
class CompareRow(TimedRow):
    """One variant of one layer (or of the whole model when ``layer`` is ``"(model)"``).

    Counting fills the counts; latency lives in ``backends`` (one typed figure per backend, in
    run order), attached after timing by :meth:`CompareReport.with_figures`. The ``latency_*``
    properties read the first backend's figure."""

    layer: str
    variant: str
    groups: int | None
    params: int | None = None
    macs: int | None = None
    ratio_params: float | None = None
    ratio_macs: float | None = None
    analytic_params: float | None = None
    analytic_macs: float | None = None
    formula: str | None = None
    paper: float | None = None
    skipped: str | None = None
    warnings: list[str] = field(default_factory=list)
    substituted: int | None = None  # model rows: how many selected convs were replaced
    kept: list[tuple[str, str]] = field(default_factory=list)  # model rows: (layer, why kept)
    backends: dict[str, LatencyFigure] = field(default_factory=dict)  # per backend, in run order
    # training pass: the backward's MACs (a layer's with its input's gradient; a model's step)
    backward_macs: int | None = None
    # bytes at the report's dtype: weight_bytes; a layer's activation_bytes (its output) and
    # access_bytes (ShuffleNet V2's memory access cost); a model's peak_activation_bytes
    memory: dict[str, int | None] = field(default_factory=dict)

    @property
    def ratio_latency(self) -> float | None:
        """Paired: the median of per-round ratios to the original."""
        return self.figure.ratio_latency

    @property
    def latency_ci(self) -> tuple[float, float] | None:
        """Bootstrap 95% interval of :attr:`ratio_latency`."""
        return self.figure.latency_ci

    @property
    def latency_rounds(self) -> int | None:
        return self.figure.latency_rounds

    @property
    def latency_source(self) -> str | None:
        return self.figure.latency_source

    @property
    def cached_at(self) -> str | None:
        return self.figure.cached_at

    @property
    def flops(self) -> int | None:
        return None if self.macs is None else 2 * self.macs

    @property
    def label(self) -> str:
        if self.variant != ORIGINAL:
            return Variant(self.variant, self.groups).label
        return f"{ORIGINAL} (dense)" if self.groups == 1 else ORIGINAL


@dataclass
class LayerCompare:
    name: str
    layer: ConvLayer
    baseline: CompareRow
    rows: list[CompareRow]

    @property
    def all_rows(self) -> list[CompareRow]:
        """The original first, then the variants."""
        return [self.baseline, *self.rows]


# Where a row sits in a report: (layer index, row index in LayerCompare.all_rows), or
# (MODEL_ROWS, index in [model_baseline, *model_rows]). Timing keys its figures by it.
RowKey = tuple[int, int]
MODEL_ROWS = -1


@dataclass
class CompareReport:
    source: str
    name: str
    variants: list[Variant]
    layers: list[LayerCompare]
    model_baseline: CompareRow | None = None
    model_rows: list[CompareRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dtype: str = "fp32"
    device: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None  # the timing run's summary (docs/json.md)
    pass_name: str = "inference"  # inference | training (what the timings and counts are of)

    @property
    def is_model(self) -> bool:
        return self.model_baseline is not None

    def keyed_rows(self) -> list[tuple[RowKey, CompareRow]]:
        """Every row with its key: each layer's rows, then the whole-model rows."""
        out = [((i, j), r) for i, lc in enumerate(self.layers) for j, r in enumerate(lc.all_rows)]
        if self.model_baseline is not None:
            out += [((MODEL_ROWS, j), r)
                    for j, r in enumerate([self.model_baseline, *self.model_rows])]
        return out

    def with_figures(self, figures: Mapping[RowKey, dict[str, LatencyFigure]], *,
                     device: dict[str, Any] | None, timing: dict[str, Any] | None,
                     dtype: str | None = None) -> CompareReport:
        """A new report with each row's figures attached (this one is left as it is)."""
        def row(key: RowKey, r: CompareRow) -> CompareRow:
            return replace(r, backends=dict(figures.get(key, {})))

        layers = [replace(lc, baseline=row((i, 0), lc.baseline),
                          rows=[row((i, j), r) for j, r in enumerate(lc.rows, 1)])
                  for i, lc in enumerate(self.layers)]
        mb = self.model_baseline
        return replace(self, layers=layers, device=device, timing=timing,
                       dtype=dtype or self.dtype,
                       model_baseline=row((MODEL_ROWS, 0), mb) if mb is not None else None,
                       model_rows=[row((MODEL_ROWS, j), r)
                                   for j, r in enumerate(self.model_rows, 1)])


class VariantCounter:
    """fvcore counts of single modules, cached by (layer, variant): a model repeats shapes.

    A conv's MACs are linear in the batch (B x H' x W' x K^2 x C/g x N), so each module is
    counted by fvcore at batch 1 and scaled exactly by the layer's batch: the cost of counting
    does not grow with the batch. The closed forms check the result at the full batch."""

    def __init__(self) -> None:
        self.cache: dict[tuple[ConvLayer, Variant | None], tuple[int, int]] = {}
        # the modules counted, kept for timing: per (layer, variant), the original under None
        self.built: dict[tuple[ConvLayer, Variant | None], nn.Module] = {}
        self.models: dict[Variant, nn.Module] = {}  # whole models with a variant substituted

    def build(self, layer: ConvLayer, v: Variant) -> nn.Module:
        """The variant's module (built once per layer shape and variant; raises Skip)."""
        key = (layer, v)
        if key not in self.built:
            self.built[key] = build(layer, v)
        return self.built[key]

    def module(self, layer: ConvLayer, v: Variant | None) -> nn.Module:
        """The module counted for (layer, variant), built now if it was not (timing's
        look-up: the original under None, a plain conv of the layer's shape if none was)."""
        if (layer, v) in self.built:
            return self.built[(layer, v)]
        return conv_module(layer) if v is None else self.build(layer, v)

    def count(self, layer: ConvLayer, v: Variant | None, module: nn.Module) -> tuple[int, int]:
        key = (layer, v)
        if key not in self.cache:
            x = torch.zeros((1, *layer.input_shape[1:]))
            c = count_fvcore(module, (x,))
            self.cache[key] = (c.params, c.macs * layer.batch)
        return self.cache[key]

    def prefetch(self, items: list[tuple[ConvLayer, Variant | None, nn.Module]]) -> None:
        """Count many (layer, variant) modules in one pass on meta tensors (fvcore's formulas,
        nothing computed) instead of one fvcore trace each; anything that cannot run there is
        left to :meth:`count`. For models counted on meta: a 1,000-layer compare has ~1,200
        such modules."""
        todo: dict[tuple[ConvLayer, Variant | None], nn.Module] = {}
        for layer, v, m in items:
            if (layer, v) not in self.cache and (layer, v) not in todo:
                todo[(layer, v)] = m
        if not todo:
            return
        keys = list(todo)
        bundle = _Bundle([todo[k] for k in keys])
        try:
            c, _ = count_meta(bundle, [(1, *k[0].input_shape[1:]) for k in keys])
        except Exception:  # MetaCountError or a module meta cannot run: counted one by one
            return
        for i, (layer, v) in enumerate(keys):
            name = f"parts.{i}"
            self.cache[(layer, v)] = (c.params_by_module.get(name, 0),
                                      c.by_module.get(name, 0) * layer.batch)


class _Bundle(nn.Module):
    """Modules side by side, each on its own input: one forward counts them all."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m, x in zip(self.parts, xs, strict=True)]


def _ratio(a: int | None, b: int | None) -> float | None:
    return None if a is None or not b else a / b


def compare_layer(name: str, layer: ConvLayer, variants: list[Variant], counter: VariantCounter | None = None,
                  original: nn.Module | None = None) -> LayerCompare:
    """Count every variant of one conv and its ratios to the layer as it is."""
    counter = counter or VariantCounter()
    orig_mod = original if original is not None else conv_module(layer)
    counter.built.setdefault((layer, None), orig_mod)
    bp, bm = counter.count(layer, None, orig_mod)
    base_cf = original_closed_form(layer)
    base = CompareRow(name, ORIGINAL, layer.groups, bp, bm, 1.0, 1.0, 1.0, 1.0)
    _check_closed_form(base, base_cf, bp, bm)
    rows = []
    for v in variants:
        if v.name == DENSE and layer.groups == 1:
            continue  # the original row already is the dense conv
        row = CompareRow(name, v.name, v.groups, formula=formula(layer, v))
        if same_as_original(layer, v):
            row.skipped = "the layer already is this conv (it is the original row)"
            rows.append(row)
            continue
        try:
            module = counter.build(layer, v)
        except Skip as e:
            row.skipped = str(e)
            rows.append(row)
            continue
        try:
            p, m = counter.count(layer, v, module)
        except Exception as e:  # fvcore failed on this variant: report it, go on
            row.skipped = f"could not be counted: {first_line(e)}"
            rows.append(row)
            continue
        cf = closed_form(layer, v)
        row.params, row.macs = p, m
        row.ratio_params, row.ratio_macs = _ratio(p, bp), _ratio(m, bm)
        row.analytic_params = cf.weights / base_cf.weights
        row.analytic_macs = cf.macs / base_cf.macs if base_cf.macs else None
        row.paper = float(paper_ratio(layer, v))
        _check_closed_form(row, cf, p, m)
        if layer.bias and row.ratio_params != row.analytic_params:
            row.warnings.append(f"the layer has a bias ({layer.cout} params, no MACs): counted "
                                "params include it, the analytic ratio is weights only")
        elif not layer.bias and (row.ratio_params != row.analytic_params
                                 or row.ratio_macs != row.analytic_macs):
            row.warnings.append(f"counted ratio (params x{row.ratio_params:.6g}, MACs "
                                f"x{row.ratio_macs:.6g}) differs from the closed form (params "
                                f"x{row.analytic_params:.6g}, MACs x{row.analytic_macs:.6g})")
        rows.append(row)
    return LayerCompare(name, layer, base, rows)


def _check_closed_form(row: CompareRow, cf: ClosedForm, params: int, macs: int) -> None:
    if params != cf.params or macs != cf.macs:
        row.warnings.append(f"fvcore counted {params} params / {macs} MACs but the closed form "
                            f"gives {cf.params} / {cf.macs}")


def compare_default(layer: ConvLayer = DEFAULT_LAYER, variants: list[Variant] | None = None,
                    counter: VariantCounter | None = None) -> CompareReport:
    """Compare the variants of one standalone conv (the built-in default unless given);
    ``counter`` keeps the modules counted (for timing)."""
    vs = variants or expand_variants(("grouped", "depthwise", "separable"), (1, 2, 4, 8))
    lc = compare_layer("layer", layer, vs, counter)
    return CompareReport(source="built-in layer", name=layer.describe(), variants=vs, layers=[lc])


SUBSTITUTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def select_convs(rows: list[LayerRow], modules: dict[str, nn.Module], globs: tuple[str, ...],
                 kernel_sizes: tuple[int, ...]) -> tuple[list[LayerRow], list[str]]:
    """Conv1d/2d/3d rows matching any ``--layers`` glob and any ``--kernel-size`` (all when
    empty), and a note for each conv-like layer that matched but cannot be substituted."""
    out, not_substituted = [], []
    for r in rows:
        m = modules.get(r.name)
        if globs and not any(fnmatch.fnmatchcase(r.name, g) for g in globs):
            continue
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            not_substituted.append(f"{r.name} ({type(m).__name__}): a transposed conv; the "
                                   "catalogue replaces Conv1d/2d/3d only")
            continue
        if not isinstance(m, SUBSTITUTED):
            continue
        if r.in_shape is None or len(r.in_shape) != m.weight.dim():
            not_substituted.append(f"{r.name} ({type(m).__name__}): "
                                   + ("never called" if r.in_shape is None else
                                      f"unbatched input {r.in_shape}"))
            continue
        if kernel_sizes and not (len(set(m.kernel_size)) == 1
                                 and m.kernel_size[0] in kernel_sizes):
            continue
        out.append(r)
    return out, not_substituted


def _shallow(m: nn.Module) -> nn.Module:
    """A new module object sharing ``m``'s parameters, buffers and children (its own child table,
    so replacing a child leaves ``m`` untouched)."""
    c = copy.copy(m)
    c._modules = type(m._modules)(m._modules)
    return c


def with_replacements(model: nn.Module, new: dict[str, nn.Module]) -> nn.Module:
    """``model`` with the submodules named in ``new`` replaced: only the modules on the paths to
    them are copied (shallowly); every other module, and every weight, is shared with ``model``,
    which is never changed. No deep copy: a ResNet-50 variant costs microseconds, not a copy of
    its 25 M weights."""
    root = _shallow(model)
    copied = {id(root)}
    for qualname, module in new.items():
        *path, leaf = qualname.split(".")
        parent = root
        for part in path:
            child = parent._modules[part]
            if child is None:
                raise KeyError(qualname)
            if id(child) not in copied:
                child = _shallow(child)
                parent._modules[part] = child
                copied.add(id(child))
            parent = child
        if leaf not in parent._modules:
            raise KeyError(qualname)
        parent._modules[leaf] = module
    return root


class NothingSelected(Skip):
    """No conv of the model passes the selection (layer-name globs, kernel sizes); the
    caller words it in its own terms (the command line names its options)."""

    def __init__(self, globs: tuple[str, ...], kernel_sizes: tuple[int, ...],
                 not_substituted: list[str]) -> None:
        self.globs, self.kernel_sizes, self.not_substituted = globs, kernel_sizes, not_substituted
        super().__init__("no Conv1d/Conv2d/Conv3d layer matches the selection")


def _prefetch_on_meta(counter: VariantCounter, selected: list[LayerRow],
                      modules: dict[str, nn.Module],
                      variant_names: tuple[str, ...], groups: tuple[int, ...] | None) -> None:
    """Count the variants of every selected conv in one meta pass (not one trace each)."""
    items: list[tuple[ConvLayer, Variant | None, nn.Module]] = []
    for r in selected:
        layer = ConvLayer.from_module(modules[r.name], r.in_shape)
        items.append((layer, None, modules[r.name]))
        gs = tuple(groups) if groups is not None else tuple(valid_groups(layer))
        for v in expand_variants(variant_names, gs):
            if same_as_original(layer, v) or (v.name == DENSE and layer.groups == 1):
                continue
            try:
                items.append((layer, v, counter.build(layer, v)))
            except Skip:
                continue
    counter.prefetch(items)


def compare_model(model: nn.Module, inputs: Any, *, source: str, name: str,
                  variant_names: tuple[str, ...], groups: tuple[int, ...] | None,
                  globs: tuple[str, ...] = (), kernel_sizes: tuple[int, ...] = (),
                  whole_model: bool = True, count_on: str = "auto",
                  make_inputs: Callable[[], Any] | None = None,
                  estimated_macs: int | None = None,
                  progress: Callable[[str], None] | None = None,
                  counter: VariantCounter | None = None,
                  substitute_whole: bool = True) -> CompareReport:
    """Per-layer variant rows for the selected convs, and whole-model rows (every selected conv
    replaced by the variant where it is valid; the others kept and listed).

    ``inputs`` are example tensors or their shapes (see :func:`analyze_model`; the substituted
    models are counted the same way as the original). ``groups`` None means ``all``: every valid
    divisor of each layer (model rows take the union). ``counter`` keeps the modules counted,
    substituted models included, for timing to measure the same objects. ``substitute_whole``
    False keeps only the original model's row (the planner substitutes per layer itself).
    """
    analysis = analyze_model(model, inputs, source=source, name=name, count_on=count_on,
                             pass_costs=False,
                             make_inputs=make_inputs, estimated_macs=estimated_macs)
    how = META if analysis.counter == META else "real"
    example = as_example(inputs)
    real: list[Any] = []

    def count_whole(m: nn.Module) -> Any:
        """Count a substituted model like the original (meta tensors, or real ones)."""
        if how == META:
            try:
                return count_meta(m, example)[0]
            except MetaCountError:
                pass
        if not real:
            given = given_call(inputs)
            real.append(given or (as_call(make_inputs()) if make_inputs is not None
                                  else example.make()))
        return count_fvcore(m, real[0])

    modules = dict(model.named_modules())
    selected, not_substituted = select_convs(analysis.layers, modules, globs, kernel_sizes)
    notes = [f"not substituted: {x}" for x in not_substituted]
    if not selected:
        raise NothingSelected(globs, kernel_sizes, not_substituted)
    counter = counter if counter is not None else VariantCounter()
    if how == META:  # the variants of every selected conv, counted in one meta pass
        _prefetch_on_meta(counter, selected, modules, variant_names, groups)
    layers: list[LayerCompare] = []
    union_groups: list[int] = []
    for r in selected:
        layer = ConvLayer.from_module(modules[r.name], r.in_shape)
        gs = tuple(groups) if groups is not None else tuple(valid_groups(layer))
        union_groups += [g for g in gs if g not in union_groups]
        if progress:
            progress(r.name)
        layers.append(compare_layer(r.name, layer, expand_variants(variant_names, gs), counter,
                                    modules[r.name]))
    model_variants = expand_variants(variant_names, tuple(sorted(union_groups)))
    if all(lc.layer.groups == 1 for lc in layers):  # "dense" would be the original model again
        model_variants = [v for v in model_variants if v.name != DENSE]
    report = CompareReport(source=source, name=name, variants=model_variants, layers=layers,
                           notes=notes, dtype="fp32")
    if whole_model:
        report.model_baseline = CompareRow("(model)", ORIGINAL, None, analysis.params,
                                           analysis.macs, 1.0, 1.0, 1.0, 1.0)
        for v in model_variants if substitute_whole else []:
            if progress:
                progress(f"model: {v.label}")
            report.model_rows.append(_model_row(model, count_whole, layers, v, analysis.params,
                                                analysis.macs, counter))
    return report


def substitute(model: nn.Module, layers: list[LayerCompare],
               v: Variant) -> tuple[nn.Module, list[str], list[tuple[str, str]]]:
    """``model`` with each layer replaced by variant ``v`` where valid (``model`` unchanged; the
    layers not replaced and their weights are shared, see :func:`with_replacements`).

    Returns (new model, substituted layer names, [(kept layer, reason)]).
    """
    replace: dict[str, nn.Module] = {}
    kept = []
    for lc in layers:
        if same_as_original(lc.layer, v):
            kept.append((lc.name, "already is this conv"))
            continue
        try:
            replace[lc.name] = build(lc.layer, v).eval()
        except Skip as e:
            kept.append((lc.name, str(e)))
    return with_replacements(model, replace), list(replace), kept


def _model_row(model: nn.Module, count_whole: Callable[[nn.Module], Any],
               layers: list[LayerCompare], v: Variant, base_params: int,
               base_macs: int, counter: VariantCounter) -> CompareRow:
    row = CompareRow("(model)", v.name, v.groups, formula=FORMULAS.get(v.name))  # vs dense
    new, done, kept = substitute(model, layers, v)
    row.substituted, row.kept = len(done), kept
    if done:
        counter.models[v] = new
    if not done:
        row.skipped = f"no selected layer accepts it ({kept[0][1]})" if kept else "no layer selected"
        return row
    try:
        c = count_whole(new)
    except Exception as e:
        row.skipped = f"the substituted model could not be counted: {type(e).__name__}: {e}"[:300]
        return row
    row.params, row.macs = c.params, c.macs
    row.ratio_params, row.ratio_macs = _ratio(c.params, base_params), _ratio(c.macs, base_macs)
    # closed form over the selected convs only (substituted ones as the variant, kept as they are)
    by = {lc.name: lc for lc in layers}
    cf_new_w = cf_new_m = cf_old_w = cf_old_m = 0
    delta_params = 0
    for lc in layers:
        old = original_closed_form(lc.layer)
        cf_old_w += old.weights
        cf_old_m += old.macs
        if lc.name in done:
            cf = closed_form(lc.layer, v)
            vrow = next((r for r in by[lc.name].rows if r.variant == v.name and r.groups == v.groups),
                        lc.baseline)  # a dense variant of a dense layer is its original row
            delta_params += (vrow.params or 0) - (lc.baseline.params or 0)
        else:
            cf = old
        cf_new_w += cf.weights
        cf_new_m += cf.macs
    row.analytic_params = cf_new_w / cf_old_w
    row.analytic_macs = cf_new_m / cf_old_m if cf_old_m else None
    if c.params != base_params + delta_params:
        row.warnings.append(f"substituted model has {c.params} params but the layer rows sum to "
                            f"{base_params + delta_params}")
    if kept:
        row.warnings.append(f"{len(kept)} of {len(layers)} selected convs kept as they are "
                            f"(e.g. {kept[0][0]}: {kept[0][1]})")
    return row



def with_costs(report: CompareReport, built: VariantCounter, model: nn.Module | None,
               inputs: Any, *, dtype: str, training: bool) -> CompareReport:
    """A new report whose rows carry memory figures at ``dtype`` (and, ``training``, the
    backward's MACs): each layer row's module on its input, on meta tensors; each whole-model
    row's model (weights, the pass's peak activation memory, the training step's backward)."""
    from convcost.counting.passes import itemsize, model_cost_row, module_cost

    size = itemsize(dtype)

    def layer_row(lc: LayerCompare, r: CompareRow) -> CompareRow:
        if r.skipped:
            return r
        v = None if r.variant == ORIGINAL else Variant(r.variant, r.groups)
        c = module_cost(built.module(lc.layer, v), [lc.layer.input_shape], backward=training)
        if c is None:
            return r
        d = c.to_dict(size)
        return replace(r, backward_macs=d.pop("backward_macs"), memory=d)

    layers = [replace(lc, baseline=layer_row(lc, lc.baseline),
                      rows=[layer_row(lc, r) for r in lc.rows]) for lc in report.layers]
    out = replace(report, layers=layers)
    if report.model_baseline is None or model is None or inputs is None:
        return out
    example = as_example(inputs)

    def model_row(r: CompareRow, m: nn.Module | None) -> CompareRow:
        if r.skipped or m is None:
            return r
        bwd, mem = model_cost_row(m, example, dtype, training)
        return replace(r, backward_macs=bwd, memory=mem)

    base = model_row(report.model_baseline, model)
    rows = [model_row(r, None if r.skipped else built.models.get(Variant(r.variant, r.groups))
                      or substitute(model, report.layers, Variant(r.variant, r.groups))[0])
            for r in report.model_rows]
    return replace(out, model_baseline=base, model_rows=rows)
