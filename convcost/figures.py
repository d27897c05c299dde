"""Typed latency figures: what the timing stage returns and what reports carry.

Plain data, no stage imported here (counting, variants and report import it; it imports none of
them). Latencies are milliseconds per call; ratios are variant / baseline (paired: the median of
per-round ratios, with a bootstrap 95% interval). ``to_dict`` gives the JSON objects of
docs/json.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Measurement:
    """Summary of one timed callable (milliseconds per call).

    ``stop`` says why sampling ended: ``iqr`` (IQR/median under the target), ``median`` (the
    median known to the target precision), ``settled`` (the running median stopped moving),
    ``cap`` (its time cap), ``deadline`` (the run's time budget) or ``error``; ``converged`` is
    true for the first three.
    """

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
    rounds: int = 0
    median_rse: float | None = None
    stop: str | None = None
    # tail percentiles of the samples (each the mean of ``calls_per_sample`` calls); None with
    # too few samples (p10/p90: 10, p99: 100; see convcost.timing.stats.tails)
    p10_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None

    @property
    def rel_iqr(self) -> float | None:
        if self.median_ms is None or self.iqr_ms is None or not self.median_ms:
            return None
        return self.iqr_ms / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rel_iqr"] = self.rel_iqr
        return d


@dataclass(frozen=True)
class MachineState:
    """What the machine did during one measurement window (the sampling of one group), read
    by :mod:`convcost.timing.machine`: ``others_cores`` other tasks' CPU use in cores averaged
    over the window, ``own_cores`` ours (all threads), ``steal_cores`` what the hypervisor gave
    elsewhere, ``canary_drift`` the largest relative move of a canary kernel from its reference
    (+: slower). ``why`` lists what made the window busy (empty: quiet)."""

    wall_s: float
    cpus: int
    threads: int | None
    own_cores: float | None
    others_cores: float | None
    steal_cores: float | None
    involuntary_switches: int
    runnable_others: int | None
    freq_mhz: float | None = None
    canary_drift: float | None = None
    canary_tolerance: float | None = None
    why: tuple[str, ...] = ()
    gpu: dict[str, Any] | None = None  # CUDA: other processes, SM clock, throttle reasons
    causes: tuple[str, ...] = ()  # beside ``why``: others, steal, canary, gpu

    @property
    def busy(self) -> bool:
        return bool(self.why)

    def to_dict(self) -> dict[str, Any]:
        return {"busy": self.busy, "why": list(self.why), "causes": list(self.causes),
                "wall_s": round(self.wall_s, 4),
                "cpus": self.cpus, "threads": self.threads,
                "own_cores": rounded(self.own_cores), "others_cores": rounded(self.others_cores),
                "steal_cores": rounded(self.steal_cores),
                "involuntary_switches": self.involuntary_switches,
                "runnable_others": self.runnable_others, "freq_mhz": self.freq_mhz,
                "canary_drift": rounded(self.canary_drift),
                "canary_tolerance": rounded(self.canary_tolerance), "gpu": self.gpu}


def rounded(x: float | None) -> float | None:
    """A figure for a report, to 4 decimals (None stays None)."""
    return None if x is None else round(x, 4)


@dataclass(frozen=True)
class Lowering:
    """What a delegate took of a kernel's lowered program: ``delegated_nodes`` operator nodes
    run inside the delegate (XNNPACK), ``portable_nodes`` left on the runtime's portable
    kernels (``portable_ops``: their operators). A node is one operator call of the exported
    graph (a conv, a view, an add), not a weighted share of the time."""

    delegate: str
    delegated_nodes: int
    portable_nodes: int
    portable_ops: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.delegated_nodes + self.portable_nodes

    @property
    def share(self) -> float | None:
        """Delegated nodes / all operator nodes (None: a program with no operator)."""
        return self.delegated_nodes / self.total if self.total else None

    @property
    def complete(self) -> bool:
        """Every operator node runs in the delegate."""
        return self.portable_nodes == 0

    def text(self) -> str:
        """``XNNPACK 5/6 nodes (portable: aten.cumsum.default)``."""
        left = f" (portable: {', '.join(self.portable_ops)})" if self.portable_ops else ""
        return f"{self.delegate} {self.delegated_nodes}/{self.total} nodes{left}"

    def to_dict(self) -> dict[str, Any]:
        return {"delegate": self.delegate, "delegated_nodes": self.delegated_nodes,
                "portable_nodes": self.portable_nodes, "portable_ops": list(self.portable_ops),
                "delegated_share": None if self.share is None else round(self.share, 4)}


@dataclass(frozen=True)
class KernelTiming:
    """One kernel's timing record in a row: its measurement (or the error standing in for
    one), where the figure came from (a :class:`~convcost.timing.status.Status` value), and
    what was learnt beside it."""

    measurement: Measurement
    source: str
    setup_s: float | None = None  # compile / export / session, outside the measurement
    output_check: dict[str, Any] | None = None  # against eager (non-eager backends)
    cached_at: str | None = None
    error: str | None = None
    pair: dict[str, Any] | None = None  # the paired ratio (stats.PairedRatio.to_dict + source)
    roofline: dict[str, Any] | None = None  # achieved TFLOP/s, GB/s, % of bound
    machine: MachineState | None = None  # what competed while it was measured (None: cached)
    lowering: Lowering | None = None  # what a delegate took of the kernel (executorch)

    @property
    def busy(self) -> bool:
        """Measured while the machine was busy (see :class:`MachineState`)."""
        return self.machine is not None and self.machine.busy

    @property
    def failed(self) -> bool:
        """Timing failed (an error, of the kernel or of its measurement)."""
        return bool(self.error or self.measurement.error)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"measurement": self.measurement.to_dict(), "source": self.source}
        if self.setup_s is not None:
            d["setup_s"] = self.setup_s
        if self.output_check is not None:
            d["output_check"] = self.output_check
        if self.cached_at:
            d["cached_at"] = self.cached_at
        if self.error is not None:
            d["error"] = self.error
        if self.pair is not None:
            d["pair"] = self.pair
        if self.roofline:
            d["roofline"] = self.roofline
        if self.machine is not None:
            d["machine"] = self.machine.to_dict()
        if self.lowering is not None:
            d["lowering"] = self.lowering.to_dict()
        return d


@dataclass(frozen=True)
class LatencyFigure:
    """A row's latency on one backend: the median, the paired ratio to its baseline with the
    interval and round count, where the figure came from, and the kernel's timing record."""

    latency_ms: float | None = None
    ratio_latency: float | None = None
    latency_ci: tuple[float, float] | None = None
    latency_rounds: int | None = None
    latency_source: str | None = None  # measured | cached | same | failed | budget | interrupted
    cached_at: str | None = None
    timing: KernelTiming | None = None
    # the kernel or its paired ratio was measured while the machine was busy: shown and
    # marked; ``withheld`` too (--on-busy withhold, the default): never quoted in a headline,
    # never stored in the latency table
    busy: bool = False
    withheld: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The compare JSON's per-backend object."""
        return {"latency_ms": self.latency_ms, "ratio_latency": self.ratio_latency,
                "latency_ratio_ci": list(self.latency_ci) if self.latency_ci else None,
                "latency_rounds": self.latency_rounds, "latency_source": self.latency_source,
                "cached_at": self.cached_at, "timing": timing_dict(self.timing),
                "busy": self.busy, "withheld": self.withheld}


