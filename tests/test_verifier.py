"""The EBT as a verifier above fast forecasters: cached fast forecasts, the energy-free controls, and an
energy taught to rank exactly those starts."""
from __future__ import annotations

import numpy as np
import pytest

from ebt_forecast.tasks.forecast import sources
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from tests.test_forecast import make_task, seasonal_series, small_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def fake_fast(model, dataset, windows, cache, context=None, num_paths=sources.LEVELS):
    """Two fake fast forecasters: `good` is the truth plus small noise at every level, `bad` is biased."""
    rng = np.random.default_rng(len(windows))
    futures = np.stack([w.future for w in windows])[:, None, :]  # (N, 1, H)
    spread = np.linspace(-0.3, 0.3, num_paths)[None, :, None]
    offset = {"good": 0.0, "bad": 3.0}[model]
    return futures + offset + spread + 0.05 * rng.standard_normal((len(windows), num_paths, futures.shape[-1]))


@pytest.fixture(scope="module")
def verifier_setup():
    dataset = make_task(seasonal_series(3, 600, seed=2), num_windows=2)
    ebt = EBTForecaster(small_config(max_steps=30, num_candidates=21), "ebt").fit(dataset)
    return dataset, ebt


def test_controls_are_the_plain_combinations_of_the_same_starts(verifier_setup, tmp_path, monkeypatch):
    dataset, ebt = verifier_setup
    monkeypatch.setattr(sources, "fast_forecasts", fake_fast)
    sets = {"val": ebt.val_windows, "test": dataset.test_windows}
    rows, _ = sources.verifier_rows(ebt, dataset, ["good", "bad"], sets, tmp_path, steps_menu=(0,))
    by = {r["selection"]: r for r in rows}
    out = ebt.predict(dataset.test_windows, steps=0, selection="verified", verify_group=2, num_candidates=21,
                      extra_starts=np.stack([fake_fast(m, dataset, dataset.test_windows, None) for m in ("good", "bad")], 2))
    season = dataset.season_length
    from ebt_forecast.metrics import FORECAST_LEVELS, score_windows

    def wql(paths):
        return score_windows(paths, dataset.test_windows, season, FORECAST_LEVELS)["wql"]

    assert by["average"]["test"]["wql"] == pytest.approx(wql(out.candidates.mean(2)))
    assert by["source:good"]["test"]["wql"] == pytest.approx(wql(out.candidates[:, :, 2]))
    # the single source chosen on validation is the good one, and it beats the equal-weight average
    assert sources.choose(rows, "source")["selection"] == "source:good"
    assert by["source:good"]["test"]["wql"] < by["average"]["test"]["wql"]


def test_teaching_the_energy_to_rank_the_sources_makes_it_pick_the_good_one(verifier_setup, tmp_path, monkeypatch):
    dataset, ebt = verifier_setup
    monkeypatch.setattr(sources, "fast_forecasts", fake_fast)
    sets = {"val": ebt.val_windows, "test": dataset.test_windows}
    before_rows, before = sources.verifier_rows(ebt, dataset, ["good", "bad"], sets, tmp_path, steps_menu=(0,))
    report = sources.train_verifier(ebt, dataset, ["good", "bad"], tmp_path, windows=64, steps=120, lr=3e-3)
    assert report["train_steps"] == 120 and report["pool_windows"] >= 6
    after_rows, after = sources.verifier_rows(ebt, dataset, ["good", "bad"], sets, tmp_path, steps_menu=(0,))
    assert after["source_spearman"] > max(before["source_spearman"], 0.3)
    assert after["source_pick_accuracy"] > 0.6 > 1 / 4
    verified = next(r for r in after_rows if r["selection"] == "verified")
    average = next(r for r in after_rows if r["selection"] == "average")
    assert verified["test"]["wql"] < average["test"]["wql"]
    # the System 1 proposals did not move (only the energy was taught)
    p0 = next(r for r in before_rows if r["selection"] == "source:ebt_proposal")["test"]["wql"]
    p1 = next(r for r in after_rows if r["selection"] == "source:ebt_proposal")["test"]["wql"]
    assert p0 == pytest.approx(p1, rel=1e-6)


