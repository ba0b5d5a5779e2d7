"""Forecasts are read at exactly the levels a metric names, CRPS names its estimator, `num_samples` is honoured
by every predictor the estimator returns, and a trained predictor is saved once and forecasts many files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import properscoring
import pytest
import scoringrules as sr
from scipy.stats import norm

from ebt_forecast.baselines import STATSFORECAST_QUANTILES
from ebt_forecast.metrics import FORECAST_LEVELS, MSIS_ALPHA, aggregate, sample_levels, score_window
from ebt_forecast.tasks.forecast.config import VerifierConfig
from ebt_forecast.tasks.forecast.module import inference_levels
from tests.test_forecast import HORIZON, seasonal_series, small_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_the_ebt_and_statsforecast_paths_sit_at_the_grid_the_metrics_read():
    """21 EBT paths are at 0.025, 0.05, ..., 0.975 (not 0.005 / 0.995), the same levels as statsforecast's rows,
    so the verifier pairs like with like and MSIS reads the 2.5% / 97.5% paths; other M are stratified samples."""
    levels = inference_levels(21, 3).numpy()
    np.testing.assert_allclose(levels, np.tile(FORECAST_LEVELS, (3, 1)), atol=1e-7)
    assert FORECAST_LEVELS == STATSFORECAST_QUANTILES
    assert {MSIS_ALPHA / 2, 1 - MSIS_ALPHA / 2, 0.1, 0.5, 0.9} <= {round(q, 6) for q in FORECAST_LEVELS}
    np.testing.assert_allclose(sample_levels(4), [0.125, 0.375, 0.625, 0.875])


def _quantile_forecast(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Gaussian quantile forecast at the 21-level grid, a future and a past."""
    mean, sd = rng.normal(size=12), 1.0 + rng.random(12)
    rows = mean + sd * norm.ppf(np.asarray(FORECAST_LEVELS))[:, None]
    return rows, mean + sd * rng.standard_normal(12), rng.normal(size=40)


def test_msis_and_coverage_read_the_exact_2_5_and_97_5_percent_rows():
    rng = np.random.default_rng(0)
    rows, future, past = _quantile_forecast(rng)
    lo, hi = rows[0], rows[-1]  # levels 0.025 and 0.975
    a = MSIS_ALPHA
    expected = np.mean(hi - lo + 2 / a * (lo - future) * (future < lo) + 2 / a * (future - hi) * (future > hi))
    seasonal = np.mean(np.abs(past[1:] - past[:-1]))
    scores = score_window(rows, future, past, 1, FORECAST_LEVELS)
    assert scores["msis"] == pytest.approx(expected / seasonal, rel=1e-12)
    assert scores["coverage_95_hits"] == np.sum((future >= lo) & (future <= hi))
    ten, ninety = FORECAST_LEVELS.index(0.1), FORECAST_LEVELS.index(0.9)
    assert scores["coverage_80_hits"] == np.sum((future >= rows[ten]) & (future <= rows[ninety]))


def test_a_quantile_forecast_without_a_metric_level_is_an_error_not_a_nearest_substitute():
    rng = np.random.default_rng(1)
    levels = (0.005, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.995)
    rows = np.sort(rng.normal(size=(len(levels), 6)), axis=0)
    with pytest.raises(ValueError, match="no level 0.025"):
        score_window(rows, rng.normal(size=6), rng.normal(size=20), 1, levels)


def test_crps_uses_the_estimator_of_the_forecast_kind_and_names_it():
    """Quantile rows: scoringrules' quantile CRPS; samples: properscoring's ensemble CRPS; never mixed silently."""
    rng = np.random.default_rng(2)
    rows, future, past = _quantile_forecast(rng)
    quantile = score_window(rows, future, past, 1, FORECAST_LEVELS)
    assert quantile["crps_estimator"] == "quantile[21]"
    expected = sr.crps_quantile(future, rows.T, np.asarray(FORECAST_LEVELS), backend="numpy").sum()
    assert quantile["crps_sum"] == pytest.approx(expected, rel=1e-10)
    samples = rng.normal(size=(100, 12))
    sample = score_window(samples, future, past, 1)
    assert sample["crps_estimator"] == "sample[100]"
    assert sample["crps_sum"] == pytest.approx(properscoring.crps_ensemble(future, samples.T).sum(), rel=1e-10)
    # the ensemble estimator applied to quantile rows (the old scoring) is a different number
    assert properscoring.crps_ensemble(future, rows.T).sum() != pytest.approx(quantile["crps_sum"], rel=1e-3)
    both = aggregate([quantile, sample])
    assert both["crps_estimator"] == "quantile[21]+sample[100]"


