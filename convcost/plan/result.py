"""What `convcost plan` returns: the options it chose from, the plans (the optimum, or the
Pareto front), each with its predicted totals and, when verified, its measured latency ratio
to the original model per backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from convcost.plan.costs import Limit, Options
from convcost.plan.solver import Option


@dataclass(frozen=True)
class Verified:
    """The planned model timed end to end against the original, paired, on one backend.
    ``ratio`` is planned / original (the median of per-round ratios) with its 95% interval."""

    backend: str
    original_ms: float | None = None
    planned_ms: float | None = None
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    rounds: int | None = None
    busy: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "original_ms": self.original_ms,
                "planned_ms": self.planned_ms, "ratio": self.ratio,
                "ratio_ci": list(self.ci) if self.ci else None, "rounds": self.rounds,
                "busy": self.busy, "error": self.error}


@dataclass
class PlannedModel:
    """One plan: the option chosen per layer, the predicted totals (rest of the model + the
    chosen options) and their ratios to the original, and the end-to-end measurements."""

    choice: tuple[int, ...]
    totals: dict[str, float]
    ratios: dict[str, float]
    verified: list[Verified] = field(default_factory=list)

    def agrees(self, v: Verified) -> bool | None:
        """The predicted latency ratio lies inside the measured interval (None: unknown)."""
        pred = self.ratios.get("latency")
        if pred is None or v.ci is None:
            return None
        return v.ci[0] <= pred <= v.ci[1]


@dataclass
class PlanReport:
    """Everything `plan` reports (rendering lives in :mod:`convcost.report.plan`)."""

    source: str
    name: str
    objective: str
    limits: list[Limit]
    options: Options
    plans: list[PlannedModel]
    timed: bool
    verify: bool
    notes: list[str] = field(default_factory=list)
    device: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    backends: list[str] = field(default_factory=list)
    from_table: str | None = None  # planned from the latency table alone: whose figures

    @property
    def best(self) -> PlannedModel:
        return self.plans[0]

    def chosen(self, plan: PlannedModel) -> list[tuple[str, str, Option, Option]]:
        """(layer, kind, kept option, chosen option) per layer."""
        return [(lay.name, lay.kind, lay.options[0], lay.options[i])
                for lay, i in zip(self.options.layers, plan.choice, strict=True)]

    def broken_latency(self) -> list[Verified]:
        """The best plan's measurements that break --max-latency (the limit in ms)."""
        lim = next((x.value for x in self.limits if x.metric == "latency"), None)
        if lim is None:
            return []
        return [v for v in self.best.verified if v.planned_ms is not None and v.planned_ms > lim]
