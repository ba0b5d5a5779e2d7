"""The `forecast` command: fit on every series of a file and write quantiles of the next H steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from gluonts.time_feature import get_seasonality

from ebt_forecast.data.errors import DataError
from ebt_forecast.data.frames import frame_to_series, load_long_frame, quiet_pandas
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.io import atomic_write_csv
from ebt_forecast.metrics import QUANTILE_LEVELS
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from ebt_forecast.tasks.forecast.sources import VerifierForecaster


def forecast_frame(task: ForecastDataset, samples: list[np.ndarray]) -> pd.DataFrame:
    """Tidy output: one row per series and future step with the mean and the 0.1..0.9 quantiles."""
    from ebt_forecast.data.frames import future_timestamps  # continues each series' own stamps (W-SUN, ME, 15min...)

    frames = []
    with quiet_pandas():
        for s, series_samples in zip(task.train, samples):
            stamps = future_timestamps(s, task.horizon)
            q = np.quantile(series_samples, QUANTILE_LEVELS, axis=0, method="nearest")
            frame = pd.DataFrame({"item_id": s.item_id, "timestamp": stamps, "mean": series_samples.mean(0)})
            for level, values in zip(QUANTILE_LEVELS, q):
                frame[f"{level:g}"] = values
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def user_dataset(app, command: str = "forecast") -> ForecastDataset:
    """Validate input= / horizon= / freq= and load the user's file as a ForecastDataset (no test windows)."""
    if not app.input:
        raise DataError(f"{command} needs input=PATH (a CSV or Parquet file in long form)")
    if app.horizon <= 0:
        raise DataError(f"horizon={app.horizon} is invalid: must be a positive number of steps")
    min_length = app.min_length or app.horizon + 1
    frame = load_long_frame(app.input, id_col=app.id_col, time_col=app.time_col, target_col=app.target_col,
                            freq=app.freq, min_length=min_length)
    freq = frame.attrs["freq"]
    series = frame_to_series(frame, freq)
    with quiet_pandas():
        season = int(get_seasonality(app.freq or freq))
    return ForecastDataset(Path(app.input).stem, freq, app.horizon, season, series)


def run_forecast(app) -> Path:
    """Validate the request, fit the EBT on every series of app.input, write app.output atomically."""
    if not app.input:
        raise DataError("forecast needs input=PATH (a CSV or Parquet file in long form)")
    if not app.output:
        raise DataError("forecast needs output=OUT.csv")
    dataset = user_dataset(app)
    windows = [TestWindow(s.item_id, s.start, s.target, np.full(app.horizon, np.nan, np.float32))
               for s in dataset.train]
    cfg = app.forecaster()
    forecaster = (VerifierForecaster(cfg) if cfg.task.verifier.enabled else EBTForecaster(cfg, "ebt")).fit(dataset)
    return atomic_write_csv(forecast_frame(dataset, forecaster.predict(windows).samples), app.output)


def run_forecast_command(app) -> int:
    """`ebt-forecast forecast`: validate the config, forecast, say where the file is."""
    app.forecaster()  # fail at start on invalid model / think / trainer / task values
    print(f"wrote {run_forecast(app)}")
    return 0
