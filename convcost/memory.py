"""Memory guard: estimate what a run will allocate and refuse, with the estimate, before it is
killed. The estimate is deliberately simple and documented: parameters, the inputs, and the
largest live activations (the biggest layer's input + output, twice for a residual branch kept
alive), at 4 bytes per element (fp32 counting runs)."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from convcost.errors import ResourceError

OVERRIDE = "--ignore-memory-limit"


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (no guard)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def available_bytes(device: str = "cpu") -> int | None:
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return available_host_bytes()


def fmt_bytes(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def spec_estimate(spec: object, batch: int) -> tuple[int, str]:
    """(bytes, explanation) for a validated spec at ``batch``."""
    from convcost.sources.spec import AddOp, ConcatOp, ConvOp, LinearOp, Spec

    assert isinstance(spec, Spec)
    params = 0
    peak = 0

    def walk(layers: list) -> None:
        nonlocal params, peak
        for layer in layers:
            op = layer.op
            if isinstance(op, ConvOp):
                params += op.out_channels * (op.in_channels // op.groups) * op.kernel[0] * op.kernel[1]
            elif isinstance(op, LinearOp):
                params += op.in_features * op.out_features
            live = _numel(layer.in_shape) + _numel(layer.out_shape)
            if isinstance(op, (AddOp, ConcatOp)):
                live *= 2
                for sub in ([*op.body, *op.shortcut] if isinstance(op, AddOp)
                            else [x for b in op.branches for x in b]):
                    walk([sub])
            peak = max(peak, live)

    walk(spec.layers)
    inputs = sum(_numel(s) for s in spec.input_shapes)
    total = 4 * (params + batch * (peak + inputs))
    why = (f"params {fmt_bytes(4 * params)} + activations {fmt_bytes(4 * batch * (peak + inputs))}"
           f" at batch {batch}")
    return total, why


def guard(estimate: int, why: str, *, device: str = "cpu", what: str = "this run",
          enabled: bool = True) -> None:
    """Raise ``ResourceError`` (exit 2) when ``estimate`` exceeds the available memory."""
    if not enabled or os.environ.get("CONVCOST_IGNORE_MEMORY_LIMIT"):
        return
    avail = available_bytes(device)
    if avail is None or estimate <= avail:
        return
    raise ResourceError(f"{what} needs about {fmt_bytes(estimate)} ({why}) but only "
                        f"{fmt_bytes(avail)} is available on {device}; lower --batch or the "
                        f"sizes, or pass {OVERRIDE} to try anyway")


def tensor_estimate(shapes: Iterable[Iterable[int]], element_bytes: int = 4) -> int:
    return element_bytes * sum(_numel(s) for s in shapes)


TRACE_FACTOR = 256  # trace shapes on meta tensors once the input times this could fill memory


def model_estimate(model: torch.nn.Module, shapes: list[tuple[int, ...]]) -> tuple[int, str]:
    """(bytes, explanation) a real forward of ``model`` on inputs of ``shapes`` allocates beyond
    its (already allocated) weights: the inputs plus the largest module's input + output.

    The shapes come from a forward on meta tensors (nothing allocated) when the input is large
    enough that its activations could fill memory (``TRACE_FACTOR`` x the input exceeds the
    available memory): a 3 -> 512 conv on a 4096 x 4096 image makes a 34 GB output from a
    201 MB input. Otherwise (and for a model that cannot run on meta tensors) 3 x the input."""
    inputs = tensor_estimate(shapes)
    cheap = (3 * inputs, f"input {', '.join('x'.join(map(str, s)) for s in shapes)} and its "
             "first activations")
    avail = available_host_bytes()
    if avail is None or inputs * TRACE_FACTOR <= avail:
        return cheap
    from convcost.counting.meta import MetaCountError, count_on_meta

    try:
        records = count_on_meta(model, shapes)[3]
    except MetaCountError:
        return cheap
    peak, where = 0, ""
    for name, r in records.items():
        live = 4 * (_numel(r.in_shape or []) + _numel(r.out_shape or [])) if r.out_shape else 0
        if live > peak or (live == peak and name):  # the innermost module of a tie
            peak, where = live, name
    if peak <= 2 * inputs:
        return cheap
    return inputs + peak, (f"input {fmt_bytes(inputs)} + the largest activation, "
                           f"{fmt_bytes(peak)} in module '{where}' (shapes traced on meta "
                           "tensors)")