def test_fast_forecasts_are_cached_on_disk(tmp_path, monkeypatch):
    from ebt_forecast import baselines

    dataset = make_task(seasonal_series(2, 120, seed=3), num_windows=1, horizon=12)
    calls = []
    original = baselines.StatsForecastBaseline.predict
    monkeypatch.setattr(baselines.StatsForecastBaseline, "predict",
                        lambda self, w, d: (calls.append(len(w)), original(self, w, d))[1])
    first = sources.fast_forecasts("autotheta", dataset, dataset.test_windows, tmp_path)
    again = sources.fast_forecasts("autotheta", dataset, dataset.test_windows, tmp_path)
    assert calls == [2] and first.shape == (2, 21, 12)
    np.testing.assert_array_equal(first, again)


def test_verifier_forecaster_uses_the_validation_choice_and_beats_equal_weights(tmp_path, monkeypatch):
    """The serving contract as a forecaster: fit teaches the energy and chooses on validation (energy
    settings and energy-free controls alike); predict runs that choice on new windows."""
    from dataclasses import replace

    from ebt_forecast.metrics import score_windows

    from ebt_forecast.tasks.forecast import config

    monkeypatch.setattr(sources, "fast_forecasts", fake_fast)
    monkeypatch.setattr(config, "STATSFORECAST_MODELS", ("good", "bad"))
    dataset = make_task(seasonal_series(3, 600, seed=4), num_windows=2)
    cfg = small_config(max_steps=30, num_candidates=21)
    cfg = replace(cfg, task=replace(cfg.task, verifier=replace(cfg.task.verifier, fast_sources=["good", "bad"],
                                                                pool_windows=64, steps=80)))
    forecaster = sources.VerifierForecaster(cfg).fit(dataset)
    out = forecaster.predict(dataset.test_windows)
    assert out.samples.shape == (len(dataset.test_windows), 21, 24)
    chosen = forecaster.verifier_choice
    assert out.setting.selection.startswith(chosen["selection"])
    wql = score_windows(out, dataset.test_windows, dataset.season_length)["wql"]
    average = score_windows(out.candidates.mean(2), dataset.test_windows, dataset.season_length)["wql"]
    good = score_windows(out.candidates[:, :, 2], dataset.test_windows, dataset.season_length)["wql"]
    assert wql < average and wql <= 1.2 * good


@pytest.mark.parametrize("out_of_fold", [True, False])
def test_the_verifier_is_taught_on_windows_its_ebt_never_trained_on(out_of_fold, tmp_path, monkeypatch):
    """Out of fold (the default), the verifier's EBT trains on every series only up to the pool windows the energy
    is then taught on; in-sample (`out_of_fold=false`, the old behaviour) those windows were training data."""
    from dataclasses import replace

    from ebt_forecast.tasks.forecast import config, forecaster

    monkeypatch.setattr(sources, "fast_forecasts", fake_fast)
    monkeypatch.setattr(config, "STATSFORECAST_MODELS", ("good", "bad"))
    trained_on: dict[str, int] = {}
    original = forecaster.TrainWindowDataset

    def recording(series, *args, **kwargs):
        trained_on.update({s.item_id: len(s.target) for s in series})
        return original(series, *args, **kwargs)

    monkeypatch.setattr(forecaster, "TrainWindowDataset", recording)
    taught: list = []
    original_pool = sources.pool_windows
    monkeypatch.setattr(sources, "pool_windows", lambda *a: taught.extend(original_pool(*a)) or taught)
    dataset = make_task(seasonal_series(3, 400, seed=5), num_windows=1)
    cfg = small_config(max_steps=4, num_candidates=21)
    verifier = replace(cfg.task.verifier, fast_sources=["good", "bad"], pool_windows=12, steps=3, out_of_fold=out_of_fold)
    sources.VerifierForecaster(replace(cfg, task=replace(cfg.task, verifier=verifier))).fit(dataset)
    assert len(taught) >= 3
    first_pool_start = {w.item_id: min(len(v.past) for v in taught if v.item_id == w.item_id) for w in taught}
    seen = [trained_on[item] > start for item, start in first_pool_start.items()]
    assert not any(seen) if out_of_fold else all(seen)
