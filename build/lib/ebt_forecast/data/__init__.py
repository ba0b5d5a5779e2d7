"""Data layer: loaders, validation, windowing and scaling."""
from ebt_forecast.errors import DataError
from ebt_forecast.data.frames import (
    frame_to_series,
    gluonts_to_series,
    load_long_frame,
    period_freq,
    series_to_gluonts,
)
from ebt_forecast.data.loaders import (
    load_default_suite,
    load_etth1,
    load_exchange_rate,
    load_m4_hourly,
    load_gluonts_repository,
    load_statsmodels,
)
from ebt_forecast.data.types import ForecastDataset, Series, TestWindow
from ebt_forecast.data.windows import (
    TrainWindowDataset,
    make_inference_batch,
    mean_abs_scale,
    split_train_val,
)

__all__ = [
    "DataError",
    "ForecastDataset",
    "Series",
    "TestWindow",
    "TrainWindowDataset",
    "frame_to_series",
    "gluonts_to_series",
    "load_default_suite",
    "load_etth1",
    "load_exchange_rate",
    "load_long_frame",
    "load_m4_hourly",
    "load_gluonts_repository",
    "load_statsmodels",
    "make_inference_batch",
    "mean_abs_scale",
    "period_freq",
    "series_to_gluonts",
    "split_train_val",
]
