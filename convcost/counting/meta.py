"""Counting without computing: run the model on meta tensors and count every operator.

The model's parameters and buffers are swapped for meta tensors (no storage, no weights
copied; the real ones are put back afterwards) and it is called on meta inputs: every
operator runs shape inference only, so the cost does not depend on batch, resolution or
weights, and a ResNet-50 at batch 4096 and 1024 x 1024 counts in a fraction of a second (after
a one-time cost: the first meta kernel's ``torch._check`` imports sympy, ~2.7 s; the dispatch
mode skips dynamo's wrapper, whose first call would import torch._dynamo, another ~4 s).
Operators are counted by the handles of :mod:`convcost.counting.handles` (fvcore's formulas) under a
``TorchDispatchMode``, plus a ``TorchFunctionMode`` and counting wrappers for the few
functions that decompose before ATen. MACs are attributed like fvcore's default ("owner"
mode): to the module whose forward ran the operator and to all of its ancestors by name.
Module shapes are recorded by the same hooks as the real forward.

A model that needs real values (``.item()``, data-dependent control flow) or an operator
without a meta kernel cannot run on meta tensors: :class:`MetaCountError` tells the caller to
count on real tensors instead.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from convcost.counting.handles import ALIASES, ATEN, FUNCTIONS, IGNORED, TORCH_FUNCTIONS
from convcost.counting.inventory import ModuleRecord, ParamUse, ShapeRecorder, eval_mode
from convcost.errors import first_line
from convcost.inputs import as_call

META = "meta tensors"


class MetaCountError(Exception):
    """The model could not run on meta tensors (the message says why)."""


@contextlib.contextmanager
def on_meta(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` itself with its parameters, buffers and tensor attributes swapped for meta
    tensors of the same shapes while the block runs, and put back afterwards, whatever happens
    (no module is copied: a 5,000-layer model swaps in milliseconds)."""
    swapped: list[tuple[dict[str, Any], str, Any]] = []
    memo: dict[int, Any] = {}

    def meta_of(t: torch.Tensor) -> Any:
        if id(t) not in memo:
            mt = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(mt, requires_grad=t.requires_grad) \
                if isinstance(t, nn.Parameter) else mt
        return memo[id(t)]

    try:
        for m in model.modules():
            for store in (m._parameters, m._buffers, vars(m)):
                for name, t in list(store.items()):
                    if isinstance(t, torch.Tensor) and t.device.type != "meta":
                        swapped.append((store, name, t))
                        store[name] = meta_of(t)
        yield model
    finally:
        for store, name, t in reversed(swapped):
            store[name] = t


class _Tally:
    """Where counted MACs go: per module name (with its ancestors) and per operator."""

    def __init__(self, recorder: ShapeRecorder) -> None:
        self.recorder = recorder
        self.by_module: Counter[str] = Counter()
        self.by_operator: Counter[str] = Counter()
        self.unsupported: Counter[str] = Counter()
        self.suppressed = 0

    def add(self, counts: dict[str, int]) -> None:
        total = sum(counts.values())
        if not total and not counts:
            return
        for op, v in counts.items():
            self.by_operator[op] += int(v)
        owner = self.recorder.running[-1] if self.recorder.running else ""
        names = [""]
        if owner:
            parts = owner.split(".")
            names += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        for n in names:
            self.by_module[n] += int(total)


