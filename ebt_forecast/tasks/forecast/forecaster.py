"""Fit and run the forecasting EBT (or its feed-forward twin) on a ForecastDataset.

`EBTForecaster` follows the harness protocol of `ebt_forecast.baselines` (fit on a data set,
predict samples per window); `predict` returns a `ThoughtForecast` that carries the samples and
what thinking did. `estimator.py` wraps the same pieces in GluonTS's API.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import lightning as L
import numpy as np
import torch

from ebt_forecast.data.covariates import covariate_slots
from ebt_forecast.data.types import ForecastDataset, Series, TestWindow
from ebt_forecast.data.windows import TrainWindowDataset, make_inference_batch, split_train_val
from ebt_forecast.metrics import FORECAST_LEVELS, score_windows
from ebt_forecast.tasks.base import config_key, fit_module
from ebt_forecast.tasks.forecast.config import ForecasterConfig
from ebt_forecast.tasks.forecast.model import ForecastModelConfig
from ebt_forecast.tasks.forecast.module import ForecastModule
from ebt_forecast.think import ENERGY_FREE, InferencePolicy, InferenceSetting, choose_on_validation


@dataclass
class ThoughtForecast:
    """Samples per window in data units, plus what thinking did; a sequence of (S, H) sample arrays."""

    samples: np.ndarray  # (N, S, H)
    proposals: np.ndarray  # (N, M, H) System 1 level paths
    candidates: np.ndarray  # (N, M, G, H) every start's final candidate
    energies: np.ndarray  # (N, M, G) their final energies (NaN where no energy was read)
    path: np.ndarray  # (N, T + 1, M, H) each level's own start after every step
    path_energies: np.ndarray  # (N, T + 1, M) its energy at every step
    setting: InferenceSetting
    forward_passes: int
    backward_passes: int
    nonfinite: int
    levels: tuple[float, ...] | None = None  # the samples' rows are quantile paths at these levels; None: samples
    anchor: np.ndarray | None = None  # per window, the median anchoring chose (anchor.MEDIANS index); None: not run

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.samples[i]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.samples)


LEVEL_SELECTIONS = ("proposal", "refined", "verified", "weighted", "average", "median")  # one output path per level


def quantile_levels(selection: str, num_paths: int) -> tuple[float, ...] | None:
    """The quantile levels of a forecast's rows: the 21-level grid when a level-preserving selection ran on it,
    else None (a sample forecast: stratified levels, or draws across levels)."""
    selection = selection.split(":", 1)[0]
    if num_paths == len(FORECAST_LEVELS) and selection in (*LEVEL_SELECTIONS, "source"):
        return FORECAST_LEVELS
    return None


def validation_windows_per_series(train: list[Series], horizon: int, wanted_total: int) -> int:
    """Enough windows for about `wanted_total` in all, cutting at most a fifth of the shortest series."""
    shortest = min(len(s) for s in train)
    return max(1, min(math.ceil(wanted_total / len(train)), int(0.2 * shortest / horizon)))


class EBTForecaster:
    """The harness protocol: fit on a ForecastDataset, predict samples per window."""

    def __init__(self, cfg: ForecasterConfig, mode: str = "ebt", name: str | None = None, reserve_windows: int = 0):
        self.cfg = cfg.validate()
        self.mode = mode
        # about this many windows at the end of the training series (before the validation tail) are held out of
        # training: a verifier is taught on them out of fold
        self.reserve_windows = reserve_windows
        self.name = name or ("ebt" if mode == "ebt" else "transformer_pp")
        self.module: ForecastModule | None = None
        self.train_seconds, self.train_steps = 0.0, 0
        self.val_windows: list[TestWindow] = []
        self.season_length = 1
        self.chosen = InferenceSetting(cfg.think.infer_steps, "verified")
        self.validation_scores: dict[str, float] = {}
        self.covariate_slots: dict = {}  # the model's covariate slots (data.covariates.covariate_slots)

    def model_config(self, horizon: int, season_length: int) -> ForecastModelConfig:
        """The patch EBT's sizes for a data set's horizon and season (and the covariate slots fit found)."""
        context, patch = self.cfg.window(horizon, season_length)
        think = self.cfg.think
        return ForecastModelConfig(context, horizon, patch, self.cfg.model, season_length=season_length,
                                   energy_init=self.cfg.task.energy_init,
                                   step_embeddings=think.train_steps if think.step_embedding else 0,
                                   covariate_scaling=self.cfg.task.covariate_scaling, **self.covariate_slots)

    def split(self, dataset: ForecastDataset) -> tuple[list[Series], list[TestWindow]]:
        """The series the model trains on (without their validation tails and reserved windows), and the
        validation tails as windows."""
        train, val = self._validation_split(dataset)
        return self._reserve_split(train, dataset.horizon)[0], val

    def reserved(self, dataset: ForecastDataset) -> list[TestWindow]:
        """The reserved windows: the last horizons before the validation tail, never trained on."""
        return self._reserve_split(self._validation_split(dataset)[0], dataset.horizon)[1]

    def _validation_split(self, dataset: ForecastDataset) -> tuple[list[Series], list[TestWindow]]:
        per_series = validation_windows_per_series(dataset.train, dataset.horizon, self.cfg.task.val_windows)
        return split_train_val(dataset.train, dataset.horizon, per_series)

    def _reserve_split(self, train: list[Series], horizon: int) -> tuple[list[Series], list[TestWindow]]:
        if not self.reserve_windows:
            return train, []
        return split_train_val(train, horizon, validation_windows_per_series(train, horizon, self.reserve_windows))

    def fit(self, dataset: ForecastDataset) -> "EBTForecaster":
        """Train on the training series minus a validation tail; choose inference settings on that tail."""
        train, self.val_windows = self.split(dataset)
        self.season_length = dataset.season_length
        self.covariate_slots = covariate_slots(dataset.train)
        model_cfg = self.model_config(dataset.horizon, dataset.season_length)
        t = self.cfg.trainer
        L.seed_everything(self.cfg.seed, workers=True, verbose=False)  # the weights' initialisation too
        self.module = ForecastModule(model_cfg, self.cfg.think, t, self.cfg.task, mode=self.mode)
        data = TrainWindowDataset(train, model_cfg.context_length, dataset.horizon,
                                  num_samples=t.max_steps * t.batch_size, seed=self.cfg.seed, scaling=model_cfg.scaling,
                                  covariate_scaling=model_cfg.covariate_scaling)
        # fit_module refuses a checkpoint of another schedule and names the setting that changed (max_steps, ...)
        run = {**self.cfg.trainer.settings(), "max_steps": None}
        key = config_key(self.cfg.model, self.cfg.think, self.cfg.task, run, self.cfg.seed, model_cfg, self.mode,
                         dataset.name, [len(s) for s in train])
        report = fit_module(self.module, data, t, None, run_key=key)  # seeded above, before the weights
        self.train_seconds, self.train_steps = report.seconds, report.steps
        self.chosen = self._choose_on_validation()
        return self

    def _choose_on_validation(self) -> InferenceSetting:
        """The setting of think.AUTO_SETTINGS with the lowest WQL on the validation windows."""
        if self.mode != "ebt" or not self.val_windows or not self.cfg.think.enabled:
            return InferenceSetting(0, "proposal")

        def wql(setting: InferenceSetting) -> float:
            out = self.predict(self.val_windows, steps=setting.steps, selection=setting.selection)
            return score_windows(out, self.val_windows, self.season_length)["wql"]

        best, self.validation_scores = choose_on_validation(wql)
        return best

    def resolve(self, steps: int | None, selection: str | None, group: int | None) -> tuple[InferenceSetting, int]:
        """The (steps, selection) and G a predict call runs: `auto` is the validation choice; the twin and
        `think.enabled=false` always give the proposals."""
        selection = selection or self.cfg.task.selection
        if selection == "auto":
            steps = self.chosen.steps if steps is None else steps
            selection = self.chosen.selection
        steps = self.cfg.think.infer_steps if steps is None else steps
        group = self.cfg.task.verify_group if group is None else group
        if self.mode != "ebt" or not self.cfg.think.enabled:
            steps, selection = 0, "proposal"
        if selection == "proposal":
            steps = 0  # refining would spend passes without changing the proposals
        if selection in ("proposal", "refined"):
            group = 1
        return InferenceSetting(steps, selection), group

    def predict(self, windows: list[TestWindow], dataset: ForecastDataset | None = None, *,
                steps: int | None = None, selection: str | None = None, num_candidates: int | None = None,
                verify_group: int | None = None, extra_starts: np.ndarray | None = None,
                temperature: float | None = None, batch_size: int | None = None, final_energy: bool = False,
                policy: InferencePolicy | None = None) -> ThoughtForecast:
        """Forecast every window: encode once, propose M level paths with G starts each, think (under `policy`,
        default the one think config names), select.

        `extra_starts` (N, M, S, H), in data units: other forecasters' level paths added to each level's
        starts (the EBT as a verifier above fast forecasters); `temperature` overrides think.temperature."""
        assert self.module is not None, "call fit() first"
        setting, group = self.resolve(steps, selection, verify_group)
        if batch_size is None:  # thinking keeps a graph per candidate: fewer windows a batch bound its memory
            batch_size = 256 if setting.steps == 0 and setting.selection in ENERGY_FREE else 64
        m = num_candidates or self.cfg.task.num_candidates
        if extra_starts is not None and extra_starts.shape[:2] != (len(windows), m):
            raise ValueError(f"extra_starts has shape {extra_starts.shape}, expected ({len(windows)}, {m}, S, H)")
        generator = torch.Generator().manual_seed(self.cfg.seed)
        model_cfg = self.module.model.cfg
        context_length = model_cfg.context_length
        parts: dict[str, list[np.ndarray]] = {}
        passes = np.zeros(3, dtype=np.int64)
        for start in range(0, len(windows), batch_size):
            rows = windows[start:start + batch_size]
            covariates = [w.covariates for w in rows] if model_cfg.has_covariates else None
            batch = make_inference_batch([w.past for w in rows], context_length, scaling=model_cfg.scaling,
                                         covariates=covariates, horizon=model_cfg.horizon,
                                         covariate_scaling=model_cfg.covariate_scaling)
            scale, loc = batch["scale"].view(-1, 1, 1), batch["loc"].view(-1, 1, 1)
            if extra_starts is not None:
                extra = torch.from_numpy(np.asarray(extra_starts[start:start + batch_size], dtype=np.float32))
                batch["extra_starts"] = (extra - loc.unsqueeze(-1)) / scale.unsqueeze(-1)
            thought = self.module.infer(batch, num_candidates=m, group=group, steps=setting.steps, final_energy=final_energy,
                                        selection=setting.selection, generator=generator, temperature=temperature,
                                        policy=policy)
            paths = {"samples": (scale, loc), "proposals": (scale, loc), "candidates": (scale[..., None], loc[..., None]),
                     "path": (scale[..., None], loc[..., None])}  # data units: y * scale + loc
            for name, value in [("samples", thought.samples), ("proposals", thought.proposals),
                                ("candidates", thought.grouped), ("energies", thought.energies), ("path", thought.path),
                                ("path_energies", thought.path_energies)]:
                if name in paths:
                    value = value * paths[name][0] + paths[name][1]
                parts.setdefault(name, []).append(value.detach().numpy())
            if thought.record is not None:
                r = thought.record
                passes += (r.forward_passes, r.backward_passes, int(r.nonfinite.sum()))
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        return ThoughtForecast(**arrays, setting=setting, forward_passes=int(passes[0]),
                               backward_passes=int(passes[1]), nonfinite=int(passes[2]),
                               levels=quantile_levels(setting.selection, arrays["samples"].shape[1]))
