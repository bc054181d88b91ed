"""Numbers over seeds: the one place where a mean and its spread are computed.

The Torch ResNet study's protocol, which selfreg follows everywhere (`selfreg train --seeds`,
`selfreg report`): report the mean over seeds with the sample standard deviation, never the
best run.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np


def mean_std(values: Iterable[float]) -> tuple[float, float] | None:
    """(mean, sample std) of `values`; std is 0 for a single value; None when there is none."""
    values = np.asarray(list(values), dtype=float)
    if len(values) == 0:
        return None
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def sampling_error(accuracy: float, images: int) -> float:
    """Binomial standard error, in points, of an accuracy measured on `images` images: the one
    spread a single run has (its seed spread is unknown)."""
    return 100 * math.sqrt(accuracy * (1 - accuracy) / images)


@dataclass(frozen=True)
class Difference:
    """One configuration's error against a baseline's, over seeds (errors in percent)."""
    mean: float            # mean(other) - mean(base): negative = lower error than the baseline
    base_std: float
    other_std: float
    n_base: int
    n_other: int
    separated: bool        # every seed of one is below every seed of the other
    p_value: float | None  # Welch's two-sided t-test; None below 2 seeds on either side

    @property
    def beyond_spread(self) -> bool:
        """The difference is larger than the seed-to-seed spread: the seeds do not overlap and the
        mean difference exceeds the larger of the two standard deviations."""
        return self.separated and abs(self.mean) > max(self.base_std, self.other_std)


def difference(base: Iterable[float], other: Iterable[float]) -> Difference | None:
    """`other` against `base` (per-seed values of one metric); None when either side is empty.

    "Larger than the spread" is deliberately plain (no overlap of the seeds' values and a mean
    gap above either std) and Welch's p is given beside it: with three seeds a side neither is
    strong evidence, and the report says so rather than picking the flattering one.
    """
    base, other = np.asarray(list(base), dtype=float), np.asarray(list(other), dtype=float)
    if len(base) == 0 or len(other) == 0:
        return None
    (mb, sb), (mo, so) = mean_std(base), mean_std(other)
    separated = bool(other.max() < base.min() or other.min() > base.max())
    p_value = None
    # Welch's t needs some spread: when every seed of both sides gives the same value, there is no p.
    if len(base) > 1 and len(other) > 1 and (np.ptp(base) > 0 or np.ptp(other) > 0):
        from scipy.stats import ttest_ind   # scipy comes with scikit-learn, a dependency

        with warnings.catch_warnings():
            # A side whose seeds agree exactly makes scipy warn of "precision loss" in its variance,
            # which is 0 as it should be; the test is still defined by the other side's spread.
            warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
            p = ttest_ind(other, base, equal_var=False).pvalue
        p_value = float(p) if np.isfinite(p) else None
    return Difference(mo - mb, sb, so, len(base), len(other), separated, p_value)
