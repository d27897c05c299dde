"""Statistics of timed samples: quartiles, paired latency ratios and their bootstrap intervals.

A latency *ratio* (variant / baseline) is estimated from interleaved rounds: in each round the
baseline and the variant are sampled back to back, so a machine whose speed drifts slows both
alike and the per-round ratio cancels the drift. The estimate is the median of the per-round
ratios; its 95% confidence interval is a two-stage percentile bootstrap over epochs of
consecutive rounds and the rounds within them (resampling whole rounds keeps the pairing;
resampling epochs makes a slow change of the machine during the measurement widen the interval
instead of shifting it). Everything here is deterministic: the bootstrap uses a fixed seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
MAX_BOOTSTRAP_ROUNDS = 4000  # the most recent rounds; more would only cost time
HEADLINE_MAX_REL_WIDTH = 0.5  # a headline ratio needs (hi - lo) < 0.5 x ratio
ROUNDS_PER_EPOCH = 5  # rounds per epoch of the ratio's interval (see epoch_bootstrap_ci)
MAX_EPOCHS = 6


def summarize(samples: Sequence[float]) -> tuple[float, float, float, float, float]:
    """(median, q1, q3, min, max) of samples, quartiles by linear interpolation."""
    s = sorted(samples)
    if len(s) == 1:
        return s[0], s[0], s[0], s[0], s[0]
    q1, med, q3 = statistics.quantiles(s, n=4, method="inclusive")
    return med, q1, q3, s[0], s[-1]


TAIL_MIN_SAMPLES = {10: 10, 90: 10, 99: 100}  # fewer samples: that percentile is not reported


def tails(samples: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(p10, p90, p99) of samples, by linear interpolation (``statistics.quantiles``,
    inclusive); each None below :data:`TAIL_MIN_SAMPLES` samples (a p99 of 20 samples would be
    their maximum under another name)."""
    n = len(samples)
    if n < 2:
        return None, None, None
    q = statistics.quantiles(sorted(samples), n=100, method="inclusive")
    return tuple(q[p - 1] if n >= TAIL_MIN_SAMPLES[p] else None  # type: ignore[return-value]
                 for p in (10, 90, 99))


def rel_iqr(samples: Sequence[float]) -> float | None:
    """IQR / median, or None with fewer than two samples or a zero median."""
    if len(samples) < 2:
        return None
    med, q1, q3, _, _ = summarize(samples)
    return (q3 - q1) / med if med > 0 else None


def bootstrap_median_ci(values: Sequence[float], *, level: float = CI_LEVEL,
                        resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile-bootstrap ``level`` interval of the median of ``values`` (deterministic)."""
    v = list(values)[-MAX_BOOTSTRAP_ROUNDS:]
    if not v:
        raise ValueError("no values")
    if len(v) == 1:
        return v[0], v[0]
    x = torch.tensor(v, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(v), (resamples, len(v)), generator=g)
    meds = torch.quantile(x[idx], 0.5, dim=1)
    alpha = (1.0 - level) / 2
    lo, hi = torch.quantile(meds, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


def epochs_of(n: int) -> int:
    """How many epochs ``n`` rounds are cut into for the interval: one per
    :data:`ROUNDS_PER_EPOCH` rounds, from 2 to :data:`MAX_EPOCHS`; 1 (no epochs) under
    2 x :data:`ROUNDS_PER_EPOCH`."""
    return max(1, min(MAX_EPOCHS, n // ROUNDS_PER_EPOCH))


def epoch_bootstrap_ci(values: Sequence[float], *, level: float = CI_LEVEL,
                       resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Interval of the median of ``values`` (taken in time order) across epochs as well as
    within them: the hull of the plain percentile bootstrap over rounds and a cluster bootstrap
    over epochs (the rounds cut into consecutive epochs of equal size, the oldest few left out
    when they do not divide; each resample draws whole epochs with replacement). When the
    machine drifts during the measurement the epochs disagree and the interval widens to cover
    them, instead of narrowing around a mix; on a steady machine it is the plain interval (the
    cluster one is then no wider). Deterministic (fixed seed); the plain interval alone below
    two epochs."""
    v = list(values)[-MAX_BOOTSTRAP_ROUNDS:]
    lo, hi = bootstrap_median_ci(v, level=level, resamples=resamples, seed=seed)
    e = epochs_of(len(v))
    if e < 2:
        return lo, hi
    m = len(v) // e
    x = torch.tensor(v[len(v) - e * m:], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(e, (resamples, e, 1), generator=g)
    idx = (picks * m + torch.arange(m).expand(resamples, e, m)).reshape(resamples, e * m)
    meds = torch.quantile(x[idx], 0.5, dim=1)
    alpha = (1.0 - level) / 2
    elo, ehi = torch.quantile(meds, torch.tensor([alpha, 1.0 - alpha],
                                                 dtype=torch.float64)).tolist()
    return min(lo, float(elo)), max(hi, float(ehi))


@dataclass(frozen=True)
class PairedRatio:
    """Median of per-round ratios variant / baseline, with its bootstrap interval."""

    ratio: float
    lo: float
    hi: float
    rounds: int

    @property
    def rel_width(self) -> float:
        """Interval width relative to the ratio."""
        return (self.hi - self.lo) / self.ratio if self.ratio > 0 else math.inf

    @property
    def supports_headline(self) -> bool:
        """Narrow enough to quote: the interval's width is under half the ratio."""
        return self.rounds >= 3 and self.rel_width < HEADLINE_MAX_REL_WIDTH

    def to_dict(self) -> dict[str, float | int | list[float]]:
        return {"ratio": self.ratio, "ci": [self.lo, self.hi], "rounds": self.rounds,
                "level": CI_LEVEL}


def round_ratios(base: Sequence[float | None], var: Sequence[float | None]) -> list[float]:
    """Per-round ratios ``var[i] / base[i]`` over the rounds where both were sampled."""
    return [v / b for b, v in zip(base, var, strict=True)
            if b is not None and v is not None and b > 0]


def paired_ratio(base: Sequence[float | None], var: Sequence[float | None]) -> PairedRatio | None:
    """The paired estimate from aligned round samples (None for a sample not taken)."""
    r = round_ratios(base, var)
    if not r:
        return None
    lo, hi = epoch_bootstrap_ci(r)
    med = statistics.median(r)
    return PairedRatio(med, min(lo, med), max(hi, med), len(r))


def ratio_of_medians(base: Sequence[float | None], var: Sequence[float | None]) -> float | None:
    """The unpaired estimate (median of variant / median of baseline), for comparison."""
    b = [x for x in base if x is not None]
    v = [x for x in var if x is not None]
    if not b or not v or statistics.median(b) <= 0:
        return None
    return statistics.median(v) / statistics.median(b)
