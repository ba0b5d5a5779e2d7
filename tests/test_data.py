"""Tests for the data layer: loaders on real data, frame validation, windowing and scaling."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch

from ebt_forecast.data import (
    DataError,
    Series,
    TrainWindowDataset,
    frame_to_series,
    gluonts_to_series,
    load_default_suite,
    load_etth1,
    load_exchange_rate,
    load_long_frame,
    load_m4_hourly,
    load_statsmodels,
    make_inference_batch,
    mean_abs_scale,
    series_to_gluonts,
    split_train_val,
)
from conftest import require_shared_data


@pytest.fixture(scope="module")
def data_root(shared_data: Path) -> Path:
    """conftest's shared data root: skipped locally when absent, a failure under CI=true."""
    return shared_data


def test_missing_shared_data_skips_locally_and_fails_under_ci(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="shared data not found"):
        require_shared_data(tmp_path)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_shared_data(tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"shared data not found.*CI=true"):
        require_shared_data(tmp_path)
    (tmp_path / "ett").mkdir()
    (tmp_path / "ett" / "ETTh1.csv").write_text("date,OT\n")
    assert require_shared_data(tmp_path) == tmp_path  # present: neither skip nor fail, even under CI


# ---------------------------------------------------------------- shared loaders


def test_etth1_all(data_root):
    task = load_etth1(data_root, columns="all", stride=48, horizon=48)
    assert (task.freq, task.horizon, task.season_length) == ("h", 48, 24)
    assert [s.item_id for s in task.train] == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert all(len(s) == 16 * 30 * 24 for s in task.train)  # 12 train + 4 val months
    assert all(s.target.dtype == np.float32 for s in task.train)
    per_series = (4 * 30 * 24 - 48) // 48 + 1
    assert len(task.test_windows) == 7 * per_series
    ot = [w for w in task.test_windows if w.item_id == "OT"]
    assert [len(w.past) for w in ot[:2]] == [11520, 11568]
    assert all(len(w.future) == 48 for w in ot)
    assert len(ot[-1].past) + 48 == 20 * 30 * 24
    assert str(ot[0].forecast_start) == "2017-10-24 00:00"
    assert ot[0].future[0] == pytest.approx(9.215, abs=1e-3)  # CSV row of 2017-10-24 00:00
    np.testing.assert_array_equal(ot[1].past[:11520], task.train[-1].target)


def test_etth1_single_column_and_missing_root(data_root, tmp_path):
    task = load_etth1(data_root, columns="OT", stride=96, horizon=24)
    assert [s.item_id for s in task.train] == ["OT"] and len(task.test_windows) == (2880 - 24) // 96 + 1
    with pytest.raises(DataError, match="NOPE"):
        load_etth1(data_root, columns="NOPE")
    with pytest.raises(DataError, match="ETTh1.csv"):
        load_etth1(tmp_path)


def test_m4_hourly(data_root):
    task = load_m4_hourly(data_root)
    assert (task.name, task.freq, task.horizon, task.season_length) == ("m4_hourly", "h", 48, 24)
    assert len(task.train) == 414 and len(task.test_windows) == 414
    assert all(len(w.future) == 48 for w in task.test_windows)
    lengths = [len(s) for s in task.train]
    assert min(lengths) == 700 and max(lengths) == 960
    assert not any(np.isnan(s.target).any() for s in task.train)  # trailing padding dropped
    w = task.test_windows[0]
    assert w.item_id == "H1" and w.future[:2].tolist() == [619.0, 565.0]
    np.testing.assert_array_equal(w.past, task.train[0].target)
    with pytest.raises(DataError, match="Hourly-train.csv"):
        load_m4_hourly(data_root / "nowhere")


def test_exchange_rate(data_root):
    task = load_exchange_rate(data_root)
    assert (task.freq, task.horizon, task.season_length) == ("B", 30, 5)
    assert len(task.train) == 8 and all(len(s) == 7588 - 150 for s in task.train)
    assert len(task.test_windows) == 8 * 5
    first = [w for w in task.test_windows if w.item_id == task.train[0].item_id]
    assert [len(w.past) for w in first] == [7438, 7468, 7498, 7528, 7558]
    assert all(len(w.future) == 30 for w in first)
    assert first[-1].future[-1] == pytest.approx(0.720825, abs=1e-6)  # last row of the file


