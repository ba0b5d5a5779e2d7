"""GluonTS's API for the EBT: `EBTEstimator(...).train(dataset) -> EBTPredictor`, which yields SampleForecasts.

So `gluonts.evaluation.make_evaluation_predictions` and `Evaluator` work on it unchanged.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from gluonts.model.forecast import SampleForecast
from gluonts.model.predictor import Predictor
from gluonts.time_feature import get_seasonality

from ebt_forecast.data.frames import gluonts_to_series, quiet_pandas
from ebt_forecast.data.types import ForecastTask, TestWindow
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster, ForecasterConfig


class EBTPredictor(Predictor):
    """A trained EBT forecaster behind GluonTS's Predictor interface."""

    def __init__(self, forecaster: EBTForecaster, prediction_length: int, freq: str):
        super().__init__(prediction_length=prediction_length)
        self.forecaster, self.freq = forecaster, freq

    def predict(self, dataset, **kwargs) -> Iterator[SampleForecast]:
        """One SampleForecast of the next prediction_length steps after each series' end."""
        series = gluonts_to_series(dataset, self.freq)
        empty = np.full(self.prediction_length, np.nan, dtype=np.float32)
        windows = [TestWindow(s.item_id, s.start, s.target, empty) for s in series]
        samples = self.forecaster.predict(windows)
        with quiet_pandas():
            for s, sample_paths in zip(series, samples):
                yield SampleForecast(samples=sample_paths, start_date=s.start + len(s.target), item_id=s.item_id)


class EBTEstimator:
    """Trains the forecasting EBT (mode="ebt") or its feed-forward twin (mode="feedforward") on a GluonTS dataset."""

    def __init__(self, prediction_length: int, freq: str, config: ForecasterConfig | None = None,
                 mode: str = "ebt", season_length: int | None = None):
        self.prediction_length, self.freq, self.mode = prediction_length, freq, mode
        self.config = config or ForecasterConfig()
        with quiet_pandas():
            self.season_length = season_length or int(get_seasonality(freq))

    def train(self, training_data, validation_data=None, **kwargs) -> EBTPredictor:
        """Fit on every series of training_data (validation is cut from its end); return the predictor."""
        series = gluonts_to_series(training_data, self.freq)
        task = ForecastTask("gluonts", self.freq, self.prediction_length, self.season_length, series)
        forecaster = EBTForecaster(self.config, self.mode).fit(task)
        return EBTPredictor(forecaster, self.prediction_length, self.freq)
