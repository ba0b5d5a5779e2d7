"""Behaviour of the forecasting frontend: accuracy against seasonal naive, output shapes for every
selection, missing values, short series, reproducibility, thinking pass counts, diagnostics and
the GluonTS estimator API."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from ebt_forecast.baselines import SeasonalNaive
from ebt_forecast.data.types import ForecastDataset, Series
from ebt_forecast.data.types import TestWindow as Window  # not collected as a test class
from ebt_forecast.data.windows import tail_windows
from ebt_forecast.metrics import score_windows
from ebt_forecast.nn import TransformerConfig, TransformerPP
from ebt_forecast.tasks.base import TrainerConfig
from ebt_forecast.tasks.forecast.config import ForecasterConfig, ForecastLossConfig, ForecastTaskConfig, VerifierConfig
from ebt_forecast.tasks.forecast.diagnostics import verification_diagnostics
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster, ThoughtForecast
from ebt_forecast.tasks.forecast.module import inference_levels
from ebt_forecast.think import AUTO_SETTINGS, SELECTIONS, ConfigError, InferenceSetting, ThinkConfig

HORIZON = 24
SEASON = 24
START = pd.Period("2021-01-01 00:00", "h")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def seasonal_series(num_series: int, length: int, seed: int = 0, noise: float = 0.5,
                    trend: float = 0.0) -> list[Series]:
    """Level 10 + a daily sine (amplitude 1..num_series, a phase per series) + trend + Gaussian noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    out = []
    for i in range(num_series):
        y = 10.0 + trend * t + (i + 1) * np.sin(2 * np.pi * t / SEASON + i) + noise * rng.standard_normal(length)
        out.append(Series(item_id=f"s{i}", start=START, target=y.astype(np.float32)))
    return out


def make_task(series: list[Series], num_windows: int = 2, horizon: int = HORIZON) -> ForecastDataset:
    """Train on all but the last num_windows horizons of each series; those are the test windows."""
    train, tests = [], []
    for s in series:
        short, windows = tail_windows(s, horizon, num_windows)
        train.append(short)
        tests.extend(windows)
    return ForecastDataset("synthetic", "h", horizon, SEASON, train, tests)


def small_config(max_steps: int = 30, seed: int = 0, num_candidates: int = 9, model: dict | None = None,
                 think: dict | None = None, task: dict | None = None, loss: dict | None = None,
                 lr: float = 3e-3) -> ForecasterConfig:
    return ForecasterConfig(
        model=TransformerConfig(**{"dim": 32, "depth": 1, "heads": 4, "ffn_multiplier": 2.0, **(model or {})}),
        think=ThinkConfig(**{"train_steps": 2, "infer_steps": 2, **(think or {})}),
        trainer=TrainerConfig(max_steps=max_steps, batch_size=16, lr=lr, warmup_steps=5, progress_bar=False),
        task=ForecastTaskConfig(**{"num_candidates": num_candidates, "val_windows": 8,
                                   "verifier": VerifierConfig(enabled=False), **(task or {}),
                                   "loss": ForecastLossConfig(**(loss or {}))}),
        seed=seed,
    )


def wql(samples, windows: list[Window], season: int = SEASON) -> float:
    return score_windows(samples, windows, season)["wql"]


@pytest.fixture(scope="module")
def seasonal_task() -> ForecastDataset:
    return make_task(seasonal_series(3, 400, seed=1), num_windows=2)


@pytest.fixture(scope="module")
def fitted(seasonal_task) -> EBTForecaster:
    """A tiny EBT trained for a few steps: enough for shapes, pass counts and diagnostics."""
    return EBTForecaster(small_config(max_steps=30), "ebt").fit(seasonal_task)


# ---------------------------------------------------------------- accuracy


@pytest.fixture(scope="module")
def pattern_fit():
    """An EBT trained for 200 steps on 4 noisy daily-pattern series with a trend, and seasonal naive's
    WQL on the same test windows. Seasonal naive copies yesterday's noise (its error is the noise
    twice); a model that learns the daily shape only pays the noise once."""
    task = make_task(seasonal_series(4, 1500, seed=0, trend=0.001), num_windows=4)
    # patches of one day: the season sits at the same position in every patch, so 200 steps suffice
    cfg = small_config(max_steps=200, num_candidates=21, task={"context_length": 48, "patch_len": 24})
    ebt = EBTForecaster(cfg, "ebt").fit(task)
    naive_wql = wql(SeasonalNaive().fit(task).predict(task.test_windows, task), task.test_windows)
    return task, ebt, naive_wql


