"""Memory guard: refuse, with the estimate, a run that would not fit before it is killed.
The estimates come from the stages that know the shapes (a spec's
:func:`~convcost.sources.spec.memory_estimate`, a model's traced
:func:`~convcost.counting.meta.model_estimate`, a .pt2's stored tensors); here are the
available memory, byte counts of tensors (4 bytes per element, fp32) and the guard."""

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
