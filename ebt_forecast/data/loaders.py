"""Loaders that cut real data sets into ForecastTasks (train series + test windows)."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd

from ebt_forecast.errors import DataError
from ebt_forecast.data.frames import frame_to_series, load_long_frame, quiet_pandas
from ebt_forecast.data.types import ForecastDataset, Series, TestWindow
from ebt_forecast.data.windows import tail_windows

ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
ETT_MONTH = 30 * 24  # Informer convention: a "month" is 30 days of hourly rows


def _file(root: str | Path, *parts: str) -> Path:
    """root/parts..., raising DataError naming the path if it is missing."""
    path = Path(root).joinpath(*parts)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    return path


def tail_task(name: str, freq: str, horizon: int, season: int, full: list[Series], num_windows: int) -> ForecastDataset:
    """Task whose test set is the last num_windows non-overlapping horizons of every series."""
    train, tests = [], []
    for s in full:
        short, windows = tail_windows(s, horizon, num_windows)
        train.append(short)
        tests.extend(windows)
    return ForecastDataset(name=name, freq=freq, horizon=horizon, season_length=season, train=train, test_windows=tests)


def etth1_series(root: str | Path) -> list[Series]:
    """ETTh1's 7 columns as whole hourly series."""
    frame = load_long_frame(_file(root, "ett", "ETTh1.csv"), time_col="date", layout="wide", freq="h")
    return frame_to_series(frame, "h")


def load_etth1(root: str | Path, columns: str | list[str] = "OT", stride: int = 48, horizon: int = 48) -> ForecastDataset:
    """ETTh1 (hourly, season 24): train = first 12+4 months, rolling test windows in the last 4."""
    if stride < 1 or horizon < 1:
        raise DataError(f"stride and horizon must be >= 1, got stride={stride}, horizon={horizon}")
    path = _file(root, "ett", "ETTh1.csv")
    by_id = {s.item_id: s for s in etth1_series(root)}
    available = [c for c in ETT_COLUMNS if c in by_id] + sorted(set(by_id) - set(ETT_COLUMNS))
    cols = available if columns == "all" else [columns] if isinstance(columns, str) else list(columns)
    unknown = [c for c in cols if c not in by_id]
    if unknown or not cols:
        raise DataError(f"{path}: column {(unknown or [''])[0]!r} not found; available columns: {available}")
    train_end = (12 + 4) * ETT_MONTH  # validation (months 13-16) stays in train; models cut it later
    test_end = train_end + 4 * ETT_MONTH
    n = len(by_id[cols[0]].target)
    if n < test_end:
        raise DataError(f"{path}: expected at least {test_end} rows for the 12/4/4-month split, found {n}")
    train, tests = [], []
    for c in cols:
        s = by_id[c]
        train.append(Series(item_id=c, start=s.start, target=s.target[:train_end].copy()))
        for o in range(train_end, test_end - horizon + 1, stride):
            tests.append(TestWindow(item_id=c, start=s.start, past=s.target[:o].copy(),
                                    future=s.target[o:o + horizon].copy()))
    name = "etth1_all" if columns == "all" else "etth1_" + "_".join(cols)
    return ForecastDataset(name=name, freq="h", horizon=horizon, season_length=24, train=train, test_windows=tests)


def _numeric(df: pd.DataFrame, where) -> pd.DataFrame:
    """df as numbers; the first non-numeric cell raises DataError located by where(row, column)."""
    values = df.apply(pd.to_numeric, errors="coerce")
    bad = values.isna() & df.notna()
    if bad.any().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise DataError(f"{where(r, c)}: non-numeric value {df.iat[r, c]!r}")
    return values


def _read_m4(path: Path) -> dict[str, np.ndarray]:
    """id -> values of a ragged M4 CSV (first column V1 = id), trailing NaN padding dropped."""
    try:
        df = pd.read_csv(path, index_col=0)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    values = _numeric(df, lambda r, c: f"{path}: column {df.columns[c]!r}, series {df.index[r]!r}")
    out = {}
    for item, row in zip(values.index.astype(str), values.to_numpy(dtype=np.float32)):
        obs = np.flatnonzero(np.isfinite(row))
        out[item] = row[: obs[-1] + 1] if len(obs) else row[:0]
    return out


def load_m4_hourly(root: str | Path, horizon: int = 48) -> ForecastDataset:
    """M4 hourly (414 series, season 24): train = train file, one test window of 48 per series."""
    train_path, test_path = _file(root, "m4", "Hourly-train.csv"), _file(root, "m4", "Hourly-test.csv")
    train_vals, test_vals = _read_m4(train_path), _read_m4(test_path)
    start = pd.Period("2000-01-01 00:00", "h")  # M4 gives no dates: arbitrary fixed start
    train, tests = [], []
    for item, y in train_vals.items():
        if item not in test_vals:
            raise DataError(f"{test_path}: series {item!r} missing from the test file")
        future = test_vals[item]
        if len(future) < horizon:
            raise DataError(f"{test_path}: series {item!r} has {len(future)} test values, need {horizon}")
        train.append(Series(item_id=item, start=start, target=y))
        tests.append(TestWindow(item_id=item, start=start, past=y.copy(), future=future[:horizon].copy()))
    return ForecastDataset(name="m4_hourly", freq="h", horizon=horizon, season_length=24, train=train, test_windows=tests)


