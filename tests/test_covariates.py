"""Covariates (issue 30): roles of a long file, their windows, the EBT reading them (from scratch and as slots of the
pretrained model), GluonTS's feat_* conventions, what-if scenarios, and every bad input named."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from gluonts.dataset.common import ListDataset

from ebt_forecast.cli import main
from ebt_forecast.data.covariates import CovariateRoles, attach_covariates, covariate_slots
from ebt_forecast.data.frames import frame_to_series, load_long_frame
from ebt_forecast.data.types import Covariates, ForecastDataset, Series, TestWindow
from ebt_forecast.data.windows import covariate_window, tail_windows
from ebt_forecast.errors import ConfigError, DataError
from ebt_forecast.tasks.forecast.config import ForecasterConfig
from ebt_forecast.tasks.forecast.estimator import EBTEstimator, EBTPredictor
from ebt_forecast.tasks.forecast.pretrained import PretrainedForecaster

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
H = 24


def plan_response(seed: int, series: int = 4, length: int = 600, effect: float = 3.0):
    """Hourly series that respond to a known-future plan x (held for 6 hours): y = 10 + effect x + a daily wave +
    noise. Returns the history frame, the plan's horizon frame, and the full arrays."""
    rng = np.random.default_rng(seed)
    rows, future = [], []
    for i in range(series):
        x = np.repeat(rng.normal(size=(length + H) // 6 + 1), 6)[:length + H]
        y = 10 + effect * x + 0.3 * np.sin(np.arange(length + H) * 2 * np.pi / 24) + 0.2 * rng.normal(size=length + H)
        ts = pd.date_range("2021-01-01", periods=length + H, freq="h")
        rows.append(pd.DataFrame({"item_id": f"s{i}", "timestamp": ts[:length], "target": y[:length],
                                  "plan": x[:length], "site": "north" if i % 2 else "south"}))
        future.append(pd.DataFrame({"item_id": f"s{i}", "timestamp": ts[length:], "plan": x[length:]}))
    return pd.concat(rows, ignore_index=True), pd.concat(future, ignore_index=True)


def scenarios_frame(future: pd.DataFrame, values: dict[str, float]) -> pd.DataFrame:
    """The horizon rows once per scenario, the plan held at the scenario's value."""
    return pd.concat([future.assign(scenario=name, plan=v) for name, v in values.items()], ignore_index=True)


def test_roles_attach_each_kind_and_the_horizon(tmp_path):
    history, future = plan_response(0, series=2, length=50)
    history["load"] = np.arange(len(history), dtype=float)
    frame = load_long_frame(history, freq="h")
    roles = CovariateRoles(past=["load"], future=["plan"], static=["site"])
    series = attach_covariates(frame, frame_to_series(frame), roles, "hist", future=future, horizon=H)
    s0 = series[0]
    assert s0.covariates.past.shape == (1, 50) and s0.covariates.future.shape == (1, 50 + H)
    np.testing.assert_allclose(s0.covariates.future[0, 50:], future.plan[future.item_id == "s0"], rtol=1e-6)
    assert [s.covariates.static_cat[0] for s in series] == [1, 0]  # south, north: codes in sorted order
    assert covariate_slots(series) == {"past_covariates": 1, "future_covariates": 1, "static_real": 0,
                                       "static_cardinalities": [2]}
    # a backtest cut keeps each window's past covariates over its past, the known-future ones over its horizon too
    train, windows = tail_windows(series[0], 10, 2)
    assert train.covariates.past.shape == (1, 30) and windows[0].covariates.future.shape == (1, 40)


def test_covariate_window_standardises_by_the_context_and_masks_the_missing():
    past = np.array([[1.0, np.nan, 3.0, 5.0]], dtype=np.float32)
    future = np.array([[0.0, 2.0, 4.0, 6.0, 100.0, 8.0]], dtype=np.float32)
    out = covariate_window(Covariates(past=past, future=future), forecast_start=4, context_length=6, horizon=2)
    assert out["past_covariates_mask"].tolist() == [[0, 0, 1, 0, 1, 1]]  # left padding and the NaN are masked
    x = out["future_covariates"][0]
    # known-future values are scaled by their context part (0, 2, 4, 6: mean 3, std sqrt(5)), horizon included
    assert x[2:6].tolist() == pytest.approx(((np.array([0, 2, 4, 6]) - 3) / np.sqrt(5)).tolist(), abs=1e-5)
    assert x[6].item() == pytest.approx((100 - 3) / np.sqrt(5), rel=1e-5)
    # "history": by the whole past before the forecast start (here the same 4 steps), a longer context changes nothing
    long = Covariates(future=np.r_[[10.0] * 20, future[0]][None].astype(np.float32))
    by_history = covariate_window(long, forecast_start=24, context_length=6, horizon=2, scaling="history")
    by_window = covariate_window(long, forecast_start=24, context_length=6, horizon=2, scaling="window")
    level = np.r_[[10.0] * 20, 0, 2, 4, 6]
    assert by_history["future_covariates"][0, -2].item() == pytest.approx((100 - level.mean()) / level.std(), rel=1e-4)
    assert by_window["future_covariates"][0, -2].item() == pytest.approx(
        (100 - np.r_[10, 10, 0, 2, 4, 6].mean()) / np.r_[10, 10, 0, 2, 4, 6].std(), rel=1e-4)


def test_the_ebt_reads_a_known_future_covariate_and_a_scenario_moves_it(tmp_path, capsys):
    """Trained from scratch on series that respond 3 units per unit of plan: the scenarios plan=+1 and plan=-1 move
    every series' forecast apart by about 6; without the plan it cannot know the horizon's level."""
    history, future = plan_response(0)
    history.to_csv(tmp_path / "hist.csv", index=False)
    scenarios_frame(future, {"low": -1.0, "high": 1.0}).to_csv(tmp_path / "scen.csv", index=False)
    common = [f"input={tmp_path / 'hist.csv'}", "horizon=24", "pretrained=null", "trainer.max_steps=120",
              "runtime.threads=1", "future_covariates=[plan]", "static=[site]", "task.selection=proposal"]
    assert main(["forecast", *common, f"scenarios={tmp_path / 'scen.csv'}", f"output={tmp_path / 'what_if.csv'}",
                 f"save={tmp_path / 'pred'}"]) == 0
    out = pd.read_csv(tmp_path / "what_if.csv")
    assert set(out.scenario) == {"low", "high"} and out.energy.notna().all()
    level = out.groupby(["item_id", "scenario"])["0.5"].mean().unstack()
    moved = level["high"] - level["low"]
    assert (moved > 3.0).all() and (moved < 9.0).all(), moved  # the right way, about the right amount (6)
    # the saved predictor forecasts one future of the plan; the covariate roles must match its slots
    future.to_csv(tmp_path / "future.csv", index=False)
    assert main(["forecast", f"input={tmp_path / 'hist.csv'}", "future_covariates=[plan]", "static=[site]",
                 f"future_input={tmp_path / 'future.csv'}", f"predictor={tmp_path / 'pred'}",
                 f"output={tmp_path / 'one.csv'}"]) == 0
    assert len(pd.read_csv(tmp_path / "one.csv")) == 4 * H
    capsys.readouterr()
    assert main(["forecast", f"input={tmp_path / 'hist.csv'}", f"predictor={tmp_path / 'pred'}",
                 f"output={tmp_path / 'none.csv'}"]) == 2
    assert "trained with covariates" in capsys.readouterr().err and not (tmp_path / "none.csv").exists()


@pytest.mark.parametrize("change, args, message", [
    (None, ["past_covariates=[nope]"], "covariate column 'nope' not found"),
    (None, ["future_covariates=[plan]"], "need their values over the horizon"),
    ("drop_row", ["future_covariates=[plan]", "future_input=FUTURE"], "series 's1': no row for"),
    ("nan", ["future_covariates=[plan]", "future_input=FUTURE"], "column 'plan', series 's2': missing value"),
    ("text", ["past_covariates=[plan]"], "column 'plan', series 's0': non-numeric value 'high'"),
    ("static_changes", ["static=[site]"], "static column 'site', series 's3': changes within the series"),
    (None, ["past_covariates=[plan]", "static=[plan]"], "column 'plan' is given two covariate roles"),
])
def test_bad_covariates_are_named_and_nothing_is_written(tmp_path, capsys, change, args, message):
    history, future = plan_response(1, length=60)
    if change == "drop_row":
        future = future.drop(index=future.index[future.item_id == "s1"][5])
    elif change == "nan":
        future.loc[future.index[future.item_id == "s2"][3], "plan"] = np.nan
    elif change == "text":
        history["plan"] = history["plan"].astype(object)
        history.loc[7, "plan"] = "high"
    elif change == "static_changes":
        history.loc[history.index[history.item_id == "s3"][10], "site"] = "east"
    history.to_csv(tmp_path / "hist.csv", index=False)
    future.to_csv(tmp_path / "future.csv", index=False)
    args = [a.replace("FUTURE", str(tmp_path / "future.csv")) for a in args]
    code = main(["forecast", f"input={tmp_path / 'hist.csv'}", "horizon=24", "pretrained=null", *args,
                 f"output={tmp_path / 'out.csv'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out.csv").exists()


def test_zero_shot_refuses_covariates_it_cannot_read(tmp_path, capsys):
    history, future = plan_response(2, length=100)
    history.to_csv(tmp_path / "hist.csv", index=False)
    future.to_csv(tmp_path / "future.csv", index=False)
    code = main(["forecast", f"input={tmp_path / 'hist.csv'}", "horizon=24", "future_covariates=[plan]",
                 f"future_input={tmp_path / 'future.csv'}", f"output={tmp_path / 'out.csv'}"])
    assert code == 2 and "cannot read them zero-shot: give finetune=N" in capsys.readouterr().err


def test_pretrained_gains_empty_slots_then_finetunes_them(tmp_path):
    """Slots added to the pretrained EBT start empty (its forecasts unchanged); fine-tuning fills them, and the saved
    predictor loads back with them."""
    history, future = plan_response(3, series=3, length=300)
    frame = load_long_frame(history, freq="h")
    roles = CovariateRoles(future=["plan"])
    series = attach_covariates(frame, frame_to_series(frame), roles, "hist", future=future, horizon=H)
    windows = [TestWindow(s.item_id, s.start, s.target, np.full(H, np.nan, np.float32), s.covariates) for s in series]
    cfg = ForecasterConfig()
    cfg.task.selection = "proposal"
    plain = PretrainedForecaster(cfg=cfg).fit(ForecastDataset("d", "h", H, 24, [Series(s.item_id, s.start, s.target)
                                                                                  for s in series]))
    tuned = PretrainedForecaster(cfg=cfg, finetune_steps=1)
    tuned.finetune_cfg.lr = 1e-12  # a step of ~1e-12: the model stays the pretrained one, its new slots empty
    tuned.fit(ForecastDataset("d", "h", H, 24, series))
    assert tuned.module.model.cfg.future_covariates == 1
    np.testing.assert_allclose(tuned.predict(windows).samples, plain.predict(windows).samples, rtol=1e-5, atol=1e-5)
    learned = PretrainedForecaster(cfg=cfg, finetune_steps=30).fit(ForecastDataset("d", "h", H, 24, series))
    weight = learned.module.model.covariates.future.weight
    assert weight.abs().sum() > 0  # the slot was learned
    predictor = EBTPredictor(learned, H, "h")
    predictor.serialize(tmp_path / "p")
    back = EBTPredictor.deserialize(tmp_path / "p")
    np.testing.assert_allclose(back.forecaster.predict(windows).samples, learned.predict(windows).samples,
                               rtol=1e-5, atol=1e-5)


def test_estimator_reads_gluonts_feat_fields_and_checks_the_horizon():
    history, future = plan_response(4, series=3, length=300)
    entries = []
    for item, g in history.groupby("item_id"):
        entries.append({"item_id": item, "start": pd.Period(g.timestamp.iloc[0], "h"), "target": g.target.to_numpy(),
                        "feat_dynamic_real": [g.plan.to_numpy()], "feat_static_cat": [int(item[1:]) % 2]})
    cfg = ForecasterConfig()
    cfg.trainer.max_steps, cfg.trainer.progress_bar = 20, False
    predictor = EBTEstimator(H, "h", cfg, pretrained=None).train(ListDataset(entries, freq="h"))
    assert predictor.covariate_slots["future_covariates"] == 1 and predictor.covariate_slots["static_cardinalities"] == [2]
    plans = {i: g.plan.to_numpy() for i, g in future.groupby("item_id")}
    ahead = [{**e, "feat_dynamic_real": [np.concatenate([e["feat_dynamic_real"][0], plans[e["item_id"]]])]}
             for e in entries]
    forecasts = list(predictor.predict(ListDataset(ahead, freq="h")))
    assert len(forecasts) == 3 and forecasts[0].samples.shape[-1] == H
    with pytest.raises(DataError, match="feat_dynamic_real: series 's0': known-future covariates cover 0 of the 24"):
        list(predictor.predict(ListDataset(entries, freq="h")))


def test_covariates_must_agree_across_series():
    a = Series("a", pd.Period("2020-01-01", "h"), np.zeros(10, np.float32), covariates=Covariates(past=np.zeros((1, 10))))
    b = Series("b", pd.Period("2020-01-01", "h"), np.zeros(10, np.float32), covariates=Covariates(past=np.zeros((2, 10))))
    with pytest.raises(DataError, match="series 'b': its past covariates differ in number"):
        covariate_slots([a, b])


def test_encoding_carries_the_horizon_covariates_through_grouping_and_gathering():
    """The energy of a candidate must depend on the future covariates it is read with, through every cache path."""
    from ebt_forecast.nn import TransformerConfig, TransformerPP
    from ebt_forecast.tasks.forecast.model import ForecastModelConfig, PatchForecastEBT

    torch.manual_seed(0)
    cfg = ForecastModelConfig(32, 8, 8, TransformerConfig(dim=16, depth=2, heads=2), future_covariates=1,
                              energy_init="xavier")
    model = PatchForecastEBT(cfg)
    torch.nn.init.normal_(model.covariates.future.weight)
    context, mask = torch.randn(2, 32), torch.ones(2, 32)
    cov = torch.randn(2, 1, 40)
    candidates, levels = torch.randn(2, 3, 8), torch.full((2, 3), 0.5)
    energies = []
    for future in (cov, cov.clone().index_fill_(-1, torch.arange(32, 40), 5.0)):
        cache = model.encode(context, mask, future_covariates=future)
        grouped = model.energy(candidates, levels, TransformerPP.expand_cache(cache, "grouped"))
        fn = model.energy_fn(cache, levels)
        gathered = fn(candidates.reshape(6, 8), torch.arange(6))
        torch.testing.assert_close(grouped.reshape(-1), gathered)
        energies.append(grouped)
    assert not torch.allclose(energies[0], energies[1])  # the horizon's covariates changed the energy


def test_a_models_no_covariates_control_is_the_same_model_blind_to_them(tmp_path):
    """`ebt_no_covariates` trains the same EBT on the same windows without the plan: its rows are named after the
    control, and on series driven by the plan it forecasts worse than the EBT that reads it."""
    from ebt_forecast.config import compose
    from ebt_forecast.tasks.forecast.benchmark import run_cell

    history, future = plan_response(5, series=4, length=500)
    frame = load_long_frame(history, freq="h")
    series = attach_covariates(frame, frame_to_series(frame), CovariateRoles(future=["plan"]), "hist",
                               future=future, horizon=H)
    train, tests = [], []
    for s in series:
        head, (window,) = tail_windows(s, H, 1)
        train.append(head)
        tests.append(window)
    dataset = ForecastDataset("plan", "h", H, 24, train, tests)
    app = compose("benchmark", ["pretrained=null", "runtime.threads=1", "trainer.max_steps=100", "seed=0",
                                "trainer.progress_bar=false", "model.dim=32", "model.depth=1", "task.selection=proposal",
                                "benchmark.think_steps=[0]", "benchmark.candidate_counts=[]", "benchmark.verify_groups=[]"])
    wql = {}
    for model in ("ebt", "ebt_no_covariates"):
        rows = run_cell(dataset, model, app, tmp_path / "plots", tmp_path / "cache")
        assert all(r["model"] == model or r["model"].startswith(model + "[") for r in rows), [r["model"] for r in rows]
        wql[model] = next(r["wql"] for r in rows if r["model"] == model)
    assert wql["ebt"] < 0.8 * wql["ebt_no_covariates"], wql
    assert (tmp_path / "plots" / "ebt_no_covariates" / "plan__ebt.png").is_file()  # the control's plots apart


def test_new_covariate_slots_train_at_their_own_rate():
    """Fine-tuning with slot_lr_multiplier=10: the slots the pretrained EBT gains sit in AdamW groups at 10x the
    fine-tuning rate, every other parameter at the rate itself, each parameter in one group."""
    history, future = plan_response(6, series=2, length=300)
    frame = load_long_frame(history, freq="h")
    series = attach_covariates(frame, frame_to_series(frame), CovariateRoles(future=["plan"]), "hist",
                               future=future, horizon=H)
    tuned = PretrainedForecaster(finetune_steps=1, slot_lr_multiplier=10.0)
    tuned._covariate_slots(covariate_slots(series))
    module = tuned.module
    module.optim_cfg = tuned.finetune_cfg
    groups = module.parameter_groups()
    names = {id(p): n for n, p in module.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == sum(1 for _, p in module.named_parameters() if p.requires_grad)
    for g in groups:
        fresh = {names[id(p)].startswith("model.covariates.") for p in g["params"]}
        assert len(fresh) <= 1
        assert g.get("lr", tuned.finetune_cfg.lr) == pytest.approx(tuned.finetune_cfg.lr * (10.0 if True in fresh else 1.0))
    assert any(names[id(p)].startswith("model.covariates.") for g in groups if "lr" in g for p in g["params"])
