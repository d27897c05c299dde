"""`analyze`: per-layer and per-model params and MACs of a loaded model (no printing here)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from convcost import __version__
from convcost.counting.counters import (
    FVCORE,
    META,
    Counts,
    count_flop_counter,
    count_fvcore,
    count_meta,
    paper_macs,
)
from convcost.counting.inventory import (
    ForwardError,
    ModuleRecord,
    ParamUse,
    ShapeRecorder,
    called_names,
    describe,
    is_leaf,
    record_modules,
    uncalled_modules,
)
from convcost.counting.passes import ModelPass, model_pass
from convcost.errors import ModelError, first_line
from convcost.figures import LatencyFigure, ModelLatency, TimedRow
from convcost.inputs import Call, as_call, as_example

SCHEMA_VERSION = 1

CONVENTIONS = {
    "macs": "MAC = one fused multiply-add, as fvcore counts a 'flop'; totals.macs: every counted "
            "operator (fvcore's convention: conv, linear, matmul, attention, batch/layer/group "
            "norm, adaptive pooling, upsampling)",
    "paper_macs": "totals.paper_macs: conv + linear + matmul/attention MACs only (the convention "
                  "of papers and of torchvision's meta['_ops'], whose 'GFLOPS' are 1e9 MACs)",
    "flops": "FLOPs = 2 x MACs (what torch.utils.flop_counter reports)",
    "params": "trainable parameters (numel summed); buffers such as BN running stats excluded; "
              "params_never_called: those of modules that never ran in the forward (included)",
    "bias": "a bias adds out_channels params and no MACs",
    "latency_ms": "median wall time per forward call in milliseconds (null when not timed)",
}


@dataclass
class LayerRow(TimedRow):
    """One reported layer (a leaf module, or a module's own work outside its children); when
    timed, its kernel timed alone, per backend (``latency_ms``: the first backend's)."""

    name: str
    op: str
    kind: str
    in_shape: list[int] | None
    out_shape: list[int] | None
    params: int
    macs: int
    groups: int | None = None
    kernel: list[int] | None = None
    stride: list[int] | None = None
    padding: list[int] | None = None
    dilation: list[int] | None = None
    bias: bool | None = None
    calls: int = 1
    backends: dict[str, LatencyFigure] = field(default_factory=dict)  # when timed, run order
    # training pass: the MACs of this layer's backward in the model's training step (None for
    # inference, and for rows other than conv/linear)
    backward_macs: int | None = None

    @property
    def flops(self) -> int:
        """FLOPs = 2 x MACs."""
        return 2 * self.macs

    def memory(self, itemsize: int) -> dict[str, int | None]:
        """Bytes at ``itemsize`` bytes per element: weights (parameters), activation (the
        output, per call) and, for a conv or linear, the memory access cost of ShuffleNet V2 over
        its calls (input + output + weight elements per call; bias excluded, as the formula)."""
        out = math.prod(self.out_shape or [])
        access = None
        if self.op in ("conv", "linear") and self.in_shape and self.out_shape:
            bias = (self.out_shape[1] if self.op == "conv" else self.out_shape[-1]) \
                if self.bias else 0
            access = self.calls * (math.prod(self.in_shape) + out + self.params - bias)
        return {"weight_bytes": self.params * itemsize,
                "activation_bytes": out * itemsize if self.out_shape else None,
                "access_bytes": access * itemsize if access is not None else None,
                "access_elements": access}



@dataclass
class ModuleNode:
    """A node of the module hierarchy (for ``--depth``): params and MACs including children."""

    name: str
    type: str
    depth: int
    params: int
    macs: int
    out_shape: list[int] | None
    called: bool = True


@dataclass
class AnalysisReport:
    """Everything ``analyze`` reports; rendering lives in :mod:`convcost.report.analyze`."""

    source: str
    name: str
    input_shapes: list[list[int]]
    dtype: str
    params: int
    macs: int
    by_operator: dict[str, int]
    unsupported_ops: dict[str, int]
    layers: list[LayerRow]
    hierarchy: list[ModuleNode] = field(default_factory=list)
    counter: str = FVCORE
    notes: list[str] = field(default_factory=list)
    device: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None  # the timing run's summary (docs/json.md)
    never_called: list[tuple[str, int]] = field(default_factory=list)  # (module, its params)
    backends: dict[str, ModelLatency] = field(default_factory=dict)  # whole model, run order
    inputs: str = ""  # the call's structure when not plain tensors (Example.text())
    pass_name: str = "inference"  # inference | training (what the counts and timings are of)
    backward_macs: int | None = None  # training: the training step's backward MACs
    peak_activation_bytes: int | None = None  # the pass's forward, on meta tensors

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def latency_ms(self) -> float | None:
        """The whole model's latency on the first backend (ms per call), when timed."""
        first = next(iter(self.backends.values()), None)
        return first.latency_ms if first is not None else None

    def with_figures(self, layers: Mapping[int, dict[str, LatencyFigure]],
                     model: dict[str, ModelLatency], *, device: dict[str, Any] | None,
                     timing: dict[str, Any] | None) -> AnalysisReport:
        """A new report with the timing figures attached: per layer row (by index), per
        backend, and the whole model's (this one is left as it is)."""
        rows = [replace(r, backends=dict(layers[i])) if i in layers else r
                for i, r in enumerate(self.layers)]
        return replace(self, layers=rows, backends=dict(model), device=device, timing=timing)

    @property
    def paper_macs(self) -> int:
        """Conv + linear + matmul/attention MACs (the papers' and torchvision's convention)."""
        return paper_macs(self.by_operator)

    @property
    def params_never_called(self) -> int:
        """Parameters of modules that never ran in the forward (e.g. auxiliary heads)."""
        return sum(p for _, p in self.never_called)


def _tolist(v: Any) -> list[int] | None:
    if v is None:
        return None
    return [int(x) for x in v] if isinstance(v, (tuple, list)) else [int(v)]


def _row(name: str, rec: ModuleRecord | None, m: nn.Module, params: int, macs: int) -> LayerRow:
    in_s = rec.in_shape if rec else None
    out_s = rec.out_shape if rec else None
    op, kind = describe(m, in_s, out_s)
    row = LayerRow(name=name, op=op, kind=kind if rec else (kind + " (not called)").strip(),
                   in_shape=in_s, out_shape=out_s, params=params, macs=macs,
                   calls=rec.calls if rec else 0)
    if op in ("conv", "conv_transpose"):
        row.groups = int(m.groups)
        row.kernel = _tolist(m.kernel_size)
        row.stride = _tolist(m.stride)
        row.padding = _tolist(m.padding) if not isinstance(m.padding, str) else None
        row.dilation = _tolist(m.dilation)
        row.bias = m.bias is not None
    return row


def build_rows(model: nn.Module, records: dict[str, ModuleRecord], counts: Counts) -> list[LayerRow]:
    """Leaf rows in execution order; a non-leaf module's own params/MACs (work done in its own
    ``forward``, e.g. a residual add or a functional call) get a row ``NAME (own)`` so that the
    rows always sum to the totals.
    """
    mods = dict(model.named_modules())
    rows: list[LayerRow] = []
    pbm, mbm = counts.params_by_module, counts.by_module
    children_of: dict[str, list[str]] = {}
    for name in mods:
        if name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            children_of.setdefault(parent, []).append(name)
    called = [n for n in records if is_leaf(mods[n])]
    uncalled = [n for n, m in mods.items() if is_leaf(m) and n not in records and pbm.get(n, 0)]
    for name in called + uncalled:
        rows.append(_row(name, records.get(name), mods[name], pbm.get(name, 0), mbm.get(name, 0)))
    # own work of non-leaf modules (including the root)
    for name, m in mods.items():
        if is_leaf(m):
            continue
        kids = children_of.get(name, [])
        own_p = pbm.get(name, 0) - sum(pbm.get(k, 0) for k in kids)
        own_m = mbm.get(name, 0) - sum(mbm.get(k, 0) for k in kids)
        if own_p or own_m:
            rec = records.get(name)
            op, kind = describe(m)
            rows.append(LayerRow(name=f"{name} (own)" if name else "(model)", op=op, kind=kind,
                                 in_shape=rec.in_shape if rec else None,
                                 out_shape=rec.out_shape if rec else None, params=own_p,
                                 macs=own_m, calls=rec.calls if rec else 0))
    return rows


def build_hierarchy(model: nn.Module, records: dict[str, ModuleRecord],
                    counts: Counts) -> list[ModuleNode]:
    """Every module with its inclusive params and MACs, in definition order."""
    out = []
    for name, m in model.named_modules():
        rec = records.get(name)
        out.append(ModuleNode(name=name, type=type(m).__name__,
                              depth=0 if not name else name.count(".") + 1,
                              params=counts.params_by_module.get(name, 0),
                              macs=counts.by_module.get(name, 0),
                              out_shape=rec.out_shape if rec else None,
                              called=rec is not None or not name))
    return out


COUNT_ON = ("auto", "meta", "real")
META_MIN_INPUT_ELEMENTS = 16 * 3 * 224 * 224  # about batch 16 at 224 x 224
META_MIN_MACS = 10_000_000_000  # a real forward of this much costs about the meta imports
META_MIN_MODULES = 800


def choose_counting(model: nn.Module, inputs: Any,
                    estimated_macs: int | None = None) -> str:
    """``meta`` when a real forward would be expensive; ``real`` otherwise: meta tensors cost a
    few seconds of one-time torch imports (on a 2-core VM about 3.7 s), more than a small real
    forward. Expensive: more than 10 G MACs by the closed form when it is known (specs), else an
    input above about batch 16 at 224 x 224; or more than 800 modules (fvcore's JIT trace costs
    about 3 ms per module). Never meta for a model whose work depends on its inputs' values
    (:func:`data_dependent`): meta tensors have no values to select boxes by."""
    example = as_example(inputs)
    if data_dependent(model, example) is not None:
        return "real"
    if sum(1 for _ in model.modules()) >= META_MIN_MODULES:
        return META
    if estimated_macs is not None:
        return META if estimated_macs >= META_MIN_MACS else "real"
    elements = sum(math.prod(s) for s in example.shapes)
    return META if elements >= META_MIN_INPUT_ELEMENTS else "real"


# Modules whose forward selects by values (NMS, score thresholds, RoI sampling, level mapping):
# counted on real tensors only.
DATA_DEPENDENT_MODULES = {
    "torchvision.models.detection": "detection models keep boxes by their scores (NMS, "
                                    "thresholds): the work after it depends on the values",
    "torchvision.ops.poolers": "RoI pooling maps each box to a level by its size",
}


def data_dependent(model: nn.Module, example: Any = None) -> str | None:
    """Why this model's count needs real values (None when shapes alone decide it): a module
    of :data:`DATA_DEPENDENT_MODULES`, or inputs that are not plain tensors (a list of images,
    keyword or integer inputs: the model's code decides what it does with them)."""
    if example is not None and not as_example(example).is_plain:
        return "its inputs are not plain float tensors (lists, keywords or integers)"
    for m in model.modules():
        mod = type(m).__module__
        for prefix, why in DATA_DEPENDENT_MODULES.items():
            if mod.startswith(prefix):
                return f"{type(m).__name__}: {why}"
    return None


def analyze_model(model: nn.Module, inputs: Any, *, source: str, name: str,
                  dtype: str = "fp32", count_on: str = "auto",
                  make_inputs: Callable[[], Any] | None = None,
                  estimated_macs: int | None = None,
                  pass_name: str = "inference", pass_costs: bool = True) -> AnalysisReport:
    """Count a model: params, MACs per module and operator, shapes per module.

    ``inputs`` is an :class:`~convcost.inputs.Example` (the structure of the call), example
    tensors, or their shapes. ``count_on``: ``meta`` runs a meta-tensor copy (nothing
    computed, any batch or resolution), ``real`` runs fvcore's JIT trace on real tensors
    (``torch.utils.flop_counter`` if fvcore fails), ``auto`` picks meta for large inputs or
    huge models, never for a model whose work depends on values. A model that cannot run on
    meta tensors is counted on real ones, with a note. Real inputs are ``inputs`` if they are
    tensors, else ``make_inputs()`` (a :class:`~convcost.inputs.Call`), else seeded values.
    ``pass_costs`` False skips the pass's costs (peak activation memory, the backward's count)
    for callers that only need the counts.
    """
    example = as_example(inputs)
    given = given_call(inputs)
    notes: list[str] = []
    how = choose_counting(model, example, estimated_macs) if count_on == "auto" else count_on
    counts = records = None
    if how == META:
        from convcost.counting.meta import MetaCountError

        try:
            counts, records = count_meta(model, example)
        except MetaCountError as e:
            notes.append(f"counted on real tensors: {e}")
    if counts is None:
        call = given or (as_call(make_inputs()) if make_inputs is not None else example.make())
        counts, records = _count_real(model, call, source, notes)
    notes.extend(counts.notes)
    dyn = data_dependent(model)
    if dyn is not None and not any(n.startswith("data-dependent") for n in notes):
        notes.append(f"data-dependent: {dyn}; the count holds for these inputs' values only")
    rows = build_rows(model, records, counts)
    never = never_run(model, records, counts)
    mp = model_pass(model, example, training=pass_name == "training", dtype=dtype,
                    real_call=lambda: given or (as_call(make_inputs()) if make_inputs is not None
                                                else example.make())) \
        if pass_costs else ModelPass(None, None)
    notes.extend(mp.notes)
    if mp.backward is not None:
        g = mp.backward.gradients
        rows = [replace(r, backward_macs=r.macs // max(1, r.calls) * g[r.name])
                if r.op in ("conv", "linear") and r.name in g else r for r in rows]
    return AnalysisReport(
        source=source, name=name, input_shapes=[list(s) for s in example.shapes],
        dtype=dtype, params=counts.params, macs=counts.macs,
        by_operator=dict(sorted(counts.by_operator.items(), key=lambda kv: -kv[1])),
        unsupported_ops=dict(sorted(counts.unsupported_ops.items())), layers=rows,
        hierarchy=build_hierarchy(model, records, counts), counter=counts.counter, notes=notes,
        never_called=never, inputs="" if example.is_plain else example.text(),
        pass_name=pass_name,
        backward_macs=mp.backward.backward_macs if mp.backward is not None else None,
        peak_activation_bytes=mp.peak_activation_bytes)


def given_call(inputs: Any) -> Call | None:
    """The real values when ``inputs`` holds them (a Call, or tensors), else None."""
    if isinstance(inputs, Call):
        return inputs
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, torch.Tensor)
                                                            for x in inputs):
        return Call(tuple(inputs))
    return None


def never_run(model: nn.Module, records: dict[str, Any], counts: Counts) -> list[tuple[str, int]]:
    """(module, params) of the outermost modules with parameters that took no part in the
    forward: neither they nor a descendant was called, and none of their parameters was used
    (nn.MultiheadAttention uses out_proj's weight without calling out_proj)."""
    ran = called_names(records)
    used = counts.used_params or set()
    used_owners = called_names({n.rsplit(".", 1)[0] if "." in n else "": None for n in used})
    return [(n, counts.params_by_module.get(n, 0)) for n in _outermost(
        [n for n, _ in model.named_modules() if n and n not in ran and n not in used_owners
         and counts.params_by_module.get(n, 0)])]


def _outermost(names: list[str]) -> list[str]:
    """Drop names inside another listed name (``aux1`` covers ``aux1.conv``)."""
    keep = []
    for n in sorted(names):
        if not any(n.startswith(k + ".") for k in keep):
            keep.append(n)
    return keep


def _count_real(model: nn.Module, inputs: Call, source: str,
                notes: list[str]) -> tuple[Counts, dict[str, ModuleRecord]]:
    """fvcore's JIT trace on real tensors, with shapes recorded during it; the
    torch.utils.flop_counter fallback when fvcore fails (or silently traces nothing)."""
    shapes = as_example(inputs).text()
    from convcost.counting.handles import SelectionWatch

    watch = SelectionWatch()  # what the forward selects by value (NMS, thresholds)
    try:
        # fvcore's JIT trace runs the real forward: record shapes during it (no extra pass)
        recorder = ShapeRecorder(model)
        with recorder, ParamUse(recorder) as use, watch:
            counts = count_fvcore(model, inputs)
        records = recorder.ordered()
        counts.used_params = use.used_names(model)
        _count_autograd_functions(model, inputs, counts)
        missed = _missed_by_trace(model, records, counts)
        if missed:
            raise RuntimeError(f"its trace saw no work in {len(missed)} conv/linear module(s) "
                               f"that ran, e.g. '{missed[0]}'")
    except Exception as e_fv:
        try:  # a plain forward: the model's own error, naming the module, if it fails here too
            records = record_modules(model, inputs)
        except ForwardError as e:
            raise ModelError(f"{source}: forward pass on input {shapes} failed in module "
                             f"'{e.module}': {_where(e.error)}{expected_size(e.error)}") \
                from e.error
        try:
            with watch:
                counts = count_flop_counter(model, inputs)
        except Exception as e_fc:
            raise ModelError(f"{source}: could not be counted: fvcore: {_where(e_fv)}; "
                             f"torch.utils.flop_counter: {_where(e_fc)}") from e_fc
        notes.append(f"fvcore failed ({type(e_fv).__name__}: {_first_line(e_fv)})")
        counts.uncalled = uncalled_modules(model, records)
    if watch.note():
        notes.append(str(watch.note()))
    _count_quantized(records, counts)
    return counts, records


def _count_quantized(records: dict[str, ModuleRecord], counts: Counts) -> None:
    """int8 conv and linear modules (torch.ao.nn.quantized), counted from their shapes: both
    real-tensor counters see packed weights, not MACs. Added to each module, its ancestors, the
    operator and the total, with a note (their int8 weights are not parameters)."""
    from convcost.counting.handles import quantized_macs

    n = weights = 0
    for name, rec in records.items():
        got = quantized_macs(rec.module, rec.out_shape)
        if got is None or counts.by_module.get(name, 0):
            continue
        op, macs, w = got
        macs *= rec.calls
        parts = name.split(".")
        for owner in {""} | {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            counts.by_module[owner] = counts.by_module.get(owner, 0) + macs
        counts.by_operator[op] = counts.by_operator.get(op, 0) + macs
        counts.macs += macs
        n, weights = n + 1, weights + w
    if n:
        counts.notes.append(f"{n} int8 conv/linear module(s) counted from their shapes (the "
                            f"trace sees packed weights); their {weights:,} int8 weights are "
                            "not trainable parameters and are not in params")


def _count_autograd_functions(model: nn.Module, inputs: Call, counts: Counts) -> None:
    """What fvcore lists as ``prim::PythonOp.NAME`` (a custom ``torch.autograd.Function``) is
    counted from the inside, by the handles the meta counter uses, and no longer listed."""
    opaque = [k for k in counts.unsupported_ops if k.startswith("prim::PythonOp")]
    if not opaque:
        return
    from convcost.counting.meta import count_inside_autograd_functions

    by_module, by_operator, unsupported = count_inside_autograd_functions(model, inputs)
    for k, v in by_module.items():
        counts.by_module[k] = counts.by_module.get(k, 0) + v
    for k, v in by_operator.items():
        counts.by_operator[k] = counts.by_operator.get(k, 0) + v
    counts.macs += by_module.get("", 0)
    for k in opaque:
        del counts.unsupported_ops[k]
    for k, v in unsupported.items():
        counts.unsupported_ops[k] = counts.unsupported_ops.get(k, 0) + v
    counts.notes.append(f"{len(opaque)} custom torch.autograd.Function(s) "
                        f"({', '.join(k.split('.', 1)[-1] for k in opaque)}) counted from the "
                        "inside (fvcore's trace sees them as one opaque operator)")


def expected_size(e: BaseException) -> str:
    """'; the model expects 224 x 224 inputs: pass --input-shape 1,3,224,224' when the error says
    what size it wanted (ViT: 'Wrong image height! Expected 224 but got 384!')."""
    import re

    text = str(e)
    m = re.search(r"[Ee]xpected (?:image )?(?:size |height |width )?(\d+)(?: but got| got|, got)",
                  text) or re.search(r"Input (?:height|image size) \((\d+)\) doesn't match model "
                                     r"\((\d+)\)", text)
    if not m:
        return ""
    size = m.group(m.lastindex or 1)
    return (f"; the model expects {size} x {size} inputs: pass --input-shape 1,3,{size},{size} "
            f"(or build it for another size with --model-arg, e.g. image_size=...)")


def _missed_by_trace(model: nn.Module, records: dict[str, ModuleRecord], counts: Counts) -> list[str]:
    """Conv/linear modules that ran (per the hooks) but got no MACs from fvcore's JIT trace.

    fvcore traces silently to an empty graph when, e.g., a forward returns None; a module that
    really ran a convolution on a non-empty input always has MACs, so a zero means the trace
    missed it (a detector's head run on no box has none).
    """
    mods = dict(model.named_modules())
    return [n for n, r in records.items()
            if isinstance(mods.get(n), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            and counts.by_module.get(n, 0) == 0
            and math.prod(r.out_shape or [1]) > 0]  # an empty batch (no boxes kept) has none


def _first_line(e: BaseException) -> str:
    return first_line(e, with_type=False)


def _where(e: BaseException) -> str:
    """``Type: message (at file:line in function)`` from the innermost frame of the user's code."""
    import traceback

    tb = traceback.extract_tb(e.__traceback__)
    frames = [f for f in tb if "/torch/" not in f.filename and "/convcost/" not in f.filename]
    loc = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(e).__name__}: {_first_line(e)}{loc}"


def report_meta() -> dict[str, Any]:
    """Versions that every report records."""
    import fvcore
    import torch

    return {"convcost": __version__, "torch": torch.__version__,
            "fvcore": getattr(fvcore, "__version__", "unknown")}
