"""Seasonal anchoring: per window, the forecast's median may move to seasonal naive's, chosen on the window's own past.

A pretrained model damps the peaks of series that repeat almost exactly (a quarter of M4 Hourly: MASE > 5 there,
where seasonal naive is nearly exact). Each window's last K horizons are backtests: the forecaster forecasts each
from the points before it, and three quantile fans are scored there by their pinball loss: the forecaster's own,
seasonal naive's (normal intervals from its seasonal differences, as statsforecast's SeasonalNaive), and the two
averaged level by level. The forecast's own fan then moves onto the median of the fan of the lowest mean loss (its
spread stays the model's: a narrower fan was measured to help neither on validation nor on test, RESULTS 17.9).
No energy is involved: an energy-free choice on past data.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
from scipy.stats import norm

from ebt_forecast.data.types import TestWindow

MEDIANS = ("own", "seasonal_naive", "average")


def seasonal_naive_path(past: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """The last season of `past` repeated over the horizon (the last value when the past is shorter than a season)."""
    season = season if len(past) >= season else 1
    return np.resize(np.asarray(past[-season:], dtype=np.float64), horizon)


def backtest(window: TestWindow, k: int, horizon: int) -> TestWindow:
    """The window whose future is the horizon ending (k - 1) horizons before the end of `window.past`."""
    end = len(window.past) - (k - 1) * horizon
    return replace(window, past=window.past[:end - horizon], future=window.past[end - horizon:end])


def seasonal_naive_fan(past: np.ndarray, horizon: int, season: int, levels: tuple[float, ...]) -> np.ndarray:
    """(len(levels), H) seasonal naive quantile paths: the last season repeated, +- normal quantiles of the seasonal
    differences' spread, widening with the square root of the seasons ahead (statsforecast's SeasonalNaive)."""
    past = np.asarray(past, dtype=np.float64)
    season = season if len(past) >= season else 1
    point = seasonal_naive_path(past, horizon, season)
    diffs = past[season:] - past[:-season]  # empty when the past is one season: no spread
    sigma = float(np.nanstd(diffs)) if np.isfinite(diffs).sum() > 1 else 0.0
    ahead = np.sqrt(np.arange(horizon) // season + 1)
    return point[None, :] + norm.ppf(np.asarray(levels))[:, None] * sigma * ahead[None, :]


def candidate_fans(paths: np.ndarray, pasts: list[np.ndarray], horizon: int, season: int,
                   levels: tuple[float, ...]) -> np.ndarray:
    """(N, 3, L, H) quantile paths at `levels`: the forecaster's own, seasonal naive's and the two averaged."""
    naive = np.stack([seasonal_naive_fan(p, horizon, season, levels) for p in pasts])
    return np.stack([paths, naive, (paths + naive) / 2], axis=1)


def as_quantiles(samples: np.ndarray, levels: tuple[float, ...] | None) -> tuple[np.ndarray, tuple[float, ...]]:
    """Quantile paths (N, L, H) and their levels: level paths as they are, samples at 0.05..0.95."""
    if levels is not None:
        return samples, tuple(levels)
    grid = tuple(np.round(np.linspace(0.05, 0.95, 19), 2))
    return np.quantile(samples, grid, axis=1).transpose(1, 0, 2), grid


def candidate_medians(samples: np.ndarray, pasts: list[np.ndarray], horizon: int, season: int) -> np.ndarray:
    """(N, 3, H): each window's own median, seasonal naive's path and their average (MEDIANS' order)."""
    own = np.median(samples, axis=1)
    naive = np.stack([seasonal_naive_path(p, horizon, season) for p in pasts])
    return np.stack([own, naive, (own + naive) / 2], axis=1)


def moved(samples: np.ndarray, medians: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """(N, S, H) samples shifted per window so their median is medians[n, pick[n]]."""
    rows = np.arange(len(samples))
    return samples + (medians[rows, pick] - medians[rows, 0])[:, None, :]


def pinball(paths: np.ndarray, future: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    """Mean pinball loss per window of quantile paths (N, L, H) at `levels` against futures (N, H)."""
    q = np.asarray(levels)[None, :, None]
    diff = future[:, None, :] - paths
    return np.nanmean(np.maximum(q * diff, (q - 1) * diff), axis=(1, 2))


def anchor_choice(windows: list[TestWindow], horizon: int, season: int, backtests: int,
                  forecast: Callable[[list[TestWindow]], tuple[np.ndarray, tuple[float, ...] | None]]) -> np.ndarray:
    """Per window, the index into MEDIANS of the fan of lowest mean pinball loss over its last `backtests` horizons
    (`forecast(windows)` gives (N, S, H) paths and their levels); 0 (its own) where the past is too short."""
    pick = np.zeros(len(windows), dtype=np.int64)
    usable = [i for i, w in enumerate(windows) if len(w.past) >= backtests * horizon + max(season, horizon)]
    if not usable or backtests < 1:
        return pick
    losses = np.zeros((len(usable), len(MEDIANS)))
    for k in range(1, backtests + 1):
        cut = [backtest(windows[i], k, horizon) for i in usable]
        paths, levels = as_quantiles(*forecast(cut))
        fans = candidate_fans(paths, [w.past for w in cut], horizon, season, levels)
        future = np.stack([w.future for w in cut])
        for j in range(len(MEDIANS)):
            losses[:, j] += pinball(fans[:, j], future, levels)
    pick[usable] = np.where(np.isfinite(losses), losses, np.inf).argmin(1)  # a NaN loss (gaps) never wins
    return pick