# ---------------------------------------------------------------- leakage guards on the shared data

SHARED_LOADERS = {
    "etth1_all": lambda root: load_etth1(root, columns="all"),
    "m4_hourly": load_m4_hourly,
    "exchange_rate": load_exchange_rate,
}
VAL_WINDOWS = 2


@pytest.fixture(scope="module")
def shared_datasets(data_root):
    """Each shared data set loaded once for the module (tests below must not modify them)."""
    return {name: load(data_root) for name, load in SHARED_LOADERS.items()}


def _span(start: pd.Period, offset: int, length: int) -> range:
    """Absolute time positions (period ordinals) of `length` steps from `start + offset`."""
    first = (start + offset).ordinal
    return range(first, first + length)


@pytest.mark.parametrize("name", list(SHARED_LOADERS))
def test_shared_test_futures_start_after_training_data(shared_datasets, name):
    ds = shared_datasets[name]
    train = {s.item_id: s for s in ds.train}
    assert len(train) == len(ds.train)  # one training series per item id
    assert {w.item_id for w in ds.test_windows} == set(train)
    for w in ds.test_windows:
        s = train[w.item_id]
        train_span = _span(s.start, 0, len(s))
        future_span = _span(w.start, len(w.past), len(w.future))
        assert future_span.start > train_span[-1], (name, w.item_id, str(w.forecast_start))
        # the window and the training series are on one clock: the history starts with the training data
        assert w.start == s.start
        np.testing.assert_array_equal(w.past[:len(s)], s.target)


@pytest.mark.parametrize("name", list(SHARED_LOADERS))
def test_shared_validation_windows_inside_train_and_disjoint_from_test(shared_datasets, name):
    ds = shared_datasets[name]
    h = ds.horizon
    short, val = split_train_val(ds.train, h, VAL_WINDOWS)
    full = {s.item_id: s for s in ds.train}
    cut = {s.item_id: s for s in short}
    test_futures = defaultdict(set)
    for w in ds.test_windows:
        test_futures[w.item_id].update(_span(w.start, len(w.past), len(w.future)))
    assert len(val) == VAL_WINDOWS * len(ds.train)  # every shared series is long enough to split
    for v in val:
        s, c = full[v.item_id], cut[v.item_id]
        train_span = _span(s.start, 0, len(s))
        val_span = _span(v.start, len(v.past), len(v.future))
        assert len(val_span) == h
        assert train_span[0] <= val_span[0] and val_span[-1] <= train_span[-1], (name, v.item_id)
        assert test_futures[v.item_id].isdisjoint(val_span), (name, v.item_id)
        # the validation future holds the training series' own values at those positions
        offset = val_span[0] - train_span[0]
        np.testing.assert_array_equal(v.future, s.target[offset:offset + h])
        # the split training series ends before any validation window of its item starts
        assert c.start == s.start and _span(c.start, 0, len(c))[-1] < val_span[0]


def _windows_holding(dataset: TrainWindowDataset, threshold: float) -> int:
    """How many drawn windows hold a raw (unscaled) value of magnitude above threshold."""
    count = 0
    for i in range(len(dataset)):
        item = dataset[i]
        raw = torch.cat([item["context"], item["future"]]) * item["scale"]
        count += bool((raw.abs() > threshold).any())
    return count


@pytest.mark.parametrize("name", list(SHARED_LOADERS))
def test_shared_training_windows_end_before_validation_tail(shared_datasets, name):
    ds = shared_datasets[name]
    h, sentinel = ds.horizon, 1e9
    assert max(float(np.nanmax(np.abs(s.target))) for s in ds.train) < sentinel / 100  # no datum looks like it
    tail = VAL_WINDOWS * h
    marked = []
    for s in ds.train:
        y = s.target.copy()
        y[-tail:] = sentinel
        marked.append(Series(item_id=s.item_id, start=s.start, target=y))
    short, val = split_train_val(marked, h, VAL_WINDOWS)
    assert all((v.future == sentinel).all() for v in val)  # validation is exactly the marked tail
    assert [len(s) for s in short] == [len(s) - tail for s in ds.train]
    context_length = 2 * h
    windows = TrainWindowDataset(short, context_length=context_length, horizon=h, num_samples=1500, seed=0)
    assert _windows_holding(windows, sentinel / 10) == 0
    # the check has teeth: the same draws over the unsplit series do reach into the tail
    leaky = TrainWindowDataset(marked, context_length=context_length, horizon=h, num_samples=1500, seed=0)
    assert _windows_holding(leaky, sentinel / 10) > 0


