"""The timing harness: median latency with IQR and n, on CPU and CUDA, measured in rounds.

Protocol
- Every callable's output is checked (shape, finite) before it is timed; that first call is also
  cuDNN's autotune call (``cudnn.benchmark``). Warm-up calls follow, before any sample is kept;
  on the CPU they are timed to choose the block size.
- CUDA: per-call CUDA events recorded back to back, one synchronisation per batch of rounds (a
  per-call sync would add the launch latency, 10-15 us on an H100); ``cold`` zeroes a 256 MiB
  buffer before each call to flush the L2. Kernels under ~20 us also get a CUDA-graph figure
  (N calls captured in one graph, replayed, divided by N), which hides launch overhead.
- CPU: blocked ``perf_counter`` timing (a block is long enough that timer overhead is < 0.1%)
  with an explicit thread count; ``cold`` writes a buffer larger than the caches before each call.
- Rounds: the callables of a group (a baseline and its variants) are sampled one after the other
  in every round, in a rotating order, so drift affects them alike; the per-round samples are
  kept aligned so that ratios can be taken per round (see :mod:`convcost.timing.stats`).
- Adaptive stop: a callable stops when IQR/median < ``rel_iqr`` with at least ``min_samples``
  samples (and, when paired, its per-round ratio to the baseline is as steady), or when its
  sampling time reaches its cap; one that hit the cap unconverged is flagged
  (``converged: False``). A whole-run deadline stops every callable.

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
from convcost.timing.stats import rel_iqr, round_ratios, summarize

GRAPH_THRESHOLD_MS = 0.020  # kernels faster than this also get a CUDA-graph figure
L2_FLUSH_BYTES = 256 * 1024 * 1024
CPU_FLUSH_BYTES = 64 * 1024 * 1024
CPU_BLOCK_S = 0.002  # >= 2 ms per CPU block: perf_counter overhead (~100 ns) stays < 0.01%
CUDA_BATCH_S = 0.02  # rounds recorded back to back per synchronisation (about 20 ms of work)

__all__ = ["Bench", "GroupResult", "Measurement", "OutputCheckError", "TimingConfig",
           "check_output", "measure_group", "measure_interleaved", "measure_one", "summarize"]


@dataclass(frozen=True)
class TimingConfig:
    """How to measure. ``max_time_s`` caps each callable's sampling time (warm-up excluded)."""

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


