"""Forecast timestamps continue the input's own stamps for every pandas frequency: anchored weeks (Sunday for
"W"/"W-SUN", Monday for "W-MON"), month ends vs month starts, anchored quarters/years, business days and
multiples ("15min", "2h", "3D"), with the frequency given or inferred, and through gaps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebt_forecast.errors import DataError
from ebt_forecast.data.frames import frame_to_series, future_timestamps, load_long_frame
from ebt_forecast.data.types import Series

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore:Period with BDay freq:FutureWarning")]

H = 4
# (pandas offset alias, first stamp of series "a", seasonal period of the pattern)
CASES = [
    ("W-SUN", "2020-01-05", 4),
    ("W", "2020-01-05", 4),
    ("W-MON", "2020-01-06", 4),
    ("W-WED", "2020-01-01 09:30", 4),
    ("ME", "2015-01-31", 12),
    ("MS", "2015-01-01", 12),
    ("2ME", "2010-01-31", 6),
    ("QE", "1995-03-31", 4),
    ("QS", "1995-01-01", 4),
    ("QS-OCT", "1994-10-01", 4),
    ("QE-NOV", "1994-11-30", 4),
    ("YE", "1930-12-31", 5),
    ("YS", "1930-01-01", 5),
    ("YE-JUN", "1930-06-30", 5),
    ("YS-JUL", "1930-07-01", 5),
    ("B", "2020-01-03", 5),
    ("D", "2020-01-01", 7),
    ("3D", "2020-01-01", 7),
    ("h", "2020-01-01 00:00", 24),
    ("2h", "2020-01-01 01:30", 12),
    ("15min", "2020-01-01 00:15", 96),
    ("15min", "2020-01-01 00:07:30", 96),
]
IDS = [f"{alias}@{start}" for alias, start, _ in CASES]
LENGTHS = {"a": 96, "b": 70}  # "b" starts 9 steps after "a" and ends before it


def stamps_of(alias: str, start: str) -> dict[str, pd.DatetimeIndex]:
    full = pd.date_range(start, periods=LENGTHS["a"], freq=alias)
    return {"a": full, "b": full[9:9 + LENGTHS["b"]]}


def write_csv(path: Path, alias: str, start: str, season: int, drop: dict[str, list[int]] | None = None) -> Path:
    """A real long-form CSV (item_id,timestamp,target): two series of different lengths with a seasonal
    pattern; `drop` removes rows (by position) to make gaps."""
    rows = []
    for k, (item, idx) in enumerate(stamps_of(alias, start).items()):
        t = np.arange(len(idx))
        y = 10 * (k + 1) + 3 * np.sin(2 * np.pi * t / season) + 0.05 * t
        block = pd.DataFrame({"item_id": item, "timestamp": idx.strftime("%Y-%m-%d %H:%M:%S"), "target": y.round(4)})
        rows.append(block.drop(index=(drop or {}).get(item, [])))
    pd.concat(rows).to_csv(path, index=False)
    return path


def expected_future(last: pd.Timestamp, alias: str, h: int = H) -> pd.DatetimeIndex:
    """The continuation computed with pandas offsets alone, independently of the code under test."""
    return pd.date_range(last, periods=h + 1, freq=alias)[1:]


def last_stamps(csv: Path) -> dict[str, pd.Timestamp]:
    raw = pd.read_csv(csv, dtype={"item_id": str})
    return {item: pd.Timestamp(ts) for item, ts in pd.to_datetime(raw["timestamp"]).groupby(raw["item_id"]).max().items()}


# ---------------------------------------------------------------- loader level


@pytest.mark.parametrize("given", [True, False], ids=["freq-given", "freq-inferred"])
@pytest.mark.parametrize(("alias", "start", "season"), CASES, ids=IDS)
def test_future_timestamps_continue_the_input(alias, start, season, given, tmp_path):
    csv = write_csv(tmp_path / "data.csv", alias, start, season)
    frame = load_long_frame(csv, freq=alias if given else None)
    series = frame_to_series(frame)
    assert [s.item_id for s in series] == ["a", "b"]
    assert all(isinstance(s.start, pd.Period) for s in series)  # GluonTS convention kept
    last = last_stamps(csv)
    for s in series:
        assert len(s) == LENGTHS[s.item_id]
        assert s.start.start_time <= stamps_of(alias, start)[s.item_id][0] <= s.start.end_time
        got = future_timestamps(s, H)
        assert isinstance(got, pd.DatetimeIndex)
        assert list(got) == list(expected_future(last[s.item_id], alias)), (alias, s.item_id, s.anchor)
        # a longer horizon keeps going on the same grid
        assert list(future_timestamps(s, 3 * H)) == list(expected_future(last[s.item_id], alias, 3 * H))


@pytest.mark.parametrize(("alias", "start", "season"),
                         [c for c in CASES if c[0] in ("W-SUN", "W-MON", "ME", "MS", "QE", "QS-OCT", "YE-JUN", "B",
                                                       "3D", "2h", "15min", "2ME")],
                         ids=lambda v: str(v))
def test_a_series_with_gaps_keeps_its_anchor(alias, start, season, tmp_path):
    """Missing periods are filled with NaN on the series' own stamps and the forecast continues them."""
    csv = write_csv(tmp_path / "gaps.csv", alias, start, season, drop={"a": [5, 6, 7, 40, 80]})
    full = stamps_of(alias, start)
    for freq in (alias, None):  # inferred from "b", the series without gaps
        frame = load_long_frame(csv, freq=freq)
        a = frame[frame["item_id"] == "a"]
        assert list(a["timestamp"]) == list(full["a"])
        assert np.flatnonzero(a["target"].isna().to_numpy()).tolist() == [5, 6, 7, 40, 80]
        series = {s.item_id: s for s in frame_to_series(frame)}
        assert len(series["a"]) == LENGTHS["a"]
        assert series["a"].anchor == series["b"].anchor
        assert list(future_timestamps(series["a"], H)) == list(expected_future(full["a"][-1], alias))
        assert list(future_timestamps(series["b"], H)) == list(expected_future(full["b"][-1], alias))


