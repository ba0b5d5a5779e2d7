"""Covariates of a long file by role: past (known up to the forecast start), known-future (given over the horizon
too, in a second file) and static (one value per series), attached to each Series as `Covariates`.

    roles = CovariateRoles(past=["load"], future=["temperature"], static=["region"])
    attach_covariates(frame, series, roles, "data.csv", future=future_frame, horizon=24)

Every problem is a DataError naming the file, the column and the series: a role naming a column the file lacks, a
non-numeric value, a static column that changes within a series, a known-future covariate missing (or NaN) over the
horizon, a future file with the wrong number of steps or timestamps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ebt_forecast.data.frames import future_timestamps_of
from ebt_forecast.data.types import Covariates, Series
from ebt_forecast.errors import DataError

FRAME_COLUMNS = ("item_id", "timestamp", "target")


@dataclass
class CovariateRoles:
    """Which columns of a long file are which kind of covariate."""

    past: list[str] = field(default_factory=list)
    future: list[str] = field(default_factory=list)
    static: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [*self.past, *self.future, *self.static]

    def __bool__(self) -> bool:
        return bool(self.columns)

    def check(self, available: list[str], name: str) -> None:
        """Each column named once, and present in the file."""
        seen: set[str] = set()
        for column in self.columns:
            if column in seen:
                raise DataError(f"{name}: column {column!r} is given two covariate roles; give it one")
            seen.add(column)
            if column not in available:
                raise DataError(f"{name}: covariate column {column!r} not found; available columns: {available}")


def unassigned_columns(frame: pd.DataFrame, roles: CovariateRoles) -> list[str]:
    """Columns of a loaded long frame that no role names (they are not used; the command says so)."""
    return [c for c in frame.columns if c not in FRAME_COLUMNS and c not in roles.columns]


def numeric_column(frame: pd.DataFrame, column: str, name: str) -> np.ndarray:
    """A column as float32, naming the series and value of the first non-numeric cell (a DataError)."""
    raw = frame[column]
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype("float32").to_numpy()
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{name}: column {column!r}, series {frame['item_id'].iat[i]!r}: non-numeric value "
                        f"{raw.iat[i]!r}")
    return values.to_numpy(dtype=np.float32)


def _bounds(ids: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges of consecutive equal ids."""
    cuts = np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1, [len(ids)]])
    return list(zip(cuts[:-1], cuts[1:]))


def _statics(frame: pd.DataFrame, column: str, rows: list[tuple[int, int]], name: str) -> tuple[np.ndarray, bool]:
    """One value per series (real, or categorical codes when the column is not numeric); (values, is_categorical)."""
    raw = frame[column]
    ids = frame["item_id"].to_numpy()
    firsts = []
    for a, b in rows:
        block = raw.iloc[a:b].dropna()
        if block.nunique() > 1:
            raise DataError(f"{name}: static column {column!r}, series {ids[a]!r}: changes within the series "
                            f"({block.iat[0]!r}, then {block[block != block.iat[0]].iat[0]!r}); a static covariate "
                            "has one value per series (give it as past_covariates= or future_covariates=)")
        if block.empty:
            raise DataError(f"{name}: static column {column!r}, series {ids[a]!r}: no value")
        firsts.append(block.iat[0])
    values = pd.Series(firsts)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float32), False
    codes = pd.Categorical(values.astype(str))
    return np.asarray(codes.codes, dtype=np.int64), True