def test_ebt_proposals_and_thinking_beat_seasonal_naive(pattern_fit):
    task, ebt, naive_wql = pattern_fit
    assert ebt.train_steps == 200
    assert 0.03 < naive_wql < 0.07  # noise sd 0.5 twice over a level of ~10-12
    proposal_wql = wql(ebt.predict(task.test_windows, task, steps=0, selection="proposal"), task.test_windows)
    refined_wql = wql(ebt.predict(task.test_windows, task, steps=2, selection="refined"), task.test_windows)
    assert proposal_wql < 0.85 * naive_wql, (proposal_wql, naive_wql)
    assert refined_wql < 0.85 * naive_wql, (refined_wql, naive_wql)


def test_ebt_default_forecast_beats_seasonal_naive(pattern_fit):
    """The forecast as users get it: selection "auto" (the thinking steps and selection that scored best
    on the validation windows) and, as a check of self-verification, the lowest-energy of G=2 starts."""
    task, ebt, naive_wql = pattern_fit
    ebt_wql = wql(ebt.predict(task.test_windows, task), task.test_windows)
    assert ebt_wql < naive_wql, (ebt_wql, naive_wql)
    verified_wql = wql(ebt.predict(task.test_windows, task, steps=1, selection="verified", verify_group=2),
                       task.test_windows)
    assert verified_wql < naive_wql, (verified_wql, naive_wql)


def test_auto_picks_the_setting_with_the_lowest_saved_validation_score(pattern_fit):
    """`auto` re-scores every menu setting on the validation windows, saves the scores, and keeps the argmin;
    the test recomputes each score independently and checks both the scores and the choice."""
    task, ebt, _ = pattern_fit
    recomputed = {s.key: wql(ebt.predict(ebt.val_windows, steps=s.steps, selection=s.selection), ebt.val_windows)
                  for s in AUTO_SETTINGS}
    assert ebt.validation_scores == pytest.approx(recomputed, rel=1e-9)
    assert ebt.chosen.key == min(recomputed, key=recomputed.get)
    # the default predict runs exactly that choice
    default = ebt.predict(task.test_windows)
    chosen = ebt.predict(task.test_windows, steps=ebt.chosen.steps, selection=ebt.chosen.selection)
    assert default.setting == ebt.chosen
    np.testing.assert_array_equal(default.samples, chosen.samples)


def test_verified_keeps_the_lowest_energy_start_of_every_level(fitted, seasonal_task):
    """Through the forecaster: with G = 3 starts per level the verified sample of each level is the start
    whose final energy is lowest (the picks vary, so this is not "always the same start")."""
    out = fitted.predict(seasonal_task.test_windows, steps=1, selection="verified", verify_group=3)
    best = out.energies.argmin(-1)  # (N, M)
    expected = np.take_along_axis(out.candidates, best[..., None, None], axis=2)[:, :, 0]
    np.testing.assert_allclose(out.samples, expected, rtol=1e-6)
    assert (best != 0).any() and len(np.unique(best)) > 1  # not simply "always the first start"


def test_energy_free_controls_are_the_plain_average_and_median_of_the_starts(fitted, seasonal_task):
    windows = seasonal_task.test_windows
    average = fitted.predict(windows, steps=1, selection="average", verify_group=3)
    median = fitted.predict(windows, steps=1, selection="median", verify_group=3)
    np.testing.assert_allclose(average.samples, average.candidates.mean(2), rtol=1e-5)
    np.testing.assert_allclose(median.samples, np.median(median.candidates, axis=2), rtol=1e-5)


def test_a_windows_future_does_not_change_its_forecast(fitted, seasonal_task):
    """Leakage guard: the forecast reads only the past."""
    windows = seasonal_task.test_windows
    scrambled = [Window(w.item_id, w.start, w.past, w.future[::-1] * 100 + 7) for w in windows]
    for selection in ("proposal", "verified", "resample"):
        a = fitted.predict(windows, selection=selection).samples
        b = fitted.predict(scrambled, selection=selection).samples
        np.testing.assert_array_equal(a, b)


