"""Read long or wide tables (pandas, polars, CSV, Parquet), validate them and convert to Series."""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from pandas.tseries import offsets as pdo
from pandas.tseries.frequencies import to_offset

from ebt_forecast.errors import DataError
from ebt_forecast.data.types import Covariates, Series

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
# pandas >= 2.2 deprecates business-day Periods and the "M"/"Y" offset aliases; GluonTS still uses them.
_QUIET = ("Period with BDay freq", r"PeriodDtype\[B\]", "'M' is deprecated", "'Y' is deprecated",
          r"'\d*[MQY](-[A-Z]{3})?' is deprecated")  # period_freq's own output fed back: "2M", "Q-SEP", "Y-JUN"


@contextmanager
def quiet_pandas() -> Iterator[None]:
    """Silence pandas' FutureWarnings about business-day periods and the M/Y aliases."""
    with warnings.catch_warnings():
        for msg in _QUIET:
            warnings.filterwarnings("ignore", message=msg, category=FutureWarning)
        yield


def period_freq(freq: str) -> str:
    """Map a pandas offset alias ("h", "D", "ME", "MS", "YS", "QS-OCT", "B", ...) to a Period alias."""
    try:
        with quiet_pandas():
            off = to_offset(freq)
    except (ValueError, TypeError) as exc:
        raise DataError(f"unknown frequency {freq!r}: {exc}") from None
    n = "" if off.n == 1 else str(off.n)
    if isinstance(off, (pdo.MonthEnd, pdo.MonthBegin, pdo.BusinessMonthEnd, pdo.BusinessMonthBegin)):
        out = f"{n}M"
    elif isinstance(off, pdo.QuarterEnd):
        out = f"{n}Q-{_MONTHS[off.startingMonth - 1]}"
    elif isinstance(off, pdo.QuarterBegin):  # quarters starting in month m end in month m-1
        out = f"{n}Q-{_MONTHS[(off.startingMonth - 2) % 12]}"
    elif isinstance(off, pdo.YearEnd):
        out = f"{n}Y-{_MONTHS[off.month - 1]}"
    elif isinstance(off, pdo.YearBegin):
        out = f"{n}Y-{_MONTHS[(off.month - 2) % 12]}"
    else:
        out = off.freqstr
    try:
        with quiet_pandas():
            pd.Period("2000-01-03", out)
    except (ValueError, TypeError):
        raise DataError(f"frequency {freq!r} cannot be used for periods") from None
    return out


def _split_freq(pfreq: str) -> tuple[int, str]:
    """Multiple and base of a Period alias: "15min" -> (15, "min"), "2M" -> (2, "M"), "Q-SEP" -> (1, "Q-SEP").

    Period ordinals count base periods, so consecutive periods of a multiple frequency are n ordinals apart.
    """
    m = re.fullmatch(r"(\d*)(\D.*)", pfreq)
    if m is None:
        return 1, pfreq
    return int(m.group(1) or 1), m.group(2)


def _anchor(stamps: pd.DatetimeIndex, base: str) -> pd.Timedelta:
    """Where `stamps` sit inside their `base` periods (see Series.anchor): a constant offset from the period
    start (>= 0), else a constant offset from its end (< 0), else the last stamp's offset from its start."""
    with quiet_pandas():
        per = stamps.to_period(base)
        phase_s = stamps - per.start_time
        phase_e = stamps - (per.end_time + pd.Timedelta(1, "ns"))
    if (phase_s == phase_s[0]).all() or not (phase_e == phase_e[0]).all():
        return pd.Timedelta(phase_s[-1])
    return pd.Timedelta(phase_e[0])