def error_text(e: BaseException) -> str:
    """One line for a failed callable: 'out of memory', or 'Type: first line'."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of memory"
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


class Bench:
    """State of one callable under measurement (use through :func:`measure_group`)."""

    def __init__(self, fn: Callable[[], Any], cfg: TimingConfig,
                 expected_shape: tuple[int, ...] | None = None) -> None:
        self.fn, self.cfg, self.expected_shape = fn, cfg, expected_shape
        self.samples: list[float] = []
        self.inner = 1
        self.spent = 0.0
        self.cap_s = cfg.max_time_s
        self.error: str | None = None
        self.graph_ms: float | None = None
        self.call_s = 0.0  # fastest warm-up call, seconds
        self.cuda = cfg.numerics.is_cuda
        self._flush: torch.Tensor | None = None

    # -- preparation ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Output check (also the autotune call), timed warm-up; choose the CPU block size."""
        out = self.fn()  # first call: cuDNN autotune (cudnn.benchmark) happens here
        if self.cuda:
            torch.cuda.synchronize()
        check_output(out, self.expected_shape)
        del out
        pc = time.perf_counter
        one = math.inf
        for _ in range(max(1, self.cfg.warmup_calls)):
            t0 = pc()
            self.fn()
            one = min(one, pc() - t0)
        if self.cuda:
            torch.cuda.synchronize()
        if self.cfg.cold:
            n = (L2_FLUSH_BYTES if self.cuda else CPU_FLUSH_BYTES) // 4
            self._flush = torch.empty(n, dtype=torch.int32,
                                      device=self.cfg.numerics.device if self.cuda else "cpu")
        self.call_s = one
        if not self.cuda and not self.cfg.cold:
            self.inner = max(1, min(10_000, math.ceil(CPU_BLOCK_S / max(one, 1e-7))))

    @property
    def sample_s(self) -> float:
        """Estimated seconds per sample (a CPU block, or one call), known after warm-up."""
        return max(self.call_s * self.inner, CPU_BLOCK_S if not self.cuda else 0.0, 1e-6)

    # -- sampling ---------------------------------------------------------------------------
    def cpu_sample(self) -> float:
        """One CPU sample: the mean of ``inner`` back-to-back calls, in ms."""
        fn, inner, pc = self.fn, self.inner, time.perf_counter
        if self._flush is not None:
            self._flush.add_(1)
        t0 = pc()
        for _ in range(inner):
            fn()
        ms = (pc() - t0) * 1e3 / inner
        self.spent += ms * inner / 1e3
        return ms

    def cuda_record(self) -> tuple[Any, Any]:
        """Enqueue one call between two CUDA events (read after the batch's sync)."""
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if self._flush is not None:
            self._flush.zero_()
        s.record()
        self.fn()
        e.record()
        return s, e

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
        r = rel_iqr(self.samples)
        return r is not None and r <= self.cfg.rel_iqr

    @property
    def done(self) -> bool:
        return self.error is not None or self.converged or self.spent >= self.cap_s

    def result(self) -> Measurement:
        if not self.samples:
            return Measurement(error=self.error or "not measured")
        med, q1, q3, lo, hi = summarize(self.samples)
        return Measurement(median_ms=med, iqr_ms=q3 - q1, q1_ms=q1, q3_ms=q3, min_ms=lo,
                           max_ms=hi, n=len(self.samples), calls_per_sample=self.inner,
                           converged=self.converged, sampling_s=self.spent,
                           graph_median_ms=self.graph_ms, error=self.error)


@dataclass
class GroupResult:
    """What a group measurement produced: one Measurement per callable, and the aligned
    per-round samples (``rounds[i][r]`` is callable i's sample in round r, None if not taken)."""

    measurements: list[Measurement]
    rounds: list[list[float | None]]
    stopped_by_deadline: bool = False


def measure_group(benches: Sequence[Bench], *, paired: bool = False, deadline: float | None = None,
                  on_done: Callable[[int, Measurement], None] | None = None,
                  before_sampling: Callable[[Sequence[Bench]], None] | None = None) -> GroupResult:
    """Measure callables in rounds until each converges, hits its cap, or ``deadline`` passes.

    With ``paired``, bench 0 is the baseline: it is sampled in every round in which any other
    bench is still sampling, and a variant also waits for its per-round ratio to the baseline to
    be steady. A callable that raises (unsupported, out of memory, bad output) gets a
    Measurement with ``error`` set; the others go on. ``on_done(i, m)`` is called as each
    finishes. KeyboardInterrupt propagates (callers keep what finished). ``deadline`` is a
    ``time.perf_counter()`` value. ``before_sampling(benches)`` runs after warm-up (call times
    known: :attr:`Bench.call_s`), to set each bench's ``cap_s``.
    """
    n = len(benches)
    rounds: list[list[float | None]] = [[] for _ in range(n)]
    results: list[Measurement | None] = [None] * n
    pc = time.perf_counter

    def finish(i: int) -> None:
        b = benches[i]
        if b.error is None and b.samples and statistics.median(b.samples) < GRAPH_THRESHOLD_MS:
            b.graph_figure()
        results[i] = b.result()
        if on_done:
            on_done(i, results[i])

    for b in benches:
        try:
            b.prepare()
        except KeyboardInterrupt:
            raise
        except Exception as e:
            b.error = error_text(e)
            if b.cuda and isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
    if before_sampling is not None:
        before_sampling(benches)
    # without a working baseline (or with nothing to pair) the others are measured alone
    base = benches[0] if paired and n > 1 and benches[0].error is None else None

    def var_done(i: int) -> bool:
        b = benches[i]
        if b.error is not None or b.spent >= b.cap_s:
            return True
        if not b.converged:
            return False
        if base is None or i == 0:
            return True
        r = rel_iqr(round_ratios(rounds[0], rounds[i]))
        return len(rounds[i]) >= b.cfg.min_samples and r is not None and r <= b.cfg.rel_iqr

    stopped = False
    r_index = 0
    cuda = any(b.cuda for b in benches)
    while True:
        for i in range(n):
            if results[i] is None and i != (0 if base is not None else -1) and var_done(i):
                finish(i)
        if base is not None and results[0] is None and all(
                results[i] is not None for i in range(1, n)):
            finish(0)
        active = [i for i in range(n) if results[i] is None]
        if not active:
            break
        if deadline is not None and pc() >= deadline:
            stopped = True
            for i in active:
                finish(i)
            break
        batch = _cuda_batch(benches, active) if cuda else 1
        t0 = pc()
        for _ in range(batch):
            k = r_index % len(active)
            taken = _one_round(benches, active[k:] + active[:k], rounds, cuda)
            r_index += 1
            if not taken:
                break
        if cuda:  # wall time of the batch, shared out: the cap bounds what the user waits
            _collect_cuda(benches, rounds)
            share = (pc() - t0) / len(active)
            for i in active:
                benches[i].spent += share
    return GroupResult([r if r is not None else Measurement(error="not measured") for r in results],
                       rounds, stopped)


