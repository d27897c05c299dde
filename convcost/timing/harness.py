"""The timing harness: median latency with IQR and n, on CPU and CUDA (DESIGN.md section 6).

Protocol
- Every callable's output is checked (shape, finite) before it is timed.
- cuDNN autotuning (``cudnn.benchmark``) and warm-up happen before any sample is kept.
- CUDA: per-call CUDA events recorded back to back, one synchronisation per batch of calls
  (a per-call sync would add the launch latency, 10-15 us on an H100); ``cold`` zeroes a
  256 MiB buffer before each call to flush the L2. Kernels under ~20 us also get a CUDA-graph
  figure (N calls captured in one graph, replayed, divided by N), which hides launch overhead.
- CPU: blocked ``perf_counter`` timing (a block is long enough that timer overhead is < 0.1%)
  with an explicit thread count; ``cold`` writes a buffer larger than the caches before each call.
- Adaptive stop: sampling continues until IQR/median < ``rel_iqr`` with at least
  ``min_samples`` samples, or until the per-measurement time cap; a measurement that hit the cap
  unconverged is flagged (``converged: False``) and reported with a warning.
- Several callables are measured interleaved, round-robin, so drift affects them alike.

Latencies are milliseconds per call.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from convcost.timing.device import Numerics, numerics

GRAPH_THRESHOLD_MS = 0.020  # kernels faster than this also get a CUDA-graph figure
L2_FLUSH_BYTES = 256 * 1024 * 1024
CPU_FLUSH_BYTES = 64 * 1024 * 1024
CPU_BLOCK_S = 0.002  # >= 2 ms per CPU block: perf_counter overhead (~100 ns) stays < 0.01%


@dataclass(frozen=True)
class TimingConfig:
    """How to measure. ``max_time_s`` caps each measurement (sampling only, warm-up excluded)."""

    numerics: Numerics = field(default_factory=Numerics)
    cold: bool = False
    max_time_s: float = 1.0
    min_samples: int = 10
    rel_iqr: float = 0.03
    warmup_calls: int = 3
    cuda_graph: bool = True


@dataclass
class Measurement:
    """Summary of one timed callable (milliseconds per call)."""

    median_ms: float | None = None
    iqr_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    n: int = 0
    calls_per_sample: int = 1
    converged: bool = False
    sampling_s: float = 0.0
    graph_median_ms: float | None = None
    error: str | None = None

    @property
    def rel_iqr(self) -> float | None:
        if self.median_ms is None or self.iqr_ms is None or not self.median_ms:
            return None
        return self.iqr_ms / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rel_iqr"] = self.rel_iqr
        return d


def summarize(samples: Sequence[float]) -> tuple[float, float, float, float, float]:
    """(median, q1, q3, min, max) of samples, quartiles by linear interpolation."""
    s = sorted(samples)
    if len(s) == 1:
        return s[0], s[0], s[0], s[0], s[0]
    q1, med, q3 = statistics.quantiles(s, n=4, method="inclusive")
    return med, q1, q3, s[0], s[-1]


class OutputCheckError(RuntimeError):
    """A variant's output has the wrong shape or non-finite values."""


