"""Fit and run the forecasting EBT (or its feed-forward twin) on lists of series.

`EBTForecaster` follows the harness protocol of `ebt_forecast.baselines` (fit on a task,
predict sample arrays per window); `estimator.py` wraps the same pieces in GluonTS's API.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ebt_forecast.data.types import ForecastTask, Series, TestWindow
from ebt_forecast.data.windows import TrainWindowDataset, make_inference_batch
from ebt_forecast.tasks.base import OptimConfig
from ebt_forecast.tasks.forecast.model import ForecastModelConfig, evenly_spaced_levels
from ebt_forecast.tasks.forecast.module import ForecastLossConfig, ForecastModule
from ebt_forecast.think import (
    ConfigError,
    ThinkConfig,
    ThinkRecord,
    energy_weighted_resample,
    select_lowest_energy,
)

SELECTIONS = ("proposal", "refined", "verified", "lowest", "resample")


@dataclass
class ForecasterConfig:
    """Everything one forecaster run needs: sizes, thinking, optimisation, losses, budget, output."""

    context_length: int = 0  # 0 = auto: 4 horizons (at least 2 seasons), within [32, 512]
    patch_len: int = 0  # 0 = auto: 16 for horizons >= 24, else 4
    dim: int = 64
    depth: int = 2
    heads: int = 4
    ffn_multiplier: float = 2.0
    max_steps: int = 300
    batch_size: int = 64
    num_candidates: int = 21  # M at inference (21 levels j/20 put sample quantiles exactly on 0.05 steps)
    selection: str = "verified"  # see SELECTIONS
    seed: int = 0
    progress_bar: bool = True
    think: ThinkConfig = field(default_factory=ThinkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: ForecastLossConfig = field(default_factory=ForecastLossConfig)

    def validate(self) -> "ForecasterConfig":
        """Raise ConfigError naming the first invalid key."""
        self.think.validate("model.think")
        for key, ok, allowed in [
            ("context_length", self.context_length >= 0, ">= 0"), ("patch_len", self.patch_len >= 0, ">= 0"),
            ("dim", self.dim >= 1 and self.dim % max(self.heads, 1) == 0, "a positive multiple of heads"),
            ("depth", self.depth >= 1, ">= 1"), ("heads", self.heads >= 1, ">= 1"),
            ("max_steps", self.max_steps >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
            ("num_candidates", self.num_candidates >= 1, ">= 1"),
            ("selection", self.selection in SELECTIONS, f"one of {', '.join(SELECTIONS)}"),
        ]:
            if not ok:
                raise ConfigError(f"model.{key}={getattr(self, key)!r} is invalid: must be {allowed}")
        return self

    def model_config(self, horizon: int, season_length: int) -> ForecastModelConfig:
        """Window sizes for a data set's horizon and season."""
        context = self.context_length or int(np.clip(max(4 * horizon, 2 * season_length), 32, 512))
        patch = self.patch_len or (16 if horizon >= 24 else 4)
        return ForecastModelConfig(context, horizon, patch, self.dim, self.depth, self.heads, self.ffn_multiplier)


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
    module = ForecastModule(model_cfg, cfg.think, cfg.optim, cfg.loss, mode=mode)
    data = TrainWindowDataset(series, model_cfg.context_length, horizon,
                              num_samples=cfg.max_steps * cfg.batch_size, seed=cfg.seed)
    trainer = L.Trainer(
        max_steps=cfg.max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=cfg.progress_bar, gradient_clip_val=1.0,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, DataLoader(data, batch_size=cfg.batch_size, shuffle=False))
    return module.eval(), time.perf_counter() - start, int(trainer.global_step)


@dataclass
class ThoughtForecast:
    """Samples (N, S, H) in data units for N windows, plus what thinking did."""

    samples: np.ndarray
    proposals: np.ndarray  # (N, M, H) step-0 candidates, data units
    candidates: np.ndarray  # (N, M, H) final candidates, data units
    energies: np.ndarray  # (N, T + 1, M) energy of the path state at each step
    forward_passes: int
    backward_passes: int
    nonfinite: int