# ---------------------------------------------------------------- statsmodels (offline)


@pytest.mark.parametrize(
    "name,freq,horizon,season,total,windows",
    [
        ("co2", "M", 24, 12, 526, 3),
        ("elec_equip", "M", 12, 12, 257, 3),
        ("elnino", "M", 12, 12, 61 * 12, 3),
        ("sunspots", "Y", 11, 1, 309, 3),
        ("nile", "Y", 10, 1, 100, 1),
    ],
)
def test_statsmodels(name, freq, horizon, season, total, windows):
    task = load_statsmodels(name)
    assert (task.freq, task.horizon, task.season_length) == (freq, horizon, season)
    assert len(task.train) == 1 and len(task.test_windows) == windows
    assert len(task.train[0]) == total - windows * horizon
    last = task.test_windows[-1]
    assert len(last.past) + len(last.future) == total
    assert all(np.isfinite(w.future).all() for w in task.test_windows)


def test_co2_keeps_missing_months_and_default_suite():
    co2 = load_statsmodels("co2")
    assert np.isnan(co2.train[0].target).sum() == 5
    assert str(co2.train[0].start) == "1958-03"
    suite = load_default_suite()
    assert [t.name for t in suite] == ["co2", "elec_equip", "elnino", "sunspots"]
    with pytest.raises(DataError, match="unknown statsmodels"):
        load_statsmodels("nope")


# ---------------------------------------------------------------- frames: inputs round-trip


def _long() -> pd.DataFrame:
    ts = pd.date_range("2021-01-01", periods=6, freq="h")
    return pd.DataFrame({
        "item_id": ["b"] * 6 + ["a"] * 4,
        "timestamp": list(ts) + list(ts[:4]),
        "target": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 10.0, 11.0, 12.0, 13.0],
        "temp": np.arange(10.0),
    })


def _check_long(out: pd.DataFrame) -> None:
    assert list(out.columns[:3]) == ["item_id", "timestamp", "target"]
    assert out["item_id"].tolist() == ["a"] * 4 + ["b"] * 6
    assert out.attrs["freq"] == "h"
    assert pd.api.types.is_datetime64_any_dtype(out["timestamp"])
    assert out["target"].dtype == np.float64
    series = frame_to_series(out)
    assert [s.item_id for s in series] == ["a", "b"]
    assert series[1].start == pd.Period("2021-01-01 00:00", "h")
    np.testing.assert_array_equal(series[1].target, np.array([1, 2, np.nan, 4, 5, 6], np.float32))


def test_long_csv_parquet_polars_pandas(tmp_path):
    df = _long()
    df.to_csv(tmp_path / "long.csv", index=False)
    df.to_parquet(tmp_path / "long.parquet")
    for source in (df, tmp_path / "long.csv", str(tmp_path / "long.parquet"), pl.from_pandas(df)):
        out = load_long_frame(source)
        _check_long(out)
        assert "temp" in out.columns  # covariates kept


def test_wide_csv_and_custom_columns(tmp_path):
    wide = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=5, freq="D").strftime("%Y-%m-%d"),
                         "x": [1, 2, 3, 4, 5], "y": [5.0, np.nan, 3, 2, 1]})
    wide.to_csv(tmp_path / "wide.csv", index=False)
    out = load_long_frame(tmp_path / "wide.csv", time_col="date")
    assert out.attrs["freq"] == "D" and len(out) == 10
    series = frame_to_series(out, "D")
    assert [s.item_id for s in series] == ["x", "y"] and np.isnan(series[1].target[1])
    renamed = _long().rename(columns={"item_id": "sid", "timestamp": "t", "target": "v"})
    _check_long(load_long_frame(renamed, id_col="sid", time_col="t", target_col="v", layout="long"))


