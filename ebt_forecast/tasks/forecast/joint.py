"""Several targets of one entity forecast jointly: one patch EBT over all K targets' tokens, one energy per joint
candidate (model.py, `targets` = K), so the samples are coherent across targets.

    dataset = JointDataset("etth1", "h", 24, 24, ["HUFL", ..., "OT"], train=[Series(..., target=(K, T))])
    forecaster = JointForecaster(cfg).fit(dataset)
    samples = forecaster.predict(windows)            # (N, S, K, H) joint sample paths in data units
    energy_score(samples, windows)                   # scoringrules' energy score over the K targets per step

Each of the M candidates is a joint path of all K targets at one quantile level (System 1 proposes it; thinking
refines all targets together on the joint energy; verification compares whole joint candidates), so a sample
moves its targets together as the model has seen them move. Series here carry 2-D values: Series.target and
TestWindow.past are (K, T), TestWindow.future (K, H); covariates are the entity's, shared by its targets.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import scoringrules as sr
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from ebt_forecast import __version__

from ebt_forecast.data.covariates import covariate_slots, numeric_column
from ebt_forecast.data.types import ForecastDataset, Series, TestWindow
from ebt_forecast.data.windows import _pad_left, context_scaling, covariate_window
from ebt_forecast.errors import DataError
from ebt_forecast.io import atomic_torch_save, atomic_write_text
from ebt_forecast.metrics import FORECAST_LEVELS, score_windows
from ebt_forecast.tasks.base import config_key, fit_module
from ebt_forecast.tasks.forecast.config import ForecasterConfig
from ebt_forecast.tasks.forecast.model import ForecastModelConfig
from ebt_forecast.tasks.forecast.module import ForecastModule
from ebt_forecast.think import InferenceSetting, choose_on_validation


@dataclass
class JointDataset:
    """Entities with K targets each: train series (K, T) and test windows (past (K, T), future (K, H))."""

    name: str
    freq: str
    horizon: int
    season_length: int
    targets: list[str]
    train: list[Series]
    test_windows: list[TestWindow] = field(default_factory=list)


def joint_window(values: np.ndarray, cov, end: int, context_length: int, horizon: int, model_horizon: int,
                 scaling: str, covariate_scaling: str = "window") -> dict[str, torch.Tensor]:
    """One window of a (K, T) series whose future ends at `end`: contexts (K, L) and futures flattened (K * H), each
    target scaled by its own context (future all-NaN past the data: mask 0)."""
    rows = [_pad_left(y[max(0, end - horizon - context_length):end - horizon], context_length) for y in values]
    context = np.stack([r[0] for r in rows])
    mask = np.stack([r[1] for r in rows])
    future = np.full((len(values), model_horizon), np.nan, dtype=np.float32)
    known = values[:, end - horizon:end]  # empty when forecasting past the data
    future[:, :known.shape[1]] = known
    scales = [context_scaling(c, scaling) for c in context]
    loc = np.array([s[0] for s in scales], dtype=np.float32)[:, None]
    scale = np.array([s[1] for s in scales], dtype=np.float32)[:, None]
    fut_mask = np.isfinite(future)
    return {
        "context": torch.from_numpy(np.where(mask, (context - loc) / scale, 0.0).astype(np.float32)),
        "context_mask": torch.from_numpy(mask.astype(np.float32)),
        "future": torch.from_numpy(np.where(fut_mask, (future - loc) / scale, 0.0).astype(np.float32).ravel()),
        "future_mask": torch.from_numpy(fut_mask.astype(np.float32).ravel()),
        "scale": torch.from_numpy(scale.ravel()), "loc": torch.from_numpy(loc.ravel()),
        **covariate_window(cov, end - horizon, context_length, model_horizon, covariate_scaling),
    }


class JointWindows(Dataset):
    """Seeded random training windows of (K, T) series (item i from a generator seeded by (seed, i)), uniform over
    (series, end) pairs with an observed value in every target's context and in the future."""

    def __init__(self, series: list[Series], context_length: int, horizon: int, num_samples: int, seed: int = 0,
                 scaling: str = "mean", covariate_scaling: str = "window"):
        self.series, self.context_length, self.horizon = series, context_length, horizon
        self.covariate_scaling = covariate_scaling
        self.num_samples, self.seed, self.scaling = num_samples, seed, scaling
        self.ends = [np.arange(horizon + 1, s.target.shape[1] + 1) for s in series]
        self.counts = np.cumsum([len(e) for e in self.ends])
        if not len(self.counts) or self.counts[-1] == 0:
            raise DataError(f"no series is longer than the horizon ({horizon}) + 1")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, idx])
        k = int(rng.integers(self.counts[-1]))
        j = int(np.searchsorted(self.counts, k, side="right"))
        end = int(self.ends[j][k - (self.counts[j - 1] if j else 0)])
        s = self.series[j]
        return joint_window(s.target, s.covariates, end, self.context_length, self.horizon, self.horizon, self.scaling,
                            self.covariate_scaling)