def test_validation_windows_come_from_the_training_tail_only(fitted, seasonal_task):
    """Leakage guard: validation windows end where each training series ends, before every test future."""
    train_end = {s.item_id: s.start + len(s.target) for s in seasonal_task.train}
    for v in fitted.val_windows:
        assert v.forecast_start + len(v.future) <= train_end[v.item_id]
    for t in seasonal_task.test_windows:
        assert t.forecast_start >= train_end[t.item_id]


def test_no_thinking_switches_thinking_off_for_every_setting(seasonal_task):
    """think.enabled=false (think=no_thinking): every call, auto included, gives the proposals and reads no energy."""
    ebt = EBTForecaster(small_config(max_steps=5, think={"enabled": False}), "ebt").fit(seasonal_task)
    assert ebt.chosen == InferenceSetting(0, "proposal") and ebt.validation_scores == {}
    proposals = ebt.predict(seasonal_task.test_windows, selection="proposal").samples
    for selection in ("auto", "verified", "refined", "resample"):
        out = ebt.predict(seasonal_task.test_windows, steps=2, selection=selection)
        np.testing.assert_array_equal(out.samples, proposals)
        assert out.forward_passes == out.backward_passes == 0


# ---------------------------------------------------------------- shapes and selections


def test_predict_returns_one_m_by_h_array_per_window(fitted, seasonal_task):
    windows = seasonal_task.test_windows
    m = fitted.cfg.task.num_candidates
    samples = fitted.predict(windows, seasonal_task)
    assert len(samples) == len(windows) == 6
    for s in samples:
        assert s.shape == (m, HORIZON)
        assert np.isfinite(s).all()
    # the samples live in data units (level ~10), not in scaled units (~1)
    assert 5 < np.mean([s.mean() for s in samples]) < 15


@pytest.mark.parametrize("m", [1, 2, 5])
def test_predict_with_other_candidate_counts(fitted, seasonal_task, m):
    samples = fitted.predict(seasonal_task.test_windows, seasonal_task, num_candidates=m)
    assert [s.shape for s in samples] == [(m, HORIZON)] * len(seasonal_task.test_windows)
    assert all(np.isfinite(s).all() for s in samples)


@pytest.mark.parametrize("selection", SELECTIONS)
def test_every_selection_gives_finite_samples(fitted, seasonal_task, selection):
    m = fitted.cfg.task.num_candidates
    samples = fitted.predict(seasonal_task.test_windows, seasonal_task, selection=selection)
    expected = (1, HORIZON) if selection == "lowest" else (m, HORIZON)
    assert [s.shape for s in samples] == [expected] * len(seasonal_task.test_windows)
    assert all(np.isfinite(s).all() for s in samples)