def exchange_rate_series(root: str | Path) -> list[Series]:
    """The 8 exchange-rate series whole (business-daily from a fixed start: the file has no dates)."""
    path = _file(root, "exchange_rate", "exchange_rate.txt.gz")
    try:
        df = pd.read_csv(path, header=None)
    except (pd.errors.EmptyDataError, EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from None
    values = _numeric(df, lambda r, c: f"{path}: column {c}, row {r}")
    with quiet_pandas():
        start = pd.Period("1990-01-01", "B")  # no dates in the file: fixed start, as GluonTS
    return [Series(item_id=str(c), start=start, target=values[c].to_numpy(dtype=np.float32)) for c in values.columns]


def load_exchange_rate(root: str | Path, horizon: int = 30, num_windows: int = 5) -> ForecastDataset:
    """Exchange rates (8 series, business-daily, season 5): last num_windows*horizon points are test."""
    return tail_task("exchange_rate", "B", horizon, 5, exchange_rate_series(root), num_windows)


# name -> (freq, season, horizon, default num_windows)
STATSMODELS_SPECS: dict[str, tuple[str, int, int, int]] = {
    "co2": ("M", 12, 24, 3),
    "elec_equip": ("M", 12, 12, 3),
    "elnino": ("M", 12, 12, 3),
    "sunspots": ("Y", 1, 11, 3),
    "nile": ("Y", 1, 10, 1),
}


def _statsmodels_series(name: str) -> Series:
    """The embedded statsmodels data set `name` as one Series."""
    data = importlib.import_module(f"statsmodels.datasets.{name}").load_pandas().data
    with quiet_pandas():
        if name == "co2":  # weekly (Saturday) with gaps -> monthly mean; all-missing months stay NaN
            y = data["co2"].resample("MS").mean()
            start = pd.Period(y.index[0], "M")
        elif name == "elec_equip":
            y = data.iloc[:, 0]
            start = pd.Period(y.index[0], "M")
        elif name == "elnino":  # 61 years x 12 months -> one monthly series
            y = pd.Series(data.drop(columns="YEAR").to_numpy().ravel())
            start = pd.Period(f"{int(data['YEAR'].iat[0])}-01", "M")
        elif name == "sunspots":
            y = data["SUNACTIVITY"]
            start = pd.Period(str(int(data["YEAR"].iat[0])), "Y")
        else:  # nile
            y = data["volume"]
            start = pd.Period(str(int(data["year"].iat[0])), "Y")
    return Series(item_id=name, start=start, target=y.to_numpy(dtype=np.float32))


def load_statsmodels(name: str, num_windows: int | None = None) -> ForecastDataset:
    """An embedded statsmodels series (co2, elec_equip, elnino, sunspots, nile) cut into a task."""
    if name not in STATSMODELS_SPECS:
        raise DataError(f"unknown statsmodels data set {name!r}; available: {sorted(STATSMODELS_SPECS)}")
    freq, season, horizon, default_windows = STATSMODELS_SPECS[name]
    return tail_task(name, freq, horizon, season, [_statsmodels_series(name)], num_windows or default_windows)


def load_default_suite() -> list[ForecastDataset]:
    """The offline default suite: co2, elec_equip, elnino, sunspots (shipped with statsmodels)."""
    return [load_statsmodels(n) for n in ("co2", "elec_equip", "elnino", "sunspots")]


def load_gluonts_repository(name: str, path: str | Path | None = None, season_length: int | None = None) -> ForecastDataset:
    """A GluonTS repository data set via `get_dataset`: read from `path/name` when a copy is there
    (works offline), otherwise downloaded into `path` (needs a network). Test windows are the last
    prediction_length points of each test entry, GluonTS's convention."""
    from gluonts.dataset.repository import get_dataset
    from gluonts.time_feature import get_seasonality

    from ebt_forecast.data.frames import gluonts_to_series

    kwargs = {"path": Path(path)} if path is not None else {}
    try:
        with quiet_pandas():
            ds = get_dataset(name, **kwargs)
    except Exception as err:  # noqa: BLE001 - download and parse failures alike become one clear message
        where = f" under {path}" if path is not None else ""
        raise DataError(f"GluonTS data set {name!r} could not be loaded{where}: {err}") from err
    horizon, freq = int(ds.metadata.prediction_length), ds.metadata.freq
    train = gluonts_to_series(ds.train, freq)
    test = gluonts_to_series(ds.test, freq) if ds.test is not None else []
    windows = [TestWindow(s.item_id, s.start, s.target[:-horizon], s.target[-horizon:]) for s in test
               if len(s.target) > horizon]
    with quiet_pandas():
        season = season_length or int(get_seasonality(freq))
    return ForecastDataset(f"gluonts_{name}", train[0].start.freqstr if train else freq, horizon, season, train, windows)
