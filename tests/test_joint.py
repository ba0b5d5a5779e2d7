"""Several targets forecast jointly (issue 30): one energy per joint candidate that reads every target, a joint
forecaster that learns a clear pattern of each target, and `forecast targets=[...]` on a real file."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ebt_forecast.cli import main
from ebt_forecast.data.types import Series, TestWindow
from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.forecast.config import ForecasterConfig
from ebt_forecast.tasks.forecast.joint import JointDataset, JointForecaster, energy_score, independent_coupling
from ebt_forecast.tasks.forecast.model import ForecastModelConfig, PatchForecastEBT

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def test_one_energy_per_joint_candidate_reads_every_target():
    torch.manual_seed(0)
    cfg = ForecastModelConfig(32, 8, 8, TransformerConfig(dim=16, depth=2, heads=2), targets=3, energy_init="xavier")
    model = PatchForecastEBT(cfg)
    context, mask = torch.randn(2, 3, 32), torch.ones(2, 3, 32)
    cache = model.encode(context, mask)
    levels = torch.full((2, 4), 0.5)
    assert model.propose(cache, levels).shape == (2, 4, 24)  # K * H per joint path
    candidates = torch.randn(2, 4, 24, requires_grad=True)
    energy = model.energy(candidates, levels, [(k.unsqueeze(1), v.unsqueeze(1)) for k, v in cache])
    assert energy.shape == (2, 4)  # one scalar per joint candidate
    (grad,) = torch.autograd.grad(energy.sum(), candidates)
    per_target = grad.view(2, 4, 3, 8).abs().sum((0, 1, 3))
    assert (per_target > 0).all()  # every target's path moves the energy
    # another target's context changes the energy of the same candidate: the targets attend to each other
    other = context.clone()
    other[:, 2] += 3.0
    shifted = model.energy(candidates, levels, [(k.unsqueeze(1), v.unsqueeze(1)) for k, v in model.encode(other, mask)])
    assert not torch.allclose(energy, shifted)


def two_waves(length: int = 700, horizon: int = 12) -> JointDataset:
    """Two targets of one entity: a daily wave and its negative (plus a level), small noise; the last 5 horizons
    are test windows."""
    rng = np.random.default_rng(0)
    t = np.arange(length)
    wave = np.sin(2 * np.pi * t / 24)
    values = np.stack([10 + 3 * wave, 20 - 2 * wave]) + 0.1 * rng.normal(size=(2, length))
    values = values.astype(np.float32)
    start = pd.Period("2020-01-01 00:00", "h")
    cut = length - 5 * horizon
    tests = [TestWindow("e", start, values[:, :o], values[:, o:o + horizon]) for o in range(cut, length, horizon)]
    return JointDataset("waves", "h", horizon, 24, ["a", "b"], [Series("e", start, values[:, :cut])], tests)


def test_joint_forecaster_learns_each_target_and_returns_joint_samples():
    dataset = two_waves()
    cfg = ForecasterConfig()
    cfg.trainer.max_steps, cfg.trainer.progress_bar = 150, False
    cfg.task.selection = "proposal"
    forecaster = JointForecaster(cfg).fit(dataset)
    samples = forecaster.predict(dataset.test_windows)
    assert samples.shape == (5, 21, 2, 12)
    truth = np.stack([w.future for w in dataset.test_windows])
    median_error = np.abs(np.median(samples, axis=1) - truth).mean((0, 2))
    naive = np.stack([w.past[:, -24:-12] for w in dataset.test_windows])  # seasonal naive (season 24) at H 12
    naive_error = np.abs(naive - truth).mean((0, 2))
    assert (median_error < 2.0).all() and (median_error < 2 * naive_error + 0.3).all(), (median_error, naive_error)
    scores = energy_score(samples, dataset.test_windows)
    assert np.isfinite(scores["energy_score"]) and scores["energy_score_per_step"] < scores["energy_score"]
    shuffled = independent_coupling(samples, 0)
    np.testing.assert_allclose(np.sort(shuffled, axis=1), np.sort(samples, axis=1))  # same marginals


def test_forecast_targets_jointly_from_a_real_file(shared_data, tmp_path, capsys):
    wide = pd.read_csv(shared_data / "ett" / "ETTh1.csv").iloc[:600].rename(columns={"date": "timestamp"})
    wide.assign(item_id="station").to_csv(tmp_path / "ett.csv", index=False)
    common = [f"input={tmp_path / 'ett.csv'}", "horizon=24", "trainer.max_steps=10", "runtime.threads=1",
              "trainer.progress_bar=false"]
    assert main(["forecast", *common, "targets=[HUFL,OT]", "past_covariates=[MUFL]", "pretrained=null",
                 f"output={tmp_path / 'out.csv'}", f"save={tmp_path / 'joint'}"]) == 0
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns[:3]) == ["item_id", "target", "timestamp"] and len(out) == 2 * 24
    assert set(out.target) == {"HUFL", "OT"} and out["0.5"].notna().all()
    assert "not using columns ['HULL', 'MULL', 'LUFL', 'LULL']" in capsys.readouterr().err
    # the saved joint predictor forecasts the same file again without training; its targets and covariates must match
    loaded = [f"input={tmp_path / 'ett.csv'}", f"predictor={tmp_path / 'joint'}", "past_covariates=[MUFL]"]
    assert main(["forecast", *loaded, "targets=[HUFL,OT]", f"output={tmp_path / 'again.csv'}"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again.csv"), out)
    capsys.readouterr()
    assert main(["forecast", *loaded, "targets=[OT,HUFL]", f"output={tmp_path / 'bad.csv'}"]) == 2
    assert "forecasts targets [HUFL, OT], not [OT, HUFL]" in capsys.readouterr().err
    assert main(["forecast", *loaded[:2], "targets=[HUFL,OT]", f"output={tmp_path / 'bad.csv'}"]) == 2
    assert "was trained with covariates" in capsys.readouterr().err and not (tmp_path / "bad.csv").exists()
    assert main(["forecast", *common, "targets=[HUFL,nope]", "pretrained=null", f"output={tmp_path / 'bad.csv'}"]) == 2
    assert "target column 'nope' not found" in capsys.readouterr().err and not (tmp_path / "bad.csv").exists()
    assert main(["forecast", *common, "targets=[HUFL,OT]", f"output={tmp_path / 'bad.csv'}"]) == 2
    assert "add pretrained=null" in capsys.readouterr().err
