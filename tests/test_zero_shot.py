"""The pretrained EBT as a forecaster (zero-shot, rolled past its horizon, fine-tuned, GluonTS predictor, CLI) and
GIFT-Eval's protocol on the suite (window counts, and seasonal naive reproducing the published m4_hourly row)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from gluonts.dataset.common import ListDataset

from ebt_forecast.baselines import StatsForecastBaseline
from ebt_forecast.cli import main
from ebt_forecast.data.gift_eval import GIFT_SUITE, gift_horizon, gift_windows, load_gift_config, validation_split
from ebt_forecast.data.types import ForecastDataset, Series, TestWindow
from ebt_forecast.errors import DataError
from ebt_forecast.metrics import FORECAST_LEVELS, score_windows
from ebt_forecast.tasks.forecast.estimator import EBTEstimator, EBTPredictor
from ebt_forecast.tasks.forecast.pretrain import export_checkpoint
from ebt_forecast.tasks.forecast.pretrained import (
    DEFAULT_MODEL,
    PretrainedForecaster,
    packaged_models,
    pretrained_folder,
)

SYNTHETIC = ["pretrain.data.corpus_root=null", "pretrain.data.source_probs={corpus: 0, tsmixup: 0, kernelsynth: 1}",
             "pretrain.data.kernelsynth_length=256"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 4-step EBT pretrained on KernelSynth series: tiny, but every path of the pretrained forecaster runs."""
    out = tmp_path_factory.mktemp("tiny_pretrained")
    assert main(["pretrain", "runtime.threads=1", f"runtime.output_dir={out}", "model.dim=16", "model.depth=1",
                 "model.heads=2", "trainer.batch_size=4", "trainer.max_steps=4", "trainer.warmup_steps=1",
                 "trainer.progress_bar=false", "pretrain.val_every=0", *SYNTHETIC]) == 0
    return out


def hourly_dataset(horizon: int, n: int = 700, items: int = 3) -> ForecastDataset:
    rng = np.random.default_rng(0)
    t = np.arange(n)
    series = [Series(f"s{i}", pd.Period("2024-01-01 00:00", "h"),
                     (20 + 5 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, n)).astype(np.float32))
              for i in range(items)]
    return ForecastDataset("periodic", "h", horizon, 24, series)


def open_windows(dataset: ForecastDataset) -> list[TestWindow]:
    return [TestWindow(s.item_id, s.start, s.target, np.full(dataset.horizon, np.nan, np.float32)) for s in dataset.train]


# ------------------------------------------------------------------------------------------------ GIFT-Eval


def test_gift_window_rules_follow_the_protocol():
    assert (gift_horizon("H", "short"), gift_horizon("H", "medium"), gift_horizon("H", "long")) == (48, 480, 720)
    assert gift_horizon("B", "short") == 30
    assert gift_windows(17420, 48) == 20 and gift_windows(17420, 480) == 4 and gift_windows(17420, 720) == 3
    assert gift_windows(100, 48) == 1 and gift_windows(7588, 30) == 20
    with pytest.raises(DataError, match="term 'huge'"):
        gift_horizon("H", "huge")


def test_gift_configs_cut_the_last_windows_of_every_series(shared_data):
    long = load_gift_config("etth1/H/long", shared_data)
    assert long.horizon == 720 and len(long.train) == 7 and len(long.test_windows) == 7 * 3
    ot = [w for w in long.test_windows if w.item_id == "OT"]
    assert [len(w.past) for w in ot] == [17420 - 3 * 720, 17420 - 2 * 720, 17420 - 720]
    assert all(len(w.future) == 720 for w in ot)
    m4 = load_gift_config("m4_hourly/H/short", shared_data)
    assert len(m4.test_windows) == 414 and m4.season_length == 24
    with pytest.raises(DataError, match="not in the suite"):
        load_gift_config("m4_hourly/H/long", shared_data)
    assert len(GIFT_SUITE) == 5


