"""The choice of one option per layer under limits on the model's params, MACs and latency, at
the least objective: a multiple-choice knapsack, solved exactly as an integer programme by
HiGHS (``scipy.optimize.milp``), never greedily.

Totals are the rest of the model (what no option changes: layers that are not candidates, the
work between them) plus the chosen option of each layer. Latency adds up per layer: the
prediction the plan's end-to-end measurement checks. Ties on the objective are broken by the
next metric (latency, then params, then MACs) in a second solve with the first one's optimum
fixed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from convcost.errors import InputError

METRICS = ("latency", "params", "macs")
TIE_BREAK = {"latency": "params", "params": "latency", "macs": "latency"}


@dataclass(frozen=True)
class Option:
    """One choice for one layer: keep it as it is (``variant`` None) or a variant.
    ``latency_ms`` per call; ``latency_ci`` its 95% interval (from the paired ratio);
    ``busy``: measured while the machine was busy (named in the plan)."""

    label: str
    variant: str | None
    groups: int | None
    params: int
    macs: int
    latency_ms: float | None = None
    latency_ci: tuple[float, float] | None = None
    busy: bool = False

    def value(self, metric: str) -> float:
        v = {"latency": self.latency_ms, "params": self.params, "macs": self.macs}[metric]
        if v is None:
            raise ValueError(f"{self.label}: no {metric} figure")
        return float(v)


@dataclass(frozen=True)
class LayerOptions:
    """A selected conv and what it may become; ``options[0]`` keeps it. A pinned layer
    (``--keep``) is offered only that."""

    name: str
    kind: str
    options: tuple[Option, ...]
    pinned: bool = False

    @property
    def allowed(self) -> tuple[Option, ...]:
        return self.options[:1] if self.pinned else self.options


@dataclass(frozen=True)
class Problem:
    """Layers, the rest of the model, the limits (absolute: params, MACs, ms; None: none) and
    the objective."""

    layers: tuple[LayerOptions, ...]
    rest: dict[str, float]  # metric -> the part of the model no option changes
    limits: dict[str, float | None]
    objective: str

    def total(self, metric: str, choice: Sequence[int]) -> float:
        return self.rest.get(metric, 0.0) + sum(
            lay.options[i].value(metric) for lay, i in zip(self.layers, choice, strict=True))

    def extreme(self, metric: str, best: bool = True) -> float:
        """The least (or most) total of ``metric`` any plan reaches, the limits aside."""
        pick = min if best else max
        return self.rest.get(metric, 0.0) + sum(pick(o.value(metric) for o in lay.allowed)
                                                for lay in self.layers)


@dataclass(frozen=True)
class Solution:
    choice: tuple[int, ...]  # the option chosen per layer (an index into its ``options``)
    totals: dict[str, float]


class Infeasible(InputError):
    """No plan meets the limits (exit 2); the message names the tightest achievable figures."""


def _fmt(metric: str, v: float) -> str:
    from convcost.units import fmt_ms, human

    return fmt_ms(v) if metric == "latency" else human(round(v))


def _needs(problem: Problem) -> tuple[str, ...]:
    """The metrics a solution's totals give: params and MACs always, latency when every
    option has a figure (it was timed)."""
    return tuple(m for m in METRICS if m != "latency" or _known(problem, "latency"))


def _known(problem: Problem, metric: str) -> bool:
    """Every allowed option has a ``metric`` figure (latency: it was timed)."""
    return all(getattr(o, "latency_ms" if metric == "latency" else metric) is not None
               for lay in problem.layers for o in lay.allowed)


def _check_feasible_alone(problem: Problem) -> None:
    for metric, limit in problem.limits.items():
        if limit is None:
            continue
        least = problem.extreme(metric)
        if least > limit * (1 + 1e-12):
            raise Infeasible(
                f"--max-{metric} {_fmt(metric, limit)} cannot be met: the least {metric} any "
                f"plan reaches is {_fmt(metric, least)} (every selected conv at its smallest "
                "candidate, pinned layers as they are); loosen the limit, or offer more "
                "candidates (--variants, --groups, fewer --keep)")


def solve(problem: Problem, extra_limits: dict[str, float] | None = None) -> Solution:
    """The exact optimum (ties broken by the next metric). Raises :class:`Infeasible` with
    the tightest achievable figures."""
    _check_feasible_alone(problem)
    limits = {**{m: v for m, v in problem.limits.items() if v is not None},
              **(extra_limits or {})}
    first = _milp(problem, problem.objective, limits)
    if first is None:
        parts = " and ".join(f"--max-{m} {_fmt(m, v)}" for m, v in limits.items())
        alone = "; ".join(f"least {m} alone {_fmt(m, problem.extreme(m))}" for m in limits)
        raise Infeasible(f"no plan meets {parts} together ({alone}): loosen one of them")
    tie = TIE_BREAK[problem.objective]
    if _known(problem, tie):
        opt = problem.total(problem.objective, first)
        slack = max(abs(opt) * 1e-9, 1e-9)
        second = _milp(problem, tie, {**limits, problem.objective: opt + slack})
        if second is not None and problem.total(problem.objective, second) <= opt + slack:
            first = second
    return Solution(tuple(first), {m: problem.total(m, first) for m in _needs(problem)})


def _milp(problem: Problem, objective: str, limits: dict[str, float]) -> list[int] | None:
    """One integer programme: x[l, o] in {0, 1}, one option per layer, the limits, minimise
    ``objective``. None when infeasible."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    index = [(li, oi) for li, lay in enumerate(problem.layers)
             for oi in range(len(lay.allowed))]
    n = len(index)
    if n == 0:
        return []
    c = np.array([problem.layers[li].options[oi].value(objective) for li, oi in index])
    rows = len(problem.layers) + len(limits)
    a = lil_matrix((rows, n))
    lo = np.zeros(rows)
    hi = np.zeros(rows)
    for j, (li, _) in enumerate(index):
        a[li, j] = 1.0
    lo[: len(problem.layers)] = hi[: len(problem.layers)] = 1.0
    for k, (metric, limit) in enumerate(limits.items()):
        r = len(problem.layers) + k
        for j, (li, oi) in enumerate(index):
            a[r, j] = problem.layers[li].options[oi].value(metric)
        lo[r], hi[r] = -np.inf, limit - problem.rest.get(metric, 0.0)
    from convcost.files import quiet_fds

    with quiet_fds():  # HiGHS prints notes from C++ now and then
        res = milp(c, constraints=LinearConstraint(a.tocsr(), lo, hi), integrality=np.ones(n),
                   bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0})
    if res.status != 0 or res.x is None:
        return None
    choice = [0] * len(problem.layers)
    for j, (li, oi) in enumerate(index):
        if res.x[j] > 0.5:
            choice[li] = oi
    return choice


