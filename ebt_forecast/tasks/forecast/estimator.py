"""GluonTS's API for the EBT: `EBTEstimator(...).train(dataset) -> EBTPredictor`, which yields SampleForecasts.

So `gluonts.evaluation.make_evaluation_predictions` and `Evaluator` work on it unchanged, and a
trained predictor saves and loads back as GluonTS predictors do (`serialize` / `deserialize`).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from gluonts.model.forecast import SampleForecast
from gluonts.model.predictor import Predictor
from gluonts.time_feature import get_seasonality
from omegaconf import OmegaConf

from ebt_forecast import __version__
from ebt_forecast.data.covariates import check_horizon_covariates
from ebt_forecast.data.frames import gluonts_to_series, quiet_pandas
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.errors import DataError
from ebt_forecast.io import atomic_torch_save, atomic_write_text
from ebt_forecast.tasks.forecast.config import ForecasterConfig
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from ebt_forecast.tasks.forecast.module import ForecastModule
from ebt_forecast.tasks.forecast.pretrained import PretrainedForecaster
from ebt_forecast.tasks.forecast.sources import VerifierForecaster
from ebt_forecast.think import InferenceSetting


class EBTPredictor(Predictor):
    """A trained EBT forecaster behind GluonTS's Predictor interface."""

    def __init__(self, forecaster: EBTForecaster, prediction_length: int, freq: str, num_samples: int | None = None):
        super().__init__(prediction_length=prediction_length)
        self.forecaster, self.freq, self.num_samples = forecaster, freq, num_samples

    def predict(self, dataset, num_samples: int | None = None, **thinking) -> Iterator[SampleForecast]:
        """One SampleForecast of the next prediction_length steps after each series' end, with `num_samples`
        sample paths (default: the estimator's `num_samples`, else the 21 paths at the quantile grid
        0.025, 0.05, ..., 0.975); `info` holds what thinking did (setting, the paths' levels, energies of the
        selected starts, passes for the whole call). `thinking` (steps, selection, verify_group, policy, ...)
        overrides the validation-chosen setting, as the benchmark's and the study's rows do (for the verifier:
        its EBT alone)."""
        num_samples = num_samples or self.num_samples
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples={num_samples} is invalid: must be >= 1")
        series = gluonts_to_series(dataset, self.freq)
        empty = np.full(self.prediction_length, np.nan, dtype=np.float32)
        if self.covariate_slots:  # known-future covariates (feat_dynamic_real) must cover the horizon
            check_horizon_covariates(series, self.prediction_length, "feat_dynamic_real")
        out = self.forecaster.predict([TestWindow(s.item_id, s.start, s.target, empty, s.covariates) for s in series],
                                      num_candidates=num_samples, **thinking)
        with quiet_pandas():
            for i, s in enumerate(series):
                info = {"steps": out.setting.steps, "selection": out.setting.selection, "levels": out.levels,
                        "energies": out.energies[i], "forward_passes": out.forward_passes,
                        "backward_passes": out.backward_passes, "nonfinite": out.nonfinite,
                        "train_seconds": self.forecaster.train_seconds, "train_steps": self.forecaster.train_steps}
                yield SampleForecast(samples=out.samples[i], start_date=s.start + len(s.target), item_id=s.item_id,
                                     info=info)

    @property
    def covariate_slots(self) -> dict:
        """The covariate slots the EBT was trained with ({} without covariates)."""
        forecaster = getattr(self.forecaster, "ebt", self.forecaster)
        return forecaster.covariate_slots

    def serialize(self, path: Path) -> None:
        """Write the configuration, the inference choice and the weights (state dict) into folder `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        super().serialize(path)  # gluonts-config.json: lets gluonts' Predictor.deserialize(path) find this class
        verifier = self.forecaster if isinstance(self.forecaster, VerifierForecaster) else None
        f = verifier.ebt if verifier else self.forecaster  # the EBT whose weights are saved (the verifier's own)
        meta = {"prediction_length": self.prediction_length, "freq": self.freq, "mode": f.mode,
                "num_samples": self.num_samples, "package_version": __version__, "reserve_windows": f.reserve_windows,
                "season_length": f.season_length, "config": asdict(f.cfg),
                "chosen": asdict(f.chosen), "validation_scores": f.validation_scores,
                "train_seconds": self.forecaster.train_seconds, "train_steps": self.forecaster.train_steps,
                "verifier_choice": verifier.verifier_choice if verifier else None,
                "pretrained": isinstance(f, PretrainedForecaster), "covariate_slots": f.covariate_slots}
        if isinstance(f, PretrainedForecaster):  # the pretrained model's own record: deserialize rebuilds it from here
            atomic_write_text(path / "model.json", json.dumps(f.meta, indent=2))
        atomic_write_text(path / "predictor.json", json.dumps(meta, indent=2))
        atomic_torch_save(f.module.state_dict(), path / "weights.pt")

    @classmethod
    def from_pretrained(cls, model: str | Path | None = None, prediction_length: int = 24, freq: str = "h",
                        config: ForecasterConfig | None = None, season_length: int | None = None,
                        num_samples: int | None = None) -> "EBTPredictor":
        """The pretrained EBT (a packaged model's name, default `ebt_1m`, or a `pretrain` run folder) as a predictor:
        zero-shot, nothing trained. Horizons past the model's 64 steps roll on the median path."""
        with quiet_pandas():
            season = season_length or int(get_seasonality(freq))
        forecaster = PretrainedForecaster(model, config).fit(ForecastDataset("gluonts", freq, prediction_length,
                                                                             season, []))
        return cls(forecaster, prediction_length, freq, num_samples)

    @classmethod
    def deserialize(cls, path: Path, **kwargs) -> "EBTPredictor":
        """Load a predictor written by `serialize` (weights with weights_only=True)."""
        path = Path(path)
        if not (path / "predictor.json").is_file() or not (path / "weights.pt").is_file():
            raise DataError(f"{path} is not a saved EBT predictor (it needs predictor.json and weights.pt, "
                            "written by EBTPredictor.serialize or `ebt-forecast forecast save=DIR`)")
        meta = json.loads((path / "predictor.json").read_text())
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ForecasterConfig), meta["config"]))
        if meta.get("pretrained"):  # model.json + weights.pt in the folder: the (fine-tuned) pretrained EBT
            forecaster = PretrainedForecaster(path, cfg)
            forecaster.fit(ForecastDataset("gluonts", meta["freq"], meta["prediction_length"], meta["season_length"],
                                           []))
        else:
            forecaster = EBTForecaster(cfg, meta["mode"], reserve_windows=meta.get("reserve_windows", 0))
            forecaster.covariate_slots = meta.get("covariate_slots") or {}
            model_cfg = forecaster.model_config(meta["prediction_length"], meta["season_length"])
            forecaster.module = ForecastModule(model_cfg, cfg.think, cfg.trainer, cfg.task, mode=meta["mode"])
            forecaster.module.load_state_dict(torch.load(path / "weights.pt", weights_only=True))
            forecaster.module.eval()
        forecaster.season_length = meta["season_length"]
        forecaster.chosen = InferenceSetting(**meta["chosen"])
        forecaster.validation_scores = meta["validation_scores"]
        forecaster.train_seconds, forecaster.train_steps = meta.get("train_seconds", 0.0), meta.get("train_steps", 0)
        if meta.get("verifier_choice"):  # the verifier composes that EBT with the fast forecasters fitted per window
            verifier = VerifierForecaster(cfg, ebt=forecaster)
            verifier.verifier_choice = meta["verifier_choice"]
            verifier.dataset = ForecastDataset("gluonts", meta["freq"], meta["prediction_length"],
                                               meta["season_length"], [])
            verifier.train_seconds, verifier.train_steps = forecaster.train_seconds, forecaster.train_steps
            return cls(verifier, meta["prediction_length"], meta["freq"], meta.get("num_samples"))
        return cls(forecaster, meta["prediction_length"], meta["freq"], meta.get("num_samples"))