def test_selections_relate_as_documented(fitted, seasonal_task):
    """proposal = the step-0 path; refined = the path's last state."""
    windows = seasonal_task.test_windows
    proposal = fitted.predict(windows, seasonal_task, selection="proposal").samples
    fc = fitted.predict(windows, seasonal_task, selection="refined", steps=2)
    refined = fc.samples
    np.testing.assert_allclose(fc.path[:, 0], proposal, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(refined, fc.path[:, -1], rtol=1e-6)
    np.testing.assert_allclose(refined, fc.candidates[:, :, 0], rtol=1e-6)
    assert not np.allclose(refined, proposal)  # two steps of alpha = 10 move the candidates
    # verified with one start per level is the refined set
    verified = np.stack(fitted.predict(windows, seasonal_task, selection="verified", steps=2, verify_group=1))
    np.testing.assert_allclose(verified, refined, rtol=1e-6)


def test_feedforward_twin_returns_its_proposals(seasonal_task):
    ff = EBTForecaster(small_config(max_steps=10), "feedforward").fit(seasonal_task)
    assert ff.name == "transformer_pp"
    samples = ff.predict(seasonal_task.test_windows, seasonal_task, steps=5, selection="lowest")
    np.testing.assert_array_equal(samples.samples, samples.proposals)
    assert samples.forward_passes == samples.backward_passes == 0  # no energy read in the twin


# ---------------------------------------------------------------- missing values and short series


def test_missing_values_in_training_and_test_pasts():
    rng = np.random.default_rng(3)
    series = seasonal_series(3, 300, seed=3)
    for s in series:
        s.target[rng.random(len(s.target)) < 0.05] = np.nan  # scattered gaps
        s.target[100:130] = np.nan  # a block longer than a season
    task = make_task(series, num_windows=1)
    assert all(np.isnan(s.target).any() for s in task.train)
    windows = list(task.test_windows)
    # a gap at the very end of the past, right before the forecast start
    w = windows[0]
    past = w.past.copy()
    past[-10:] = np.nan
    windows.append(Window(w.item_id, w.start, past, w.future))
    # a past with nothing observed at all
    windows.append(Window("empty", w.start, np.full(50, np.nan, np.float32), w.future))
    assert all(np.isnan(x.past).any() for x in windows)

    ebt = EBTForecaster(small_config(max_steps=20), "ebt").fit(task)
    for selection in ("verified", "resample"):
        samples = ebt.predict(windows, task, selection=selection)
        assert len(samples) == len(windows)
        for s in samples:
            assert s.shape == (9, HORIZON)
            assert np.isfinite(s).all()
        assert samples.nonfinite == 0
    # observed windows are scored as usual (NaN futures would be masked)
    assert np.isfinite(wql(samples[:3], windows[:3]))


def test_series_shorter_than_the_context_length():
    """Auto context for horizon 24 is 96 points; series of 40-60 points are left-padded and masked."""
    series = seasonal_series(3, 100, seed=4)
    train = [Series(s.item_id, s.start, s.target[:n].copy()) for s, n in zip(series, (40, 50, 60))]
    task = ForecastDataset("short", "h", HORIZON, SEASON, train)
    cfg = small_config(max_steps=15)
    assert cfg.window(HORIZON, SEASON)[0] == 96
    ebt = EBTForecaster(cfg, "ebt").fit(task)
    windows = [Window(s.item_id, s.start, s.target, np.full(HORIZON, np.nan, np.float32)) for s in train]
    windows.append(Window("tiny", START, series[0].target[:5].copy(), np.full(HORIZON, np.nan, np.float32)))
    samples = ebt.predict(windows, task)
    assert [s.shape for s in samples] == [(9, HORIZON)] * 4
    assert all(np.isfinite(s).all() for s in samples)


# ---------------------------------------------------------------- reproducibility


def test_same_seed_same_forecast(seasonal_task):
    def run(seed):
        ebt = EBTForecaster(small_config(max_steps=10, seed=seed), "ebt").fit(seasonal_task)
        out = ebt.predict(seasonal_task.test_windows, seasonal_task, selection="resample")
        return out.samples, score_windows(out, seasonal_task.test_windows, SEASON)

    (first, first_metrics), (again, again_metrics), (other, _) = run(0), run(0), run(1)
    np.testing.assert_array_equal(first, again)
    for key in ("wql", "mase", "crps"):
        assert abs(first_metrics[key] - again_metrics[key]) <= 1e-6
    assert not np.allclose(first, other)


# ---------------------------------------------------------------- thinking accounting


@pytest.mark.parametrize("steps,group", [(3, 1), (0, 1), (2, 3)])
def test_think_forecast_pass_counts_for_the_fixed_policy(fitted, seasonal_task, steps, group):
    """Every candidate gets one energy per step plus the final one, and one gradient per step,
    also when the windows are split over several inference batches."""
    assert fitted.module.think_cfg.stop_policy == "fixed"
    pasts = [w.past for w in seasonal_task.test_windows][:5]
    n, m = len(pasts), 4
    windows = seasonal_task.test_windows[:5]
    out = fitted.predict(windows, num_candidates=m, steps=steps, selection="verified", verify_group=group,
                         batch_size=2)
    starts = n * m * group
    assert out.forward_passes == starts * (steps + 1)
    assert out.backward_passes == starts * steps
    assert out.nonfinite == 0
    assert out.samples.shape == (n, m, HORIZON)
    assert out.candidates.shape == (n, m, group, HORIZON)
    assert out.path.shape == (n, steps + 1, m, HORIZON)
    assert np.isfinite(out.path_energies).all()
    # the first start of each level is the proposal itself, and the path ends at its final candidate
    np.testing.assert_allclose(out.path[:, 0], out.proposals, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.path[:, -1], out.candidates[:, :, 0], rtol=1e-6)


@pytest.mark.parametrize("think,thinking_steps", [
    ({"stop_policy": "energy_change", "stop_tolerance": 1e9}, 2),  # every candidate stops at its 2nd step
    ({"stop_policy": "energy_threshold", "energy_threshold": 1e9}, 0),  # no candidate starts thinking
])
def test_early_stopping_policies_end_before_the_budget(seasonal_task, think, thinking_steps):
    """Candidates that stop early keep their last state over the rest of the path (the budget is 4)."""
    ebt = EBTForecaster(small_config(max_steps=10, think=think), "ebt").fit(seasonal_task)
    windows = seasonal_task.test_windows
    budget = 4
    for selection in ("refined", "verified"):
        out = ebt.predict(windows, num_candidates=3, steps=budget, selection=selection, verify_group=1)
        n = len(windows) * 3
        initial = n if think["stop_policy"] == "energy_threshold" else 0  # the threshold check's pass
        assert out.backward_passes == n * thinking_steps
        assert out.forward_passes == initial + n * thinking_steps + n * (selection == "verified")
        assert out.path.shape == (len(windows), budget + 1, 3, HORIZON)
        for t in range(thinking_steps + 1, budget + 1):
            np.testing.assert_array_equal(out.path[:, t], out.candidates[:, :, 0])
        assert np.isfinite(out.samples).all()
    if thinking_steps == 0:
        np.testing.assert_allclose(out.candidates[:, :, 0], out.proposals, rtol=1e-6)


def test_verification_diagnostics_match_the_forecasts_they_summarise(fitted):
    """The WQL columns of the diagnostics are those of the same settings scored directly."""
    windows = fitted.val_windows
    diag = verification_diagnostics(fitted, windows, SEASON, steps=2, group=4)
    assert diag["wql_refined"] == pytest.approx(wql(fitted.predict(windows, steps=2, selection="refined"), windows))
    assert diag["wql_verified_G4"] == pytest.approx(
        wql(fitted.predict(windows, steps=2, selection="verified", verify_group=4), windows))
    assert diag["wql_average_G2"] == pytest.approx(
        wql(fitted.predict(windows, steps=2, selection="average", verify_group=2), windows))


def test_verification_diagnostics_score_an_oracle_energy_as_perfect():
    """An energy equal to each candidate's true pinball loss ranks perfectly: Spearman 1, pick accuracy 1."""
    rng = np.random.default_rng(0)
    n, m, g, h, steps = 6, 5, 4, HORIZON, 1
    windows = [Window("s", START, rng.normal(10, 1, 100), rng.normal(10, 1, h)) for _ in range(n)]
    futures = np.stack([w.future for w in windows])
    u = inference_levels(m, 1).numpy()[0][None, :, None, None]
    group = futures[:, None, None, :] + rng.normal(0, 1, (n, m, g, h))
    diff = futures[:, None, None, :] - group
    oracle = np.maximum(u * diff, (u - 1) * diff).mean(-1)

    class OracleForecaster:
        def predict(self, windows, steps=0, selection="refined", verify_group=1, final_energy=False):
            path = np.repeat(group[:, None, :, 0], steps + 1, axis=1)
            energies = np.repeat(oracle[:, None, :, 0], steps + 1, axis=1)
            return ThoughtForecast(
                samples=group[:, :, 0], proposals=group[:, :, 0], candidates=group, energies=oracle, path=path,
                path_energies=energies, setting=InferenceSetting(steps, selection), forward_passes=0,
                backward_passes=0, nonfinite=0)

    diag = verification_diagnostics(OracleForecaster(), windows, SEASON, steps=steps, group=g)
    assert diag["group_spearman"] == pytest.approx(1.0)
    assert diag["pick_accuracy"] == 1.0


# ---------------------------------------------------------------- GluonTS estimator API


def test_gluonts_estimator_trains_and_predicts_sample_forecasts():
    from gluonts.evaluation import Evaluator, make_evaluation_predictions
    from gluonts.model.forecast import SampleForecast

    from ebt_forecast.data.frames import series_to_gluonts
    from ebt_forecast.tasks.forecast import EBTEstimator, EBTPredictor

    series = seasonal_series(2, 300, seed=5)
    dataset = series_to_gluonts(series, "h")
    predictor = EBTEstimator(prediction_length=HORIZON, freq="h", config=small_config(max_steps=15),
                             pretrained=None).train(dataset)
    assert isinstance(predictor, EBTPredictor)
    assert predictor.forecaster.train_steps == 15

    forecasts = list(predictor.predict(dataset))
    assert len(forecasts) == 2
    for s, fc in zip(series, forecasts):
        assert isinstance(fc, SampleForecast)
        assert fc.samples.shape == (9, HORIZON)
        assert np.isfinite(fc.samples).all()
        assert fc.item_id == s.item_id
        assert fc.start_date == s.start + len(s.target)
        assert fc.quantile(0.9).shape == (HORIZON,)
        assert (fc.quantile(0.9) >= fc.quantile(0.1)).all()

    # GluonTS's own evaluation loop runs on it unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc_it, ts_it = make_evaluation_predictions(dataset, predictor=predictor, num_samples=9)
        agg, _ = Evaluator(quantiles=[0.1, 0.5, 0.9], num_workers=0)(ts_it, fc_it)
    assert np.isfinite(agg["mean_wQuantileLoss"]) and agg["mean_wQuantileLoss"] > 0


@pytest.mark.parametrize("init", ["seasonal_naive", "noise"])
def test_candidate_initialisations(seasonal_task, init):
    """Start 0 of each level can be the seasonal-naive path or noise; "refined" follows it."""
    forecaster = EBTForecaster(small_config(max_steps=5, task={"init": init}), "ebt").fit(seasonal_task)
    refined = forecaster.predict(seasonal_task.test_windows, steps=0, selection="refined")
    proposals = forecaster.predict(seasonal_task.test_windows, steps=0, selection="proposal")
    assert all(np.isfinite(r).all() for r in refined)
    assert not np.allclose(np.stack(refined), np.stack(proposals))
    if init == "seasonal_naive":
        # at the median level the seasonal-naive start is the last season itself
        w = seasonal_task.test_windows[0]
        median_row = refined[0][len(refined[0]) // 2]
        np.testing.assert_allclose(median_row, w.past[-SEASON:][:HORIZON], rtol=1e-4)


def test_set_crps_term_adds_the_weighted_fair_crps_of_the_refined_level_sets(seasonal_task):
    """task.loss.set_crps = w adds exactly refine * w * (the fair CRPS of each refined level set, by brute force
    E|X - y| - sum_{i != j} |X_i - X_j| / (2 M (M - 1)), averaged over observed future points and thinking
    steps) to the training loss, value and gradient; the forward computation is otherwise unchanged."""
    from dataclasses import replace

    import torch

    from ebt_forecast.data.windows import TrainWindowDataset
    from ebt_forecast.tasks.forecast.module import ForecastModule

    cfg = small_config(loss={"refine": 0.5})
    model_cfg = EBTForecaster(cfg).model_config(HORIZON, SEASON)
    torch.manual_seed(0)
    module = ForecastModule(model_cfg, cfg.think, cfg.trainer, cfg.task)
    torch.nn.init.normal_(module.model.energy_head.proj.weight, std=0.5)  # zero at init: no energy gradient to follow
    module.log = module.log_dict = module.log_think_record = lambda *a, **k: None  # no trainer attached
    data = TrainWindowDataset(seasonal_task.train, model_cfg.context_length, HORIZON, num_samples=6, seed=0)
    batch = {k: torch.stack([data[i][k] for i in range(6)]) for k in ("context", "context_mask", "future", "future_mask")}
    batch["future_mask"][0, 5:] = 0  # unobserved points must not count
    batch["future"][0, 5:] = 1e3
    results = []
    real_think = module.think
    module.think = lambda *a, **k: results.append(real_think(*a, **k)) or results[-1]

    def loss_with(weight: float):
        module.loss_cfg = replace(cfg.task.loss, set_crps=weight)
        torch.manual_seed(1)  # the same levels, starts and step sizes in both runs
        return module.training_step(batch, 0)

    plain, with_crps = loss_with(0.0), loss_with(0.7)
    assert torch.equal(results[0].candidates, results[1].candidates)  # the term changes no forward computation
    b, m, g = len(batch["future"]), cfg.task.loss.train_candidates, cfg.task.loss.train_group
    refined = results[1].loss_states  # what the refinement loss reads: one state here (truncated steps)
    y, mask = batch["future"].double(), batch["future_mask"].double()
    term = 0.0
    for state in refined:
        x = state.view(b, m, g, HORIZON)[:, :, 0].double()  # each level's own path: (B, M, H)
        skill = (x - y[:, None]).abs().mean(1)
        spread = (x[:, :, None] - x[:, None]).abs().sum((1, 2)) / (2 * m * (m - 1))
        term = term + ((skill - spread) * mask).sum() / mask.sum()
    term = 0.5 * 0.7 * term / len(refined)
    assert float(term) > 1e-3
    torch.testing.assert_close((with_crps - plain).double(), term, rtol=1e-4, atol=1e-6)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in (plain, with_crps)]
    expected = torch.autograd.grad(term, params, allow_unused=True)
    changed = 0
    for p, p0, p1, e in zip(params, *grads, expected):
        zero = torch.zeros_like(p)
        p0, p1, e = (zero if v is None else v for v in (p0, p1, e))
        torch.testing.assert_close(p1 - p0, e.float(), rtol=1e-3, atol=1e-6)  # zero where the term does not reach
        changed += int(e.abs().sum() > 0)
    assert changed >= 10, changed  # the term trains the weights behind the refined paths (17 tensors here)


def test_weighted_selection_lies_between_its_starts(fitted, seasonal_task):
    """Soft verification is a convex combination of each level's refined starts."""
    out = fitted.predict(seasonal_task.test_windows, steps=1, selection="weighted", verify_group=2)
    lo, hi = out.candidates.min(2), out.candidates.max(2)
    assert np.all(out.samples >= lo - 1e-4) and np.all(out.samples <= hi + 1e-4)


def test_training_checkpoints_and_resumes(seasonal_task, tmp_path, monkeypatch):
    """With trainer.checkpoint_dir set, a run saves last.ckpt and the same run resumes from it; a longer run (another
    learning-rate schedule) is refused."""
    from ebt_forecast.tasks.forecast.module import ForecastModule

    cfg = small_config(max_steps=6)
    cfg.trainer.checkpoint_dir, cfg.trainer.checkpoint_every = str(tmp_path), 3
    first = EBTForecaster(cfg, "ebt").fit(seasonal_task)
    assert (tmp_path / "last.ckpt").exists() and first.train_steps == 6
    calls = []
    original = ForecastModule.training_step
    monkeypatch.setattr(ForecastModule, "training_step", lambda self, b, i: (calls.append(i), original(self, b, i))[1])
    second = EBTForecaster(cfg, "ebt").fit(seasonal_task)
    assert second.train_steps == 6 and len(calls) == 0  # the same run resumes at its end
    cfg.trainer.max_steps = 9
    with pytest.raises(ConfigError, match="trainer.max_steps=6 there, 9 here"):
        EBTForecaster(cfg, "ebt").fit(seasonal_task)
    cfg.trainer.max_steps = 6
    # a checkpoint of another configuration is refused, not mixed in
    cfg.trainer.lr = 1e-2
    with pytest.raises(ConfigError, match="another configuration"):
        EBTForecaster(cfg, "ebt").fit(seasonal_task)


def test_replay_buffer_feeds_training(seasonal_task):
    """With think.replay_size set, past final candidates (with their windows) are stored and replayed."""
    forecaster = EBTForecaster(small_config(max_steps=6, think={"replay_size": 40, "replay_fraction": 0.5}), "ebt")
    forecaster.fit(seasonal_task)
    replay = forecaster.module.replay
    assert len(replay) == 40  # FIFO, full after 6 steps of 16 rows
    row = replay.oldest()
    assert row["candidates"].shape[-1] == HORIZON and row["context"].ndim == 1
    assert all(np.isfinite(s).all() for s in forecaster.predict(seasonal_task.test_windows))


@pytest.mark.parametrize("detach", [False, True])
def test_detach_context_keeps_system2_losses_off_the_context_encoding(detach):
    """With only System 2 losses, the context embedding gets a gradient unless detach_context is set."""
    import torch

    from ebt_forecast.tasks.forecast.model import ForecastModelConfig
    from ebt_forecast.tasks.forecast.module import ForecastModule

    torch.manual_seed(0)
    task_cfg = ForecastTaskConfig(loss=ForecastLossConfig(proposal=0.0, refine=1.0, verify=1.0, detach_context=detach))
    model_cfg = ForecastModelConfig(context_length=16, horizon=8, patch_len=4, season_length=4,
                                    backbone=TransformerConfig(dim=16, depth=1, heads=2))
    module = ForecastModule(model_cfg, ThinkConfig(), TrainerConfig(), task_cfg)
    torch.nn.init.normal_(module.model.energy_head.proj.weight, std=0.5)
    batch = {"context": torch.randn(4, 16), "context_mask": torch.ones(4, 16),
             "future": torch.randn(4, 8), "future_mask": torch.ones(4, 8)}
    module.training_step(batch, 0).backward()
    grad = module.model.context_embed.weight.grad
    assert (grad is None or grad.abs().sum() == 0) == detach


def test_estimator_honours_num_samples_and_a_predictor_round_trips(tmp_path):
    """EBTEstimator(num_samples=S) gives S paths; serialize -> gluonts' Predictor.deserialize forecasts identically."""
    from gluonts.model.predictor import Predictor

    from ebt_forecast.data.frames import series_to_gluonts
    from ebt_forecast.tasks.forecast import EBTEstimator, EBTPredictor

    series = seasonal_series(2, 300, seed=6)
    dataset = series_to_gluonts(series, "h")
    predictor = EBTEstimator(prediction_length=HORIZON, freq="h", config=small_config(max_steps=8), pretrained=None,
                             num_samples=13).train(dataset)
    before = list(predictor.predict(dataset))
    assert [f.samples.shape for f in before] == [(13, HORIZON)] * 2
    predictor.serialize(tmp_path / "predictor")
    loaded = Predictor.deserialize(tmp_path / "predictor")
    assert isinstance(loaded, EBTPredictor) and loaded.forecaster.chosen == predictor.forecaster.chosen
    after = list(loaded.predict(dataset))
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.samples, b.samples)
        assert a.start_date == b.start_date and a.info["selection"] == b.info["selection"]


