"""Rates with bootstrap 95% intervals (scipy's percentile bootstrap, seeded).

Every metric raysynth reports is a dict {value, low, high, n}: `n` is the number of units that
were resampled (prompts, pairs, texts), so a small sample shows up as a wide interval.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy.stats import bootstrap

RESAMPLES = 1000


def _interval(data: tuple[np.ndarray, ...], statistic: Callable[..., float], seed: int,
              resamples: int) -> tuple[float, float]:
    if len(data[0]) < 2 or all(np.all(d == d[0]) for d in data):
        value = float(statistic(*data))
        return value, value  # nothing to resample: the interval is the point
    result = bootstrap(data, statistic, paired=len(data) > 1, vectorized=False, n_resamples=resamples,
                       confidence_level=0.95, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def rate(values: Sequence[float], seed: int = 0, resamples: int = RESAMPLES) -> dict[str, float]:
    """Mean of per-unit values (0/1 or fractions) with its interval."""
    data = np.asarray(values, dtype=float)
    if len(data) == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    low, high = _interval((data,), np.mean, seed, resamples)
    return {"value": float(data.mean()), "low": low, "high": high, "n": int(len(data))}


def ratio(numerators: Sequence[float], denominators: Sequence[float], seed: int = 0,
          resamples: int = RESAMPLES) -> dict[str, float]:
    """sum(num) / sum(den), resampling whole units: e.g. instructions passed over instructions,
    resampled by prompt, since a prompt's instructions are not independent."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if den.sum() == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    low, high = _interval((num, den), lambda a, b: a.sum() / b.sum(), seed, resamples)
    return {"value": float(num.sum() / den.sum()), "low": low, "high": high, "n": int(len(num))}


def difference(values: Sequence[float], baseline: Sequence[float], seed: int = 0,
               resamples: int = RESAMPLES) -> dict[str, float]:
    """Mean of per-unit differences `values - baseline`, the two measured on the same units (e.g. one
    model's and another's IFEval verdicts on the same prompts): the paired interval is much narrower
    than the two rates' intervals side by side, since a prompt's difficulty cancels."""
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"paired values need the same units: {len(a)} against {len(b)}")
    return rate(a - b, seed, resamples)
