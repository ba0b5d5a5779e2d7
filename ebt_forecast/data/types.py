"""Plain containers shared by loaders, models and the benchmark harness."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Series:
    """One univariate series: float32 values (NaN = missing) starting at `start`."""

    item_id: str
    start: pd.Period
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class TestWindow:
    """One evaluation window: the full history before the forecast start and the true future."""

    item_id: str
    start: pd.Period  # start of `past`
    past: np.ndarray
    future: np.ndarray

    @property
    def forecast_start(self) -> pd.Period:
        return self.start + len(self.past)


@dataclass
class ForecastTask:
    """A data set cut for forecasting: training series, test windows and its conventions."""

    name: str
    freq: str
    horizon: int
    season_length: int
    train: list[Series]
    test_windows: list[TestWindow] = field(default_factory=list)
