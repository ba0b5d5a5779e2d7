"""Data-parallel training through `fit_module`: two CPU processes (gloo) split every global batch, end with
the same weights as each other and as one process would, the trainer settings are checked up front, and under
the CLI a process other than rank 0 writes nothing to the output folder."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ebt_forecast.data.windows import TrainWindowDataset
from ebt_forecast.tasks.base import TrainerConfig, config_key, fit_module
from ebt_forecast.tasks.forecast.module import ForecastModule
from tests.test_forecast import HORIZON, SEASON, seasonal_series, small_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STEPS, BATCH = 3, 8


class Numbered(Dataset):
    """The forecast training windows, each with its row number (to see which process read which rows)."""

    def __init__(self, windows: Dataset):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.windows[i], "row": torch.tensor(i)}


class RecordingForecastModule(ForecastModule):
    """The forecast EBT, saving the rows each process trained on and its final weights to `folder`."""

    def __init__(self, *args, folder: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.folder, self.rows = folder, []

    def training_step(self, batch, batch_idx):
        self.rows.append(batch["row"].tolist())
        return super().training_step(batch, batch_idx)

    def on_train_end(self) -> None:
        torch.save({"rows": self.rows, "weights": self.state_dict()}, f"{self.folder}/rank{self.global_rank}.pt")


def tiny_forecast_training(folder: str) -> tuple[RecordingForecastModule, Numbered]:
    cfg = small_config(max_steps=STEPS)
    forecaster_cfg = replace(cfg, trainer=replace(cfg.trainer, batch_size=BATCH, warmup_steps=1))
    from ebt_forecast.tasks.forecast.forecaster import EBTForecaster

    model_cfg = EBTForecaster(forecaster_cfg).model_config(HORIZON, SEASON)
    L.seed_everything(0, verbose=False)
    module = RecordingForecastModule(model_cfg, forecaster_cfg.think, forecaster_cfg.trainer, forecaster_cfg.task,
                                     folder=folder)
    data = TrainWindowDataset(seasonal_series(2, 300), model_cfg.context_length, HORIZON,
                              num_samples=STEPS * BATCH, seed=0)
    return module, Numbered(data)


def test_two_gloo_processes_split_each_global_batch_and_end_with_equal_weights(tmp_path):
    module, data = tiny_forecast_training(str(tmp_path))
    trainer = TrainerConfig(max_steps=STEPS, batch_size=BATCH, warmup_steps=1, progress_bar=False,
                            strategy="ddp_spawn", devices="2")
    report = fit_module(module, data, trainer, seed=None)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    rows = [np.array(r["rows"]) for r in ranks]
    assert report.steps == STEPS and all(r.shape == (STEPS, BATCH // 2) for r in rows)
    # different data: the processes' rows never overlap, and each step's two halves are the one-process batch
    assert not set(rows[0].ravel()) & set(rows[1].ravel())
    for step in range(STEPS):
        assert sorted(np.r_[rows[0][step], rows[1][step]]) == list(range(step * BATCH, (step + 1) * BATCH))
    # equal weights on both processes, and in the main process that called fit_module
    trained = {k: v for k, v in module.state_dict().items()}
    initial = tiny_forecast_training(str(tmp_path))[0].state_dict()
    moved = [k for k in trained if not torch.equal(trained[k], initial[k])]
    assert len(moved) > 10  # training changed the weights (so "equal" compares trained weights)
    for key, value in trained.items():
        assert torch.equal(ranks[0]["weights"][key], ranks[1]["weights"][key]), key
        assert torch.equal(ranks[0]["weights"][key], value), key


class Line(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor([float(i)])}


class LineFit(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (batch["x"] * self.w - 1).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.001)


def test_forked_processes_reach_the_one_process_weights_on_a_deterministic_loss():
    """With no random draw in the step, splitting each global batch between 2 processes changes nothing
    (unclipped SGD: each step's update depends on which rows the step read)."""
    trainer = TrainerConfig(max_steps=4, batch_size=8, warmup_steps=1, progress_bar=False, gradient_clip=1e6)
    one, two = LineFit(), LineFit()
    assert fit_module(one, Line(), trainer, seed=0).steps == 4
    assert fit_module(two, Line(), replace(trainer, strategy="ddp_fork", devices="2"), seed=0).steps == 4
    assert one.w.item() > 0.01 and torch.allclose(one.w, two.w, rtol=1e-6, atol=0)


@pytest.mark.parametrize("change, key", [(dict(strategy="ddpp"), "trainer.strategy"),
                                         (dict(precision="8-bit"), "trainer.precision"),
                                         (dict(accelerator="tpu-v9"), "trainer.accelerator"),
                                         (dict(devices="two"), "trainer.devices"),
                                         (dict(num_nodes=0), "trainer.num_nodes"),
                                         (dict(strategy="ddp_spawn", devices="2", batch_size=5), "trainer.batch_size")])
def test_bad_trainer_settings_are_refused_naming_the_key(change, key):
    from ebt_forecast.think import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        fit_module(LineFit(), Line(), TrainerConfig(**{"max_steps": 1, "batch_size": 4, "progress_bar": False, **change}),
                   seed=0)


def test_where_training_runs_does_not_change_result_keys_but_precision_does():
    default = TrainerConfig()
    # the key of the default settings is the one results cached before these fields existed were stored under
    assert config_key(default.settings()) == "a31a23c876c9"
    moved = replace(default, accelerator="gpu", devices="4", num_nodes=2, strategy="ddp")
    assert moved.settings() == default.settings()
    assert replace(default, precision="bf16-mixed").settings()["precision"] == "bf16-mixed"


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    """trainer.precision=bf16-mixed: the forecast EBT's training steps run under bf16 autocast (its linear layers
    compute in bfloat16), the engine keeps its energy record in float32 with every step's energy finite, and the
    float32 master weights change and stay float32."""
    module, data = tiny_forecast_training(str(tmp_path))
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    dtypes, records = set(), []

    def record_dtype(layer, inputs, output):
        if layer.training:
            dtypes.add(output.dtype)

    hooks = [m.register_forward_hook(record_dtype) for m in module.modules() if isinstance(m, torch.nn.Linear)]
    real_think = module.think

    def think(*args, **kwargs):
        result = real_think(*args, **kwargs)
        records.append(result.record)
        return result

    module.think = think
    trainer = TrainerConfig(max_steps=2, batch_size=BATCH, warmup_steps=1, progress_bar=False, precision="bf16-mixed")
    report = fit_module(module, data, trainer, seed=None)
    for hook in hooks:
        hook.remove()
    assert report.steps == 2
    assert torch.bfloat16 in dtypes  # autocast was on inside the training steps
    assert len(records) == 2 and all(r.energies.dtype == torch.float32 for r in records)
    assert all(torch.isfinite(r.energies[:r.steps_budget]).all() for r in records)  # every step's energy written
    trained = module.state_dict()
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert all(v.dtype == initial[k].dtype for k, v in trained.items())
    moved = [k for k in trained if not torch.equal(trained[k], initial[k])]
    assert len(moved) > 10  # training changed the weights


def test_a_rank_other_than_0_reads_the_output_folder_but_writes_and_prints_nothing_there(tmp_path, monkeypatch, capsys):
    """Under `trainer.strategy=ddp` every process runs the command; the others work on a private copy."""
    from types import SimpleNamespace

    from ebt_forecast.cli import other_rank, run_as_other_rank

    for key in ("RANK", "SLURM_NTASKS", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert other_rank() is None
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning's ddp launcher gives its second process
    assert other_rank() == "node0-local1"
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "done.json").write_text("{}")
    seen = {}

    def command(app) -> int:
        out = Path(app.runtime.output_dir)
        seen["cells"] = sorted(p.name for p in (out / "cells").iterdir())  # rank 0's finished cells
        (out / "cells" / "new.json").write_text("{}")
        print("a table")
        return 0

    app = SimpleNamespace(runtime=SimpleNamespace(output_dir=str(tmp_path)))
    assert run_as_other_rank(app, command, other_rank()) == 0
    assert seen["cells"] == ["done.json"]
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["done.json"]  # nothing written here
    assert capsys.readouterr().out == ""
    assert not Path(app.runtime.output_dir).exists()  # the private copy is gone
