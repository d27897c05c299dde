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
- Rounds: the callables of a group (a baseline and its variants) take turns in every round, in
  a rotating order, so drift affects them alike. A turn is a short burst (about 20 ms) of
  back-to-back samples; for short kernels one extra sample before it refills the caches and is
  discarded (the kernel is measured warm, as when timed alone). The burst medians are kept
  aligned by round so that ratios can be taken per round (see :mod:`convcost.timing.stats`).
- Adaptive stop: a callable stops when, with at least ``min_samples`` samples, IQR/median is
  under ``rel_iqr`` or its median is known to ``median_rse`` (relative standard error over the
  rounds); a paired variant's per-round ratio must meet the same rule. Otherwise it stops at its
  sampling-time cap, flagged ``converged: False``. A whole-run deadline stops every callable.

Latencies are milliseconds per call.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from convcost.errors import first_line
from convcost.figures import Measurement
from convcost.timing.device import Numerics, numerics
from convcost.timing.stats import rel_iqr, round_ratios, summarize, tails

GRAPH_THRESHOLD_MS = 0.020  # kernels faster than this also get a CUDA-graph figure
L2_FLUSH_BYTES = 256 * 1024 * 1024
CPU_FLUSH_BYTES = 64 * 1024 * 1024
CPU_BLOCK_S = 0.002  # >= 2 ms per CPU block: perf_counter overhead (~100 ns) stays < 0.01%
CUDA_BATCH_S = 0.02  # rounds recorded back to back per synchronisation (about 20 ms of work)
BURST_S = 0.02  # a callable's turn in a round: about 20 ms of back-to-back samples
REFILL_BELOW_S = 0.005  # samples shorter than this get one discarded sample before each burst
MAX_BURST = 25

__all__ = ["Bench", "GroupResult", "Measurement", "OutputCheckError", "TimingConfig",
           "check_output", "measure_group", "measure_interleaved", "measure_one", "summarize"]


@dataclass(frozen=True)
class TimingConfig:
    """How to measure. ``max_time_s`` caps each callable's sampling time (warm-up excluded).

    Stop rule: at least ``min_samples`` samples, and either IQR/median <= ``rel_iqr`` or the
    median known to ``median_rse`` (relative standard error, estimated over at least
    ``min_rounds`` rounds); a paired variant's per-round ratio must meet the same rule.
    """

    numerics: Numerics = field(default_factory=Numerics)
    cold: bool = False
    max_time_s: float = 1.0
    min_samples: int = 10
    min_rounds: int = 5
    rel_iqr: float = 0.03
    median_rse: float = 0.01
    warmup_calls: int = 3
    cuda_graph: bool = True
    burst_s: float = BURST_S
    threads_note: str = ""  # how --threads auto chose the count (reports only)
    pass_name: str = "inference"  # inference (a forward) | training (forward + backward)

    @property
    def training(self) -> bool:
        return self.pass_name == "training"


def median_rse(values: Sequence[float]) -> float | None:
    """Relative standard error of the median of ``values``, from their IQR:
    1.2533 * sigma / sqrt(n) with sigma = IQR / 1.349 (exact for normal data, robust to outliers)."""
    r = rel_iqr(values)
    return None if r is None else 0.929 * r / math.sqrt(len(values))


def stable(values: Sequence[float], cfg: TimingConfig, *, min_n: int) -> str | None:
    """Why ``values`` may stop ('iqr' or 'median'), or None to go on."""
    if len(values) < min_n:
        return None
    r = rel_iqr(values)
    if r is not None and r <= cfg.rel_iqr:
        return "iqr"
    if len(values) >= cfg.min_rounds:
        se = median_rse(values)
        if se is not None and se <= cfg.median_rse:
            return "median"
    return None