class _DispatchCounter(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No ``torch._disable_dynamo`` wrapper around ``__torch_dispatch__``: its first call
        imports ``torch._dynamo`` (~4 s), and counting never runs under dynamo."""
        return False

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.tally.suppressed:
            return out
        packet = func.overloadpacket
        handle = ATEN.get(packet)
        if handle is not None:
            self.tally.add(handle(args, kwargs, out))
        else:
            name = ALIASES.get(packet.__name__, packet.__name__)
            if name not in IGNORED:
                self.tally.unsupported[f"aten::{name}"] += 1
        return out


def _counted_call(tally: _Tally, name: str, func: Any, args: tuple, kwargs: dict) -> Any:
    """Call a handled function with the operators inside it not counted again; count it."""
    tally.suppressed += 1
    try:
        out = func(*args, **kwargs)
    finally:
        tally.suppressed -= 1
    counts = (FUNCTIONS.get(name) or TORCH_FUNCTIONS[name])(args, kwargs, out)
    if counts:
        tally.add(counts)
    else:  # a mode without a formula (e.g. bicubic): report it like any uncounted op
        tally.unsupported[f"aten::{name}"] += 1
    return out


class _FunctionCounter(TorchFunctionMode):
    """Handled torch.nn.functional functions called directly (also through references taken
    before counting began)."""

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally
        self.names = {getattr(F, n): n for n in FUNCTIONS if hasattr(F, n)}
        self.names.update({getattr(torch, n): n for n in TORCH_FUNCTIONS if hasattr(torch, n)})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = self.names.get(func)
        if name is None or self.tally.suppressed:
            return func(*args, **kwargs)
        return _counted_call(self.tally, name, func, args, kwargs)


@contextlib.contextmanager
def _wrapped_functions(tally: _Tally) -> Iterator[None]:
    """While counting, ``torch.nn.functional.NAME`` is a counting wrapper of itself, so that
    calls from inside other torch functions (which a TorchFunctionMode does not see) count."""
    saved = {n: getattr(F, n) for n in FUNCTIONS if hasattr(F, n)}

    def wrapper(name: str, orig: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if tally.suppressed:
                return orig(*args, **kwargs)
            return _counted_call(tally, name, orig, args, kwargs)
        return call

    for n, f in saved.items():
        setattr(F, n, wrapper(n, f))
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(F, n, f)


@contextlib.contextmanager
def mha_fastpath_off() -> Iterator[None]:
    """nn.MultiheadAttention's fused fast path hides its matmuls; count the decomposed ops."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def count_on_meta(model: nn.Module, inputs: Any,
                  dtype: torch.dtype = torch.float32
                  ) -> tuple[dict[str, int], dict[str, int], dict[str, int],
                             dict[str, ModuleRecord], set[str]]:
    """(MACs by module, by operator, not-counted operators, module records, names of the
    parameters used) of one forward of a meta copy of ``model`` on meta tensors of ``inputs``
    (an :class:`~convcost.inputs.Example` or shapes). Raises :class:`MetaCountError`."""
    from convcost.inputs import as_example

    call = as_example(inputs).on_meta(dtype)
    recorder = ShapeRecorder(model)
    tally = _Tally(recorder)
    use = ParamUse(recorder)
    try:
        with on_meta(model) as m, recorder, eval_mode(m), torch.no_grad(), mha_fastpath_off(), \
                use, _FunctionCounter(tally), _wrapped_functions(tally), _DispatchCounter(tally):
            call.run(m)
            used = use.used_names(m)  # while the meta parameters are in place
    except Exception as e:
        raise MetaCountError(f"it does not run on meta tensors ({_first(e)})") from e
    by_module = dict(tally.by_module)
    by_module.setdefault("", 0)
    return by_module, dict(tally.by_operator), dict(tally.unsupported), recorder.ordered(), used


def _first(e: BaseException) -> str:
    return first_line(e, 200)


def count_inside_autograd_functions(model: nn.Module, inputs: Any
                                    ) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(MACs by module, by operator, not-counted operators) of what runs inside every
    ``torch.autograd.Function`` of one real forward, counted by the same handles as on meta
    tensors. fvcore's JIT trace sees a custom Function as one opaque ``prim::PythonOp``; this
    pass counts its inside, so that both counters count the same operators."""
    recorder = ShapeRecorder(model)
    tally = _Tally(recorder)
    saved = torch.autograd.Function.__dict__["apply"]
    orig = saved.__func__
    depth = [0]

    def apply(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if depth[0]:
            return orig(cls, *args, **kwargs)
        depth[0] += 1
        try:
            with _DispatchCounter(tally):
                return orig(cls, *args, **kwargs)
        finally:
            depth[0] -= 1

    torch.autograd.Function.apply = classmethod(apply)  # type: ignore[method-assign]
    try:
        with recorder, eval_mode(model), torch.no_grad(), mha_fastpath_off():
            as_call(inputs).run(model)
    finally:
        torch.autograd.Function.apply = saved  # type: ignore[method-assign]
    return dict(tally.by_module), dict(tally.by_operator), dict(tally.unsupported)


# --------------------------------------------------------------------------- memory

TRACE_FACTOR = 256  # trace shapes on meta tensors once the input times this could fill memory


def model_estimate(model: nn.Module, inputs: Any) -> tuple[int, str]:
    """(bytes, explanation) a real forward of ``model`` on ``inputs`` (an
    :class:`~convcost.inputs.Example` or shapes; every tensor counted) allocates beyond
    its (already allocated) weights: the inputs plus the largest module's input + output.

    The shapes come from a forward on meta tensors (nothing allocated) when the input is large
    enough that its activations could fill memory (``TRACE_FACTOR`` x the input exceeds the
    available memory): a 3 -> 512 conv on a 4096 x 4096 image makes a 34 GB output from a
    201 MB input. Otherwise (and for a model that cannot run on meta tensors) 3 x the input."""
    from convcost.inputs import as_example
    from convcost.memory import available_host_bytes, fmt_bytes

    example = as_example(inputs)
    inputs = example.nbytes()
    cheap = (3 * inputs, f"input {example.text()[:200]} and its first activations")
    avail = available_host_bytes()
    if avail is None or inputs * TRACE_FACTOR <= avail:
        return cheap
    try:
        records = count_on_meta(model, example)[3]
    except MetaCountError:
        return cheap
    peak, where = 0, ""
    for name, r in records.items():
        live = 4 * (math.prod(r.in_shape or []) + math.prod(r.out_shape or [])) if r.out_shape else 0
        if live > peak or (live == peak and name):  # the innermost module of a tie
            peak, where = live, name
    if peak <= 2 * inputs:
        return cheap
    return inputs + peak, (f"input {fmt_bytes(inputs)} + the largest activation, "
                           f"{fmt_bytes(peak)} in module '{where}' (shapes traced on meta "
                           "tensors)")
