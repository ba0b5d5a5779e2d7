import numpy as np
import pandas as pd
import pytest

from ebt_forecast.baselines import (
    DeepARBaseline,
    Forecaster,
    PointPlusGaussian,
    SeasonalNaive,
    mean_abs_scale,
    seasonal_naive_forecast,
    split_validation_tail,
)
from ebt_forecast.data.types import ForecastTask, Series
from ebt_forecast.data.types import TestWindow as Window  # alias: keep pytest from collecting it

START = pd.Period("2020-01-01", freq="D")


def _periodic_task(horizon=10, season=7, n_series=3, length=70):
    train, wins = [], []
    for i in range(n_series):
        pattern = np.arange(season, dtype=np.float32) * (i + 1) + 5.0
        y = np.tile(pattern, length // season + 3)[: length + horizon]
        train.append(Series(f"s{i}", START, y[:length]))
        wins.append(Window(f"s{i}", START, y[:length], y[length:]))
    return ForecastTask("periodic", "D", horizon, season, train, wins)


def _noisy_task(rng, horizon=7, season=7, n_series=6, length=150, noise=0.5):
    train, wins = [], []
    for i in range(n_series):
        t = np.arange(length + horizon)
        y = (10 + 3 * np.sin(2 * np.pi * t / season + i) + rng.normal(0, noise, len(t))).astype(
            np.float32
        )
        train.append(Series(f"s{i}", START, y[:length]))
        wins.append(Window(f"s{i}", START, y[:length], y[length:]))
    return ForecastTask("noisy", "D", horizon, season, train, wins)


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
    model = DeepARBaseline(**kw).fit(task)
    assert isinstance(model, Forecaster)
    assert model.train_steps == 20
    assert model.train_seconds > 0
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
