import numpy as np
import pandas as pd
import pytest

from ebt_forecast.metrics import (
    QUANTILE_LEVELS,
    aggregate,
    geometric_mean_relative,
    relative_to_baseline,
    sample_quantiles,
    score_window,
    seasonal_error,
)


def _random_windows(rng, n_windows=3, horizon=12, past_len=60, num_samples=(100, 37, 1), nan=False):
    out = []
    for i in range(n_windows):
        past = 50 + 10 * np.sin(np.arange(past_len) / 3.0) + rng.normal(0, 3, past_len)
        future = 50 + rng.normal(0, 8, horizon)
        if nan:
            past[[3, 10, 11]] = np.nan
            future[[2, 7]] = np.nan
        ns = num_samples[i % len(num_samples)]
        samples = 50 + rng.normal(0, 6, (ns, horizon)) + rng.normal(0, 2)
        out.append((past, future, samples))
    return out


def _gluonts_eval(windows, season_length, freq="D"):
    from gluonts.evaluation import Evaluator
    from gluonts.model.forecast import SampleForecast

    start = pd.Period("2021-01-01", freq=freq)
    tss, fcsts = [], []
    for i, (past, future, samples) in enumerate(windows):
        full = np.concatenate([past, future])
        idx = pd.period_range(start, periods=len(full), freq=freq)
        tss.append(pd.DataFrame(full, index=idx))
        fcsts.append(
            SampleForecast(samples=samples, start_date=start + len(past), item_id=str(i))
        )
    ev = Evaluator(quantiles=QUANTILE_LEVELS, seasonality=season_length, num_workers=0)
    agg, _ = ev(iter(tss), iter(fcsts), num_series=len(windows))
    return agg


@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("season_length", [1, 7])
def test_matches_gluonts_evaluator(nan, season_length):
    rng = np.random.default_rng(1 + season_length + 10 * nan)
    windows = _random_windows(rng, nan=nan)
    ours = aggregate([score_window(s, f, p, season_length) for p, f, s in windows])
    ref = _gluonts_eval(windows, season_length)
    np.testing.assert_allclose(ours["wql"], ref["mean_wQuantileLoss"], rtol=1e-6)
    for q in QUANTILE_LEVELS:
        np.testing.assert_allclose(ours[f"wql[{q:g}]"], ref[f"wQuantileLoss[{q}]"], rtol=1e-6)
    np.testing.assert_allclose(ours["mase"], ref["MASE"], rtol=1e-6)
    np.testing.assert_allclose(ours["msis"], ref["MSIS"], rtol=1e-6)
    np.testing.assert_allclose(ours["nd"], ref["ND"], rtol=1e-6)
    np.testing.assert_allclose(ours["smape"], ref["sMAPE"], rtol=1e-6)


def test_quantiles_follow_gluonts_sample_forecast():
    from gluonts.model.forecast import SampleForecast

    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 10, 11, 100, 101):
        samples = rng.normal(size=(n, 4))
        fc = SampleForecast(samples=samples, start_date=pd.Period("2020-01-01", freq="D"))
        levels = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)
        ours = sample_quantiles(samples, levels)
        for k, q in enumerate(levels):
            np.testing.assert_array_equal(ours[k], fc.quantile(q))


def test_seasonal_error_matches_gluonts():
    from gluonts.evaluation.metrics import calculate_seasonal_error

    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    x[[4, 17]] = np.nan
    for m in (1, 5, 29, 30, 40):
        ref = calculate_seasonal_error(np.ma.masked_invalid(x), seasonality=m)
        assert seasonal_error(x, m) == pytest.approx(float(ref), rel=1e-12)