def test_gaps_are_filled_and_month_alias():
    df = pd.DataFrame({"item_id": "s", "timestamp": pd.to_datetime(["2020-01-31", "2020-02-29", "2020-04-30"]),
                       "target": [1.0, 2.0, 4.0]})
    out = load_long_frame(df, freq="ME")
    assert out["target"].isna().tolist() == [False, False, True, False]
    assert out["timestamp"].iloc[2] == pd.Timestamp("2020-03-31")
    assert frame_to_series(out)[0].start == pd.Period("2020-01", "M")


def test_gluonts_round_trip():
    from gluonts.dataset.pandas import PandasDataset

    series = frame_to_series(load_long_frame(_long()))
    back = gluonts_to_series(series_to_gluonts(series, "h"))
    assert [s.item_id for s in back] == ["a", "b"]
    for s, b in zip(series, back):
        assert s.start == b.start
        np.testing.assert_array_equal(s.target, b.target)
    pds = PandasDataset.from_long_dataframe(_long().drop(columns="temp"), target="target", item_id="item_id",
                                            timestamp="timestamp", freq="h")
    back = {s.item_id: s for s in gluonts_to_series(pds)}
    assert len(back["b"]) == 6 and back["a"].start == pd.Period("2021-01-01 00:00", "h")


# ---------------------------------------------------------------- frames: bad input