def test_anchors_of_typical_frequencies(tmp_path):
    """Sunday weeks sit 6 days after the W-SUN period start; month ends 1 day before the period end."""
    want = {"W-SUN": pd.Timedelta(days=6), "W-MON": pd.Timedelta(days=6), "MS": pd.Timedelta(0),
            "ME": pd.Timedelta(days=-1), "15min": pd.Timedelta(0), "2h": pd.Timedelta(minutes=30)}
    for alias, start, season in CASES:
        if alias in want and not start.endswith("07:30"):
            frame = load_long_frame(write_csv(tmp_path / f"{alias}.csv", alias, start, season), freq=alias)
            assert {s.anchor for s in frame_to_series(frame)} == {want[alias]}, alias


def test_series_without_anchor_continue_at_the_period_start():
    """Series from other sources (GluonTS datasets, benchmark loaders) keep the old period-start stamps."""
    s = Series("x", pd.Period("2020-01", "M"), np.zeros(3, np.float32))
    assert list(future_timestamps(s, 2)) == [pd.Timestamp("2020-04-01"), pd.Timestamp("2020-05-01")]
    s = Series("y", pd.Period("2020-01-01 00:15", "15min"), np.zeros(4, np.float32))
    assert list(future_timestamps(s, 2)) == [pd.Timestamp("2020-01-01 01:15"), pd.Timestamp("2020-01-01 01:30")]