def test_crps_is_the_energy_form_by_brute_force_and_is_scaled():
    """The sample CRPS is E|X - y| - 0.5 E|X - X'| over the samples, computed here by explicit sums over every pair;
    NaN targets are skipped; crps_scaled = sum crps / sum |y|; one sample gives the absolute error."""
    rng = np.random.default_rng(4)
    windows = _random_windows(rng, n_windows=3, horizon=8, num_samples=(30, 7, 1), nan=True)
    agg = aggregate([score_window(s, f, p, 1) for p, f, s in windows])
    crps, absy = [], []
    for _, f, s in windows:
        for t, y in enumerate(f):
            if np.isnan(y):
                continue
            x = s[:, t].tolist()
            skill = sum(abs(xi - y) for xi in x) / len(x)
            spread = sum(abs(xi - xj) for xi in x for xj in x) / len(x) ** 2
            crps.append(skill - 0.5 * spread)
            absy.append(abs(y))
    assert agg["num_obs"] == len(crps) == 3 * (8 - 2)
    np.testing.assert_allclose(agg["crps"], np.mean(crps), rtol=1e-10)
    np.testing.assert_allclose(agg["crps_scaled"], np.sum(crps) / np.sum(absy), rtol=1e-10)
    y = np.array([1.0, -2.0, 3.0])
    sc = score_window(np.array([[1.5, -2.0, 0.0]]), y, np.arange(10.0), 1)
    assert sc["crps_sum"] == pytest.approx(0.5 + 0.0 + 3.0)


def test_sample_crps_of_a_gaussian_ensemble_is_the_gaussian_closed_form():
    """An ensemble of 1000 N(mu, sigma^2) draws, one per stratum of U(0, 1) (mu + sigma Phi^-1((j + 0.5) / 1000)):
    its CRPS at y is the closed form sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)), z = (y - mu) / sigma,
    to 1e-5 (independent draws would need ~1e6 samples for that)."""
    from scipy.stats import norm

    mu, sigma, m = 3.0, 2.0, 1000
    y = np.array([3.0, 4.0, -1.0, 9.0])
    draws = mu + sigma * norm.ppf((np.arange(m) + 0.5) / m)
    crps = score_window(np.tile(draws[:, None], (1, len(y))), y, np.arange(20.0), 1)["crps_sum"]
    z = (y - mu) / sigma
    exact = sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))
    assert crps == pytest.approx(exact.sum(), rel=1e-5)


def test_quantile_crps_is_twice_the_mean_pinball_loss_over_its_levels():
    """A quantile forecast (levels=FORECAST_LEVELS): rows that cross are first sorted per step, then the CRPS is
    2/K sum_k pinball_k(y - q_k), computed here level by level; NaN targets are skipped."""
    from ebt_forecast.metrics import FORECAST_LEVELS

    rng = np.random.default_rng(9)
    k = len(FORECAST_LEVELS)
    ordered = np.sort(rng.normal(10, 3, (k, 4)), axis=0)  # non-crossing quantile paths
    rows = ordered.copy()
    rows[[0, 5, 12], 0] = rows[[12, 0, 5], 0]  # step 0's rows cross
    y = np.array([9.0, 30.0, np.nan, -2.0])
    sc = score_window(rows, y, np.arange(20.0), 1, levels=FORECAST_LEVELS)
    by_hand = 0.0
    for t in (0, 1, 3):
        for j, tau in enumerate(FORECAST_LEVELS):
            u = y[t] - ordered[j, t]
            by_hand += 2 / k * u * (tau - (u < 0))
    assert sc["crps_estimator"] == f"quantile[{k}]" and sc["num_obs"] == 3
    assert sc["crps_sum"] == pytest.approx(by_hand, rel=1e-12)


def test_perfect_forecast_scores_zero():
    rng = np.random.default_rng(5)
    past = rng.normal(10, 2, 50)
    future = rng.normal(10, 2, 8)
    agg = aggregate([score_window(np.tile(future, (20, 1)), future, past, 7)])
    assert agg["wql"] == 0.0
    assert agg["mase"] == 0.0
    assert agg["crps"] == 0.0
    assert agg["smape"] == 0.0
    assert agg["coverage_80"] == 1.0


