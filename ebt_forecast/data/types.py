"""Plain containers shared by loaders, models and the benchmark harness."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Series:
    """One univariate series: float32 values (NaN = missing) starting at `start`.

    `anchor` says where the series' timestamps sit inside their periods (of the freq's base, i.e. n=1:
    "min" for "15min", "M" for "2M"): a Timedelta >= 0 is an offset from the period's start (e.g. 6 days for
    Sunday stamps on "W-SUN" periods, 0 for "MS"), one < 0 an offset back from the period's end, i.e. from the
    next period's start (e.g. -1 day for "ME" stamps at midnight). None means the period's start.
    """

    item_id: str
    start: pd.Period
    target: np.ndarray
    anchor: pd.Timedelta | None = None
    covariates: "Covariates | None" = None  # aligned with target; known-future ones may run past its end

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class Covariates:
    """A series' covariates (GluonTS's conventions): `past` (Cp, T) known up to the forecast start
    (past_feat_dynamic_real), `future` (Cf, T [+ H]) known over the horizon too (feat_dynamic_real: calendar, planned
    prices, weather forecasts), `static_real` (Sr,) and `static_cat` (Sc,) per series (feat_static_real / _cat)."""

    past: np.ndarray | None = None
    future: np.ndarray | None = None
    static_real: np.ndarray | None = None
    static_cat: np.ndarray | None = None

    def cut(self, start: int, end: int, future_end: int | None = None) -> "Covariates":
        """The dynamic covariates over steps [start, end) (known-future ones up to `future_end`, default end)."""
        return Covariates(None if self.past is None else self.past[:, start:end].copy(),
                          None if self.future is None else self.future[:, start:future_end or end].copy(),
                          self.static_real, self.static_cat)


@dataclass
class TestWindow:
    """One evaluation window: the full history before the forecast start and the true future."""

    item_id: str
    start: pd.Period  # start of `past`
    past: np.ndarray
    future: np.ndarray
    covariates: Covariates | None = None  # past ones over `past`; known-future ones over past + future

    @property
    def forecast_start(self) -> pd.Period:
        return self.start + len(self.past)


@dataclass
class ForecastDataset:
    """A data set cut for forecasting: training series, test windows and its conventions."""

    name: str
    freq: str
    horizon: int
    season_length: int
    train: list[Series]
    test_windows: list[TestWindow] = field(default_factory=list)