def future_timestamps_of(series: list[Series], horizon: int) -> np.ndarray:
    """`future_timestamps` of many series at once: (len(series) * horizon,) datetime64, series after series."""
    if not series:
        return np.array([], dtype="datetime64[ns]")
    out = np.empty((len(series), horizon), dtype="datetime64[ns]")
    groups: dict[tuple[str, pd.Timedelta], list[int]] = {}
    for i, s in enumerate(series):
        groups.setdefault((s.start.freqstr, pd.Timedelta(0) if s.anchor is None else pd.Timedelta(s.anchor)), []).append(i)
    with quiet_pandas():
        for (freq, anchor), rows in groups.items():
            n, base = _split_freq(freq)
            first = np.array([pd.Period(series[i].start.start_time, base).ordinal + n * len(series[i].target)
                              for i in rows])
            periods = pd.PeriodIndex.from_ordinals((first[:, None] + n * np.arange(horizon)).ravel(), freq=base)
            if anchor >= pd.Timedelta(0):
                stamps = periods.start_time + anchor
            else:
                stamps = periods.end_time + pd.Timedelta(1, "ns") + anchor
            out[rows] = np.asarray(stamps, dtype="datetime64[ns]").reshape(len(rows), horizon)
    return out.ravel()


def future_timestamps(series: Series, horizon: int) -> pd.DatetimeIndex:
    """The next `horizon` timestamps after `series`, continuing its own stamps: period + k, then the same
    position inside the period (Series.anchor), e.g. Sundays for "W-SUN", month ends for "ME"."""
    return pd.DatetimeIndex(future_timestamps_of([series], horizon), name=None)


def _describe(source: Any, source_name: str | None) -> str:
    if source_name:
        return source_name
    if isinstance(source, (str, Path)):
        return str(source)
    return "<dataframe>"


def read_table(source: Any, name: str | None = None) -> pd.DataFrame:
    """A pandas/polars frame or a CSV/Parquet path as a pandas frame (DataError naming the file if unreadable)."""
    return _read_source(source, _describe(source, name))


def _read_source(source: Any, name: str) -> pd.DataFrame:
    """Turn a pandas/polars frame or a CSV/Parquet path into a pandas frame."""
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if type(source).__module__.startswith("polars"):
        return source.to_pandas()
    if not isinstance(source, (str, Path)):
        raise DataError(f"{name}: expected a pandas/polars DataFrame or a CSV/Parquet path, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{name}: file not found")
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if any(s in (".csv", ".txt", ".tsv") for s in suffixes):
            return pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",")
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: file is empty") from None
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise DataError(f"{name}: cannot read file: {exc}") from None
    raise DataError(f"{name}: unsupported file type {path.suffix!r} (use .csv or .parquet)")


def _require(df: pd.DataFrame, cols: list[str], name: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{name}: column {missing[0]!r} not found; available columns: {list(map(str, df.columns))}")


def _to_long(df: pd.DataFrame, id_col: str, time_col: str, target_col: str, layout: str, name: str) -> pd.DataFrame:
    """Rename/melt to columns item_id, timestamp, target (+ covariates in long layout)."""
    if layout == "auto":
        if id_col in df.columns or target_col in df.columns:
            layout = "long"  # missing id/target/time columns are reported below
        elif time_col in df.columns:
            layout = "wide"
        else:
            _require(df, [id_col, time_col, target_col], name)
    if layout == "long":
        _require(df, [id_col, time_col, target_col], name)
        covs = [c for c in df.columns if c not in (id_col, time_col, target_col)]
        clash = [c for c in covs if c in ("item_id", "timestamp", "target")]
        if clash:
            raise DataError(f"{name}: covariate column {clash[0]!r} clashes with an output column name")
        out = df[[id_col, time_col, target_col, *covs]].rename(
            columns={id_col: "item_id", time_col: "timestamp", target_col: "target"})
        if out["item_id"].isna().any():
            row = int(np.flatnonzero(out["item_id"].isna().to_numpy())[0])
            raise DataError(f"{name}: column {id_col!r} has a missing series id at row {row}")
        out["item_id"] = out["item_id"].astype(str)
        return out
    if layout == "wide":
        _require(df, [time_col], name)
        value_cols = [c for c in df.columns if c != time_col]
        if not value_cols:
            raise DataError(f"{name}: wide layout needs at least one series column besides {time_col!r}")
        out = df.melt(id_vars=[time_col], value_vars=value_cols, var_name="item_id", value_name="target")
        out = out.rename(columns={time_col: "timestamp"})[["item_id", "timestamp", "target"]]
        out["item_id"] = out["item_id"].astype(str)
        return out
    raise DataError(f"{name}: layout must be 'auto', 'long' or 'wide', got {layout!r}")


def _parse_target(df: pd.DataFrame, target_col: str, name: str) -> None:
    """Coerce target to float, naming the series and value of the first non-numeric cell."""
    raw = df["target"]
    if pd.api.types.is_bool_dtype(raw):
        raise DataError(f"{name}: column {target_col!r} is boolean, expected numbers")
    num = pd.to_numeric(raw, errors="coerce")
    bad = num.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{name}: column {target_col!r}, series {df['item_id'].iat[i]!r}: "
                        f"non-numeric value {raw.iat[i]!r}")
    df["target"] = num.astype("float64")


