"""Every benchmark model behind GluonTS's API: `Estimator.train(dataset) -> Predictor.predict(dataset) -> Forecast`.

`HarnessEstimator` wraps a forecaster of the harness protocol (`fit(ForecastDataset)`, `predict(windows, dataset)`:
seasonal naive, statsforecast, the feed-forward twin, point + Gaussian, DeepAR, PatchTST); the EBT has its own
(`estimator.EBTEstimator` / `EBTPredictor`). A forecaster whose rows are quantile paths (statsforecast, the level
paths) gives `QuantileForecast`s keyed by their levels, any other `SampleForecast`s; `forecast_arrays` reads
either back for the metrics, at exact levels.

    estimator = HarnessEstimator(lambda: SeasonalNaive(), conventions)   # conventions: a ForecastDataset
    predictor = estimator.train(series_to_gluonts(dataset.train, freq))
    forecasts = list(predictor.predict(windows_dataset(dataset.test_windows)))
    metrics = score_forecasts(forecasts, dataset.test_windows, season_length)
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
from gluonts.model.estimator import Estimator
from gluonts.model.forecast import Forecast, QuantileForecast, SampleForecast
from gluonts.model.predictor import Predictor

from ebt_forecast.data.frames import gluonts_fields, gluonts_to_series, quiet_pandas
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.metrics import aggregate, score_window


def windows_dataset(windows: Sequence[TestWindow]) -> list[dict]:
    """Each window's past as a GluonTS entry (with its covariates: the known-future ones over past + horizon): a
    predictor forecasts the horizon after it."""
    return [{"target": w.past, "start": w.start, "item_id": w.item_id, **gluonts_fields(w.covariates)}
            for w in windows]


def conventions_of(dataset: ForecastDataset) -> ForecastDataset:
    """A data set's name, frequency, horizon and season, without its series (what a fitted forecaster keeps)."""
    return ForecastDataset(dataset.name, dataset.freq, dataset.horizon, dataset.season_length, [])


class HarnessPredictor(Predictor):
    """A fitted harness forecaster as a GluonTS Predictor; `info` of each forecast holds the forecaster's record
    (training seconds and steps)."""

    def __init__(self, forecaster: Any, conventions: ForecastDataset, levels: Sequence[float] | None = None):
        super().__init__(prediction_length=conventions.horizon)
        self.forecaster, self.conventions = forecaster, conventions
        self.levels = None if levels is None else tuple(levels)

    def predict(self, dataset, **kwargs) -> Iterator[Forecast]:
        """One forecast of the next `prediction_length` steps after each entry."""
        series = gluonts_to_series(dataset, self.conventions.freq)
        empty = np.full(self.prediction_length, np.nan, dtype=np.float32)
        out = self.forecaster.predict([TestWindow(s.item_id, s.start, s.target, empty, s.covariates)
                                       for s in series], self.conventions)
        levels = self.levels if self.levels is not None else getattr(out, "levels", None)
        info = {"train_seconds": getattr(self.forecaster, "train_seconds", 0.0),
                "train_steps": getattr(self.forecaster, "train_steps", 0)}
        with quiet_pandas():
            for s, paths in zip(series, out):
                start = s.start + len(s.target)
                if levels is None:
                    yield SampleForecast(np.asarray(paths), start, item_id=s.item_id, info=info)
                else:
                    yield QuantileForecast(np.asarray(paths), start, [f"{q:g}" for q in levels], s.item_id, info)


class HarnessEstimator(Estimator):
    """Fits `make()` (a harness forecaster) on the training entries under a data set's conventions."""

    def __init__(self, make: Callable[[], Any], conventions: ForecastDataset, levels: Sequence[float] | None = None):
        super().__init__()
        self.make, self.conventions, self.levels = make, conventions, levels

    def train(self, training_data, validation_data=None, **kwargs) -> HarnessPredictor:
        """The fitted forecaster as a predictor (validation, if a model wants it, is cut from training_data)."""
        c = self.conventions
        dataset = ForecastDataset(c.name, c.freq, c.horizon, c.season_length, gluonts_to_series(training_data, c.freq))
        return HarnessPredictor(self.make().fit(dataset), c, self.levels)


def forecast_arrays(forecast: Forecast) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """The rows a forecast holds and their quantile levels (None: samples): a QuantileForecast's keyed rows, a
    SampleForecast's samples (at `info["levels"]` when they are level paths, as the EBT's are)."""
    if isinstance(forecast, QuantileForecast):
        return np.asarray(forecast.forecast_array), tuple(float(k) for k in forecast.forecast_keys)
    levels = (forecast.info or {}).get("levels")
    return np.asarray(forecast.samples), None if levels is None else tuple(levels)


def score_forecasts(forecasts: Sequence[Forecast], windows: Sequence[TestWindow], season_length: int) -> dict:
    """Data-set metrics of GluonTS forecasts against the windows' futures (in order), each read at its levels."""
    if len(forecasts) != len(windows):
        raise ValueError(f"{len(forecasts)} forecasts for {len(windows)} windows")
    scores = []
    for forecast, window in zip(forecasts, windows):
        rows, levels = forecast_arrays(forecast)
        scores.append(score_window(rows, window.future, window.past, season_length, levels))
    return aggregate(scores)