def check_output(out: Any, expected_shape: tuple[int, ...] | None) -> None:
    """Raise :class:`OutputCheckError` unless ``out`` is a tensor of the expected shape, all finite."""
    t = out[0] if isinstance(out, (tuple, list)) and out else out
    if not isinstance(t, torch.Tensor):
        raise OutputCheckError(f"output is a {type(t).__name__}, not a tensor")
    if expected_shape is not None and tuple(t.shape) != tuple(expected_shape):
        raise OutputCheckError(f"output shape {list(t.shape)} != expected {list(expected_shape)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise OutputCheckError("output has non-finite values (inf/nan)")


def _error_text(e: BaseException) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of memory"
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


class Bench:
    """State of one callable under measurement (use through :func:`measure_interleaved`)."""

    def __init__(self, fn: Callable[[], Any], cfg: TimingConfig,
                 expected_shape: tuple[int, ...] | None = None) -> None:
        self.fn, self.cfg, self.expected_shape = fn, cfg, expected_shape
        self.samples: list[float] = []
        self.inner = 1
        self.spent = 0.0
        self.error: str | None = None
        self.graph_ms: float | None = None
        self.cuda = cfg.numerics.is_cuda
        self._flush: torch.Tensor | None = None

    # -- preparation ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Output check, autotune and warm-up; choose the CPU block size."""
        out = self.fn()  # first call: cuDNN autotune (cudnn.benchmark) happens here
        if self.cuda:
            torch.cuda.synchronize()
        check_output(out, self.expected_shape)
        del out
        for _ in range(self.cfg.warmup_calls):
            self.fn()
        if self.cuda:
            torch.cuda.synchronize()
        if self.cfg.cold:
            n = (L2_FLUSH_BYTES if self.cuda else CPU_FLUSH_BYTES) // 4
            self._flush = torch.empty(n, dtype=torch.int32,
                                      device=self.cfg.numerics.device if self.cuda else "cpu")
        if not self.cuda and not self.cfg.cold:
            t0 = time.perf_counter()
            self.fn()
            one = max(time.perf_counter() - t0, 1e-7)
            self.inner = max(1, min(10_000, math.ceil(CPU_BLOCK_S / one)))

    # -- sampling ---------------------------------------------------------------------------
    def sample(self, k: int) -> None:
        """Take ``k`` more samples (each the mean of ``inner`` calls on CPU; one call on CUDA)."""
        t0 = time.perf_counter()
        if self.cuda:
            self.samples += self._cuda_samples(k)
        else:
            self.samples += self._cpu_samples(k)
        self.spent += time.perf_counter() - t0

    def _cpu_samples(self, k: int) -> list[float]:
        out = []
        fn, inner, pc = self.fn, self.inner, time.perf_counter
        for _ in range(k):
            if self._flush is not None:
                self._flush.add_(1)
            t0 = pc()
            for _ in range(inner):
                fn()
            out.append((pc() - t0) * 1e3 / inner)
        return out

    def _cuda_samples(self, k: int) -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(k)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(k)]
        fn, flush = self.fn, self._flush
        for s, e in zip(starts, ends, strict=True):
            if flush is not None:
                flush.zero_()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()  # one sync for the batch
        return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]

    def graph_figure(self) -> None:
        """CUDA-graph replay time per call (for short kernels); failures leave it None."""
        if not self.cuda or not self.cfg.cuda_graph:
            return
        try:
            reps = 50
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(reps):
                    self.fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(10):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                g.replay()
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e) / reps)
            self.graph_ms = statistics.median(times)
        except Exception:  # some ops cannot be captured; the event figure stands
            self.graph_ms = None

    # -- state ------------------------------------------------------------------------------
    @property
    def converged(self) -> bool:
        if len(self.samples) < self.cfg.min_samples:
            return False
        med, q1, q3, _, _ = summarize(self.samples)
        return med > 0 and (q3 - q1) / med <= self.cfg.rel_iqr

    @property
    def done(self) -> bool:
        return self.error is not None or self.converged or self.spent >= self.cfg.max_time_s

    def result(self) -> Measurement:
        if self.error is not None and not self.samples:
            return Measurement(error=self.error)
        med, q1, q3, lo, hi = summarize(self.samples)
        return Measurement(median_ms=med, iqr_ms=q3 - q1, q1_ms=q1, q3_ms=q3, min_ms=lo,
                           max_ms=hi, n=len(self.samples), calls_per_sample=self.inner,
                           converged=self.converged, sampling_s=self.spent,
                           graph_median_ms=self.graph_ms, error=self.error)


def _round_size(b: Bench) -> int:
    """Samples per round: about 50 ms of work, at least 3, so rounds interleave finely."""
    if not b.samples:
        return 3
    per = statistics.median(b.samples[-5:]) * b.inner / 1e3
    return int(max(3, min(200, 0.05 / max(per, 1e-7))))


def measure_interleaved(benches: Sequence[Bench],
                        on_done: Callable[[int, Measurement], None] | None = None) -> list[Measurement]:
    """Measure several callables round-robin until each converges or hits its cap.

    A callable that raises (unsupported by the backend, out of memory, bad output) gets a
    Measurement with ``error`` set; the others go on. ``on_done(i, m)`` is called as each
    finishes. KeyboardInterrupt propagates (callers keep what finished).
    """
    results: list[Measurement | None] = [None] * len(benches)

    def finish(i: int) -> None:
        m = benches[i].result()
        results[i] = m
        if on_done:
            on_done(i, m)

    for i, b in enumerate(benches):
        try:
            b.prepare()
        except KeyboardInterrupt:
            raise
        except Exception as e:
            b.error = _error_text(e)
            if b.cuda and isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            finish(i)
    while True:
        active = [i for i, b in enumerate(benches) if results[i] is None and not b.done]
        for i, b in enumerate(benches):
            if results[i] is None and b.done:
                if b.error is None and b.samples and statistics.median(b.samples) < GRAPH_THRESHOLD_MS:
                    b.graph_figure()
                finish(i)
        if not active:
            break
        for i in active:
            b = benches[i]
            try:
                b.sample(_round_size(b))
            except KeyboardInterrupt:
                raise
            except Exception as e:
                b.error = _error_text(e)
    return [r if r is not None else Measurement(error="not measured") for r in results]


def measure_one(fn: Callable[[], Any], cfg: TimingConfig,
                expected_shape: tuple[int, ...] | None = None) -> Measurement:
    """Measure a single callable under ``cfg``'s numerics."""
    with numerics(cfg.numerics), torch.inference_mode():
        return measure_interleaved([Bench(fn, cfg, expected_shape)])[0]
