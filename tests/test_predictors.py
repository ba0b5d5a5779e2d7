"""The benchmark's models behind GluonTS's API: Estimator.train -> Predictor.predict -> Forecast, scored at their levels."""
from __future__ import annotations

import numpy as np
import pytest
from gluonts.model.forecast import QuantileForecast, SampleForecast

from ebt_forecast.baselines import SeasonalNaive, seasonal_naive_forecast
from ebt_forecast.data.frames import series_to_gluonts
from ebt_forecast.metrics import FORECAST_LEVELS, score_windows
from ebt_forecast.tasks.forecast.benchmark import CachedSource
from ebt_forecast.tasks.forecast.predictors import (HarnessEstimator, conventions_of, forecast_arrays, score_forecasts,
                                                    windows_dataset)
from tests.test_forecast import make_task, seasonal_series, small_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def task():
    return make_task(seasonal_series(3, 200, seed=4), num_windows=2)


def test_a_harness_forecaster_as_an_estimator_predictor_and_sample_forecasts(task):
    predictor = HarnessEstimator(lambda: SeasonalNaive(task.season_length), conventions_of(task)).train(
        series_to_gluonts(task.train, task.freq))
    forecasts = list(predictor.predict(windows_dataset(task.test_windows)))
    assert len(forecasts) == len(task.test_windows) and all(isinstance(f, SampleForecast) for f in forecasts)
    for f, w in zip(forecasts, task.test_windows):
        assert f.start_date == w.forecast_start and f.item_id == w.item_id
        np.testing.assert_allclose(f.samples[0], seasonal_naive_forecast(w.past, task.horizon, task.season_length))
    direct = SeasonalNaive(task.season_length).fit(task).predict(task.test_windows, task)
    assert score_forecasts(forecasts, task.test_windows, task.season_length) == score_windows(
        direct, task.test_windows, task.season_length)


def test_statsforecast_paths_come_back_as_quantile_forecasts_read_at_their_levels(task, tmp_path):
    predictor = HarnessEstimator(lambda: CachedSource("autoets", tmp_path), conventions_of(task), FORECAST_LEVELS).train(
        series_to_gluonts(task.train, task.freq))
    forecasts = list(predictor.predict(windows_dataset(task.test_windows)))
    assert all(isinstance(f, QuantileForecast) for f in forecasts)
    rows, levels = forecast_arrays(forecasts[0])
    assert levels == FORECAST_LEVELS and rows.shape == (21, task.horizon)
    np.testing.assert_allclose(forecasts[0].quantile(0.5), rows[FORECAST_LEVELS.index(0.5)])
    scores = score_forecasts(forecasts, task.test_windows, task.season_length)
    paths = [forecast_arrays(f)[0] for f in forecasts]
    assert scores == score_windows(paths, task.test_windows, task.season_length, FORECAST_LEVELS)
    assert scores["crps_estimator"] == "quantile[21]"


def test_the_ebt_predictor_runs_any_thinking_setting_and_reports_its_passes(task):
    from ebt_forecast.tasks.forecast.estimator import EBTPredictor
    from ebt_forecast.tasks.forecast.forecaster import EBTForecaster

    ebt = EBTForecaster(small_config(max_steps=6, num_candidates=21), "ebt").fit(task)
    predictor = EBTPredictor(ebt, task.horizon, task.freq)
    forecasts = list(predictor.predict(windows_dataset(task.test_windows), num_samples=5, steps=2,
                                       selection="verified", verify_group=2))
    direct = ebt.predict(task.test_windows, num_candidates=5, steps=2, selection="verified", verify_group=2)
    for f, samples in zip(forecasts, direct.samples):
        np.testing.assert_array_equal(f.samples, samples)
    n = len(task.test_windows) * 5 * 2
    assert (forecasts[0].info["forward_passes"], forecasts[0].info["backward_passes"]) == (3 * n, 2 * n)
    assert forecasts[0].info["levels"] is None  # 5 stratified levels: a sample forecast