@pytest.fixture(scope="module")
def gluonts_data():
    from ebt_forecast.data.frames import series_to_gluonts

    return series_to_gluonts(seasonal_series(2, 300, seed=6), "h")


@pytest.mark.parametrize("mode,verifier", [("ebt", True), ("ebt", False), ("feedforward", False)])
def test_num_samples_is_honoured_both_ways_by_every_predictor(gluonts_data, mode, verifier):
    """EBTEstimator(num_samples=S) and predictor.predict(dataset, num_samples=S), as GluonTS users write them, give
    exactly S sample paths: under the default verifier, the EBT alone and the feed-forward twin."""
    from ebt_forecast.tasks.forecast import EBTEstimator

    cfg = small_config(max_steps=6, task={"verifier": VerifierConfig(enabled=verifier, pool_windows=8, steps=3)})
    predictor = EBTEstimator(prediction_length=HORIZON, freq="h", config=cfg, mode=mode, num_samples=100,
                             pretrained=None).train(gluonts_data)
    assert [f.samples.shape for f in predictor.predict(gluonts_data)] == [(100, HORIZON)] * 2
    forecasts = list(predictor.predict(gluonts_data, num_samples=37))
    assert [f.samples.shape for f in forecasts] == [(37, HORIZON)] * 2
    assert all(np.isfinite(f.samples).all() for f in forecasts)
    assert np.ptp(forecasts[0].samples, axis=0).mean() > 0  # a distribution, not 37 copies of one path


def test_forecast_saves_a_predictor_once_and_forecasts_other_files_without_training(tmp_path, capsys, monkeypatch):
    from ebt_forecast.cli import main
    from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
    from tests.test_cli import FAST

    series = seasonal_series(2, 300, seed=3)
    rows = [(s.item_id, t, v) for s in series for t, v in zip(pd.date_range("2021-01-01", periods=len(s.target),
                                                                                 freq="h"), s.target)]
    frame = pd.DataFrame(rows, columns=["item_id", "timestamp", "target"])
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    frame.to_csv(first, index=False)
    frame.assign(target=frame.target * 2.0).to_csv(second, index=False)
    saved, trained_csv = tmp_path / "model", tmp_path / "trained.csv"
    args = [f"horizon={HORIZON}", "freq=h", "pretrained=null", "task.verifier.enabled=false", *FAST]
    assert main(["forecast", f"input={first}", f"save={saved}", f"output={trained_csv}", *args]) == 0
    assert (saved / "predictor.json").is_file() and (saved / "weights.pt").is_file()

    def no_training(*a, **k):
        raise AssertionError("a loaded predictor must not train")

    monkeypatch.setattr(EBTForecaster, "fit", no_training)
    again, doubled = tmp_path / "again.csv", tmp_path / "doubled.csv"
    assert main(["forecast", f"input={first}", f"predictor={saved}", f"output={again}", "runtime.threads=1"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(trained_csv), pd.read_csv(again))
    assert main(["forecast", f"input={second}", f"predictor={saved}", f"output={doubled}", "runtime.threads=1"]) == 0
    # mean scaling: the same series doubled gets the forecast doubled
    np.testing.assert_allclose(pd.read_csv(doubled)["0.5"], 2 * pd.read_csv(again)["0.5"], rtol=1e-4)
    capsys.readouterr()
    code = main(["forecast", f"input={first}", f"predictor={tmp_path / 'nothing'}", f"output={tmp_path / 'x.csv'}"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a saved EBT predictor" in err and not (tmp_path / "x.csv").exists()
    code = main(["forecast", f"input={first}", f"predictor={saved}", "horizon=12", f"output={tmp_path / 'x.csv'}"])
    assert code == 2 and "conflicts with the predictor" in capsys.readouterr().err