def test_single_sample_wql_is_normalised_absolute_error():
    rng = np.random.default_rng(6)
    wins = [(rng.normal(5, 1, 40), rng.normal(5, 2, 10), rng.normal(5, 2, (1, 10))) for _ in range(3)]
    agg = aggregate([score_window(s, f, p, 1) for p, f, s in wins])
    err = sum(np.abs(f - s[0]).sum() for _, f, s in wins)
    tot = sum(np.abs(f).sum() for _, f, _ in wins)
    assert agg["wql"] == pytest.approx(err / tot, rel=1e-12)
    assert agg["nd"] == pytest.approx(err / tot, rel=1e-12)
    assert agg["crps_scaled"] == pytest.approx(err / tot, rel=1e-12)


def test_coverage_wide_and_far_off():
    rng = np.random.default_rng(7)
    future = rng.normal(0, 1, 12)
    past = rng.normal(0, 1, 30)
    wide = rng.normal(0, 100, (200, 12))
    wide[:20] = -1e6  # make q0.1 surely below
    wide[-20:] = 1e6
    assert aggregate([score_window(wide, future, past, 1)])["coverage_80"] == 1.0
    far = rng.normal(1000, 1, (200, 12))
    assert aggregate([score_window(far, future, past, 1)])["coverage_80"] == 0.0


def test_nan_targets_are_ignored():
    rng = np.random.default_rng(8)
    past = rng.normal(size=30)
    future = rng.normal(size=6)
    samples = rng.normal(size=(50, 6))
    f_nan = future.copy()
    f_nan[[1, 4]] = np.nan
    a = score_window(samples, f_nan, past, 1)
    keep = [0, 2, 3, 5]
    b = score_window(samples[:, keep], future[keep], past, 1)
    for k in a:
        assert a[k] == (b[k] if isinstance(b[k], str) else pytest.approx(b[k], rel=1e-12)), k
    assert a["num_obs"] == 4


def test_score_window_rejects_bad_shapes():
    with pytest.raises(ValueError):
        score_window(np.zeros((5, 3)), np.zeros(4), np.zeros(10), 1)
    with pytest.raises(ValueError):
        score_window(np.full((5, 4), np.nan), np.zeros(4), np.zeros(10), 1)


def _table():
    return pd.DataFrame(
        {
            "dataset": ["a", "a", "a", "b", "b", "b"],
            "model": ["seasonal_naive", "m1", "m2"] * 2,
            "wql": [0.2, 0.1, 0.4, 0.5, 1.0, 0.25],
            "mase": [1.0, 0.5, 2.0, 2.0, 2.0, 1.0],
        }
    )


def test_relative_to_baseline():
    rel = relative_to_baseline(_table(), metrics=("wql", "mase", "crps_scaled"))
    assert list(rel.columns) == ["dataset", "model", "wql", "mase"]
    r = rel.set_index(["dataset", "model"])
    assert r.loc[("a", "m1"), "wql"] == pytest.approx(0.5)
    assert r.loc[("a", "m2"), "wql"] == pytest.approx(2.0)
    assert r.loc[("b", "m1"), "wql"] == pytest.approx(2.0)
    assert r.loc[("b", "m2"), "mase"] == pytest.approx(0.5)
    assert r.loc[("b", "seasonal_naive"), "mase"] == pytest.approx(1.0)