def test_the_validation_split_is_the_test_protocol_one_span_earlier(shared_data):
    long = load_gift_config("etth1/H/long", shared_data)
    val = validation_split(long)
    ot = [w for w in val.test_windows if w.item_id == "OT"]
    assert [len(w.past) for w in ot] == [17420 - 6 * 720, 17420 - 5 * 720, 17420 - 4 * 720]
    # its windows end where the test part starts, and none of them reads a test point
    test_start = 17420 - 3 * 720
    assert max(len(w.past) + len(w.future) for w in val.test_windows) == test_start
    train_ot = next(s for s in long.train if s.item_id == "OT")
    np.testing.assert_array_equal(ot[-1].future, train_ot.target[-720:])
    assert all(len(s.target) == 17420 - 6 * 720 for s in val.train)
    m4 = validation_split(load_gift_config("m4_hourly/H/short", shared_data))
    assert len(m4.test_windows) == 414 and m4.horizon == 48 and m4.name == "m4_hourly/H/short:validation"


def test_seasonal_naive_reproduces_gift_evals_published_m4_hourly_row(shared_data):
    """statsforecast's SeasonalNaive with its intervals, scored by our GluonTS-convention metrics: 0.0376 / 1.193."""
    data = load_gift_config("m4_hourly/H/short", shared_data)
    naive = StatsForecastBaseline("seasonalnaive", max_context=10**6, levels=FORECAST_LEVELS).fit(data)
    scores = score_windows(naive.predict(data.test_windows, data), data.test_windows, 24, levels=FORECAST_LEVELS)
    assert round(scores["wql"], 4) == 0.0376 and round(scores["mase"], 3) == 1.193


# ------------------------------------------------------------------------------------------------ the forecaster


def test_zero_shot_forecasts_cut_to_the_horizon_and_roll_past_it(tiny_model):
    short = hourly_dataset(30)
    f = PretrainedForecaster(tiny_model).fit(short)
    assert f.train_steps == 0 and f.module.model.cfg.season_length == 24  # nothing trained; the data's season
    out = f.predict(open_windows(short))
    assert out.samples.shape == (3, 21, 30) and out.levels == FORECAST_LEVELS and np.isfinite(out.samples).all()

    # rolling alone (anchoring, tests/test_anchor.py, chooses per horizon)
    rolled = PretrainedForecaster(tiny_model).fit(hourly_dataset(100)).predict(open_windows(hourly_dataset(100)),
                                                                             anchor=False)
    assert rolled.samples.shape == (3, 21, 100)
    first = PretrainedForecaster(tiny_model).fit(hourly_dataset(64)).predict(open_windows(hourly_dataset(64)),
                                                                            anchor=False)
    np.testing.assert_allclose(rolled.samples[..., :64], first.samples, rtol=1e-6, atol=1e-5)
    # the second chunk is the model's forecast from the past extended by the first chunk's median path
    ds = hourly_dataset(36)
    extended = [TestWindow(w.item_id, w.start, np.concatenate([w.past, np.median(first.samples[i], axis=0)]),
                           w.future) for i, w in enumerate(open_windows(ds))]
    second = PretrainedForecaster(tiny_model).fit(ds).predict(extended, anchor=False)
    np.testing.assert_allclose(rolled.samples[..., 64:], second.samples, rtol=1e-5, atol=1e-4)


def test_finetune_trains_from_the_pretrained_weights_on_every_fit(tiny_model):
    data = hourly_dataset(24)
    zero = PretrainedForecaster(tiny_model).fit(data).predict(open_windows(data)).samples
    tuned = PretrainedForecaster(tiny_model, finetune_steps=3)
    first = tuned.fit(data).predict(open_windows(data)).samples
    assert tuned.train_steps == 3 and not np.allclose(first, zero)
    again = tuned.fit(data).predict(open_windows(data)).samples  # starts again from the pretrained weights
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-5)


