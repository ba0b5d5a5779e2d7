"""TSMixup: new series as convex mixtures of mean-scaled windows of real ones.

As in Chronos (Ansari et al. 2024, Algorithm 1): draw k ~ U{1..k_max} source series and a length
l ~ U{min_length..max_length}; cut a random window of the common length from each source (the
common length is l, or the shortest source's length if that is shorter); divide each window by its
mean |x| (observed values); mix with weights w ~ Dirichlet(alpha, ..., alpha):

    target[t] = sum_i w_i * window_i[t] / scale_i            (k,) weights, (k, l) components

k = 1 returns one scaled real window, so the mix also carries the originals. A NaN in any
component's window leaves a NaN (a gap the window maker masks) at that position of the mix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ebt_forecast.data.windows import mean_abs_scale
from ebt_forecast.errors import ConfigError, DataError


@dataclass
class Mix:
    """One TSMixup draw: the mixed series and what it was made of."""

    target: np.ndarray  # (l,) float64, NaN where any component is missing
    weights: np.ndarray  # (k,) Dirichlet weights: positive, sum 1
    components: np.ndarray  # (k, l) the mean-scaled source windows that were mixed


def mix_windows(series: Sequence[np.ndarray], rng: np.random.Generator, length: int,
                alpha: float = 1.5) -> Mix:
    """Mix random windows of a common length (<= `length`) of the given series with Dirichlet weights."""
    if not series:
        raise DataError("tsmixup: no source series to mix")
    common = min(int(length), *(len(s) for s in series))
    if common < 1:
        raise DataError(f"tsmixup: a source series is empty (lengths {[len(s) for s in series]})")
    parts = []
    for s in series:
        start = int(rng.integers(0, len(s) - common + 1))
        window = np.asarray(s[start:start + common], dtype=np.float64)
        parts.append(window / mean_abs_scale(window))
    components = np.stack(parts)
    weights = rng.dirichlet(np.full(len(series), float(alpha)))
    return Mix(target=weights @ components, weights=weights, components=components)


def tsmixup(draw_series: Callable[[np.random.Generator], np.ndarray], rng: np.random.Generator,
            k_max: int = 3, alpha: float = 1.5, min_length: int = 128, max_length: int = 2048) -> Mix:
    """One TSMixup series from k ~ U{1..k_max} sources drawn by `draw_series(rng)`."""
    if k_max < 1 or alpha <= 0 or not 1 <= min_length <= max_length:
        raise ConfigError(f"tsmixup: need k_max >= 1, alpha > 0 and 1 <= min_length <= max_length; "
                          f"got k_max={k_max}, alpha={alpha}, min_length={min_length}, max_length={max_length}")
    k = int(rng.integers(1, k_max + 1))
    length = int(rng.integers(min_length, max_length + 1))
    return mix_windows([draw_series(rng) for _ in range(k)], rng, length, alpha)