def test_geometric_mean_relative():
    g = geometric_mean_relative(_table(), metrics=("wql", "mase")).set_index("model")
    # m1: wql ratios 0.5, 2.0 -> 1.0; mase 0.5, 1.0 -> sqrt(0.5)
    assert g.loc["m1", "wql"] == pytest.approx(1.0)
    assert g.loc["m1", "mase"] == pytest.approx(np.sqrt(0.5))
    # m2: wql 2.0, 0.5 -> 1.0; mase 2.0, 0.5 -> 1.0
    assert g.loc["m2", "wql"] == pytest.approx(1.0)
    assert g.loc["m2", "mase"] == pytest.approx(1.0)
    assert g.loc["seasonal_naive", "wql"] == pytest.approx(1.0)
    assert (g["num_datasets"] == 2).all()
    # a model scored on one data set only: its mean is over that one, and it says so
    partial = pd.concat([_table(), pd.DataFrame({"dataset": ["a"], "model": ["m3"], "wql": [0.05], "mase": [np.nan]})])
    p = geometric_mean_relative(partial, metrics=("wql", "mase"))
    assert p["model"].iloc[0] == "m3"  # lowest relative wql first
    p = p.set_index("model")
    assert p.loc["m3", "wql"] == pytest.approx(0.25) and p.loc["m3", "num_datasets"] == 1
    assert np.isnan(p.loc["m3", "mase"])  # no ratio at all: NaN, not 1
    assert p.loc["m1", "num_datasets"] == 2 and p.loc["m1", "wql"] == pytest.approx(1.0)


def test_relative_requires_baseline():
    with pytest.raises(ValueError):
        relative_to_baseline(_table(), baseline="nope", metrics=("wql",))


def test_relative_over_seeds_averages_each_seeds_geometric_mean_ratio():
    """Two seeds of an EBT and a seedless baseline on two data sets: per seed, the geometric mean over data sets of
    the ratio to seasonal naive; then the mean and the sample sd over seeds (numbers worked out by hand). The
    seedless model joins every seed's table: sd 0, counted under both seeds."""
    from math import sqrt

    from ebt_forecast.tasks.forecast.benchmark import RELATIVE_METRICS, relative_over_seeds

    nan = float("nan")
    rows = [  # dataset, model, seed, wql, mase (the other metrics copy wql)
        ("a", "seasonal_naive", nan, 2.0, 1.0), ("b", "seasonal_naive", nan, 4.0, 1.0),
        ("a", "autoets", nan, 3.0, 2.0), ("b", "autoets", nan, 2.0, 0.5),
        ("a", "ebt", 0, 1.0, 0.8), ("b", "ebt", 0, 2.0, 0.5),
        ("a", "ebt", 1, 1.5, 0.9), ("b", "ebt", 1, 3.0, 0.4),
    ]
    table = pd.DataFrame(rows, columns=["dataset", "model", "seed", "wql", "mase"])
    for metric in RELATIVE_METRICS:
        if metric not in table:
            table[metric] = table["wql"]
    out = relative_over_seeds(table).set_index("model")
    # ebt: wql ratios (0.5, 0.5) -> 0.5 and (0.75, 0.75) -> 0.75; mase (0.8, 0.5) -> sqrt(0.4), (0.9, 0.4) -> 0.6
    assert out.loc["ebt", "wql"] == pytest.approx((0.5 + 0.75) / 2)
    assert out.loc["ebt", "wql_sd"] == pytest.approx(0.25 / sqrt(2))
    assert out.loc["ebt", "mase"] == pytest.approx((sqrt(0.4) + 0.6) / 2)
    assert out.loc["ebt", "mase_sd"] == pytest.approx((sqrt(0.4) - 0.6) / sqrt(2))
    assert out.loc["ebt", "msis"] == pytest.approx(0.625) and out.loc["ebt", "seeds"] == 2
    # autoets: wql (1.5, 0.5) -> sqrt(0.75), mase (2, 0.5) -> 1, the same under both seeds
    assert out.loc["autoets", "wql"] == pytest.approx(sqrt(0.75)) and out.loc["autoets", "mase"] == pytest.approx(1.0)
    assert out.loc["autoets", "wql_sd"] == 0.0 and out.loc["autoets", "seeds"] == 2
    assert out.loc["seasonal_naive", "wql"] == 1.0 and out.loc["seasonal_naive", "wql_sd"] == 0.0
    assert list(out.index) == ["ebt", "autoets", "seasonal_naive"]  # lowest relative WQL first