def test_estimator_with_the_verifier_round_trips(tmp_path):
    """Trained per data set (pretrained=None), the estimator is the verifier above AutoETS / AutoTheta, as `forecast` runs it; its validation
    choice and taught energy survive serialize -> deserialize, and the loaded predictor forecasts identically."""
    from gluonts.model.predictor import Predictor

    from ebt_forecast.data.frames import series_to_gluonts
    from ebt_forecast.tasks.forecast import EBTEstimator
    from ebt_forecast.tasks.forecast.sources import VerifierForecaster

    dataset = series_to_gluonts(seasonal_series(2, 300, seed=7), "h")
    cfg = small_config(max_steps=8, task={"verifier": VerifierConfig(enabled=True, pool_windows=8, steps=5)})
    predictor = EBTEstimator(prediction_length=HORIZON, freq="h", config=cfg, pretrained=None).train(dataset)
    assert isinstance(predictor.forecaster, VerifierForecaster) and predictor.forecaster.verifier_choice
    before = list(predictor.predict(dataset))
    predictor.serialize(tmp_path / "verifier")
    loaded = Predictor.deserialize(tmp_path / "verifier")
    assert loaded.forecaster.verifier_choice == predictor.forecaster.verifier_choice
    for a, b in zip(before, loaded.predict(dataset)):
        np.testing.assert_allclose(a.samples, b.samples, rtol=1e-6, atol=1e-6)


