"""`analyze`: per-layer and per-model params and MACs of a loaded model (no printing here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from convcost import __version__
from convcost.counting.counters import FVCORE, Counts, count_flop_counter, count_fvcore
from convcost.counting.inventory import (
    ForwardError,
    ModuleRecord,
    ShapeRecorder,
    describe,
    is_leaf,
    record_modules,
)
from convcost.errors import ModelError

SCHEMA_VERSION = 1

CONVENTIONS = {
    "macs": "MAC = one fused multiply-add, as fvcore counts a 'flop'",
    "flops": "FLOPs = 2 x MACs (what torch.utils.flop_counter reports)",
    "params": "trainable parameters (numel summed); buffers such as BN running stats excluded",
    "bias": "a bias adds out_channels params and no MACs",
    "latency_ms": "median wall time per forward call in milliseconds (null when not timed)",
}


@dataclass
class LayerRow:
    """One reported layer (a leaf module, or a module's own work outside its children)."""

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
    latency_ms: float | None = None
    timing: dict[str, Any] | None = None  # measurement and roofline when timed

    @property
    def flops(self) -> int:
        """FLOPs = 2 x MACs."""
        return 2 * self.macs


@dataclass
class ModuleNode:
    """A node of the module hierarchy (for ``--depth``): params and MACs including children."""

    name: str
    type: str
    depth: int
    params: int
    macs: int
    out_shape: list[int] | None


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
    latency_ms: float | None = None
    device: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None

    @property
    def flops(self) -> int:
        return 2 * self.macs



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
                              out_shape=rec.out_shape if rec else None))
    return out


def analyze_model(model: nn.Module, inputs: tuple[Any, ...], *, source: str, name: str,
                  dtype: str = "fp32") -> AnalysisReport:
    """Count a model: records shapes with hooks, counts with fvcore (flop_counter fallback)."""
    shapes = ", ".join("x".join(map(str, x.shape)) for x in inputs if hasattr(x, "shape"))
    notes: list[str] = []
    records: dict[str, ModuleRecord] | None = None
    try:
        # fvcore's JIT trace runs the real forward: record shapes during it (no extra pass)
        with ShapeRecorder(model) as recorder:
            counts = count_fvcore(model, inputs)
        records = recorder.ordered()
        missed = _missed_by_trace(model, records, counts)
        if missed:
            raise RuntimeError(f"its trace saw no work in {len(missed)} conv/linear module(s) "
                               f"that ran, e.g. '{missed[0]}'")
    except Exception as e_fv:
        try:  # a plain forward: the model's own error, naming the module, if it fails here too
            records = record_modules(model, inputs)
        except ForwardError as e:
            raise ModelError(f"{source}: forward pass on input {shapes} failed in module "
                             f"'{e.module}': {_where(e.error)}") from e.error
        try:
            counts = count_flop_counter(model, inputs)
        except Exception as e_fc:
            raise ModelError(f"{source}: could not be counted: fvcore: {_where(e_fv)}; "
                             f"torch.utils.flop_counter: {_where(e_fc)}") from e_fc
        notes.append(f"fvcore failed ({type(e_fv).__name__}: {_first_line(e_fv)})")
    notes.extend(counts.notes)
    rows = build_rows(model, records, counts)
    return AnalysisReport(
        source=source, name=name,
        input_shapes=[list(x.shape) for x in inputs if hasattr(x, "shape")],
        dtype=dtype, params=counts.params, macs=counts.macs,
        by_operator=dict(sorted(counts.by_operator.items(), key=lambda kv: -kv[1])),
        unsupported_ops=dict(sorted(counts.unsupported_ops.items())), layers=rows,
        hierarchy=build_hierarchy(model, records, counts), counter=counts.counter, notes=notes)


def _missed_by_trace(model: nn.Module, records: dict[str, ModuleRecord], counts: Counts) -> list[str]:
    """Conv/linear modules that ran (per the hooks) but got no MACs from fvcore's JIT trace.

    fvcore traces silently to an empty graph when, e.g., a forward returns None; a module that
    really ran a convolution always has MACs, so a zero means the trace missed it.
    """
    mods = dict(model.named_modules())
    return [n for n in records if isinstance(mods.get(n), (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            and counts.by_module.get(n, 0) == 0]


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


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
