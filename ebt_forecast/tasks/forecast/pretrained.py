"""The pretrained patch EBT as a forecaster: zero-shot by default, `finetune_steps` to adapt it to a data set.

    PretrainedForecaster()                    the model shipped in the package (ebt_forecast/pretrained/ebt_1m)
    PretrainedForecaster("results/pretrain")  a run folder of `ebt-forecast pretrain` (model.json + weights.pt)
    .fit(dataset)                             zero-shot: records the horizon and season, no training; with
                                              finetune_steps > 0, trains that many steps on the data set's windows
    .predict(windows)                         EBTForecaster.predict on the pretrained module, cut to the horizon;
                                              horizons past the model's (64) roll: each chunk's median path joins
                                              the context of the next chunk (as Chronos and TimesFM roll); then
                                              each window's median may move to seasonal naive's, chosen on its own
                                              last task.anchor_backtests horizons (anchor.py; 0 = off)

The model sees the last `context_length` (512) points of each window, scaled by their mean |x|: one model for
every frequency. The seasonal-naive thinking start uses the data set's season.
"""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ebt_forecast.data.covariates import covariate_slots
from ebt_forecast.data.types import ForecastDataset, Series, TestWindow
from ebt_forecast.data.windows import TrainWindowDataset
from ebt_forecast.errors import ConfigError, DataError
from ebt_forecast.tasks.base import TrainerConfig, config_key, fit_module
from ebt_forecast.tasks.forecast.anchor import anchor_choice, candidate_medians, moved
from ebt_forecast.tasks.forecast.config import ForecasterConfig
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster, ThoughtForecast
from ebt_forecast.tasks.forecast.module import ForecastModule
from ebt_forecast.tasks.forecast.pretrain import load_pretrained
from ebt_forecast.think import InferenceSetting

PACKAGED_DIR = Path(__file__).resolve().parents[2] / "pretrained"  # ebt_forecast/pretrained/<name>/
DEFAULT_MODEL = "ebt_1m"


def packaged_models() -> list[str]:
    """Names of the pretrained models shipped inside the package."""
    return sorted(p.name for p in PACKAGED_DIR.glob("*") if (p / "model.json").is_file())


def pretrained_folder(model: str | Path | None = None) -> Path:
    """The folder of a pretrained model: a path to a run folder, or the name of a packaged model (None: the
    default); DataError names what is missing."""
    if model is None or str(model) in packaged_models() or str(model) == DEFAULT_MODEL:
        folder = PACKAGED_DIR / str(model or DEFAULT_MODEL)
    else:
        folder = Path(model)
    if not (folder / "model.json").is_file() or not (folder / "weights.pt").is_file():
        shipped = ", ".join(packaged_models()) or "none"
        raise DataError(f"pretrained model {str(model or DEFAULT_MODEL)!r}: {folder} has no model.json + weights.pt "
                        f"(give a run folder of `ebt-forecast pretrain` or a packaged model: {shipped})")
    return folder


class PaddedHorizon(Dataset):
    """Training windows whose future (H <= the model's horizon) is right-padded to the model's horizon with mask 0,
    as the pretraining stream pads them."""

    def __init__(self, windows: TrainWindowDataset, horizon: int):
        self.windows, self.horizon = windows, horizon

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        item = dict(self.windows[idx])
        pad = self.horizon - item["future"].shape[-1]
        for key in ("future", "future_mask"):
            item[key] = torch.nn.functional.pad(item[key], (0, pad))
        return item


