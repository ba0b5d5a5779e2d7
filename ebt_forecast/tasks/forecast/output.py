"""What `forecast` writes: the tidy quantile frame of a forecast, and a saved predictor folder (whole or absent)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ebt_forecast.data.types import ForecastDataset
from ebt_forecast.metrics import QUANTILE_LEVELS, forecast_quantiles
from ebt_forecast.tasks.forecast.estimator import EBTPredictor


def forecast_frame(task: ForecastDataset, samples: list[np.ndarray], levels: tuple[float, ...] | None = None) -> pd.DataFrame:
    """Tidy output: one row per series and future step with the mean and the 0.1..0.9 quantiles (rows of a quantile
    forecast at exactly those `levels`, or sample quantiles). Built in one piece (thousands of series per second)."""
    from ebt_forecast.data.frames import future_timestamps_of  # continues each series' own stamps (W-SUN, ME, ...)

    h, n = task.horizon, len(task.train)
    q = np.stack([forecast_quantiles(s, QUANTILE_LEVELS, levels) for s in samples]) if n else \
        np.zeros((0, len(QUANTILE_LEVELS), h))
    frame = pd.DataFrame({"item_id": np.repeat([s.item_id for s in task.train], h),
                          "timestamp": future_timestamps_of(task.train, h),
                          "mean": np.concatenate([s.mean(0) for s in samples]) if n else []})
    for j, level in enumerate(QUANTILE_LEVELS):
        frame[f"{level:g}"] = q[:, j].ravel()
    return frame


def save_predictor(predictor: EBTPredictor, folder: Path) -> None:
    """Serialize into a temporary sibling folder, then rename it into place (a saved predictor is whole or absent)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    predictor.serialize(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
