"""Canaries: two small fixed kernels timed now and then during a run, so that a change of the
machine that the operating system does not show (a neighbour's memory traffic on a shared host,
a frequency change) still shows: a memory-bound one (a 64 MiB copy) and a compute-bound one (a
192x192 fp32 matmul), on the CPU, with the run's thread count.

Each reading is the fastest of a few calls. The reference is taken when the run's first group
starts (:data:`REFERENCE_READINGS` readings); each later reading is compared with it. A
measurement window during which a canary's median reading moved from its reference by more
than its tolerance (three times its own IQR / median at the start, at least
:data:`MIN_TOLERANCE`) is marked busy (see :mod:`convcost.timing.machine`). A reading costs
about 15-25 ms; one is taken at most every :data:`INTERVAL_S` seconds, between rounds. CUDA
runs have no canaries (their witness is NVML: other processes on the GPU).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from convcost.figures import rounded

INTERVAL_S = 1.0
# the least relative move that counts, per canary (memory, compute): on a quiet shared VM the
# copy's best time wanders by up to ~30% within a run, the matmul's by a few percent
MIN_TOLERANCE = (0.5, 0.25)
REFERENCE_READINGS = 7
COPY_ELEMENTS = 16 * 1024 * 1024  # 64 MiB of fp32: past the last-level cache of most CPUs
MATMUL_N = 384


def _timed(fn: Callable[[], Any], calls: int) -> float:
    """The fastest of ``calls`` timed calls, ms: what the machine gives when nothing gets in
    the way; a neighbour that takes bandwidth or cycles for a while raises even that."""
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return min(out)


@dataclass
class Canaries:
    """The two canary kernels, their reference and their readings (``(when, memory ms,
    compute ms)``, ``when`` a ``time.perf_counter()`` value)."""

    readings: list[tuple[float, float, float]] = field(default_factory=list)
    reference: tuple[float, float] | None = None
    spread: tuple[float, float] | None = None
    _last: float = 0.0

    def __post_init__(self) -> None:
        self._src = torch.ones(COPY_ELEMENTS)
        self._dst = torch.empty_like(self._src)
        self._a = torch.ones(MATMUL_N, MATMUL_N)
        self._c = torch.empty_like(self._a)

    def _read(self) -> tuple[float, float, float]:
        mem = _timed(lambda: self._dst.copy_(self._src), 5)
        comp = _timed(lambda: torch.mm(self._a, self._a, out=self._c), 8)
        now = time.perf_counter()
        self._last = now
        return now, mem, comp

    def start(self) -> None:
        """Take the reference: a warm-up reading, then :data:`REFERENCE_READINGS`."""
        self._read()
        ref = [self._read() for _ in range(REFERENCE_READINGS)]
        mem = [r[1] for r in ref]
        comp = [r[2] for r in ref]
        self.reference = (statistics.median(mem), statistics.median(comp))
        self.spread = (_rel_spread(mem), _rel_spread(comp))

    def tolerances(self) -> tuple[float, float] | None:
        """Per canary, the relative move beyond which it has moved (None before the
        reference): three times its own IQR / median at the start, at least
        :data:`MIN_TOLERANCE`."""
        if self.spread is None:
            return None
        return (max(MIN_TOLERANCE[0], 3 * self.spread[0]),
                max(MIN_TOLERANCE[1], 3 * self.spread[1]))

    def tick(self) -> None:
        """A reading, if :data:`INTERVAL_S` passed since the last one (between rounds)."""
        if self.reference is not None and time.perf_counter() - self._last >= INTERVAL_S:
            self.readings.append(self._read())

    def read_now(self) -> None:
        if self.reference is not None:
            self.readings.append(self._read())

    def drift(self, since: float) -> tuple[float, float] | None:
        """(move, its tolerance) of the canary that moved most, relative to its tolerance:
        its median reading after ``since`` against its reference (+: slower). None without a
        reading."""
        tol = self.tolerances()
        if self.reference is None or tol is None:
            return None
        rs = [r for r in self.readings if r[0] >= since]
        if not rs:
            return None
        moves = [(statistics.median(r[k] for r in rs) / self.reference[k - 1] - 1.0, tol[k - 1])
                 for k in (1, 2)]
        return max(moves, key=lambda m: abs(m[0]) / m[1])

    def to_dict(self) -> dict[str, Any]:
        return {"memory_ms": rounded(self.reference[0]) if self.reference else None,
                "compute_ms": rounded(self.reference[1]) if self.reference else None,
                "tolerance": [rounded(t) for t in self.tolerances() or ()],
                "readings": len(self.readings),
                "what": f"copy of {COPY_ELEMENTS * 4 >> 20} MiB; {MATMUL_N}x{MATMUL_N} fp32 matmul"}


def _rel_spread(v: list[float]) -> float:
    """IQR / median: the reference readings' own noise."""
    q1, med, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return (q3 - q1) / med if med > 0 else 0.0

