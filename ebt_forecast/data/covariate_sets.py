"""Data sets with real covariates (issue 30), cut for forecasting with the end of each series held out.

    vic_elec      half-hourly electricity demand of Victoria; temperature known over the horizon (H 48, season 48)
    dc_bike       hourly bike-share users of Washington DC; temperature, humidity, wind known (H 24, season 24)
    bdg2          hourly energy of 2 BDG2 buildings; calendar known, the building as a static category (H 24)
    etth1_loads   ETTh1's oil temperature; the six loads as past covariates (H 24, season 24)

The first three come from the pretraining corpus (`corpus/skforecast`), and ETTh1 is in the zero-shot suite: compare
models trained or fine-tuned on them only, never zero-shot. `without_covariates` gives the same data without them.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ebt_forecast.data.frames import frame_to_series, load_long_frame, quiet_pandas
from ebt_forecast.data.loaders import ETT_COLUMNS, ETT_MONTH, etth1_series, tail_task
from ebt_forecast.data.types import Covariates, ForecastDataset, Series
from ebt_forecast.data.windows import tail_windows
from ebt_forecast.errors import DataError

COVARIATE_SETS = ("vic_elec", "dc_bike", "bdg2", "etth1_loads")  # the `covariates` suite
# vic_elec with the calendar (time of day, weekday) known beside temperature, and with the calendar alone: what the
# calendar adds and what temperature adds beyond it (suites of their own)
CALENDAR_SETS = ("vic_elec_calendar", "vic_elec_calendar_only")


def _corpus_series(root: str | Path, file: str, freq: str) -> dict[str, Series]:
    """The series of one corpus file by id."""
    path = Path(root) / "corpus" / "skforecast" / file
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return {s.item_id: s for s in frame_to_series(load_long_frame(path, freq=freq), freq)}


def calendar_features(start: pd.Period, length: int, timezone: str | None = None) -> np.ndarray:
    """Time of day and day of week as sine / cosine pairs (4, length): known-future covariates of any sub-daily
    series; with `timezone`, the stamps are UTC and the calendar is that zone's local time (daylight saving too)."""
    with quiet_pandas():
        stamps = pd.period_range(start, periods=length).to_timestamp()
    if timezone:
        stamps = stamps.tz_localize("UTC").tz_convert(timezone)
    hour = 2 * np.pi * (stamps.hour.to_numpy() + stamps.minute.to_numpy() / 60) / 24
    day = 2 * np.pi * stamps.dayofweek.to_numpy() / 7
    return np.stack([np.sin(hour), np.cos(hour), np.sin(day), np.cos(day)]).astype(np.float32)


def load_vic_elec(root: str | Path, horizon: int = 48, windows: int = 28, calendar: bool = False,
                  temperature: bool = True) -> ForecastDataset:
    """vic_elec demand with temperature as a known-future covariate (and the calendar with `calendar`, or the
    calendar alone without `temperature`); the last `windows` days held out."""
    by_id = _corpus_series(root, "skforecast_30min.parquet", "30min")
    demand = by_id["vic_elec/Demand"]
    future = [by_id["vic_elec/Temperature"].target[None]] if temperature else []
    if calendar:
        # the corpus's stamps are UTC (the first, 2011-12-31 13:00, is midnight in Melbourne): the local calendar
        future.append(calendar_features(demand.start, len(demand), timezone="Australia/Melbourne"))
    series = replace(demand, covariates=Covariates(future=np.concatenate(future).astype(np.float32)))
    name = "vic_elec" + ("_calendar" if calendar else "") + ("" if temperature else "_only")
    return tail_task(name, "30min", horizon, 48, [series], windows)


def load_dc_bike(root: str | Path, horizon: int = 24, windows: int = 28) -> ForecastDataset:
    """dc_bike_sharing users with the weather (temperature, humidity, wind speed) known over the horizon."""
    by_id = _corpus_series(root, "skforecast_hourly.parquet", "h")
    users = by_id["dc_bike_sharing/users"]
    weather = np.stack([by_id[f"dc_bike_sharing/{c}"].target for c in ("temp", "hum", "windspeed")])
    return tail_task("dc_bike", "h", horizon, 24, [replace(users, covariates=Covariates(future=weather))], windows)


def load_bdg2(root: str | Path, horizon: int = 24, windows: int = 28) -> ForecastDataset:
    """The two BDG2 buildings with the calendar known over the horizon and the building as a static category."""
    by_id = _corpus_series(root, "skforecast_hourly.parquet", "h")
    series = [replace(by_id[f"bdg2/building_{i}"], covariates=Covariates(
        future=calendar_features(by_id[f"bdg2/building_{i}"].start, len(by_id[f"bdg2/building_{i}"])),
        static_cat=np.array([i - 1]))) for i in (1, 2)]
    return tail_task("bdg2", "h", horizon, 24, series, windows)


def load_etth1_loads(root: str | Path, horizon: int = 24, stride: int = 24, months: int = 4) -> ForecastDataset:
    """ETTh1's oil temperature (OT) with the six loads as past covariates: trained on the first 16 months, tested
    on rolling windows (`stride`) over the next `months`."""
    by_id = {s.item_id: s for s in etth1_series(root)}
    ot = by_id["OT"]
    loads = np.stack([by_id[c].target for c in ETT_COLUMNS if c != "OT"])
    train_end, test_end = 16 * ETT_MONTH, (16 + months) * ETT_MONTH
    series = replace(ot, covariates=Covariates(past=loads))
    tests = []
    for o in range(train_end, test_end - horizon + 1, stride):
        _, (window,) = tail_windows(replace(series, target=ot.target[:o + horizon],
                                            covariates=series.covariates.cut(0, o + horizon)), horizon, 1)
        tests.append(window)
    train = replace(series, target=ot.target[:train_end].copy(), covariates=series.covariates.cut(0, train_end))
    return ForecastDataset("etth1_loads", "h", horizon, 24, [train], tests)


def load_covariate_set(name: str, root: str | Path) -> ForecastDataset:
    """One of COVARIATE_SETS by name."""
    loaders = {"vic_elec": load_vic_elec, "dc_bike": load_dc_bike, "bdg2": load_bdg2, "etth1_loads": load_etth1_loads,
               "vic_elec_calendar": lambda root: load_vic_elec(root, calendar=True),
               "vic_elec_calendar_only": lambda root: load_vic_elec(root, calendar=True, temperature=False)}
    if name not in loaders:
        raise DataError(f"covariate data set {name!r} is unknown: must be one of "
                        f"{', '.join(COVARIATE_SETS + CALENDAR_SETS)}")
    return loaders[name](root)


def without_covariates(dataset: ForecastDataset) -> ForecastDataset:
    """The same series and windows with their covariates dropped (the control of a covariate model)."""
    return replace(dataset, train=[replace(s, covariates=None) for s in dataset.train],
                   test_windows=[replace(w, covariates=None) for w in dataset.test_windows])