def test_frame_to_series_accepts_multiples_and_rejects_off_grid_frames():
    idx = pd.date_range("2020-01-01", periods=8, freq="15min")
    frame = pd.DataFrame({"item_id": "a", "timestamp": idx, "target": np.arange(8.0)})
    (s,) = frame_to_series(frame, "15min")
    assert s.start == pd.Period("2020-01-01 00:00", "15min") and len(s) == 8
    assert list(future_timestamps(s, 2)) == list(expected_future(idx[-1], "15min", 2))
    with pytest.raises(DataError, match="not one '15min' step apart"):
        frame_to_series(frame.drop(index=[3]), "15min")


def test_steps_off_a_multiple_grid_are_still_refused(tmp_path):
    idx = pd.date_range("2020-01-01", periods=40, freq="15min").delete([10])  # one 30 minute step: a gap, fine
    ok = pd.DataFrame({"item_id": "a", "timestamp": idx, "target": np.arange(39.0)})
    assert len(load_long_frame(ok, freq="15min")) == 40
    hourly = pd.DataFrame({"item_id": "a", "timestamp": pd.date_range("2020-01-01", periods=40, freq="h"),
                           "target": np.arange(40.0)})
    with pytest.raises(DataError, match=r"timestamps do not match freq='2h'.*seen a step of 0 days 01:00"):
        load_long_frame(hourly, freq="2h")
    odd = pd.DataFrame({"item_id": "a", "timestamp": idx.insert(6, pd.Timestamp("2020-01-01 01:20")),
                        "target": np.arange(40.0)})
    with pytest.raises(DataError, match="timestamps do not match freq='15min'"):
        load_long_frame(odd, freq="15min")


# ---------------------------------------------------------------- forecast output


def test_forecast_frame_writes_the_continuation(tmp_path):
    """forecast_frame (the writer behind the `forecast` command) uses each series' own stamps."""
    from ebt_forecast.data.types import ForecastDataset
    from ebt_forecast.tasks.forecast.cli_forecast import forecast_frame

    for alias, start, season in CASES:
        csv = write_csv(tmp_path / "data.csv", alias, start, season, drop={"a": [20, 21]})
        frame = load_long_frame(csv)
        series = frame_to_series(frame)
        task = ForecastDataset("data", frame.attrs["freq"], H, season, series)
        samples = [np.random.default_rng(0).normal(size=(8, H)) for _ in series]
        out = forecast_frame(task, samples)
        last = last_stamps(csv)
        for item in ("a", "b"):
            got = out.loc[out["item_id"] == item, "timestamp"]
            assert list(got) == list(expected_future(last[item], alias)), (alias, start, item)


CLI_CASES = [c for c in CASES if (c[0], c[1]) in {("W-SUN", "2020-01-05"), ("W-MON", "2020-01-06"), ("ME", "2015-01-31"),
                                                  ("MS", "2015-01-01"), ("15min", "2020-01-01 00:15"),
                                                  ("QS-OCT", "1994-10-01"), ("B", "2020-01-03")}]


@pytest.mark.parametrize(("alias", "start", "season"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_forecast_command_continues_the_input_timestamps(alias, start, season, tmp_path, capsys):
    from ebt_forecast.cli import main

    csv = write_csv(tmp_path / "in.csv", alias, start, season, drop={"a": [30]})
    out_csv = tmp_path / "out.csv"
    freq = [f"freq={alias}"] if alias in ("W-SUN", "15min") else []  # the rest: inferred
    code = main(["forecast", f"input={csv}", f"horizon={H}", f"output={out_csv}", "trainer=quick",
                 "runtime.threads=1", *freq])
    assert code == 0, capsys.readouterr().err
    out = pd.read_csv(out_csv, dtype={"item_id": str})
    last = last_stamps(csv)
    assert sorted(out["item_id"].unique()) == ["a", "b"]
    for item in ("a", "b"):
        got = pd.to_datetime(out.loc[out["item_id"] == item, "timestamp"])
        assert list(got) == list(expected_future(last[item], alias)), (alias, item)
    assert np.isfinite(out["mean"].to_numpy()).all()