class EBTEstimator:
    """The pretrained EBT zero-shot (`pretrained`, default the packaged `ebt_1m`; `finetune_steps` > 0 adapts it to
    the training data first), or with `pretrained=None` the forecasting EBT (mode="ebt") or its feed-forward twin
    (mode="feedforward") trained from scratch on a GluonTS dataset.

    With `config.task.verifier.enabled` (default false) the EBT is the verifier above AutoETS / AutoTheta,
    exactly as the `forecast` command runs it; false gives the EBT alone.

    `num_samples` sample paths per forecast (level paths at the stratified levels (j + 0.5) / S, from every
    source the predictor uses); None gives the 21 paths at the quantile grid 0.025, 0.05, ..., 0.975.
    `predictor.predict(dataset, num_samples=S)` overrides it per call.
    """

    def __init__(self, prediction_length: int, freq: str, config: ForecasterConfig | None = None,
                 mode: str = "ebt", season_length: int | None = None, num_samples: int | None = None,
                 pretrained: str | Path | None = "ebt_1m", finetune_steps: int = 0):
        self.prediction_length, self.freq, self.mode = prediction_length, freq, mode
        self.pretrained, self.finetune_steps = pretrained, finetune_steps
        self.config = config or ForecasterConfig()
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples={num_samples} is invalid: must be >= 1")
        self.num_samples = num_samples
        self.config.validate()
        with quiet_pandas():
            self.season_length = season_length or int(get_seasonality(freq))

    def train(self, training_data, validation_data=None, **kwargs) -> EBTPredictor:
        """Fit on every series of training_data (validation is cut from its end); return the predictor."""
        series = gluonts_to_series(training_data, self.freq)
        dataset = ForecastDataset("gluonts", self.freq, self.prediction_length, self.season_length, series)
        if self.pretrained is not None:
            forecaster = PretrainedForecaster(self.pretrained, self.config, self.finetune_steps)
            if self.config.task.verifier.enabled:  # its energy verifies among its own and the fast sources' paths
                forecaster = VerifierForecaster(self.config, ebt=forecaster)
            return EBTPredictor(forecaster.fit(dataset), self.prediction_length, self.freq, self.num_samples)
        verify = self.mode == "ebt" and self.config.task.verifier.enabled
        forecaster = (VerifierForecaster(self.config) if verify else EBTForecaster(self.config, self.mode)).fit(dataset)
        return EBTPredictor(forecaster, self.prediction_length, self.freq, self.num_samples)