def attach_covariates(frame: pd.DataFrame, series: list[Series], roles: CovariateRoles, name: str,
                      future: pd.DataFrame | None = None, future_name: str = "future_input",
                      horizon: int = 0) -> list[Series]:
    """Series (frame_to_series of `frame`, in its sorted id order) with their covariates attached; the known-future
    covariates' horizon values come from `future` (item_id, timestamp and those columns over the next `horizon`
    steps). With no `future` the known-future covariates stop at the series' end (training, backtests)."""
    if not roles:
        return series
    roles.check([c for c in frame.columns if c not in FRAME_COLUMNS], name)
    ids = frame["item_id"].astype(str).to_numpy()
    order = np.argsort(ids, kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    rows = _bounds(ids[order])
    if len(rows) != len(series):
        raise DataError(f"{name}: {len(rows)} series in the frame but {len(series)} given")
    past = {c: numeric_column(frame, c, name) for c in roles.past}
    known = {c: numeric_column(frame, c, name) for c in roles.future}
    statics = {c: _statics(frame, c, rows, name) for c in roles.static}
    ahead = _future_values(future, future_name, series, roles.future, horizon) if future is not None else None
    out = []
    for i, ((a, b), s) in enumerate(zip(rows, series)):
        cov = Covariates(
            past=np.stack([past[c][a:b] for c in roles.past]) if roles.past else None,
            future=np.stack([known[c][a:b] for c in roles.future]) if roles.future else None,
            static_real=_pick(statics, i, categorical=False), static_cat=_pick(statics, i, categorical=True))
        if ahead is not None and cov.future is not None:
            cov.future = np.concatenate([cov.future, ahead[s.item_id]], axis=1)
        out.append(Series(s.item_id, s.start, s.target, s.anchor, cov))
    return out


def _pick(statics: dict[str, tuple[np.ndarray, bool]], i: int, categorical: bool) -> np.ndarray | None:
    """Series i's static values of one kind (None when the file has none of that kind)."""
    values = [v[i] for v, is_cat in statics.values() if is_cat == categorical]
    if not values:
        return None
    return np.asarray(values, dtype=np.int64 if categorical else np.float32)


def _future_values(future: pd.DataFrame, name: str, series: list[Series], columns: list[str],
                   horizon: int) -> dict[str, np.ndarray]:
    """Each series' known-future covariates over its next `horizon` steps (C, H), checked against its timestamps."""
    if not columns:
        raise DataError(f"{name}: future_input= gives known-future covariates, but future_covariates=[...] names none")
    for column in ("item_id", "timestamp", *columns):
        if column not in future.columns:
            raise DataError(f"{name}: column {column!r} not found; available columns: {list(map(str, future.columns))}")
    future = future.assign(item_id=future["item_id"].astype(str),
                           timestamp=pd.to_datetime(future["timestamp"], errors="coerce").astype("datetime64[ns]"))
    if future["timestamp"].isna().any():
        i = int(np.flatnonzero(future["timestamp"].isna().to_numpy())[0])
        raise DataError(f"{name}: series {future['item_id'].iat[i]!r}: unparseable timestamp at row {i}")
    values = {c: numeric_column(future, c, name) for c in columns}
    groups = dict(future.groupby("item_id", sort=False).indices)
    expected = future_timestamps_of(series, horizon).reshape(len(series), horizon)
    out = {}
    for s, stamps in zip(series, expected):
        index = groups.get(s.item_id)
        if index is None:
            raise DataError(f"{name}: series {s.item_id!r} has no rows: known-future covariates "
                            f"{columns} are needed over its next {horizon} steps")
        got = future["timestamp"].to_numpy()[index]
        position = {t: j for j, t in enumerate(got)}
        missing = [t for t in stamps if t not in position]
        if missing:
            raise DataError(f"{name}: series {s.item_id!r}: no row for {pd.Timestamp(missing[0])} (the horizon is "
                            f"{pd.Timestamp(stamps[0])} .. {pd.Timestamp(stamps[-1])}, {horizon} steps)")
        take = index[[position[t] for t in stamps]]
        block = np.stack([values[c][take] for c in columns])
        bad = ~np.isfinite(block)
        if bad.any():
            c, t = np.argwhere(bad)[0]
            raise DataError(f"{name}: column {columns[c]!r}, series {s.item_id!r}: missing value at "
                            f"{pd.Timestamp(stamps[t])} (a known-future covariate needs a value at every step)")
        out[s.item_id] = block
    return out


def covariate_slots(series: list[Series]) -> dict:
    """The model's covariate slots for these series (ForecastModelConfig's fields); every series must carry the
    same kinds and counts."""
    covs = [s.covariates for s in series]
    if not covs or covs[0] is None:
        if any(c is not None for c in covs):
            raise DataError("some series have covariates and others none: give every series the same covariates")
        return {}
    first = covs[0]

    def count(c: Covariates, kind: str) -> int:
        x = getattr(c, kind)
        return 0 if x is None else (x.shape[0] if kind in ("past", "future") else len(x))

    for s in series:
        for kind in ("past", "future", "static_real", "static_cat"):
            if s.covariates is None or count(s.covariates, kind) != count(first, kind):
                raise DataError(f"series {s.item_id!r}: its {kind} covariates differ in number from series "
                                f"{series[0].item_id!r}'s; give every series the same covariates")
    cardinalities = []
    if first.static_cat is not None:
        codes = np.stack([s.covariates.static_cat for s in series])
        cardinalities = [int(v) + 1 for v in codes.max(0)]
    return {"past_covariates": count(first, "past"), "future_covariates": count(first, "future"),
            "static_real": count(first, "static_real"), "static_cardinalities": cardinalities}


def check_horizon_covariates(series: list[Series], horizon: int, name: str = "future_input") -> None:
    """Every series' known-future covariates must reach `horizon` steps past its end."""
    for s in series:
        future = None if s.covariates is None else s.covariates.future
        if future is not None and future.shape[1] < len(s.target) + horizon:
            raise DataError(f"{name}: series {s.item_id!r}: known-future covariates cover "
                            f"{future.shape[1] - len(s.target)} of the {horizon} horizon steps; give them over the "
                            "whole horizon (future_input=FILE with item_id, timestamp and those columns)")