class PretrainedForecaster(EBTForecaster):
    """EBTForecaster whose module comes pretrained: no training per call unless `finetune_steps` > 0."""

    def __init__(self, model: str | Path | None = None, cfg: ForecasterConfig | None = None,
                 finetune_steps: int = 0, finetune: TrainerConfig | None = None, name: str | None = None,
                 slot_lr_multiplier: float | None = None):
        if finetune_steps < 0:
            raise ConfigError(f"finetune={finetune_steps} is invalid: must be >= 0 steps")
        self.folder = pretrained_folder(model)
        module = load_pretrained(self.folder)
        self.meta = json.loads((self.folder / "model.json").read_text())
        base = cfg or ForecasterConfig()
        # inference follows the pretrained model's own thinking and task settings; `cfg` chooses selection etc.
        cfg = replace(base, model=module.model.cfg.backbone, think=module.think_cfg,
                      task=replace(module.task_cfg, selection=base.task.selection,
                                   num_candidates=base.task.num_candidates, verify_group=base.task.verify_group,
                                   verifier=base.task.verifier, anchor_backtests=base.task.anchor_backtests))
        default_name = "ebt_zero_shot" if not finetune_steps else f"ebt_finetune{finetune_steps}"
        super().__init__(cfg, module.mode, name=name or default_name)
        self.module = module
        slot_names = ("past_covariates", "future_covariates", "static_real", "static_cardinalities")
        self.covariate_slots = ({k: getattr(module.model.cfg, k) for k in slot_names}
                                if module.model.cfg.has_covariates else {})  # a fine-tuned predictor's, loaded back
        self.finetune_steps = finetune_steps
        # the new covariate slots' rate over the fine-tuning rate (default: the given config's task.covariate_slot_lr)
        self.slot_lr_multiplier = slot_lr_multiplier or base.task.covariate_slot_lr
        self.finetune_cfg = finetune or TrainerConfig(max_steps=finetune_steps, batch_size=32, lr=1e-4,
                                                      warmup_steps=0, progress_bar=False)
        self.horizon: int | None = None
        self._pristine = copy.deepcopy(module.state_dict()) if finetune_steps else None

    @property
    def model_horizon(self) -> int:
        return self.module.model.cfg.horizon

    def fit(self, dataset: ForecastDataset) -> "PretrainedForecaster":
        """Zero-shot: record the data set's horizon and season (the seasonal-naive start's period); fine-tune when
        asked (from the pretrained weights every call); choose thinking on the validation tail when
        task.selection=auto."""
        self.horizon, self.season_length = dataset.horizon, dataset.season_length
        self._covariate_slots(covariate_slots(dataset.train))
        self.module.model.cfg = replace(self.module.model.cfg, season_length=dataset.season_length)
        auto = self.cfg.task.selection == "auto" and bool(dataset.train)  # no series (from_pretrained): proposals
        # the validation tail: where thinking (selection=auto) and the verifier choose; fine-tuning never sees it
        train, self.val_windows = self.split(dataset) if dataset.train else ([], [])
        if self.finetune_steps:
            self.module.load_state_dict(self._pristine)
            self._finetune(train, dataset)
        self.module.eval()
        # validation calls name their setting, so they are not anchored: thinking is chosen on the model's own forecasts
        self.chosen = self._choose_on_validation() if auto else InferenceSetting(self.cfg.think.infer_steps, "proposal")
        return self

    def _covariate_slots(self, slots: dict) -> None:
        """Give the pretrained model the data's covariate slots (zero-initialised: it starts as the model without
        them); reading covariates needs fine-tuning, so zero-shot with covariates is refused."""
        model = self.module.model.cfg
        if not slots or all(getattr(model, k) == v for k, v in slots.items()):
            return
        if not self.finetune_steps:
            raise ConfigError("the pretrained EBT was trained without covariates and cannot read them zero-shot: "
                              "give finetune=N (adapt it to the covariates, e.g. finetune=300) or pretrained=null "
                              "(train one on the file)")
        if model.has_covariates:
            raise ConfigError(f"{self.folder} was fine-tuned with other covariates ({self.covariate_slots}); "
                              f"these data have {slots}: start from a packaged model")
        scaling = self.cfg.task.covariate_scaling if self.cfg else "window"
        module = ForecastModule(replace(model, **slots, covariate_scaling=scaling), self.module.think_cfg, self.module.optim_cfg,
                                self.module.task_cfg, mode=self.module.mode)
        missing, unexpected = module.load_state_dict(self._pristine, strict=False)
        assert not unexpected and all(k.startswith("model.covariates.") for k in missing), (missing, unexpected)
        module.lr_multipliers = {"model.covariates.": self.slot_lr_multiplier}
        self.module, self.covariate_slots = module, slots
        self._pristine = copy.deepcopy(module.state_dict())
        self.meta = {**self.meta, "model": {**self.meta["model"], **slots}}  # serialize: rebuilt with the slots

    def _finetune(self, train: list[Series], dataset: ForecastDataset) -> None:
        t = replace(self.finetune_cfg, max_steps=self.finetune_steps)
        model = self.module.model.cfg
        windows = TrainWindowDataset(train, model.context_length, min(dataset.horizon, model.horizon),
                                     num_samples=t.max_steps * t.batch_size, seed=self.cfg.seed, scaling=model.scaling,
                                     covariate_horizon=model.horizon, covariate_scaling=model.covariate_scaling)
        self.module.optim_cfg = t
        self.module.train()  # fit() left it in eval mode
        key = config_key(self.cfg.think, self.cfg.task, t.settings(), self.cfg.seed, str(self.folder), dataset.name,
                         [len(s) for s in train])
        report = fit_module(self.module, PaddedHorizon(windows, model.horizon), t, self.cfg.seed, run_key=key)
        self.train_seconds, self.train_steps = report.seconds, report.steps

    def predict(self, windows: list[TestWindow], dataset: ForecastDataset | None = None, anchor: bool | None = None,
                **kwargs) -> ThoughtForecast:
        """EBTForecaster.predict cut to the horizon; past the model's horizon, chunks roll on their median path;
        then anchored (task.anchor_backtests) when `anchor`, by default when the call serves the forecaster's own
        setting (no steps, selection or extra starts given: what `forecast` and the predictors call)."""
        horizon = dataset.horizon if dataset is not None else self.horizon
        if horizon is None:
            raise DataError("PretrainedForecaster.predict: call fit(dataset) first, or pass dataset= (the horizon)")
        out = self._rolled(windows, horizon, **kwargs)
        if anchor is None:
            anchor = all(kwargs.get(k) is None for k in ("steps", "selection", "extra_starts"))
        backtests = self.cfg.task.anchor_backtests
        if (not anchor or not backtests or kwargs.get("extra_starts") is not None
                or self.module.model.cfg.has_covariates):  # backtests would need the covariates' past slices
            return out
        season = self.season_length if dataset is None else dataset.season_length

        def proposals(cut: list[TestWindow]) -> tuple[np.ndarray, tuple[float, ...] | None]:
            fan = self._rolled(cut, horizon, steps=0, selection="proposal")
            return fan.samples, fan.levels

        pick = anchor_choice(windows, horizon, season, backtests, proposals)
        medians = candidate_medians(out.samples, [np.asarray(w.past) for w in windows], horizon, season)
        return replace(out, samples=moved(out.samples, medians, pick).astype(out.samples.dtype), anchor=pick)

    def _rolled(self, windows: list[TestWindow], horizon: int, **kwargs) -> ThoughtForecast:
        """EBTForecaster.predict over `horizon` steps: one pass up to the model's horizon, rolled chunks past it."""
        if horizon > self.model_horizon and self.module.model.cfg.has_covariates:
            raise DataError(f"with covariates the pretrained EBT forecasts up to {self.model_horizon} steps in one "
                            f"pass; horizon {horizon} would roll past the covariates' window")
        pasts = [np.asarray(w.past, dtype=np.float32) for w in windows]
        extra = kwargs.get("extra_starts")
        if extra is not None:  # other forecasters' paths as starts (the verifier): padded to the model's horizon
            if horizon > self.model_horizon:
                raise DataError(f"the verifier over fast sources reads one pass of the pretrained model: horizon "
                                f"{horizon} must be <= {self.model_horizon} (or task.verifier.enabled=false)")
            pad = self.model_horizon - extra.shape[-1]
            kwargs["extra_starts"] = np.pad(extra, [(0, 0)] * (extra.ndim - 1) + [(0, pad)], mode="edge")
        chunks: list[ThoughtForecast] = []
        done = 0
        while done < horizon:
            take = min(self.model_horizon, horizon - done)
            empty = np.full(self.model_horizon, np.nan, dtype=np.float32)
            out = super().predict([TestWindow(w.item_id, w.start, p, empty, w.covariates)
                                   for w, p in zip(windows, pasts)], **kwargs)
            chunks.append(_cut(out, take))
            done += take
            if done < horizon:
                median = np.median(out.samples[..., :take], axis=1)
                pasts = [np.concatenate([p, m]).astype(np.float32) for p, m in zip(pasts, median)]
        return chunks[0] if len(chunks) == 1 else _join(chunks)


def _cut(out: ThoughtForecast, take: int) -> ThoughtForecast:
    """The first `take` steps of every path of a forecast."""
    return replace(out, samples=out.samples[..., :take], proposals=out.proposals[..., :take],
                   candidates=out.candidates[..., :take], path=out.path[..., :take])


def _join(chunks: list[ThoughtForecast]) -> ThoughtForecast:
    """Rolled chunks as one forecast: paths joined along the horizon, energies of the first chunk, passes summed."""
    first = chunks[0]
    joined = {k: np.concatenate([getattr(c, k) for c in chunks], axis=-1)
              for k in ("samples", "proposals", "candidates", "path")}
    return replace(first, **joined, forward_passes=sum(c.forward_passes for c in chunks),
                   backward_passes=sum(c.backward_passes for c in chunks), nonfinite=sum(c.nonfinite for c in chunks))
