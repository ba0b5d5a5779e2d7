"""Fit and run the forecasting EBT (or its feed-forward twin) on lists of series.

`EBTForecaster` follows the harness protocol of `ebt_forecast.baselines` (fit on a task,
predict sample arrays per window); `estimator.py` wraps the same pieces in GluonTS's API.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
import numpy as np
import torch
from torch.utils.data import DataLoader

from ebt_forecast.data.types import ForecastTask, Series, TestWindow
from ebt_forecast.data.windows import TrainWindowDataset, make_inference_batch, split_train_val
from ebt_forecast.metrics import aggregate, score_window
from ebt_forecast.tasks.base import OptimConfig
from ebt_forecast.tasks.forecast.model import ForecastModelConfig, evenly_spaced_levels
from ebt_forecast.tasks.forecast.module import ForecastLossConfig, ForecastModule
from ebt_forecast.think import (
    ConfigError,
    ThinkConfig,
    ThinkRecord,
    energy_weighted_resample,
    energy_weights,
    select_lowest_energy,
)

INITS = ("proposal", "seasonal_naive", "noise")
# what selection=auto chooses from on validation: step 0 is always there, so thinking may only add
AUTO_SETTINGS = ((0, "proposal"), (0, "verified"), (0, "weighted"), (1, "refined"), (1, "verified"), (1, "weighted"),
                 (2, "refined"), (2, "verified"), (2, "weighted"))
SELECTIONS = ("proposal", "refined", "verified", "weighted", "average", "lowest", "resample")


@dataclass
class ModelSizeConfig:
    """Window and backbone sizes; 0 = chosen from the data set's horizon and season."""

    context_length: int = 0  # 0 = auto: 4 horizons (at least 2 seasons), within [32, 512]
    patch_len: int = 0  # 0 = auto: 16 for horizons >= 24, else 4
    dim: int = 64
    depth: int = 2
    heads: int = 4
    ffn_multiplier: float = 2.0


@dataclass
class TrainerConfig(OptimConfig):
    """Training budget and optimiser (shared by the EBT and its feed-forward twin)."""

    max_steps: int = 300
    batch_size: int = 64
    gradient_clip: float = 1.0
    progress_bar: bool = True
    checkpoint_dir: Optional[str] = None  # set: save `last.ckpt` there every checkpoint_every steps and resume from it
    checkpoint_every: int = 100


@dataclass
class ForecastTaskConfig(ForecastLossConfig):
    """Forecast-task settings: loss weights, candidates at inference and how they become samples."""

    num_candidates: int = 21  # M at inference (21 levels j/20 put sample quantiles exactly on 0.05 steps)
    selection: str = "auto"  # see SELECTIONS; auto = the best of AUTO_SETTINGS on the validation windows
    verify_group: int = 2  # G starts per level (proposal, seasonal naive, perturbed proposals); "verified" keeps the lowest energy
    verify_noise: float = 0.5  # std of the perturbations, in half-widths of the proposal set
    val_windows: int = 64  # validation windows cut from the end of the training series (diagnostics)