def test_the_paper_recipe_descends_from_noise_to_the_pattern():
    """experiment=forecast_paper's settings (every start N(0, 1), no proposal head, xavier energy head, a step
    embedding, detached steps, every start trained): one thinking step takes noise to a forecast several times
    better, and each step reads its own landscape."""
    task = make_task(seasonal_series(4, 1500, seed=0, trend=0.001), num_windows=4)
    cfg = small_config(max_steps=100, num_candidates=9, task={"context_length": 48, "patch_len": 24, "init": "random",
                                                             "energy_init": "xavier", "verify_group": 4},
                       think={"step_embedding": True, "detach_steps": True, "truncate": False, "alpha": 3.0},
                       loss={"proposal": 0.0, "verify": 0.0, "refine_from": "all", "train_group": 4})
    ebt = EBTForecaster(cfg, "ebt").fit(task)
    noise = wql(ebt.predict(task.test_windows, task, steps=0, selection="average").samples, task.test_windows)
    thought = wql(ebt.predict(task.test_windows, task, steps=2, selection="average").samples, task.test_windows)
    assert thought < noise / 3
    model = ebt.module.model
    assert model.step_embed.num_embeddings == 2 and float(model.energy_head.proj.weight.abs().sum()) > 0
    cache = model.encode(torch.zeros(1, 48), torch.ones(1, 48))
    path, level = torch.randn(1, 1, HORIZON), torch.full((1, 1), 0.5)
    with torch.no_grad():
        first, second = (model.energy(path, level, TransformerPP.expand_cache(cache, "grouped"), step=t) for t in (0, 1))
    assert not torch.allclose(first, second)
