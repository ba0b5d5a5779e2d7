"""Seasonal anchoring: per window, the forecast's median may move to seasonal naive's, chosen on the window's own past.

A pretrained model damps the peaks of series that repeat almost exactly (a quarter of M4 Hourly: MASE > 5 there,
where seasonal naive is nearly exact). Each window's last K horizons are backtests: the forecaster forecasts each
from the points before it, and three medians are scored there by the pinball loss of the forecaster's quantile fan
moved onto them: its own, seasonal naive's, and the average of the two. The forecast's fan moves onto the median of
the lowest mean loss (its spread stays the model's). No energy is involved: an energy-free choice on past data.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

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


def candidate_medians(samples: np.ndarray, pasts: list[np.ndarray], horizon: int, season: int) -> np.ndarray:
    """(N, 3, H): each window's own median, seasonal naive's path and their average (MEDIANS' order)."""
    own = np.median(samples, axis=1)
    naive = np.stack([seasonal_naive_path(p, horizon, season) for p in pasts])
    return np.stack([own, naive, (own + naive) / 2], axis=1)


def moved(samples: np.ndarray, medians: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """(N, S, H) samples shifted per window so their median is medians[n, pick[n]]."""
    rows = np.arange(len(samples))
    return samples + (medians[rows, pick] - medians[rows, 0])[:, None, :]


def pinball(samples: np.ndarray, future: np.ndarray, levels: tuple[float, ...] | None) -> np.ndarray:
    """Mean pinball loss per window of (N, S, H) paths at `levels` (sample quantiles at 0.05..0.95 when None)."""
    if levels is None:
        grid = np.linspace(0.05, 0.95, 19)
        samples, levels = np.quantile(samples, grid, axis=1).transpose(1, 0, 2), tuple(grid)
    q = np.asarray(levels)[None, :, None]
    diff = future[:, None, :] - samples
    return np.nanmean(np.maximum(q * diff, (q - 1) * diff), axis=(1, 2))


def anchor_choice(windows: list[TestWindow], horizon: int, season: int, backtests: int,
                  forecast: Callable[[list[TestWindow]], tuple[np.ndarray, tuple[float, ...] | None]]) -> np.ndarray:
    """Per window, the index into MEDIANS of the lowest mean pinball loss over its last `backtests` horizons
    (`forecast(windows)` gives (N, S, H) paths and their levels); 0 (its own) where the past is too short."""
    pick = np.zeros(len(windows), dtype=np.int64)
    usable = [i for i, w in enumerate(windows) if len(w.past) >= backtests * horizon + max(season, horizon)]
    if not usable or backtests < 1:
        return pick
    losses = np.zeros((len(usable), len(MEDIANS)))
    for k in range(1, backtests + 1):
        cut = [backtest(windows[i], k, horizon) for i in usable]
        samples, levels = forecast(cut)
        medians = candidate_medians(samples, [w.past for w in cut], horizon, season)
        future = np.stack([w.future for w in cut])
        for j in range(len(MEDIANS)):
            losses[:, j] += pinball(moved(samples, medians, np.full(len(cut), j)), future, levels)
    pick[usable] = np.where(np.isfinite(losses), losses, np.inf).argmin(1)  # a NaN loss (gaps) never wins
    return pick