def test_finetuning_on_a_clear_pattern_beats_seasonal_naive(tiny_model):
    """From a barely trained model: 300 steps on the file's windows learn a noisy daily cycle well enough to beat
    seasonal naive (which repeats last day's noise) on held-out windows of the same series."""
    rng = np.random.default_rng(3)
    t = np.arange(900)
    start = pd.Period("2024-01-01 00:00", "h")
    full = [(30 + 0.02 * t + 8 * np.sin(2 * np.pi * t / 24 + p) + rng.normal(0, 2.0, 900)).astype(np.float32)
            for p in rng.uniform(0, 6, 4)]
    train = ForecastDataset("trend", "h", 24, 24, [Series(f"s{i}", start, y[:-24]) for i, y in enumerate(full)])
    windows = [TestWindow(f"s{i}", start, y[:-24], y[-24:]) for i, y in enumerate(full)]
    tuned = PretrainedForecaster(tiny_model, finetune_steps=300)
    tuned.finetune_cfg.lr = 1e-3
    out = tuned.fit(train).predict(windows)
    naive = [np.tile(w.past[-24:], (1, 1)) for w in windows]
    assert score_windows(out, windows, 24)["wql"] < score_windows(naive, windows, 24)["wql"]


def test_from_pretrained_predicts_gluonts_forecasts_and_serializes(tiny_model, tmp_path):
    data = hourly_dataset(12)
    gluon = ListDataset([{"start": s.start, "target": s.target, "item_id": s.item_id} for s in data.train], freq="h")
    predictor = EBTPredictor.from_pretrained(tiny_model, prediction_length=12, freq="h")
    forecasts = list(predictor.predict(gluon))
    assert len(forecasts) == 3 and forecasts[0].samples.shape == (21, 12)
    assert forecasts[0].start_date == data.train[0].start + len(data.train[0].target)
    predictor.serialize(tmp_path / "saved")
    loaded = EBTPredictor.deserialize(tmp_path / "saved")
    np.testing.assert_allclose(list(loaded.predict(gluon))[1].samples, forecasts[1].samples, rtol=1e-6, atol=1e-6)
    from dataclasses import replace

    from ebt_forecast.tasks.forecast.config import ForecasterConfig

    base = ForecasterConfig()
    proposals = replace(base, task=replace(base.task, selection="proposal"))  # from_pretrained's: no validation data
    trained = EBTEstimator(12, "h", config=proposals, pretrained=tiny_model).train(gluon)  # zero-shot: no training
    assert trained.forecaster.train_steps == 0
    np.testing.assert_allclose(list(trained.predict(gluon))[0].samples.mean(0), forecasts[0].samples.mean(0),
                               rtol=1e-5, atol=1e-5)


def test_a_bad_pretrained_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="no model.json"):
        pretrained_folder(tmp_path)