def _one_round(benches: Sequence[Bench], order: list[int], rounds: list[list[float | None]],
               cuda: bool) -> bool:
    """Sample each bench in ``order`` once; benches not in the round get None (kept aligned)."""
    in_round = set(order)
    for i, row in enumerate(rounds):
        if i not in in_round:
            row.append(None)
    any_taken = False
    for i in order:
        b = benches[i]
        if b.error is not None:
            rounds[i].append(None)
            continue
        try:
            if cuda:
                rounds[i].append(b.cuda_record())  # type: ignore[arg-type]  # events until collected
            else:
                s = b.cpu_sample()
                b.samples.append(s)
                rounds[i].append(s)
            any_taken = True
        except KeyboardInterrupt:
            raise
        except Exception as e:
            b.error = error_text(e)
            rounds[i].append(None)
    return any_taken


def _collect_cuda(benches: Sequence[Bench], rounds: list[list[Any]]) -> None:
    """One synchronisation for the batch; turn recorded event pairs into samples."""
    torch.cuda.synchronize()
    for i, row in enumerate(rounds):
        b = benches[i]
        for r, v in enumerate(row):
            if isinstance(v, tuple):
                ms = v[0].elapsed_time(v[1])
                row[r] = ms
                b.samples.append(ms)


def _cuda_batch(benches: Sequence[Bench], active: list[int]) -> int:
    """Rounds per synchronisation: about ``CUDA_BATCH_S`` of work, at least one."""
    per = 0.0
    for i in active:
        s = benches[i].samples
        if not s:
            return 3
        per += statistics.median(s[-5:]) / 1e3
    return int(max(1, min(100, CUDA_BATCH_S / max(per, 1e-7))))


def measure_interleaved(benches: Sequence[Bench],
                        on_done: Callable[[int, Measurement], None] | None = None,
                        deadline: float | None = None) -> list[Measurement]:
    """Measure several callables interleaved (unpaired); see :func:`measure_group`."""
    return measure_group(benches, deadline=deadline, on_done=on_done).measurements


def measure_one(fn: Callable[[], Any], cfg: TimingConfig,
                expected_shape: tuple[int, ...] | None = None) -> Measurement:
    """Measure a single callable under ``cfg``'s numerics."""
    with numerics(cfg.numerics), torch.inference_mode():
        return measure_interleaved([Bench(fn, cfg, expected_shape)])[0]