def settled(values: Sequence[float], tol: float, *, min_n: int) -> bool:
    """The running median has settled: with at least ``min_n`` values, the median of all of
    them and of the first two thirds differ by at most ``tol`` (relative). A wide but stable
    distribution (a noisy machine) stops here instead of running to its cap."""
    n = len(values)
    if n < max(3, min_n):
        return False
    whole = statistics.median(values)
    early = statistics.median(values[: (2 * n) // 3])
    return whole > 0 and abs(whole - early) <= tol * whole


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
    return first_line(e, 300)


class Bench:
    """State of one callable under measurement (use through :func:`measure_group`).

    ``samples`` are the kept samples (ms per call); ``round_values`` the median of each burst,
    one per round the callable took part in (the unit for the standard error and for pairing:
    samples inside one burst are not independent).
    """

    def __init__(self, fn: Callable[[], Any], cfg: TimingConfig,
                 expected_shape: tuple[int, ...] | None = None, *, cuda_graph: bool = True) -> None:
        self.fn, self.cfg, self.expected_shape = fn, cfg, expected_shape
        self.use_graph = cuda_graph and cfg.cuda_graph
        self.samples: list[float] = []
        self.round_values: list[float] = []
        self.inner = 1
        self.burst = 1
        self.refill = False
        self.spent = 0.0
        self.cap_s = cfg.max_time_s
        self.error: str | None = None
        self.graph_ms: float | None = None
        self.call_s = 0.0  # fastest warm-up call, seconds
        self.stop: str | None = None
        self.cuda = cfg.numerics.is_cuda
        self._flush: torch.Tensor | None = None

    # -- preparation ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Output check (also the autotune call), timed warm-up; choose block and burst sizes."""
        out = self.fn()  # first call: cuDNN autotune (cudnn.benchmark) happens here
        if self.cuda:
            torch.cuda.synchronize()
        check_output(out, self.expected_shape)
        del out
        pc = time.perf_counter
        one = math.inf
        # the check call above was the first warm-up call (and the autotune call)
        for _ in range(max(1, self.cfg.warmup_calls - 1)):
            t0 = pc()
            self.fn()
            if self.cuda:
                torch.cuda.synchronize()
            one = min(one, pc() - t0)
        if self.cfg.cold:
            n = (L2_FLUSH_BYTES if self.cuda else CPU_FLUSH_BYTES) // 4
            self._flush = torch.empty(n, dtype=torch.int32,
                                      device=self.cfg.numerics.device if self.cuda else "cpu")
        self.call_s = one
        if not self.cuda and not self.cfg.cold:
            self.inner = max(1, min(10_000, math.ceil(CPU_BLOCK_S / max(one, 1e-7))))
        # never a cap below the minimum sample count: a call slower than max_time / min_samples
        # still gets its min_samples samples (else it could never converge)
        self.cap_s = max(self.cap_s, self.cfg.min_samples * self.sample_s * 1.05)
        self.burst = max(1, min(MAX_BURST, round(self.cfg.burst_s / self.sample_s)))
        # a short kernel's first sample after another kernel ran sees cold caches: discard it
        self.refill = not self.cfg.cold and self.sample_s < REFILL_BELOW_S

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

    def cpu_burst(self) -> float:
        """This callable's turn in a round: (a refill sample, discarded, then) ``burst``
        samples kept; returns their median."""
        if self.refill:
            self.cpu_sample()
        got = [self.cpu_sample() for _ in range(self.burst)]
        self.samples += got
        return statistics.median(got)

    def cuda_burst(self) -> list[tuple[Any, Any]]:
        """Enqueue the turn's calls between CUDA events (read after the batch's sync); the first
        pair is the refill when ``refill`` is set."""
        out = []
        for _ in range(self.burst + (1 if self.refill else 0)):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if self._flush is not None:
                self._flush.zero_()
            s.record()
            self.fn()
            e.record()
            out.append((s, e))
        return out

    def cuda_collect(self, pairs: list[tuple[Any, Any]]) -> float:
        ms = [s.elapsed_time(e) for s, e in pairs]
        got = ms[1:] if self.refill and len(ms) > 1 else ms
        self.samples += got
        return statistics.median(got)

    def graph_figure(self) -> None:
        """CUDA-graph replay time per call (for short kernels); failures leave it None."""
        if not self.cuda or not self.use_graph:
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
    def stop_reason(self) -> str | None:
        """'iqr', 'median' or 'settled' when the samples meet the stop rule, else None."""
        if len(self.samples) < self.cfg.min_samples:
            return None
        r = rel_iqr(self.samples)
        if r is not None and r <= self.cfg.rel_iqr:
            return "iqr"
        if stable(self.round_values, self.cfg, min_n=self.cfg.min_rounds):
            return "median"
        return "settled" if settled(self.samples, self.cfg.median_rse,
                                    min_n=2 * self.cfg.min_samples) else None

    @property
    def converged(self) -> bool:
        return self.stop_reason() is not None

    @property
    def done(self) -> bool:
        """Failed, converged, or at its cap with at least ``min_samples`` samples: the cap
        never cuts a measurement below the minimum (samples slower than the warm-up's estimate
        on a busy machine); only the run's deadline or an interrupt can."""
        return self.error is not None or self.converged or (
            self.spent >= self.cap_s and len(self.samples) >= self.cfg.min_samples)

    def result(self) -> Measurement:
        if not self.samples:  # failed, or stopped by the run's deadline before its first sample
            return Measurement(error=self.error or "not measured",
                               stop="error" if self.error else (self.stop or "error"))
        med, q1, q3, lo, hi = summarize(self.samples)
        p10, p90, p99 = tails(self.samples)
        why = self.stop_reason()
        stop = self.stop or why or ("error" if self.error else "cap")
        return Measurement(median_ms=med, iqr_ms=q3 - q1, q1_ms=q1, q3_ms=q3, min_ms=lo,
                           max_ms=hi, n=len(self.samples), calls_per_sample=self.inner,
                           converged=why is not None, sampling_s=self.spent,
                           graph_median_ms=self.graph_ms, error=self.error,
                           rounds=len(self.round_values),
                           median_rse=median_rse(self.round_values), stop=stop,
                           p10_ms=p10, p90_ms=p90, p99_ms=p99)


@dataclass
class GroupResult:
    """What a group measurement produced: one Measurement per callable, and the aligned
    per-round values (``rounds[i][r]`` is callable i's burst median in round r, None if it
    did not take part)."""

    measurements: list[Measurement]
    rounds: list[list[float | None]]
    stopped_by_deadline: bool = False


# long: the interleaved-rounds loop keeps its stop rules, finishing and deadline in one
# place, over shared round state; split up, each part would need all of that state passed in
def measure_group(benches: Sequence[Bench], *, paired: bool = False, deadline: float | None = None,
                  on_done: Callable[[int, Measurement], None] | None = None,
                  before_sampling: Callable[[Sequence[Bench]], None] | None = None,
                  between_rounds: Callable[[], None] | None = None) -> GroupResult:
    """Measure callables in rounds until each meets the stop rule, hits its cap, or ``deadline``
    passes.

    With ``paired``, bench 0 is the baseline: it takes part in every round in which any other
    bench does, and a variant also waits for its per-round ratio to the baseline to meet the
    stop rule. A callable that raises (unsupported, out of memory, bad output) gets a
    Measurement with ``error`` set; the others go on. ``on_done(i, m)`` is called as each
    finishes. KeyboardInterrupt propagates (callers keep what finished). ``deadline`` is a
    ``time.perf_counter()`` value. ``before_sampling(benches)`` runs after warm-up (call times
    known: :attr:`Bench.sample_s`), to set each bench's ``cap_s``; ``between_rounds()`` after
    every batch of rounds (the machine-state canaries, see :mod:`convcost.timing.canary`).
    """
    n = len(benches)
    rounds: list[list[float | None]] = [[] for _ in range(n)]
    results: list[Measurement | None] = [None] * n
    pc = time.perf_counter

    def finish(i: int, stop: str | None = None) -> None:
        b = benches[i]
        if b.error is None and b.samples and statistics.median(b.samples) < GRAPH_THRESHOLD_MS:
            b.graph_figure()
        if stop and not b.converged:
            b.stop = stop
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
        if b.error is not None or (b.spent >= b.cap_s and len(b.samples) >= b.cfg.min_samples):
            return True
        if not b.converged:
            return False
        if base is None or i == 0:
            return True
        ratios = round_ratios(rounds[0], rounds[i])
        return (stable(ratios, b.cfg, min_n=b.cfg.min_rounds) is not None
                or settled(ratios, b.cfg.median_rse, min_n=2 * b.cfg.min_samples))

    stopped = False
    r_index = 0
    cuda = any(b.cuda for b in benches)
    while True:
        for i in range(n):
            if results[i] is None and i != (0 if base is not None else -1) and var_done(i):
                finish(i)
        if base is not None and results[0] is None and all(
                results[i] is not None for i in range(1, n)) and (
                base.error is not None or len(base.samples) >= base.cfg.min_samples):
            finish(0)  # with its variants, once it has its own sample minimum
        active = [i for i in range(n) if results[i] is None]
        if not active:
            break
        if deadline is not None and pc() >= deadline:
            stopped = True
            for i in active:
                finish(i, "deadline")
            break
        batch = _cuda_batch(benches, active) if cuda else 1
        t0 = pc()
        pending: list[tuple[int, int, list[tuple[Any, Any]]]] = []
        for _ in range(batch):
            k = r_index % len(active)
            taken = _one_round(benches, active[k:] + active[:k], rounds, pending)
            r_index += 1
            if not taken:
                break
        if cuda:  # one synchronisation for the batch; the wall time is shared out
            torch.cuda.synchronize()
            for i, r, pairs in pending:
                v = benches[i].cuda_collect(pairs)
                rounds[i][r] = v
                benches[i].round_values.append(v)
            share = (pc() - t0) / len(active)
            for i in active:
                benches[i].spent += share
        if between_rounds is not None:
            between_rounds()
    return GroupResult([r if r is not None else Measurement(error="not measured") for r in results],
                       rounds, stopped)


def _one_round(benches: Sequence[Bench], order: list[int], rounds: list[list[float | None]],
               pending: list[tuple[int, int, list[tuple[Any, Any]]]]) -> bool:
    """Give each bench in ``order`` its burst; the others get None (rounds stay aligned)."""
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
            if b.cuda:
                rounds[i].append(None)  # filled after the batch's sync
                pending.append((i, len(rounds[i]) - 1, b.cuda_burst()))
            else:
                v = b.cpu_burst()
                b.round_values.append(v)
                rounds[i].append(v)
            any_taken = True
        except KeyboardInterrupt:
            raise
        except Exception as e:
            b.error = error_text(e)
            rounds[i].append(None)
    return any_taken


def _cuda_batch(benches: Sequence[Bench], active: list[int]) -> int:
    """Rounds per synchronisation: about ``CUDA_BATCH_S`` of work, at least one."""
    per = 0.0
    for i in active:
        b = benches[i]
        per += b.sample_s * (b.burst + (1 if b.refill else 0))
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
