"""GluonTS's API for the EBT: `EBTEstimator(...).train(dataset) -> EBTPredictor`, which yields SampleForecasts.

So `gluonts.evaluation.make_evaluation_predictions` and `Evaluator` work on it unchanged, and a
trained predictor saves and loads back as GluonTS predictors do (`serialize` / `deserialize`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from gluonts.model.forecast import SampleForecast
from gluonts.model.predictor import Predictor
from gluonts.time_feature import get_seasonality
from omegaconf import OmegaConf

from ebt_forecast.data.frames import gluonts_to_series, quiet_pandas
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.tasks.forecast.config import ForecasterConfig
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from ebt_forecast.tasks.forecast.module import ForecastModule
from ebt_forecast.tasks.forecast.sources import VerifierForecaster
from ebt_forecast.think import InferenceSetting


class EBTPredictor(Predictor):
    """A trained EBT forecaster behind GluonTS's Predictor interface."""

    def __init__(self, forecaster: EBTForecaster, prediction_length: int, freq: str):
        super().__init__(prediction_length=prediction_length)
        self.forecaster, self.freq = forecaster, freq

    def predict(self, dataset, **kwargs) -> Iterator[SampleForecast]:
        """One SampleForecast of the next prediction_length steps after each series' end; `info` holds
        what thinking did (setting, energies of the selected starts, passes for the whole call)."""
        series = gluonts_to_series(dataset, self.freq)
        empty = np.full(self.prediction_length, np.nan, dtype=np.float32)
        out = self.forecaster.predict([TestWindow(s.item_id, s.start, s.target, empty) for s in series])
        with quiet_pandas():
            for i, s in enumerate(series):
                info = {"steps": out.setting.steps, "selection": out.setting.selection,
                        "energies": out.energies[i], "forward_passes": out.forward_passes,
                        "backward_passes": out.backward_passes}
                yield SampleForecast(samples=out.samples[i], start_date=s.start + len(s.target), item_id=s.item_id,
                                     info=info)

    def serialize(self, path: Path) -> None:
        """Write the configuration, the inference choice and the weights (state dict) into folder `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        super().serialize(path)  # gluonts-config.json: lets gluonts' Predictor.deserialize(path) find this class
        f = self.forecaster
        meta = {"prediction_length": self.prediction_length, "freq": self.freq, "mode": f.mode,
                "season_length": f.season_length, "config": asdict(f.cfg),
                "chosen": asdict(f.chosen), "validation_scores": f.validation_scores,
                "train_seconds": f.train_seconds, "train_steps": f.train_steps,
                "verifier_choice": getattr(f, "verifier_choice", None)}
        (path / "predictor.json").write_text(json.dumps(meta, indent=2))
        torch.save(f.module.state_dict(), path / "weights.pt")

    @classmethod
    def deserialize(cls, path: Path, **kwargs) -> "EBTPredictor":
        """Load a predictor written by `serialize` (weights with weights_only=True)."""
        path = Path(path)
        meta = json.loads((path / "predictor.json").read_text())
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ForecasterConfig), meta["config"]))
        choice = meta.get("verifier_choice")
        forecaster = VerifierForecaster(cfg) if choice else EBTForecaster(cfg, meta["mode"])
        if choice:  # the verifier fits the fast forecasters per window at predict time: it needs the conventions
            forecaster.verifier_choice = choice
            forecaster.dataset = ForecastDataset("gluonts", meta["freq"], meta["prediction_length"],
                                                 meta["season_length"], [])
        forecaster.season_length = meta["season_length"]
        forecaster.chosen = InferenceSetting(**meta["chosen"])
        forecaster.validation_scores = meta["validation_scores"]
        forecaster.train_seconds, forecaster.train_steps = meta.get("train_seconds", 0.0), meta.get("train_steps", 0)
        model_cfg = forecaster.model_config(meta["prediction_length"], meta["season_length"])
        forecaster.module = ForecastModule(model_cfg, cfg.think, cfg.trainer, cfg.task, mode=meta["mode"])
        forecaster.module.load_state_dict(torch.load(path / "weights.pt", weights_only=True))
        forecaster.module.eval()
        return cls(forecaster, meta["prediction_length"], meta["freq"])


class EBTEstimator:
    """Trains the forecasting EBT (mode="ebt") or its feed-forward twin (mode="feedforward") on a GluonTS dataset.

    With `config.task.verifier.enabled` (the default) the EBT is the verifier above AutoETS / AutoTheta,
    exactly as the `forecast` command runs it; false gives the EBT alone.

    `num_samples` sample paths per forecast (the EBT's M level paths); None keeps `config.task.num_candidates`.
    """

    def __init__(self, prediction_length: int, freq: str, config: ForecasterConfig | None = None,
                 mode: str = "ebt", season_length: int | None = None, num_samples: int | None = None):
        self.prediction_length, self.freq, self.mode = prediction_length, freq, mode
        self.config = config or ForecasterConfig()
        if num_samples is not None:
            self.config = replace(self.config, task=replace(self.config.task, num_candidates=num_samples))
        self.config.validate()
        with quiet_pandas():
            self.season_length = season_length or int(get_seasonality(freq))

    def train(self, training_data, validation_data=None, **kwargs) -> EBTPredictor:
        """Fit on every series of training_data (validation is cut from its end); return the predictor."""
        series = gluonts_to_series(training_data, self.freq)
        dataset = ForecastDataset("gluonts", self.freq, self.prediction_length, self.season_length, series)
        verify = self.mode == "ebt" and self.config.task.verifier.enabled
        forecaster = (VerifierForecaster(self.config) if verify else EBTForecaster(self.config, self.mode)).fit(dataset)
        return EBTPredictor(forecaster, self.prediction_length, self.freq)