@dataclass
class ForecasterConfig:
    """Everything one forecaster run needs."""

    model: ModelSizeConfig = field(default_factory=ModelSizeConfig)
    think: ThinkConfig = field(default_factory=ThinkConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    task: ForecastTaskConfig = field(default_factory=ForecastTaskConfig)
    seed: int = 0

    def validate(self) -> "ForecasterConfig":
        """Raise ConfigError naming the first invalid key."""
        self.think.validate("think")
        m, t, k = self.model, self.trainer, self.task
        for key, value, ok, allowed in [
            ("model.context_length", m.context_length, m.context_length >= 0, ">= 0"),
            ("model.patch_len", m.patch_len, m.patch_len >= 0, ">= 0"),
            ("model.dim", m.dim, m.dim >= 1 and m.dim % max(m.heads, 1) == 0, "a positive multiple of model.heads"),
            ("model.depth", m.depth, m.depth >= 1, ">= 1"), ("model.heads", m.heads, m.heads >= 1, ">= 1"),
            ("trainer.max_steps", t.max_steps, t.max_steps >= 1, ">= 1"),
            ("trainer.batch_size", t.batch_size, t.batch_size >= 1, ">= 1"),
            ("trainer.lr", t.lr, t.lr > 0, "> 0"),
            ("task.num_candidates", k.num_candidates, k.num_candidates >= 1, ">= 1"),
            ("task.train_candidates", k.train_candidates, k.train_candidates >= 1, ">= 1"),
            ("task.verify_group", k.verify_group, k.verify_group >= 1, ">= 1"),
            ("task.init", k.init, k.init in INITS, f"one of {', '.join(INITS)}"),
            ("task.set_crps", k.set_crps, k.set_crps >= 0, ">= 0"),
            ("task.verify_noise", k.verify_noise, k.verify_noise >= 0, ">= 0"),
            ("task.selection", k.selection, k.selection in (*SELECTIONS, "auto"), f"auto or one of {', '.join(SELECTIONS)}"),
        ]:
            if not ok:
                raise ConfigError(f"{key}={value!r} is invalid: must be {allowed}")
        return self

    def model_config(self, horizon: int, season_length: int) -> ForecastModelConfig:
        """Window sizes for a data set's horizon and season."""
        m = self.model
        context = m.context_length or int(np.clip(max(4 * horizon, 2 * season_length), 32, 512))
        patch = m.patch_len or (16 if horizon >= 24 else 4)
        return ForecastModelConfig(context, horizon, patch, m.dim, m.depth, m.heads, m.ffn_multiplier,
                                   season_length=season_length)


def inference_levels(m: int, batch: int, device=None) -> torch.Tensor:
    """Levels j / (M - 1) (clipped to [0.005, 0.995]) so the sample quantile at q is the level-q path."""
    if m == 1:
        return torch.full((batch, 1), 0.5, device=device)
    return evenly_spaced_levels(m, batch, device).mul(m).sub(0.5).div(m - 1).clamp(0.005, 0.995)


def train_module(series: list[Series], horizon: int, season_length: int, cfg: ForecasterConfig,
                 mode: str) -> tuple[ForecastModule, float, int]:
    """Train a forecasting module with Lightning; return it, its training seconds and optimizer steps."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model_cfg = cfg.model_config(horizon, season_length)
    t = cfg.trainer
    module = ForecastModule(model_cfg, cfg.think, t, cfg.task, mode=mode)
    data = TrainWindowDataset(series, model_cfg.context_length, horizon,
                              num_samples=t.max_steps * t.batch_size, seed=cfg.seed)
    callbacks, resume = [], None
    if t.checkpoint_dir:
        callbacks.append(ModelCheckpoint(dirpath=t.checkpoint_dir, save_last=True, save_top_k=0,
                                         every_n_train_steps=t.checkpoint_every))
        last = Path(t.checkpoint_dir) / "last.ckpt"
        resume = str(last) if last.exists() else None
    trainer = L.Trainer(
        max_steps=t.max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=bool(callbacks),
        callbacks=callbacks, enable_model_summary=False, enable_progress_bar=t.progress_bar,
        gradient_clip_val=t.gradient_clip, num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, DataLoader(data, batch_size=t.batch_size, shuffle=False), ckpt_path=resume, weights_only=True)
    return module.eval(), time.perf_counter() - start, int(trainer.global_step)


@dataclass
class ThoughtForecast:
    """Samples (N, S, H) in data units for N windows, plus what thinking did."""

    samples: np.ndarray
    proposals: np.ndarray  # (N, M, H) step-0 candidates, data units
    candidates: np.ndarray  # (N, M, H) final candidates, data units
    energies: np.ndarray  # (N, T + 1, M) energy of the path state at each step
    path: np.ndarray  # (N, T + 1, M, H) candidates after each step, data units
    group_candidates: np.ndarray  # (N, M, G, H) every start's final candidate, data units
    group_energies: np.ndarray  # (N, M, G) their final energies
    forward_passes: int
    backward_passes: int
    nonfinite: int


def think_forecast(
    module: ForecastModule, pasts: list[np.ndarray], *, num_candidates: int, steps: int, selection: str,
    verify_group: int = 1, verify_noise: float = 0.5, batch_size: int = 256, seed: int = 0,
) -> ThoughtForecast:
    """Propose M level paths per window, start G candidates per level (the proposal, the seasonal-naive
    path, perturbed proposals), think for `steps` in one batched call, and turn them into samples (`_select`)."""
    model, cfg = module.model, module.model.cfg
    generator = torch.Generator().manual_seed(seed)
    m, g = num_candidates, verify_group
    parts: dict[str, list] = {k: [] for k in ("samples", "proposals", "candidates", "energies", "path",
                                              "group_candidates", "group_energies")}
    passes = [0, 0, 0]
    for start in range(0, len(pasts), batch_size):
        batch = make_inference_batch(pasts[start:start + batch_size], cfg.context_length)
        scale = batch["scale"].view(-1, 1, 1)
        b = len(scale)
        with torch.no_grad():
            cache = model.encode(batch["context"], batch["context_mask"])
            levels = inference_levels(m, b)
            proposals, starts = model.propose_starts(
                cache, batch["context"], batch["context_mask"], levels, g, verify_noise, generator,
                init=module.loss_cfg.init)
        group_levels = levels.repeat_interleave(g, dim=1)  # (B, M * G): level-major
        init = starts.reshape(b, m * g, -1)
        result = module.think(model.energy_fn(cache, group_levels), init, training=False, steps=steps,
                              keep_trajectory=True, generator=generator)
        record: ThinkRecord = result.record
        grouped = result.candidates.detach().view(b, m, g, -1)
        grouped_energy = result.energies.detach().view(b, m, g)
        samples = _select(selection, proposals, grouped, grouped_energy, module, generator)
        # a stopping policy can end every candidate before the budget: they stay at their last state
        trajectory = result.trajectory + result.trajectory[-1:] * (steps + 1 - len(result.trajectory))
        path = torch.stack(trajectory, dim=1).detach().view(b, steps + 1, m, g, -1)[:, :, :, 0]
        energies = record.energies.transpose(0, 1).reshape(b, steps + 1, m, g)[..., 0]
        parts["samples"].append((samples * scale).numpy())
        parts["proposals"].append((proposals * scale).numpy())
        parts["candidates"].append((grouped[:, :, 0] * scale).numpy())
        parts["energies"].append(energies.numpy())
        parts["path"].append((path * scale.unsqueeze(1)).numpy())
        parts["group_candidates"].append((grouped * scale.unsqueeze(-1)).numpy())
        parts["group_energies"].append(grouped_energy.numpy())
        passes[0] += record.forward_passes
        passes[1] += record.backward_passes
        passes[2] += int(record.nonfinite.sum())
    out = {k: np.concatenate(v) for k, v in parts.items()}
    return ThoughtForecast(**out, forward_passes=passes[0], backward_passes=passes[1], nonfinite=passes[2])


def _select(selection: str, proposals, grouped, energies, module, generator) -> torch.Tensor:
    """Turn candidates grouped (B, M, G, H) by level, with energies (B, M, G), into samples (B, S, H)."""
    b, m, g, h = grouped.shape
    if selection == "proposal":
        return proposals
    if selection == "refined":
        return grouped[:, :, 0]  # each level's refined proposal, no verification
    if selection == "verified":
        # self-verification: per level, keep the lowest-energy of the G refined starts
        return select_lowest_energy(grouped.reshape(b * m, g, h), energies.reshape(b * m, g)).view(b, m, h)
    if selection == "weighted":
        # soft self-verification: per level, the starts averaged with Boltzmann weights softmax(-E / T)
        weights = energy_weights(energies.reshape(b * m, g), module.think_cfg.temperature).view(b, m, g, 1)
        return (weights * grouped).sum(2)
    if selection == "average":
        return grouped.mean(2)  # energy-free combination of the G starts: the control for "verified"
    flat, flat_energy = grouped.reshape(b, m * g, h), energies.reshape(b, m * g)
    if selection == "lowest":
        return select_lowest_energy(flat, flat_energy).unsqueeze(1)
    if selection == "resample":
        return energy_weighted_resample(flat, flat_energy, m, module.think_cfg.temperature, generator)
    raise ConfigError(f"selection={selection!r} is invalid: must be one of {', '.join(SELECTIONS)}")


def validation_windows_per_series(task: ForecastTask, cfg: ForecasterConfig) -> int:
    """Enough windows for about cfg.task.val_windows in all, cutting at most a fifth of the shortest series."""
    shortest = min(len(s) for s in task.train)
    wanted = math.ceil(cfg.task.val_windows / len(task.train))
    return max(1, min(wanted, int(0.2 * shortest / task.horizon)))


class EBTForecaster:
    """The harness protocol: fit on a ForecastTask, predict (S, H) sample arrays per test window."""

    def __init__(self, cfg: ForecasterConfig, mode: str = "ebt", name: str | None = None):
        self.cfg = cfg.validate()
        self.mode = mode
        self.name = name or ("ebt" if mode == "ebt" else "transformer_pp")
        self.module: ForecastModule | None = None
        self.train_seconds, self.train_steps = 0.0, 0
        self.last_forecast: ThoughtForecast | None = None
        self.val_windows: list[TestWindow] = []
        self.chosen: tuple[int, str] = (cfg.think.infer_steps, "verified")
        self.validation_scores: dict[str, float] = {}

    def fit(self, task: ForecastTask) -> "EBTForecaster":
        """Train on the task's training series minus a validation tail (kept for diagnostics)."""
        train, self.val_windows = split_train_val(task.train, task.horizon, validation_windows_per_series(task, self.cfg))
        self.module, self.train_seconds, self.train_steps = train_module(
            train, task.horizon, task.season_length, self.cfg, self.mode)
        self.chosen = self._choose_on_validation(task.season_length)
        return self

    def _choose_on_validation(self, season_length: int) -> tuple[int, str]:
        """The (steps, selection) of AUTO_SETTINGS with the lowest WQL on the validation windows."""
        if self.mode != "ebt" or not self.val_windows:
            return 0, "proposal"
        windows = self.val_windows
        scores = {}
        for steps, selection in AUTO_SETTINGS:
            samples = self.predict(windows, steps=steps, selection=selection)
            scores[(steps, selection)] = aggregate(
                [score_window(s, w.future, w.past, season_length) for s, w in zip(samples, windows)])["wql"]
        self.validation_scores = {f"{s}:{sel}": v for (s, sel), v in scores.items()}
        return min(scores, key=scores.get)

    def predict(self, windows: list[TestWindow], task: ForecastTask | None = None, *, steps: int | None = None,
                selection: str | None = None, num_candidates: int | None = None,
                verify_group: int | None = None) -> list[np.ndarray]:
        """Samples (S, H) per window; the feed-forward twin always returns its proposals.

        With selection=auto (the default) the thinking steps and selection are those that scored best
        on the validation windows (`self.chosen`)."""
        assert self.module is not None, "call fit() first"
        k = self.cfg.task
        selection = selection or k.selection
        if selection == "auto":
            chosen_steps, selection = self.chosen
            steps = chosen_steps if steps is None else steps
        steps = self.cfg.think.infer_steps if steps is None else steps
        group = k.verify_group if verify_group is None else verify_group
        if self.mode != "ebt":
            steps, selection, group = 0, "proposal", 1
        if selection in ("proposal", "refined"):
            group = 1
        self.last_forecast = think_forecast(
            self.module, [w.past for w in windows], num_candidates=num_candidates or k.num_candidates,
            steps=steps, selection=selection, verify_group=group, verify_noise=k.verify_noise, seed=self.cfg.seed)
        return list(self.last_forecast.samples)