def validation_tail(series: list[Series], horizon: int, wanted: int) -> tuple[list[Series], list[TestWindow]]:
    """The last horizons of every (K, T) series as validation windows (about `wanted` in all, at most a fifth of the
    shortest series: the rule EBTForecaster's validation tail follows); the rest trains."""
    shortest = min(s.target.shape[1] for s in series)
    per_series = max(1, min(-(-wanted // len(series)), int(0.2 * shortest / horizon)))
    train, val = [], []
    for s in series:
        cut = s.target.shape[1] - per_series * horizon
        train.append(Series(s.item_id, s.start, s.target[:, :cut], s.anchor,
                            None if s.covariates is None else s.covariates.cut(0, cut)))
        for o in range(cut, s.target.shape[1], horizon):
            cov = None if s.covariates is None else s.covariates.cut(0, o, o + horizon)
            val.append(TestWindow(s.item_id, s.start, s.target[:, :o], s.target[:, o:o + horizon], cov))
    return train, val


class JointForecaster:
    """The joint EBT: fit on a JointDataset, predict joint samples (N, S, K, H) per window."""

    def __init__(self, cfg: ForecasterConfig, mode: str = "ebt"):
        self.cfg, self.mode = cfg.validate(), mode
        self.module: ForecastModule | None = None
        self.chosen = InferenceSetting(0, "proposal")
        self.validation_scores: dict[str, float] = {}
        self.train_seconds, self.train_steps = 0.0, 0
        self.targets: list[str] = []
        self.freq, self.covariate_slots = "", {}

    def fit(self, dataset: JointDataset) -> "JointForecaster":
        """Train on every entity's windows before its validation tail; choose thinking on that tail."""
        k = len(dataset.targets)
        for s in dataset.train:
            if s.target.ndim != 2 or s.target.shape[0] != k:
                raise DataError(f"series {s.item_id!r}: values of shape {s.target.shape}, expected ({k}, T)")
        # about task.val_windows target windows, as EBTForecaster cuts: the same hours held out as for K univariate series
        train, val = validation_tail(dataset.train, dataset.horizon, -(-self.cfg.task.val_windows // k))
        self.targets, self.freq = list(dataset.targets), dataset.freq
        self.covariate_slots = covariate_slots(dataset.train)
        model_cfg = self.model_config(dataset.horizon, dataset.season_length)
        context = model_cfg.context_length
        t = self.cfg.trainer
        L.seed_everything(self.cfg.seed, workers=True, verbose=False)
        self.module = ForecastModule(model_cfg, self.cfg.think, t, self.cfg.task, mode=self.mode)
        data = JointWindows(train, context, dataset.horizon, t.max_steps * t.batch_size, self.cfg.seed,
                            model_cfg.scaling, model_cfg.covariate_scaling)
        key = config_key(self.cfg.model, self.cfg.think, self.cfg.task, {**t.settings(), "max_steps": None},
                         self.cfg.seed, model_cfg, self.mode, dataset.name, [s.target.shape for s in train])
        report = fit_module(self.module, data, t, None, run_key=key)
        self.train_seconds, self.train_steps = report.seconds, report.steps
        self.season_length = dataset.season_length
        if self.mode == "ebt" and self.cfg.think.enabled and self.cfg.task.selection == "auto":
            # chosen by the energy score over the targets (the joint samples' own proper score), not a marginal one
            self.chosen, self.validation_scores = choose_on_validation(
                lambda s: energy_score(self.predict(val, steps=s.steps, selection=s.selection), val)[
                    "energy_score_per_step"])
        elif self.cfg.task.selection != "auto":
            self.chosen = InferenceSetting(self.cfg.think.infer_steps, self.cfg.task.selection)
        return self

    def model_config(self, horizon: int, season_length: int) -> ForecastModelConfig:
        """The joint patch EBT's configuration for this forecaster's targets and covariate slots."""
        context, patch = self.cfg.window(horizon, season_length)
        return ForecastModelConfig(context, horizon, patch, self.cfg.model, season_length=season_length,
                                   energy_init=self.cfg.task.energy_init, targets=len(self.targets),
                                   covariate_scaling=self.cfg.task.covariate_scaling, **self.covariate_slots)

    def save(self, path: str | Path) -> Path:
        """Write the configuration, targets, covariate slots, inference choice and weights (state dict) into folder
        `path` (`forecast targets=[...] save=DIR`; `JointForecaster.load` reads it back)."""
        assert self.module is not None, "call fit() first"
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model = self.module.model.cfg
        meta = {"kind": "joint", "package_version": __version__, "mode": self.mode, "targets": self.targets,
                "freq": self.freq, "prediction_length": model.horizon, "season_length": model.season_length,
                "covariate_slots": self.covariate_slots, "config": asdict(self.cfg), "chosen": asdict(self.chosen),
                "validation_scores": self.validation_scores, "train_seconds": self.train_seconds,
                "train_steps": self.train_steps}
        atomic_torch_save(self.module.state_dict(), path / "weights.pt")
        atomic_write_text(path / "predictor.json", json.dumps(meta, indent=2))  # last: a folder with it is whole
        return path

    @classmethod
    def load(cls, path: str | Path) -> "JointForecaster":
        """A joint forecaster written by `save` (weights with weights_only=True)."""
        path = Path(path)
        meta_path = path / "predictor.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("kind") != "joint" or not (path / "weights.pt").is_file():
            raise DataError(f"{path} is not a saved joint EBT predictor (it needs predictor.json of a joint forecast "
                            "and weights.pt, written by `ebt-forecast forecast targets=[...] save=DIR`)")
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ForecasterConfig), meta["config"]))
        forecaster = cls(cfg, meta["mode"])
        forecaster.targets, forecaster.freq = list(meta["targets"]), meta["freq"]
        forecaster.covariate_slots = meta["covariate_slots"]
        forecaster.season_length = meta["season_length"]
        model_cfg = forecaster.model_config(meta["prediction_length"], meta["season_length"])
        forecaster.module = ForecastModule(model_cfg, cfg.think, cfg.trainer, cfg.task, mode=meta["mode"])
        forecaster.module.load_state_dict(torch.load(path / "weights.pt", weights_only=True))
        forecaster.module.eval()
        forecaster.chosen = InferenceSetting(**meta["chosen"])
        forecaster.validation_scores = meta["validation_scores"]
        forecaster.train_seconds, forecaster.train_steps = meta["train_seconds"], meta["train_steps"]
        return forecaster

    def predict(self, windows: list[TestWindow], *, steps: int | None = None, selection: str | None = None,
                num_candidates: int | None = None, verify_group: int | None = None,
                batch_size: int = 64) -> np.ndarray:
        """Joint samples (N, S, K, H) in data units: each sample one joint candidate (all targets at one level)."""
        assert self.module is not None, "call fit() first"
        model = self.module.model.cfg
        steps = self.chosen.steps if steps is None else steps
        selection = selection or self.chosen.selection
        if self.mode != "ebt" or selection == "proposal":
            steps, selection = 0, "proposal"
        group = 1 if selection in ("proposal", "refined") else (verify_group or self.cfg.task.verify_group)
        m = num_candidates or self.cfg.task.num_candidates
        generator = torch.Generator().manual_seed(self.cfg.seed)
        out = []
        for start in range(0, len(windows), batch_size):
            rows = [joint_window(np.asarray(w.past, dtype=np.float32), w.covariates, w.past.shape[1] + model.horizon,
                                 model.context_length, model.horizon, model.horizon, model.scaling,
                                 model.covariate_scaling)
                    for w in windows[start:start + batch_size]]
            batch = {key: torch.stack([r[key] for r in rows]) for key in rows[0]}
            thought = self.module.infer(batch, num_candidates=m, group=group, steps=steps, selection=selection,
                                        generator=generator)
            samples = thought.samples.detach().unflatten(-1, (model.targets, model.horizon))  # (B, S, K, H)
            out.append((samples * batch["scale"][:, None, :, None] + batch["loc"][:, None, :, None]).numpy())
        return np.concatenate(out)


def joint_wql(samples: np.ndarray, windows: list[TestWindow], season_length: int) -> float:
    """The mean over targets of each target's WQL (its samples read as level paths on the quantile grid)."""
    scores = []
    for k in range(samples.shape[2]):
        per_target = [TestWindow(w.item_id, w.start, w.past[k], w.future[k]) for w in windows]
        levels = FORECAST_LEVELS if samples.shape[1] == len(FORECAST_LEVELS) else None
        scores.append(score_windows(list(samples[:, :, k]), per_target, season_length, levels=levels)["wql"])
    return float(np.mean(scores))


def energy_score(samples: np.ndarray, windows: list[TestWindow]) -> dict[str, float]:
    """scoringrules' energy score of joint samples (N, S, K, H), each target scaled by its window's mean |past|:
    over the K targets at each step (coherence across targets, averaged over steps), and over all K x H at once."""
    scale = np.stack([np.nanmean(np.abs(w.past), axis=1) for w in windows])[:, None, :, None]  # (N, 1, K, 1)
    scale = np.where(scale > 0, scale, 1.0)
    truth = np.stack([w.future for w in windows])[:, None] / scale  # (N, 1, K, H)
    x = samples / scale
    per_step = sr.energy_score(truth[:, 0].transpose(0, 2, 1), x.transpose(0, 3, 1, 2), m_axis=-2, v_axis=-1)
    whole = sr.energy_score(truth[:, 0].reshape(len(x), -1), x.reshape(*x.shape[:2], -1), m_axis=-2, v_axis=-1)
    return {"energy_score_per_step": float(np.mean(per_step)), "energy_score": float(np.mean(whole))}


def independent_coupling(samples: np.ndarray, seed: int = 0) -> np.ndarray:
    """Samples (N, S, K, H) with each target's sample order permuted independently: the joint samples a set of
    independent per-target forecasts gives (the same marginals, no dependence across targets)."""
    rng = np.random.default_rng(seed)
    out = samples.copy()
    for n in range(samples.shape[0]):
        for k in range(samples.shape[2]):
            out[n, :, k] = samples[n, rng.permutation(samples.shape[1]), k]
    return out


def joint_series(frame: pd.DataFrame, series: list[Series], targets: list[str], name: str) -> list[Series]:
    """Series (frame_to_series of a long frame loaded with target_col=targets[0]) with all `targets` columns as their
    (K, T) values; a missing or non-numeric column is a DataError naming it."""
    missing = [t for t in targets[1:] if t not in frame.columns]
    if missing:
        raise DataError(f"{name}: target column {missing[0]!r} not found; available columns: "
                        f"{[c for c in frame.columns if c not in ('item_id', 'timestamp')]}")
    ids = frame["item_id"].astype(str).to_numpy()
    order = np.argsort(ids, kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    values = np.stack([frame["target"].to_numpy(np.float32), *(numeric_column(frame, t, name) for t in targets[1:])])
    bounds = np.concatenate([[0], np.flatnonzero(ids[order][1:] != ids[order][:-1]) + 1, [len(ids)]])
    return [replace(s, target=values[:, a:b].copy()) for s, a, b in zip(series, bounds[:-1], bounds[1:])]


def joint_forecast_frame(dataset: JointDataset, samples: np.ndarray, levels: tuple[float, ...] | None) -> pd.DataFrame:
    """One row per series, target and future step: the mean and the 0.1..0.9 quantiles of the joint samples."""
    from ebt_forecast.tasks.forecast.output import forecast_frame

    parts = []
    for k, name in enumerate(dataset.targets):
        part = forecast_frame(ForecastDataset(dataset.name, dataset.freq, dataset.horizon, dataset.season_length,
                                              [replace(s, target=s.target[k]) for s in dataset.train]),
                              list(samples[:, :, k]), levels)
        part.insert(1, "target", name)
        parts.append(part)
    return pd.concat(parts, ignore_index=True).sort_values(["item_id", "target", "timestamp"], kind="stable")