def _write(tmp_path: Path, df: pd.DataFrame, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_unknown_column(tmp_path):
    path = _write(tmp_path, _long())
    with pytest.raises(DataError, match=r"bad\.csv.*'value'.*available.*'target'"):
        load_long_frame(path, target_col="value")


def test_non_numeric_target(tmp_path):
    df = _long().astype({"target": object})
    df.loc[7, "target"] = "oops"
    with pytest.raises(DataError, match=r"bad\.csv.*'target'.*series 'a'.*'oops'"):
        load_long_frame(_write(tmp_path, df))


def test_duplicate_timestamp(tmp_path):
    df = _long()
    df.loc[2, "timestamp"] = df.loc[1, "timestamp"]
    with pytest.raises(DataError, match=r"bad\.csv.*series 'b'.*duplicate timestamp 2021-01-01 01:00"):
        load_long_frame(_write(tmp_path, df))


def test_unsorted_timestamps(tmp_path):
    df = _long()
    df.loc[[7, 8], "timestamp"] = df.loc[[8, 7], "timestamp"].to_numpy()
    with pytest.raises(DataError, match=r"bad\.csv.*series 'a'.*not sorted"):
        load_long_frame(_write(tmp_path, df))


def test_freq_mismatch(tmp_path):
    with pytest.raises(DataError, match=r"bad\.csv.*series 'a'.*freq='D'.*seen a step of 0 days 01:00"):
        load_long_frame(_write(tmp_path, _long()), freq="D")


def test_too_short(tmp_path):
    with pytest.raises(DataError, match=r"bad\.csv.*series 'a'.*length 4.*min_length=5"):
        load_long_frame(_write(tmp_path, _long()), min_length=5)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv.*empty"):
        load_long_frame(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("item_id,timestamp,target\n")
    with pytest.raises(DataError, match=r"header\.csv.*empty"):
        load_long_frame(tmp_path / "header.csv")
    with pytest.raises(DataError, match=r"missing\.csv.*not found"):
        load_long_frame(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="empty"):
        load_long_frame(pd.DataFrame(columns=["item_id", "timestamp", "target"]))


def test_bad_timestamps_and_uninferable_freq(tmp_path):
    df = _long().astype({"timestamp": str})
    df.loc[3, "timestamp"] = "not a date"
    with pytest.raises(DataError, match=r"my-source.*series 'b'.*unparseable timestamp 'not a date'"):
        load_long_frame(df, source_name="my-source")
    irregular = pd.DataFrame({"item_id": "s", "timestamp": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-05"]),
                              "target": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match=r"irregular\.csv.*infer the frequency"):
        load_long_frame(_write(tmp_path, irregular, "irregular.csv"))


# ---------------------------------------------------------------- windows


def _series(values, item="s") -> Series:
    return Series(item_id=item, start=pd.Period("2020-01-01", "D"), target=np.asarray(values, dtype=np.float32))


def test_mean_abs_scale():
    assert mean_abs_scale(np.array([1.0, -3.0, np.nan])) == pytest.approx(2.0)
    assert mean_abs_scale(np.array([np.nan, np.nan])) == 1.0
    assert mean_abs_scale(np.zeros(4)) == 1.0
    assert mean_abs_scale(np.array([1e-9, -1e-9])) == pytest.approx(1e-5)


def test_train_windows_mask_nans_and_scale():
    rng = np.random.default_rng(0)
    y = rng.normal(10, 2, 300)
    y[rng.choice(300, 60, replace=False)] = np.nan
    ds = TrainWindowDataset([_series(y)], context_length=32, horizon=8, num_samples=50, seed=1)
    assert len(ds) == 50
    for i in range(50):
        item = ds[i]
        # unscaled, the window is one contiguous 40-point slice of y (left-padded with NaN), with
        # mask 0 exactly where that slice is NaN
        raw = torch.cat([item["context"], item["future"]]).numpy().astype(np.float64) * item["scale"].item()
        mask = torch.cat([item["context_mask"], item["future_mask"]]).numpy() == 1
        padded = np.r_[np.full(32, np.nan), y]
        matches = [e for e in range(40, len(padded) + 1)
                   if np.array_equal(np.isfinite(padded[e - 40:e]), mask)
                   and np.allclose(raw[mask], padded[e - 40:e][mask], rtol=1e-5)]
        assert len(matches) == 1, i
        for key in ("context", "future"):
            assert torch.isfinite(item[key]).all()
            assert (item[key][item[f"{key}_mask"] == 0] == 0).all()
        assert item["context_mask"].sum() > 0 and item["future_mask"].sum() > 0
        # scale = mean |x| of the observed raw context: scaled observed values have mean |.| of 1
        observed = item["context"][item["context_mask"] == 1]
        assert observed.abs().mean().item() == pytest.approx(1.0, rel=1e-5)


def test_train_windows_exact_values_and_left_padding():
    y = np.arange(1, 11, dtype=np.float32)  # length 10 < context 16 + horizon 4
    ds = TrainWindowDataset([_series(y)], context_length=16, horizon=4, num_samples=40, seed=3)
    seen_full = False
    for i in range(40):
        item = ds[i]
        scale = item["scale"].item()
        ctx = item["context"][item["context_mask"] == 1] * scale
        fut = item["future"] * scale
        assert item["context_mask"][0] == 0  # always padded on the left
        assert (item["context_mask"].diff() >= 0).all()  # padding only on the left
        last = float(ctx[-1])
        np.testing.assert_allclose(fut.numpy(), np.arange(last + 1, last + 5), rtol=1e-6)
        np.testing.assert_allclose(scale, ctx.abs().mean().item(), rtol=1e-6)
        seen_full |= len(fut) == 4 and fut[-1].item() == pytest.approx(10.0)
    assert seen_full


def test_train_windows_deterministic_and_skips_short():
    series = [_series(np.arange(100.0), "long"), _series([1.0, 2.0, 3.0], "tiny")]
    a = TrainWindowDataset(series, context_length=20, horizon=5, num_samples=30, seed=7)
    b = TrainWindowDataset(series, context_length=20, horizon=5, num_samples=30, seed=7)
    c = TrainWindowDataset(series, context_length=20, horizon=5, num_samples=30, seed=8)
    assert a.num_windows == 100 - 5  # tiny (< horizon+1 observed) skipped
    same = all(torch.equal(a[i]["context"], b[i]["context"]) for i in range(30))
    differ = any(not torch.equal(a[i]["future"], c[i]["future"]) for i in range(30))
    assert same and differ
    # every window is a contiguous slice of "long": unscaled, its observed values are consecutive integers
    for i in range(30):
        item = a[i]
        observed = torch.cat([item["context_mask"], item["future_mask"]]) == 1
        window = (torch.cat([item["context"], item["future"]]).double() * item["scale"].item())[observed]
        np.testing.assert_allclose(window.diff().numpy(), 1.0, rtol=1e-5)
        assert len(window) == 25 or window[0].item() == pytest.approx(0.0, abs=1e-6)  # short only at the start
    # a DataLoader batch stacks the same items in order
    batch = next(iter(torch.utils.data.DataLoader(a, batch_size=10)))
    for key in ("context", "context_mask", "future", "future_mask", "scale"):
        assert torch.equal(batch[key], torch.stack([a[i][key] for i in range(10)])), key
    with pytest.raises(DataError):
        TrainWindowDataset([_series([1.0, 2.0])], context_length=4, horizon=2)


def test_inference_batch():
    batch = make_inference_batch([np.array([2.0, np.nan, 4.0]), np.arange(1.0, 11.0)], context_length=5)
    assert batch["context"].shape == (2, 5) and batch["scale"].shape == (2,)
    assert batch["context_mask"][0].tolist() == [0, 0, 1, 0, 1]
    assert batch["scale"].tolist() == pytest.approx([3.0, 8.0])  # mean |x| of observed last 5 points
    np.testing.assert_allclose(batch["context"][1].numpy(), np.arange(6.0, 11.0) / 8.0, rtol=1e-6)


def test_split_train_val():
    series = [_series(np.arange(50.0), "a"), _series(np.arange(10.0), "b")]
    train, val = split_train_val(series, horizon=8, val_windows=2)
    assert [len(s) for s in train] == [34, 10]  # "b" too short to split: kept whole
    assert [(w.item_id, len(w.past), len(w.future)) for w in val] == [("a", 34, 8), ("a", 42, 8)]
    assert val[1].future.tolist() == list(range(42, 50))


def test_gluonts_repository_loader_reads_a_local_copy(tmp_path):
    """get_dataset's local-copy path works offline: a data set saved in GluonTS's layout loads as a task whose
    training series are the written train entries and whose test windows split each written test entry into its
    first len - 24 points (past) and last prediction_length = 24 points (future), values, order and starts alike."""
    from gluonts.dataset.common import ListDataset, MetaData, TrainDatasets
    from gluonts.dataset.repository.datasets import default_dataset_writer

    from ebt_forecast.data import load_gluonts_repository

    rng = np.random.default_rng(0)
    starts = ["2020-01-01 00:00", "2020-02-03 05:00", "2021-06-30 23:00"]
    train_values = [rng.normal(10 * i, 1 + i, size=200 + 10 * i) for i in range(3)]
    test_values = [np.r_[v, rng.normal(10 * i, 1, size=24)] for i, v in enumerate(train_values)]
    test_values[1][[3, 50]] = np.nan  # missing values stay missing
    train = ListDataset([{"start": s, "target": v} for s, v in zip(starts, train_values)], freq="h")
    test = ListDataset([{"start": s, "target": v} for s, v in zip(starts, test_values)], freq="h")
    TrainDatasets(MetaData(freq="h", prediction_length=24), train, test).save(
        str(tmp_path / "m4_hourly"), writer=default_dataset_writer)
    task = load_gluonts_repository("m4_hourly", path=tmp_path)
    assert (task.horizon, task.season_length, len(task.train), len(task.test_windows)) == (24, 24, 3, 3)
    for start, series, written in zip(starts, task.train, train_values):
        assert series.start == pd.Period(start, "h")
        np.testing.assert_allclose(series.target, written, rtol=1e-6)
    for start, window, written in zip(starts, task.test_windows, test_values):
        assert window.start == pd.Period(start, "h") and window.forecast_start == pd.Period(start, "h") + len(written) - 24
        np.testing.assert_allclose(window.past, written[:-24], rtol=1e-6)  # NaN where NaN was written
        np.testing.assert_allclose(window.future, written[-24:], rtol=1e-6)
    assert np.isnan(task.test_windows[1].past[[3, 50]]).all()


def test_gluonts_repository_loader_names_a_missing_data_set(tmp_path):
    from ebt_forecast.data import load_gluonts_repository

    with pytest.raises(DataError, match="not_a_dataset"):
        load_gluonts_repository("not_a_dataset", path=tmp_path)
