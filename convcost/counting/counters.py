"""Parameter and MAC counts from the real modules via fvcore (``torch.utils.flop_counter`` fallback).

Conventions: fvcore counts one fused multiply-add as one "flop"; convcost calls that a **MAC**
and reports FLOPs = 2 x MACs. Params are trainable parameters (``numel`` summed), never buffers.
Operators fvcore has no formula for are returned in ``unsupported_ops`` (name -> call count),
never silently folded into a zero.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

FVCORE = "fvcore"
META = "meta"  # fvcore's formulas on meta tensors (convcost.counting.meta): nothing computed
FLOP_COUNTER = "torch.utils.flop_counter"
COUNTER_TEXT = {FVCORE: "fvcore (JIT trace on real tensors)",
                META: "fvcore's formulas on meta tensors (nothing computed)",
                FLOP_COUNTER: "torch.utils.flop_counter (fallback)"}


@dataclass
class Counts:
    """Counts of one model run: MACs by module and by operator, params by module."""

    macs: int
    params: int
    by_module: dict[str, int]
    by_operator: dict[str, int]
    params_by_module: dict[str, int]
    unsupported_ops: dict[str, int]
    counter: str = FVCORE
    notes: list[str] = field(default_factory=list)
    uncalled: list[str] = field(default_factory=list)  # modules never called in the forward
    used_params: set[str] | None = None  # qualified names of parameters the forward used

    @property
    def paper_macs(self) -> int:
        """Conv + linear + matmul/attention MACs: the papers' and torchvision's convention."""
        return paper_macs(self.by_operator)


def paper_macs(by_operator: dict[str, int]) -> int:
    """The part of ``by_operator`` that papers and torchvision's ``_ops`` count."""
    from convcost.counting.handles import PAPER_OPERATORS

    return sum(v for k, v in by_operator.items() if k in PAPER_OPERATORS)


def params_by_module(model: nn.Module) -> dict[str, int]:
    """Trainable parameters owned by each module prefix (``""`` is the whole model).

    Shared parameters are counted once, at their first owner.
    """
    out: Counter[str] = Counter()
    seen: set[int] = set()
    for pname, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        parts = pname.split(".")[:-1]
        out[""] += p.numel()
        for i in range(1, len(parts) + 1):
            out[".".join(parts[:i])] += p.numel()
    return dict(out)


_QUIETED: list[bool] = []


def _quiet_fvcore() -> None:
    """Silence fvcore's loggers, once per process: the core never prints, the report lists
    issues. (Setting a logger's level clears every logger's cache: done per count, it cost
    ~1.2 s on a 1,000-layer compare.)"""
    if not _QUIETED:
        for n in ("fvcore", "fvcore.nn.jit_analysis"):
            logging.getLogger(n).setLevel(logging.CRITICAL)
        _QUIETED.append(True)


def _named_modules_with_dup(model: nn.Module, prefix: str = "") -> Any:
    """fvcore.common.checkpoint's generator: ``named_modules()`` with every name of a module
    that has several."""
    yield prefix, model
    for name, module in model._modules.items():
        if module is None:
            continue
        yield from _named_modules_with_dup(module, prefix + ("." if prefix else "") + name)