def _parse_time(df: pd.DataFrame, time_col: str, name: str) -> None:
    """Parse timestamps, naming the series and value of the first unparseable one."""
    raw = df["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(raw):
        ts = raw.dt.tz_localize(None) if getattr(raw.dt, "tz", None) is not None else raw
    elif pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        raise DataError(f"{name}: column {time_col!r} holds numbers, expected dates/times "
                        f"(e.g. '2020-01-31' or '2020-01-31 13:00')")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "could not infer format" chatter
            ts = pd.to_datetime(raw, errors="coerce")
            if ts.isna().any() and raw.notna().any():
                ts = ts.fillna(pd.to_datetime(raw.where(ts.isna()), errors="coerce", format="mixed"))
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_localize(None)
    if ts.isna().any():
        i = int(np.flatnonzero(ts.isna().to_numpy())[0])
        what = "missing timestamp" if pd.isna(raw.iat[i]) else f"unparseable timestamp {raw.iat[i]!r}"
        raise DataError(f"{name}: column {time_col!r}, series {df['item_id'].iat[i]!r}: {what}")
    df["timestamp"] = ts.astype("datetime64[ns]")


def _check_order(df: pd.DataFrame, time_col: str, name: str) -> None:
    """Reject duplicate or decreasing timestamps within a series (df stably sorted by item_id)."""
    dup = df.duplicated(["item_id", "timestamp"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"{name}: column {time_col!r}, series {df['item_id'].iat[i]!r}: "
                        f"duplicate timestamp {df['timestamp'].iat[i]}")
    ids = df["item_id"].to_numpy()
    t = df["timestamp"].to_numpy()
    back = (ids[1:] == ids[:-1]) & (t[1:] < t[:-1])
    if back.any():
        i = int(np.flatnonzero(back)[0]) + 1
        raise DataError(f"{name}: column {time_col!r}, series {ids[i]!r}: timestamps are not sorted "
                        f"({pd.Timestamp(t[i])} comes after {pd.Timestamp(t[i - 1])}); sort each series by time")


def _infer_freq(groups: dict[str, pd.DatetimeIndex], name: str) -> str:
    """pd.infer_freq on the longest series (then the next longest, ...)."""
    for key in sorted(groups, key=lambda k: -len(groups[k])):
        idx = groups[key]
        if len(idx) < 3:
            break
        freq = pd.infer_freq(idx)
        if freq is not None:
            return freq
    raise DataError(f"{name}: cannot infer the frequency from the timestamps "
                    f"(irregular spacing or fewer than 3 points); pass freq= explicitly, e.g. freq='h'")


def _regularize(df: pd.DataFrame, pfreq: str, freq_label: str, name: str) -> pd.DataFrame:
    """Check each series sits on the `pfreq` grid and fill gaps with NaN-target rows."""
    n, base = _split_freq(pfreq)  # work on base periods: a "15min" step is 15 "min" ordinals
    with quiet_pandas():
        per = df["timestamp"].dt.to_period(base)
        ordinal = per.array.asi8
        # offset of each timestamp inside its period, from the period's start and from its end
        phase_s = (df["timestamp"] - per.dt.start_time).to_numpy()
        phase_e = (df["timestamp"] - per.dt.end_time).to_numpy()
    ids = df["item_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(df)]
    pieces, need_fill = [], False
    for s, e in zip(starts, ends):
        steps = np.diff(ordinal[s:e])
        # same position in every period: start-anchored (e.g. "MS", "h") or end-anchored (e.g. "ME")
        from_start = bool((phase_s[s:e] == phase_s[s]).all())
        ok = from_start or bool((phase_e[s:e] == phase_e[s]).all())
        if len(steps):
            vals, counts = np.unique(steps, return_counts=True)
            ok = ok and vals[0] >= n and not (vals % n).any() and vals[np.argmax(counts)] == n
        if not ok:
            seen = pd.Series(np.diff(df["timestamp"].to_numpy()[s:e])).mode().iat[0]
            raise DataError(f"{name}: series {ids[s]!r}: timestamps do not match freq={freq_label!r} "
                            f"(expected a step of one {freq_label!r} period, seen a step of {pd.Timedelta(seen)})")
        if len(steps) and steps.max() > n:
            need_fill = True
        pieces.append((s, e, from_start))
    if not need_fill:
        return df
    # Reindex every series on its full period grid; gaps get NaN target (and NaN covariates).
    out = []
    for s, e, from_start in pieces:
        grid = np.arange(ordinal[s], ordinal[e - 1] + 1, n)
        block = df.iloc[s:e].set_index(pd.Index(ordinal[s:e])).reindex(grid)
        block["item_id"] = ids[s]
        with quiet_pandas():
            periods = pd.PeriodIndex.from_ordinals(grid, freq=base)
            anchor = periods.start_time + phase_s[s] if from_start else periods.end_time + phase_e[s]
        block["timestamp"] = anchor.to_numpy()
        out.append(block.reset_index(drop=True))
    return pd.concat(out, ignore_index=True)


def load_long_frame(
    source: Any,
    *,
    id_col: str = "item_id",
    time_col: str = "timestamp",
    target_col: str = "target",
    layout: str = "auto",
    freq: str | None = None,
    min_length: int = 1,
    source_name: str | None = None,
) -> pd.DataFrame:
    """Load and validate a long or wide table into a regular long frame (item_id, timestamp, target, covariates)."""
    name = _describe(source, source_name)
    df = _read_source(source, name)
    if df.shape[1] == 0 or len(df) == 0:
        raise DataError(f"{name}: no data rows (empty table)" if df.shape[1] else f"{name}: file is empty")
    df.columns = [str(c) for c in df.columns]
    df = _to_long(df, id_col, time_col, target_col, layout, name)
    _parse_target(df, target_col, name)
    _parse_time(df, time_col, name)
    df = df.sort_values("item_id", kind="stable").reset_index(drop=True)
    _check_order(df, time_col, name)

    if freq is None:
        groups = {k: pd.DatetimeIndex(g) for k, g in df.groupby("item_id", sort=False)["timestamp"]}
        freq = _infer_freq(groups, name)
    pfreq = period_freq(freq)
    df = _regularize(df, pfreq, freq, name)

    lengths = df.groupby("item_id", sort=False).size()
    short = lengths[lengths < min_length]
    if len(short):
        raise DataError(f"{name}: series {short.index[0]!r} has length {int(short.iat[0])}, "
                        f"shorter than min_length={min_length}")
    df.attrs["freq"] = pfreq
    return df


def frame_to_series(frame: pd.DataFrame, freq: str | None = None) -> list[Series]:
    """One float32 Series per item_id of a regular long frame (freq defaults to frame.attrs['freq']), in sorted id
    order. Vectorised over the whole frame: periods, anchors and step checks are computed once for every row."""
    freq = freq or frame.attrs.get("freq")
    if freq is None:
        raise DataError("frame_to_series: pass freq= (the frame has no attrs['freq'])")
    _require(frame, ["item_id", "timestamp", "target"], "frame_to_series")
    if frame.empty:
        return []
    pfreq = period_freq(freq)
    n, base = _split_freq(pfreq)
    ids = frame["item_id"].astype(str).to_numpy()
    order = np.argsort(ids, kind="stable")  # groupby(sort=True) order; rows keep their order inside a series
    ids = ids[order]
    with quiet_pandas():
        stamps = pd.DatetimeIndex(frame["timestamp"].to_numpy()[order])
        per = stamps.to_period(base)
        ordinals = per.asi8
        phase_s = (stamps - per.start_time).asi8
        phase_e = (stamps - (per.end_time + pd.Timedelta(1, "ns"))).asi8
    target = pd.to_numeric(frame["target"], errors="coerce").to_numpy(dtype=np.float32)[order]
    bounds = np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1, [len(ids)]])
    out = []
    with quiet_pandas():
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b - a > 1 and not (np.diff(ordinals[a:b]) == n).all():
                raise DataError(f"series {ids[a]!r}: timestamps are not one {freq!r} step apart; "
                                f"load the frame with load_long_frame to validate and fill gaps")
            ps, pe = phase_s[a:b], phase_e[a:b]
            if (ps == ps[0]).all() or not (pe == pe[0]).all():
                anchor = pd.Timedelta(int(ps[-1]), "ns")
            else:
                anchor = pd.Timedelta(int(pe[0]), "ns")
            out.append(Series(item_id=ids[a], start=pd.Period(stamps[a], pfreq), target=target[a:b], anchor=anchor))
    return out


def series_to_gluonts(series: list[Series], freq: str):
    """Wrap Series as a GluonTS ListDataset (keys: target, start, item_id)."""
    from gluonts.dataset.common import ListDataset

    pfreq = period_freq(freq)
    with quiet_pandas():
        entries = [{"target": np.asarray(s.target, dtype=np.float32), "start": s.start.asfreq(pfreq),
                    "item_id": s.item_id, **gluonts_fields(s.covariates)} for s in series]
        return ListDataset(entries, freq=pfreq)


def gluonts_to_series(dataset: Iterable[dict], freq: str | None = None) -> list[Series]:
    """Convert any GluonTS dataset (ListDataset, PandasDataset, list of dicts) to Series."""
    out = []
    with quiet_pandas():
        for i, entry in enumerate(dataset):
            if "target" not in entry or "start" not in entry:
                raise DataError(f"entry {i}: a GluonTS entry needs 'target' and 'start', got keys {list(entry)}")
            target = np.asarray(entry["target"], dtype=np.float32)
            if target.ndim == 2 and target.shape[0] == 1:
                target = target[0]
            if target.ndim != 1:
                raise DataError(f"entry {i}: expected a univariate target, got shape {target.shape}")
            start = entry["start"]
            if not isinstance(start, pd.Period):
                if freq is None:
                    raise DataError(f"entry {i}: start {start!r} is not a pd.Period; pass freq=")
                start = pd.Period(start, period_freq(freq))
            elif freq is not None:
                start = start.asfreq(period_freq(freq))
            item = entry.get("item_id")
            out.append(Series(item_id=str(i if item is None else item), start=start, target=target.copy(),
                              covariates=gluonts_covariates(entry, i, len(target))))
    return out


GLUONTS_COVARIATES = {"past_feat_dynamic_real": "past", "feat_dynamic_real": "future",
                      "feat_static_real": "static_real", "feat_static_cat": "static_cat"}


def gluonts_fields(cov: Covariates | None) -> dict:
    """Covariates as a GluonTS entry's feat_* fields (the inverse of `gluonts_covariates`)."""
    if cov is None:
        return {}
    return {key: getattr(cov, kind) for key, kind in GLUONTS_COVARIATES.items() if getattr(cov, kind) is not None}


def gluonts_covariates(entry: dict, index: int, length: int) -> Covariates | None:
    """A GluonTS entry's covariates (past_feat_dynamic_real (Cp, T), feat_dynamic_real (Cf, T, or T + H when
    predicting), feat_static_real, feat_static_cat), or None when it has none."""
    found = {kind: entry[key] for key, kind in GLUONTS_COVARIATES.items() if entry.get(key) is not None}
    if not found:
        return None
    cov = Covariates()
    for kind, value in found.items():
        if kind in ("past", "future"):
            x = np.asarray(value, dtype=np.float32)
            x = x[None] if x.ndim == 1 else x
            key = next(k for k, v in GLUONTS_COVARIATES.items() if v == kind)
            if x.ndim != 2 or x.shape[1] < length or (kind == "past" and x.shape[1] != length):
                raise DataError(f"entry {index} ({entry.get('item_id', index)!r}): {key} has shape {x.shape}; "
                                f"expected (features, {length}){' or longer' if kind == 'future' else ''}")
            setattr(cov, kind, x)
        else:
            setattr(cov, kind, np.asarray(value, dtype=np.int64 if kind == "static_cat" else np.float32).ravel())
    return cov