def think_forecast(
    module: ForecastModule, pasts: list[np.ndarray], *, num_candidates: int, steps: int, selection: str,
    batch_size: int = 256, seed: int = 0,
) -> ThoughtForecast:
    """Propose M candidate paths per window, think for `steps`, and turn them into samples."""
    model, cfg = module.model, module.model.cfg
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list] = {k: [] for k in ("samples", "proposals", "candidates", "energies")}
    passes = [0, 0, 0]
    for start in range(0, len(pasts), batch_size):
        batch = make_inference_batch(pasts[start:start + batch_size], cfg.context_length)
        scale = batch["scale"].view(-1, 1, 1)
        with torch.no_grad():
            cache = model.encode(batch["context"], batch["context_mask"])
            levels = inference_levels(num_candidates, len(scale))
            proposals = model.propose(cache, levels)
        result = module.think(model.energy_fn(cache, levels), proposals, training=False, steps=steps,
                              keep_trajectory=True, generator=generator)
        record: ThinkRecord = result.record
        path = torch.stack(result.trajectory, dim=1)  # (B, T + 1, M, H)
        energies = record.energies.transpose(0, 1)  # (B, T + 1, M)
        samples = _select(selection, path, energies, result.candidates, result.energies, module, generator)
        parts["samples"].append((samples * scale).detach().numpy())
        parts["proposals"].append((proposals * scale).numpy())
        parts["candidates"].append((result.candidates * scale).detach().numpy())
        parts["energies"].append(energies.numpy())
        passes[0] += record.forward_passes
        passes[1] += record.backward_passes
        passes[2] += int(record.nonfinite.sum())
    out = {k: np.concatenate(v) for k, v in parts.items()}
    return ThoughtForecast(**out, forward_passes=passes[0], backward_passes=passes[1], nonfinite=passes[2])


def _select(selection: str, path, energies, final, final_energies, module, generator) -> torch.Tensor:
    """Turn the thinking path into a sample set (B, S, H)."""
    if selection == "proposal":
        return path[:, 0]
    if selection == "refined":
        return final
    if selection == "verified":
        # self-verification along the path: each candidate keeps its lowest-energy state
        best = energies.nan_to_num(float("inf")).argmin(dim=1)  # (B, M)
        return torch.gather(path, 1, best[:, None, :, None].expand(-1, 1, -1, path.shape[-1])).squeeze(1)
    if selection == "lowest":
        return select_lowest_energy(final, final_energies).unsqueeze(1)
    if selection == "resample":
        return energy_weighted_resample(final, final_energies, final.shape[1], module.think_cfg.temperature, generator)
    raise ConfigError(f"selection={selection!r} is invalid: must be one of {', '.join(SELECTIONS)}")


class EBTForecaster:
    """The harness protocol: fit on a ForecastTask, predict (S, H) sample arrays per test window."""

    def __init__(self, cfg: ForecasterConfig, mode: str = "ebt", name: str | None = None):
        self.cfg = cfg.validate()
        self.mode = mode
        self.name = name or ("ebt" if mode == "ebt" else "transformer_pp")
        self.module: ForecastModule | None = None
        self.train_seconds, self.train_steps = 0.0, 0
        self.last_forecast: ThoughtForecast | None = None

    def fit(self, task: ForecastTask) -> "EBTForecaster":
        """Train on the task's training series."""
        self.module, self.train_seconds, self.train_steps = train_module(
            task.train, task.horizon, task.season_length, self.cfg, self.mode)
        return self

    def predict(self, windows: list[TestWindow], task: ForecastTask, *, steps: int | None = None,
                selection: str | None = None, num_candidates: int | None = None) -> list[np.ndarray]:
        """Samples (S, H) per window; the feed-forward twin always returns its proposals."""
        assert self.module is not None, "call fit() first"
        steps = self.cfg.think.infer_steps if steps is None else steps
        selection = selection or self.cfg.selection
        if self.mode != "ebt":
            steps, selection = 0, "proposal"
        self.last_forecast = think_forecast(
            self.module, [w.past for w in windows], num_candidates=num_candidates or self.cfg.num_candidates,
            steps=steps, selection=selection, seed=self.cfg.seed)
        return list(self.last_forecast.samples)