def brute_force(problem: Problem) -> Solution | None:
    """Every combination (small problems only: tests check :func:`solve` against it)."""
    best: tuple[float, tuple[int, ...]] | None = None
    needs = _needs(problem)
    for choice in itertools.product(*(range(len(lay.allowed)) for lay in problem.layers)):
        if any(v is not None and problem.total(m, choice) > v * (1 + 1e-12)
               for m, v in problem.limits.items()):
            continue
        obj = problem.total(problem.objective, choice)
        if best is None or obj < best[0] - 1e-12 * max(1.0, abs(obj)):
            best = (obj, choice)
    if best is None:
        return None
    return Solution(best[1], {m: problem.total(m, best[1]) for m in needs})


def frontier(problem: Problem, n: int) -> list[Solution]:
    """Up to ``n`` plans along the Pareto front of latency against params, within the
    limits: from the fastest to the smallest, each the fastest under a params cap stepped
    evenly between theirs (duplicates dropped)."""
    fast = solve(Problem(problem.layers, problem.rest, problem.limits, "latency"))
    small = solve(Problem(problem.layers, problem.rest, problem.limits, "params"))
    out = [fast]
    hi, lo = fast.totals["params"], small.totals["params"]
    for k in range(1, max(1, n - 1)):
        cap = hi - (hi - lo) * k / (n - 1)
        try:
            out.append(solve(Problem(problem.layers, problem.rest, problem.limits, "latency"),
                             {"params": math.floor(cap)}))
        except Infeasible:
            continue
    if n > 1:
        out.append(small)
    seen: set[tuple[int, ...]] = set()
    return [s for s in out if not (s.choice in seen or seen.add(s.choice))]
