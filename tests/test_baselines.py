import time

import numpy as np
import pandas as pd
import pytest

from ebt_forecast.baselines import (
    STATSFORECAST_QUANTILES,
    DeepARBaseline,
    Forecaster,
    PatchTSTBaseline,
    PointPlusGaussian,
    SeasonalNaive,
    StatsForecastBaseline,
    fill_missing,
    mean_abs_scale,
    uncross_quantile_paths,
    seasonal_naive_forecast,
    split_validation_tail,
)
from ebt_forecast.data.types import ForecastDataset, Series
from ebt_forecast.data.types import TestWindow as Window  # alias: keep pytest from collecting it
from ebt_forecast.metrics import aggregate, sample_quantiles, score_window, score_windows

START = pd.Period("2020-01-01", freq="D")


def _periodic_task(horizon=10, season=7, n_series=3, length=70):
    train, wins = [], []
    for i in range(n_series):
        pattern = np.arange(season, dtype=np.float32) * (i + 1) + 5.0
        y = np.tile(pattern, length // season + 3)[: length + horizon]
        train.append(Series(f"s{i}", START, y[:length]))
        wins.append(Window(f"s{i}", START, y[:length], y[length:]))
    return ForecastDataset("periodic", "D", horizon, season, train, wins)


def _noisy_task(rng, horizon=7, season=7, n_series=6, length=150, noise=0.5):
    train, wins = [], []
    for i in range(n_series):
        t = np.arange(length + horizon)
        y = (10 + 3 * np.sin(2 * np.pi * t / season + i) + rng.normal(0, noise, len(t))).astype(
            np.float32
        )
        train.append(Series(f"s{i}", START, y[:length]))
        wins.append(Window(f"s{i}", START, y[:length], y[length:]))
    return ForecastDataset("noisy", "D", horizon, season, train, wins)


def test_seasonal_naive_reproduces_periodic_series():
    task = _periodic_task()
    model = SeasonalNaive().fit(task)
    assert isinstance(model, Forecaster)
    assert model.train_steps == 0 and model.train_seconds == 0.0
    preds = model.predict(task.test_windows, task)
    assert len(preds) == len(task.test_windows)
    for p, w in zip(preds, task.test_windows):
        assert p.shape == (1, task.horizon)
        np.testing.assert_array_equal(p[0], w.future)


def test_seasonal_naive_nan_fallbacks():
    past = np.array([1, 2, 3, 4, 5, 6, 7, 8, np.nan, 10, np.nan, np.nan], dtype=float)
    fc = seasonal_naive_forecast(past, 6, 4)
    # phase idx 8 -> NaN -> idx 4 = 5; idx 9 -> 10; idx 10 -> NaN -> idx 6 = 7; idx 11 -> NaN -> idx 7 = 8
    np.testing.assert_array_equal(fc, [5, 10, 7, 8, 5, 10])
    # whole phase missing -> last observed value
    past2 = np.array([np.nan, 1.0, np.nan, 2.0, np.nan, 3.0])
    np.testing.assert_array_equal(seasonal_naive_forecast(past2, 4, 2), [3.0, 3.0, 3.0, 3.0])
    # past shorter than a season -> naive
    np.testing.assert_array_equal(seasonal_naive_forecast(np.array([1.0, 2.0]), 3, 7), [2.0] * 3)
    # all missing -> zeros, no crash
    np.testing.assert_array_equal(seasonal_naive_forecast(np.full(5, np.nan), 2, 2), [0.0, 0.0])


def test_split_validation_tail():
    task = _periodic_task(horizon=10)
    task.train.append(Series("short", START, np.ones(8, dtype=np.float32)))
    cut, val = split_validation_tail(task)
    assert len(val) == 3
    assert [len(s) for s in cut.train] == [60, 60, 60, 8]
    for s, w, full in zip(cut.train, val, task.train):
        np.testing.assert_array_equal(np.concatenate([w.past, w.future]), full.target)
        assert len(w.future) == 10 and w.start == full.start


def test_point_plus_gaussian_sd_matches_validation_residuals():
    rng = np.random.default_rng(0)
    task = _noisy_task(rng, n_series=8, noise=0.5)
    model = PointPlusGaussian(SeasonalNaive, num_samples=4000, seed=1).fit(task)
    assert isinstance(model, Forecaster)
    assert model.name == "seasonal_naive+gaussian"
    assert model.num_validation_windows == 8

    # expected residual sd computed by hand on the validation tails
    h = task.horizon
    res = []
    for s in task.train:
        past, fut = s.target[:-h], s.target[-h:]
        pt = seasonal_naive_forecast(past, h, task.season_length)
        res.append((fut - pt) / np.abs(past).mean())
    expected = np.sqrt(np.mean(np.square(res), axis=0))
    np.testing.assert_allclose(model.residual_sd, expected, rtol=1e-5)
    # seasonal naive residual = difference of two noise terms: sd ~ sqrt(2) * 0.5 / scale (~10)
    assert 0.03 < model.residual_sd.mean() < 0.12

    preds = model.predict(task.test_windows, task)
    for p, w in zip(preds, task.test_windows):
        assert p.shape == (4000, h) and np.isfinite(p).all()
        scale = mean_abs_scale(w.past)
        np.testing.assert_allclose(p.std(0), model.residual_sd * scale, rtol=0.08)
        point = seasonal_naive_forecast(w.past, h, task.season_length)
        se = (model.residual_sd * scale).max() / np.sqrt(4000)
        np.testing.assert_allclose(p.mean(0), point, atol=5 * se + 1e-6)
    # seeded: same samples on a second call
    np.testing.assert_array_equal(model.predict(task.test_windows, task)[0], preds[0])


def test_point_plus_gaussian_perfect_point_gives_zero_spread():
    task = _periodic_task()
    model = PointPlusGaussian(SeasonalNaive, num_samples=10).fit(task)
    np.testing.assert_array_equal(model.residual_sd, np.zeros(task.horizon))
    preds = model.predict(task.test_windows, task)
    for p, w in zip(preds, task.test_windows):
        np.testing.assert_array_equal(p, np.tile(w.future, (10, 1)))


def test_deepar_trains_and_predicts():
    pytest.importorskip("gluonts.torch")
    rng = np.random.default_rng(0)
    task = _noisy_task(rng, horizon=7, n_series=4, length=120)
    kw = dict(context_length=14, max_steps=20, batch_size=8, num_samples=30, seed=3,
              hidden_size=8, num_layers=1, dropout_rate=0.0)
    t0 = time.perf_counter()
    model = DeepARBaseline(**kw).fit(task)
    fit_wall = time.perf_counter() - t0
    assert isinstance(model, Forecaster)
    assert model.train_steps == 20
    # train_seconds times the training inside fit: positive, and not more than the whole fit call
    assert 0 < model.train_seconds <= fit_wall
    preds = model.predict(task.test_windows, task)
    assert len(preds) == len(task.test_windows)
    for p in preds:
        assert p.shape == (30, task.horizon)
        assert np.isfinite(p).all()
    # samples are reproducible across predict calls, and spread out
    np.testing.assert_array_equal(model.predict(task.test_windows, task)[0], preds[0])
    assert preds[0].std(0).min() > 0
    # windows of different past lengths (and a NaN in the past) work too
    w = task.test_windows[0]
    past = w.past[:80].copy()
    past[40] = np.nan
    short = Window(w.item_id, w.start, past, w.past[80:87])
    (p,) = model.predict([short], task)
    assert p.shape == (30, task.horizon) and np.isfinite(p).all()
    # same seed -> same model -> same samples; the global torch determinism flag is restored
    import torch

    again = DeepARBaseline(**kw).fit(task)
    np.testing.assert_array_equal(again.predict(task.test_windows, task)[0], preds[0])
    assert not torch.are_deterministic_algorithms_enabled()


# --------------------------------------------------------------------------------------------------
# statsforecast baselines

HOURLY = pd.Period("2020-01-01 00:00", freq="h")


def _seasonal_task(seed, n_series=6, length=180, season=12, horizon=24, noise=1.0):
    """Level 20 + a season-12 sine of amplitude 5 (phase per series) + N(0, noise) noise."""
    rng = np.random.default_rng(seed)
    train, wins = [], []
    for i in range(n_series):
        t = np.arange(length + horizon)
        y = (20 + 5 * np.sin(2 * np.pi * t / season + i) + rng.normal(0, noise, len(t))).astype(np.float32)
        train.append(Series(f"s{i}", HOURLY, y[:length]))
        wins.append(Window(f"s{i}", HOURLY, y[:length], y[length:]))
    return ForecastDataset("seasonal", "h", horizon, season, train, wins)


@pytest.mark.parametrize("model", ["autoets", "autotheta", "autoarima"])
def test_statsforecast_quantiles_are_its_own_intervals(model):
    sf_models = pytest.importorskip("statsforecast.models")
    # AutoTheta's intervals are quantiles of simulated paths: on this series its 0.45 / 0.55 rows cross
    # its mean at 8 of the 24 steps, so this also checks that uncrossing leaves the metric rows alone
    task = _seasonal_task(0, n_series=1, length=72)
    (w,) = task.test_windows
    f = StatsForecastBaseline(model).fit(task)
    assert isinstance(f, Forecaster) and f.name == model
    (samples,) = f.predict([w], task)
    assert samples.shape == (len(STATSFORECAST_QUANTILES), task.horizon)
    assert f.fallbacks == 0
    # statsforecast called directly, with only the 80% and 95% intervals
    cls = {"autoets": sf_models.AutoETS, "autotheta": sf_models.AutoTheta, "autoarima": sf_models.AutoARIMA}[model]
    kw = {"approximation": None} if model == "autoarima" else {}
    ref = cls(season_length=task.season_length, **kw).forecast(
        y=w.past.astype(np.float64), h=task.horizon, level=[80, 95]
    )
    want = np.stack(
        [np.asarray(ref[k], dtype=np.float64).ravel() for k in ("lo-80", "mean", "hi-80", "lo-95", "hi-95")]
    )
    # the project's metric quantiles (0.1 / 0.5 / 0.9 for WQL, 0.025 / 0.975 for MSIS) are statsforecast's
    got = sample_quantiles(samples, [0.1, 0.5, 0.9, 0.025, 0.975])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_statsforecast_in_two_processes_equals_one():
    """n_jobs fits the windows in parallel processes: the same paths and fallbacks, in window order."""
    pytest.importorskip("statsforecast")
    task = _seasonal_task(3, n_series=2, length=120)
    a, b = task.test_windows
    windows = [Window(f"w{i}", HOURLY, (a if i % 2 else b).past[: 60 + i], a.future) for i in range(15)]
    windows.append(Window("short", HOURLY, b.past[-5:], b.future))
    serial = StatsForecastBaseline("autoets").fit(task)
    parallel = StatsForecastBaseline("autoets", n_jobs=2).fit(task)
    for p, q in zip(serial.predict(windows, task), parallel.predict(windows, task), strict=True):
        np.testing.assert_array_equal(p, q)
    assert parallel.fallback_items == serial.fallback_items == ["short"]


def test_statsforecast_beats_seasonal_naive_on_noisy_seasonal_series():
    pytest.importorskip("statsforecast")
    task = _seasonal_task(1)

    def scores(preds):
        return aggregate([score_window(p, w.future, w.past, task.season_length)
                          for p, w in zip(preds, task.test_windows)])

    naive_wql = scores(SeasonalNaive().fit(task).predict(task.test_windows, task))["wql"]
    for model in ("autoets", "autotheta"):
        f = StatsForecastBaseline(model).fit(task)
        assert f.train_seconds == 0.0
        t0 = time.perf_counter()
        preds = f.predict(task.test_windows, task)
        wall = time.perf_counter() - t0
        assert f.fallbacks == 0
        assert 0 < f.train_seconds <= wall  # fit + forecast time of the predict call
        res = scores(preds)
        # seasonal naive carries the noise of last season's values (error sd ~ sqrt(2) * noise) and has
        # no spread; the fitted model forecasts the sine with ~noise-wide intervals: ~0.55-0.6x its WQL
        assert res["wql"] < 0.75 * naive_wql, (model, res["wql"], naive_wql)
        assert 0.6 <= res["coverage_80"] <= 0.95, (model, res["coverage_80"])


def test_statsforecast_nan_past_and_fallbacks():
    pytest.importorskip("statsforecast")
    # leading NaNs dropped, interior ones interpolated, trailing ones forward filled
    np.testing.assert_array_equal(
        fill_missing(np.array([np.nan, 1.0, np.nan, 3.0, np.nan, np.nan])), [1.0, 2.0, 3.0, 3.0, 3.0]
    )
    assert fill_missing(np.full(3, np.nan)).size == 0

    task = _seasonal_task(2, n_series=2, length=120)
    full, other = task.test_windows
    holed = full.past.copy()
    holed[[0, 1, 50, 51, 52, 119]] = np.nan  # leading, interior run, last point
    nan_win = Window("holes", HOURLY, holed, full.future)
    short = Window("short", HOURLY, other.past[-5:], other.future)
    empty = Window("empty", HOURLY, np.full(50, np.nan, dtype=np.float32), other.future)

    f = StatsForecastBaseline("autotheta").fit(task)
    p_nan, p_short, p_other, p_empty, p_full = f.predict([nan_win, short, other, empty, full], task)
    assert f.fallbacks == 2 and f.fallback_items == ["short", "empty"]
    # the NaN window is a real model forecast, close to the one from the complete past
    assert np.isfinite(p_nan).all()
    q_nan, q_full = sample_quantiles(p_nan, [0.1, 0.5, 0.9]), sample_quantiles(p_full, [0.1, 0.5, 0.9])
    assert (q_nan[2] - q_nan[0]).min() > 0.5
    assert np.abs(q_nan - q_full).max() < 1.5  # sine amplitude 5, noise 1
    # the too-short window (5 points < min_length) is the seasonal naive forecast (here: naive, past < season)
    expected = seasonal_naive_forecast(short.past, task.horizon, task.season_length)
    np.testing.assert_array_equal(p_short, np.tile(expected, (len(STATSFORECAST_QUANTILES), 1)).astype(np.float32))
    np.testing.assert_array_equal(p_short[0], np.full(task.horizon, other.past[-1]))
    np.testing.assert_array_equal(p_empty, np.zeros_like(p_empty))
    assert (p_other[-1] - p_other[0]).min() > 0  # not a fallback: the intervals have width
    # counts are per predict call
    f.predict([other], task)
    assert f.fallbacks == 0 and f.fallback_items == []
    # a model error falls back too: AutoETS refuses 4 points ("tiny datasets")
    g = StatsForecastBaseline("autoets", min_length=1).fit(task)
    tiny = Window("tiny", HOURLY, other.past[-4:], other.future)
    (p_tiny,) = g.predict([tiny], task)
    assert g.fallbacks == 1
    np.testing.assert_array_equal(p_tiny[0], np.full(task.horizon, other.past[-1]))


def test_uncross_quantile_paths_keeps_metric_rows():
    levels = np.array(STATSFORECAST_QUANTILES)
    base = np.stack([levels, 10 * levels], axis=1)  # (21, 2) monotone paths
    # step 0: the 0.45 / 0.55 rows straddle the median the wrong way (as AutoTheta's simulated ones can)
    raw = base.copy()
    raw[9, 0], raw[11, 0] = 0.52, 0.48
    out = uncross_quantile_paths(raw)
    assert (np.diff(out, axis=0) >= 0).all()
    np.testing.assert_array_equal(out[0::2], raw[0::2])  # rows read by the metrics are untouched
    np.testing.assert_array_equal(out[[9, 11], 0], [0.5, 0.5])  # clipped to the median
    np.testing.assert_array_equal(out[:, 1], base[:, 1])
    np.testing.assert_array_equal(sample_quantiles(out, [0.1, 0.5, 0.9]), sample_quantiles(base, [0.1, 0.5, 0.9]))
    # a crossing among the metric rows themselves: they are sorted (the median moves)
    raw = base.copy()
    raw[10, 1] = 6.5  # median (5.0) pushed above the 0.6 row (6.0)
    out = uncross_quantile_paths(raw)
    assert (np.diff(out, axis=0) >= 0).all()
    np.testing.assert_allclose(out[[8, 10, 12], 1], [4.0, 6.0, 6.5])


# --------------------------------------------------------------------------------------------------
# GluonTS PatchTST / early stopping on the validation tail

_TINY_PATCHTST = dict(d_model=16, nhead=2, num_encoder_layers=1, dim_feedforward=32)


def test_patchtst_trains_predicts_and_beats_seasonal_naive():
    pytest.importorskip("gluonts.torch")
    task = _seasonal_task(0)  # noise sd 1: seasonal naive pays the noise of past and future
    model = PatchTSTBaseline(context_length=48, max_steps=100, batch_size=16, lr=3e-3, num_samples=50,
                             seed=0, **_TINY_PATCHTST).fit(task)
    assert isinstance(model, Forecaster) and model.name == "patchtst"
    assert model.train_steps == 100 and model.train_seconds > 0
    assert not model.stopped_early and model.best_val_loss is None
    preds = model.predict(task.test_windows, task)
    assert len(preds) == len(task.test_windows)
    for p in preds:
        assert p.shape == (50, task.horizon) and np.isfinite(p).all()
    np.testing.assert_array_equal(model.predict(task.test_windows, task)[0], preds[0])  # seeded sampling
    naive = SeasonalNaive().fit(task).predict(task.test_windows, task)
    wql = score_windows(preds, task.test_windows, task.season_length)["wql"]
    wql_naive = score_windows(naive, task.test_windows, task.season_length)["wql"]
    assert wql < 0.85 * wql_naive  # measured: 0.036 vs 0.050


@pytest.mark.parametrize("cls", ["patchtst", "deepar"])
def test_gluonts_early_stopping_on_validation_tail(cls, monkeypatch):
    pytest.importorskip("gluonts.torch")
    from gluonts.torch.model.estimator import PyTorchLightningEstimator

    seen = {}
    train_model = PyTorchLightningEstimator.train_model

    def spy(self, training_data, validation_data=None, **kw):
        seen["train"] = {e["item_id"]: (e["start"], np.asarray(e["target"])) for e in training_data}
        seen["val"] = {e["item_id"]: (e["start"], np.asarray(e["target"])) for e in validation_data}
        return train_model(self, training_data, validation_data, **kw)

    monkeypatch.setattr(PyTorchLightningEstimator, "train_model", spy)
    task = _seasonal_task(1, n_series=3, length=96, horizon=12)
    h = task.horizon
    # too short to split (kept whole in training, not validated on) and shorter than the horizon
    task.train.append(Series("mid", HOURLY, task.train[0].target[: 2 * h]))
    task.train.append(Series("tiny", HOURLY, task.train[0].target[: h - 2]))
    kw = dict(context_length=24, max_steps=5000, batch_size=8, num_samples=20, seed=0, lr=3e-3,
              num_batches_per_epoch=4, early_stopping_patience=1)
    if cls == "patchtst":
        model = PatchTSTBaseline(**kw, **_TINY_PATCHTST)
    else:
        model = DeepARBaseline(**kw, hidden_size=8, num_layers=1, dropout_rate=0.0)
    model.fit(task)
    assert model.stopped_early and 0 < model.train_steps < kw["max_steps"]
    assert model.train_steps % kw["num_batches_per_epoch"] == 0  # stopped at an epoch end
    assert np.isfinite(model.best_val_loss)
    full = {s.item_id: s for s in task.train}
    # GluonTS trained on the series minus their last horizon points (short ones whole) ...
    assert set(seen["train"]) == set(full)
    for item, (start, y) in seen["train"].items():
        want = full[item].target if item in ("mid", "tiny") else full[item].target[:-h]
        assert start == full[item].start
        np.testing.assert_array_equal(y, want)
    # ... and validated on the full training series of the split ones: the held-out tail is their last
    # horizon points (no test data anywhere)
    assert set(seen["val"]) == {"s0", "s1", "s2"}
    for item, (start, y) in seen["val"].items():
        np.testing.assert_array_equal(y, full[item].target)
        np.testing.assert_array_equal(y[:-h], seen["train"][item][1])
    preds = model.predict(task.test_windows, task)
    assert all(p.shape == (20, h) and np.isfinite(p).all() for p in preds)
    import torch

    assert not torch.are_deterministic_algorithms_enabled()