NO_FIGURE = LatencyFigure()


class TimedRow:
    """A report row's view of its figures: ``backends`` maps each backend (in run order) to its
    :class:`LatencyFigure`; the properties read the first backend's."""

    backends: dict[str, LatencyFigure]

    @property
    def figure(self) -> LatencyFigure:
        """The first backend's figure (an empty one when not timed)."""
        return next(iter(self.backends.values()), NO_FIGURE)

    def on(self, backend: str | None) -> LatencyFigure:
        """The figure on ``backend`` (the first backend's for None or an unknown name)."""
        return self.backends.get(backend, self.figure) if backend is not None else self.figure

    @property
    def latency_ms(self) -> float | None:
        """Median latency on the first backend (ms per call)."""
        return self.figure.latency_ms

    @property
    def timing(self) -> KernelTiming | None:
        """The first backend's timing record (measurement, pair, roofline)."""
        return self.figure.timing


@dataclass(frozen=True)
class ModelLatency:
    """A whole model's latency on one backend (analyze), and the sum of its conv/linear layers
    each timed alone."""

    latency_ms: float | None
    timing: KernelTiming | None
    layers_sum_ms: float | None = None
    layers_timed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "timing": timing_dict(self.timing),
                "layers_sum_ms": self.layers_sum_ms, "layers_timed": self.layers_timed}


def timing_dict(t: KernelTiming | None) -> dict[str, Any] | None:
    return None if t is None else t.to_dict()
