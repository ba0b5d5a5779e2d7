"""Seasonal anchoring of the pretrained forecaster (tasks/forecast/anchor.py): the median moves to seasonal naive's
where the window's own backtests say so, and stays the model's where the model forecasts better."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from ebt_forecast.data.types import ForecastDataset, Series, TestWindow
from ebt_forecast.errors import ConfigError
from ebt_forecast.metrics import FORECAST_LEVELS, score_windows
from ebt_forecast.tasks.forecast.anchor import (
    anchor_choice,
    backtest,
    candidate_medians,
    moved,
    seasonal_naive_fan,
    seasonal_naive_path,
)
from ebt_forecast.tasks.forecast.config import ForecasterConfig
from ebt_forecast.tasks.forecast.pretrained import PretrainedForecaster

START = pd.Period("2024-01-01 00:00", "h")
H, SEASON = 12, 24


def spiky(n: int, seed: int = 0) -> np.ndarray:
    """A daily cycle of sharp peaks repeating almost exactly (as a quarter of M4 Hourly does)."""
    day = np.full(SEASON, 5.0)
    day[[6, 7, 18]] = [45.0, 30.0, 15.0]
    return (np.resize(day, n) + np.random.default_rng(seed).normal(0, 0.2, n)).astype(np.float32)


def fan_around(centre: np.ndarray, width: float = 2.0) -> np.ndarray:
    """(21, H) level paths at FORECAST_LEVELS around a median path."""
    return centre[None, :] + width * (np.asarray(FORECAST_LEVELS)[:, None] - 0.5)


def test_seasonal_naive_repeats_the_last_season_and_falls_back_to_the_last_value():
    np.testing.assert_array_equal(seasonal_naive_path(np.arange(10.0), 5, 4), [6, 7, 8, 9, 6])
    np.testing.assert_array_equal(seasonal_naive_path(np.arange(3.0), 4, 24), [2, 2, 2, 2])


def test_seasonal_naives_fan_is_statsforecasts_interval():
    from statsforecast import StatsForecast
    from statsforecast.models import SeasonalNaive

    y = spiky(200, seed=4).astype(np.float64) + np.random.default_rng(1).normal(0, 1.0, 200)
    frame = pd.DataFrame({"unique_id": "a", "ds": pd.date_range("2024-01-01", periods=200, freq="h"), "y": y})
    fc = StatsForecast(models=[SeasonalNaive(SEASON)], freq="h").forecast(df=frame, h=60, level=[80])
    ours = seasonal_naive_fan(y, 60, SEASON, (0.1, 0.5, 0.9))
    for row, column in enumerate(["SeasonalNaive-lo-80", "SeasonalNaive", "SeasonalNaive-hi-80"]):
        np.testing.assert_allclose(ours[row], fc[column].to_numpy(), atol=2e-3)  # their spread's ddof: 1e-4 here


def test_a_backtest_is_the_horizon_k_horizons_back_in_the_past():
    w = TestWindow("a", START, np.arange(100.0), np.zeros(H))
    first, second = backtest(w, 1, H), backtest(w, 2, H)
    np.testing.assert_array_equal(first.future, np.arange(88.0, 100.0))
    assert len(first.past) == 88 and len(second.past) == 76
    np.testing.assert_array_equal(second.future, np.arange(76.0, 88.0))


def test_anchoring_follows_the_backtests_on_both_kinds_of_series():
    """A forecaster that flattens the peaks loses to seasonal naive on the repeating series (anchored there), and
    forecasts a trend exactly where seasonal naive lags a day (kept there); a short past keeps its own median."""
    trend = np.arange(400, dtype=np.float32)
    windows = [TestWindow("peaks", START, spiky(400), np.zeros(H)), TestWindow("trend", START, trend, np.zeros(H)),
               TestWindow("short", START, spiky(40), np.zeros(H))]

    def forecaster(cut: list[TestWindow]) -> tuple[np.ndarray, tuple[float, ...]]:
        paths = [fan_around(np.full(H, w.past.mean()) if w.item_id != "trend"
                            else w.past[-1] + np.arange(1.0, H + 1)) for w in cut]
        return np.stack(paths), FORECAST_LEVELS

    pick = anchor_choice(windows, H, SEASON, 3, forecaster)
    assert list(pick) == [1, 0, 0]
    samples, _ = forecaster(windows)
    medians = candidate_medians(samples, [w.past for w in windows], H, SEASON)
    out = moved(samples, medians, pick)
    np.testing.assert_allclose(np.median(out[0], axis=0), seasonal_naive_path(windows[0].past, H, SEASON), atol=1e-5)
    np.testing.assert_allclose(out[1], samples[1])  # kept: the model's fan unchanged
    np.testing.assert_allclose(out[0] - out[0][10], samples[0] - samples[0][10], atol=1e-5)  # the spread is the model's


@pytest.fixture(scope="module")
def peaks() -> tuple[ForecastDataset, list[TestWindow]]:
    full = [spiky(24 * 30 + H, seed) for seed in range(3)]
    data = ForecastDataset("peaks", "h", H, SEASON, [Series(f"s{i}", START, y[:-H]) for i, y in enumerate(full)])
    return data, [TestWindow(f"s{i}", START, y[:-H], y[-H:]) for i, y in enumerate(full)]


def test_the_shipped_model_anchored_follows_the_peaks_it_damps(peaks):
    """The shipped model damps sharp repeating peaks; served by default, anchoring moves its median onto them
    (MASE several times lower); an explicit selection (a study's call) is left as the model made it."""
    data, windows = peaks
    forecaster = PretrainedForecaster().fit(data)
    served = forecaster.predict(windows)
    raw = forecaster.predict(windows, anchor=False)
    assert served.anchor is not None and (served.anchor > 0).all()
    assert score_windows(served, windows, SEASON)["mase"] < 0.5 * score_windows(raw, windows, SEASON)["mase"]
    assert forecaster.predict(windows, steps=0, selection="proposal").anchor is None

    base = ForecasterConfig()
    off = PretrainedForecaster(cfg=replace(base, task=replace(base.task, anchor_backtests=0))).fit(data)
    np.testing.assert_allclose(off.predict(windows).samples, raw.samples, rtol=1e-5, atol=1e-4)


def test_a_negative_anchor_setting_is_refused_by_name():
    base = ForecasterConfig()
    with pytest.raises(ConfigError, match="task.anchor_backtests"):
        replace(base, task=replace(base.task, anchor_backtests=-1)).validate()