def flop_count_analysis() -> Any:
    """fvcore's ``FlopCountAnalysis`` without running ``fvcore/nn/__init__.py``, which imports
    modules convcost never uses (focal_loss, precise_bn, checkpoint -> iopath/portalocker,
    tabulate: ~70 ms). A later ``import fvcore.nn`` (user code) still gets the whole package."""
    import sys
    import types

    mod = sys.modules.get("fvcore.nn.flop_count")
    if mod is None:
        if "fvcore.nn" in sys.modules:
            from fvcore.nn import flop_count as mod
        else:
            import fvcore

            stub = types.ModuleType("fvcore.nn")
            stub.__path__ = [str(Path(fvcore.__file__).parent / "nn")]
            stubs = {"fvcore.nn": stub}
            if "fvcore.common.checkpoint" not in sys.modules:
                # jit_analysis takes one generator from checkpoint, whose imports (iopath,
                # portalocker, ...) cost ~100 ms: the same generator, for that import only
                ck = types.ModuleType("fvcore.common.checkpoint")
                ck._named_modules_with_dup = _named_modules_with_dup  # type: ignore[attr-defined]
                stubs["fvcore.common.checkpoint"] = ck
            sys.modules.update(stubs)
            try:
                import fvcore.nn.flop_count as mod
            finally:  # the real modules load if anyone imports them later
                for name, m in stubs.items():
                    if sys.modules.get(name) is m:
                        del sys.modules[name]
                for parent, attr in ((fvcore, "nn"), (getattr(fvcore, "common", None),
                                                      "checkpoint")):
                    if parent is not None and getattr(parent, attr, None) in stubs.values():
                        delattr(parent, attr)
    return mod.FlopCountAnalysis


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Counting runs the forward once on small inputs: on one thread, tiny kernels do not pay
    for waking a thread pool (under load, 2 threads made a 1,000-layer count 10x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def count_fvcore(model: nn.Module, inputs: Any) -> Counts:
    """Count with fvcore's ``FlopCountAnalysis`` (a JIT trace of one forward in eval mode).
    ``inputs``: a :class:`~convcost.inputs.Call` or positional values; keyword inputs and
    non-tensor ones are bound to the forward (the trace sees them as constants)."""
    from convcost.counting.handles import JIT, VIEWS
    from convcost.counting.inventory import eval_mode
    from convcost.counting.meta import mha_fastpath_off
    from convcost.inputs import as_call, traceable

    FlopCountAnalysis = flop_count_analysis()
    _quiet_fvcore()
    with eval_mode(model), torch.no_grad(), warnings.catch_warnings(), mha_fastpath_off(), \
            one_thread(), traceable(model, as_call(inputs)) as args:
        warnings.simplefilter("ignore")
        fa = FlopCountAnalysis(model, args)
        fa.set_op_handle(**JIT)  # attention, padding='same' convs: fvcore has no formula
        fa.set_op_handle(**{f"aten::{n}": None for n in VIEWS})  # views: 0 MACs, not "missing"
        fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_module = {k: int(v) for k, v in fa.by_module().items()}
        by_operator = {k: int(v) for k, v in fa.by_operator().items()}
        unsupported = {k: int(v) for k, v in fa.unsupported_ops().items()}
        total = int(fa.total())
        uncalled = sorted(fa.uncalled_modules())
    pbm = params_by_module(model)
    return Counts(macs=total, params=pbm.get("", 0), by_module=by_module, by_operator=by_operator,
                  params_by_module=pbm, unsupported_ops=unsupported, uncalled=uncalled)


def count_meta(model: nn.Module, inputs: Any) -> tuple[Counts, Any]:
    """Count on meta tensors (see :mod:`convcost.counting.meta`): (counts, module records).
    ``inputs``: an :class:`~convcost.inputs.Example` or shapes. Raises
    :class:`convcost.counting.meta.MetaCountError` when the model cannot run there."""
    from convcost.counting.meta import count_on_meta

    by_module, by_operator, unsupported, records, used = count_on_meta(model, inputs)
    pbm = params_by_module(model)
    from convcost.counting.inventory import uncalled_modules

    uncalled = uncalled_modules(model, records)
    return Counts(macs=by_module.get("", 0), params=pbm.get("", 0), by_module=by_module,
                  by_operator=by_operator, params_by_module=pbm, unsupported_ops=unsupported,
                  counter=META, uncalled=uncalled, used_params=used), records


_FC_OPS = {"convolution": "conv", "_convolution": "conv", "mm": "linear", "addmm": "linear",
           "bmm": "matmul", "baddbmm": "matmul", "_scaled_dot_product_efficient_attention":
           "attention", "_scaled_dot_product_flash_attention": "attention"}


def count_flop_counter(model: nn.Module, inputs: Any) -> Counts:
    """Count with ``torch.utils.flop_counter`` (no tracing; handles data-dependent control flow).

    It reports FLOPs (2 per multiply-add) for conv and matmul-like ops only; converted to MACs.
    Per-module keys are turned into qualified names.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from convcost.counting.inventory import eval_mode
    from convcost.inputs import as_call

    with eval_mode(model), torch.no_grad(), one_thread(), FlopCounterMode(display=False) as fc:
        as_call(inputs).run(model)
    counts = fc.get_flop_counts()
    root = type(model).__name__
    by_module: dict[str, int] = {}
    by_operator: Counter[str] = Counter()
    for key, ops in counts.items():
        total = sum(int(v) for v in ops.values()) // 2
        if key == "Global":
            by_module[""] = total
            for op, v in ops.items():
                name = getattr(op, "_name", str(op)).split(".")[-1]
                by_operator[_FC_OPS.get(name, name)] += int(v) // 2
            continue
        name = key[len(root) + 1:] if key.startswith(root + ".") else ("" if key == root else key)
        if name:
            by_module[name] = by_module.get(name, 0) + total
        else:  # the root module: the "Global" total (set above) already covers it
            by_module.setdefault("", total)
    pbm = params_by_module(model)
    return Counts(macs=by_module.get("", 0), params=pbm.get("", 0), by_module=by_module,
                  by_operator=dict(by_operator), params_by_module=pbm, unsupported_ops={},
                  counter=FLOP_COUNTER,
                  notes=["fvcore could not trace this model; MACs come from "
                         "torch.utils.flop_counter, which counts only conv and matmul-like ops "
                         "(batch norm, pooling and elementwise ops are not counted)"])