def test_export_checkpoint_rebuilds_the_runs_model(tiny_model, tmp_path):
    export_checkpoint(tiny_model, out=tmp_path / "export")
    a = torch.load(tiny_model / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "export" / "weights.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "export" / "model.json").read_text())["steps"] == 4


# ------------------------------------------------------------------------------------------------ the CLI


def write_csv(path: Path, items: int = 2, n: int = 300) -> Path:
    t = np.arange(n)
    stamps = pd.date_range("2024-01-01", periods=n, freq="h")
    frame = pd.concat([pd.DataFrame({"item_id": f"u{i}", "timestamp": stamps,
                                     "target": 10 + i + 3 * np.sin(2 * np.pi * t / 24)}) for i in range(items)])
    frame.to_csv(path, index=False)
    return path


def test_forecast_command_serves_the_pretrained_model_without_training(tiny_model, tmp_path, capsys):
    csv = write_csv(tmp_path / "in.csv")
    out = tmp_path / "fc.csv"
    assert main(["forecast", f"input={csv}", "horizon=80", "freq=h", f"output={out}", f"pretrained={tiny_model}",
                 "runtime.threads=1"]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 2 * 80 and {"mean", "0.1", "0.5", "0.9"} <= set(frame.columns)
    assert (frame["0.1"] <= frame["0.9"]).all()
    assert main(["forecast", f"input={csv}", "horizon=8", f"output={tmp_path / 'x.csv'}", "pretrained=null",
                 "finetune=5", "runtime.threads=1"]) == 2
    assert "finetune=5" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    assert main(["forecast", f"input={csv}", "horizon=8", f"output={tmp_path / 'y.csv'}",
                 f"pretrained={tmp_path / 'nowhere'}", "runtime.threads=1"]) == 2
    assert "nowhere" in capsys.readouterr().err and not (tmp_path / "y.csv").exists()


def test_the_package_ships_its_default_pretrained_model():
    assert DEFAULT_MODEL in packaged_models()
    folder = pretrained_folder()
    assert (folder / "weights.pt").stat().st_size < 25 * 2**20
    meta = json.loads((folder / "model.json").read_text())
    assert meta["mode"] == "ebt" and meta["model"]["context_length"] >= 512 and meta["model"]["horizon"] >= 64


def test_the_pretrained_energy_verifies_fast_sources_zero_shot_and_round_trips(tiny_model, tmp_path):
    """task.verifier with steps=0: the pretrained energy, untaught, over its proposal, seasonal naive and AutoETS,
    chosen on the validation tail; saved and loaded, it forecasts the same."""
    from dataclasses import replace

    from ebt_forecast.tasks.forecast.config import ForecasterConfig, VerifierConfig
    from ebt_forecast.tasks.forecast.sources import VerifierForecaster

    base = ForecasterConfig()
    cfg = replace(base, task=replace(base.task, val_windows=6, verifier=VerifierConfig(
        enabled=True, steps=0, fast_sources=["autoets"])))
    data = hourly_dataset(12, n=300, items=2)
    gluon = ListDataset([{"start": s.start, "target": s.target, "item_id": s.item_id} for s in data.train], freq="h")
    predictor = EBTEstimator(12, "h", config=cfg, pretrained=tiny_model).train(gluon)
    verifier = predictor.forecaster
    assert isinstance(verifier, VerifierForecaster) and verifier.train_steps == 0 and verifier.verifier_choice
    before = [f.samples for f in predictor.predict(gluon)]
    assert before[0].shape == (21, 12) and np.isfinite(before[0]).all()
    predictor.serialize(tmp_path / "v")
    after = [f.samples for f in EBTPredictor.deserialize(tmp_path / "v").predict(gluon)]
    np.testing.assert_allclose(after[1], before[1], rtol=1e-5, atol=1e-5)


def test_standard_scaling_keeps_small_moves_on_a_large_level_and_inverts():
    from ebt_forecast.data.windows import context_scaling, make_inference_batch

    rng = np.random.default_rng(0)
    past = (1000 + np.cumsum(rng.normal(0, 3, 300))).astype(np.float32)  # spread ~2% of the level
    past[10] = np.nan
    loc, scale = context_scaling(past, "standard")
    assert abs(loc - np.nanmean(past)) < 1e-3 and abs(scale - np.nanstd(past)) < 1e-3
    mean_loc, mean_scale = context_scaling(past, "mean")
    assert mean_loc == 0 and scale < 0.05 * mean_scale  # mean scaling squeezes the moves into a few % of its unit
    batch = make_inference_batch([past], 512, scaling="standard")
    context = batch["context"][0, -300:].numpy()
    assert abs(context[np.isfinite(past)].std() - 1) < 1e-3  # unit spread inside the model
    back = context * batch["scale"].item() + batch["loc"].item()
    np.testing.assert_allclose(back[np.isfinite(past)], past[np.isfinite(past)], rtol=1e-5)
    flat_loc, flat_scale = context_scaling(np.full(50, 7.0), "standard")
    assert flat_loc == 7.0 and flat_scale == pytest.approx(0.07)  # floored at 1% of the level
    with pytest.raises(ValueError, match="scaling='bogus'"):
        context_scaling(past, "bogus")
