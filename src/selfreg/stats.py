"""Numbers over seeds: the one place where a mean and its spread are computed.

The Torch ResNet study's protocol, which selfreg follows everywhere (`selfreg train --seeds`,
`selfreg report`): report the mean over seeds with the sample standard deviation, never the
best run.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def mean_std(values: Iterable[float]) -> tuple[float, float] | None:
    """(mean, sample std) of `values`; std is 0 for a single value; None when there is none."""
    values = np.asarray(list(values), dtype=float)
    if len(values) == 0:
        return None
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
