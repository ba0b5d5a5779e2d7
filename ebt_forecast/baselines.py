"""Non-EBT baselines sharing one forecaster protocol.

Every forecaster has ``name``, ``fit(task)`` (trains on ``task.train`` only) and
``predict(windows, task)`` returning one ``(num_samples, horizon)`` float32 array per window, and after
``fit`` the fields ``train_seconds`` and ``train_steps`` (0 for untrained models).
"""
from __future__ import annotations

import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ebt_forecast.data.types import ForecastTask, TestWindow
from ebt_forecast.data.windows import mean_abs_scale, split_train_val

__all__ = [
    "Forecaster",
    "SeasonalNaive",
    "DeepARBaseline",
    "PointPlusGaussian",
    "seasonal_naive_forecast",
    "mean_abs_scale",
    "split_validation_tail",
]


@runtime_checkable
class Forecaster(Protocol):
    name: str
    train_seconds: float
    train_steps: int

    def fit(self, task: ForecastTask) -> "Forecaster": ...

    def predict(self, windows: list[TestWindow], task: ForecastTask) -> list[np.ndarray]: ...


# --------------------------------------------------------------------------------------------------
# helpers


def seasonal_naive_forecast(past: np.ndarray, horizon: int, season_length: int) -> np.ndarray:
    """Repeat the last season of ``past``: ``y_hat[h] = past[n - m + (h mod m)]``.

    NaN-safe: a missing value is replaced by the last observed value of the same phase (stepping
    back whole seasons), else by the last observed value of the series, else 0. With a past shorter
    than one season (or ``m < 1``) this is the naive forecast (last observed value).
    """
    past = np.asarray(past, dtype=np.float64).ravel()
    n = len(past)
    obs = np.flatnonzero(np.isfinite(past))
    last_obs = past[obs[-1]] if obs.size else 0.0
    m = int(season_length) if season_length else 1
    if m < 1 or n < m:
        return np.full(horizon, last_obs)
    out = np.empty(horizon)
    for h in range(horizon):
        idx = n - m + (h % m)
        while idx >= 0 and not np.isfinite(past[idx]):
            idx -= m
        out[h] = past[idx] if idx >= 0 else last_obs
    return out


def _tail(past: np.ndarray, context: int | None) -> np.ndarray:
    return past[-context:] if context else past


def split_validation_tail(
    task: ForecastTask, length: int | None = None
) -> tuple[ForecastTask, list[TestWindow]]:
    """Cut the last ``length`` (default: horizon) steps of every training series off as validation.

    Returns the shortened task (no test windows) and one validation window per series long enough
    (`split_train_val`); shorter series stay whole in the training set.
    """
    train, val = split_train_val(task.train, task.horizon if length is None else int(length), 1)
    return replace(task, name=f"{task.name}/val-cut", train=train, test_windows=[]), val


# --------------------------------------------------------------------------------------------------
# seasonal naive


class SeasonalNaive:
    """Repeat the last season; one "sample" per window so every quantile equals the point forecast.

    This is the Chronos / GIFT-Eval convention for the seasonal naive reference model.
    ``season_length=None`` uses ``task.season_length``.
    """

    def __init__(self, season_length: int | None = None, name: str = "seasonal_naive"):
        self.season_length = season_length
        self.name = name
        self.train_seconds = 0.0
        self.train_steps = 0

    def fit(self, task: ForecastTask) -> "SeasonalNaive":
        self.train_seconds = 0.0
        self.train_steps = 0
        return self

    def predict(self, windows: list[TestWindow], task: ForecastTask) -> list[np.ndarray]:
        m = self.season_length if self.season_length is not None else task.season_length
        return [
            seasonal_naive_forecast(w.past, task.horizon, m)[None, :].astype(np.float32)
            for w in windows
        ]


# --------------------------------------------------------------------------------------------------
# DeepAR (GluonTS torch)


# gluonts 0.17 indexes tensors with a list (torch deprecation warning on every batch)
_GLUONTS_INDEXING_WARNING = "Using a non-tuple sequence for multidimensional indexing"


class DeepARBaseline:
    """GluonTS's torch ``DeepAREstimator`` (Student-t output), trained for exactly ``max_steps``
    optimizer steps on ``task.train`` (no validation split, GluonTS default lags / time features).

    ``num_batches_per_epoch`` defaults to ``min(50, max_steps)`` (the GluonTS default epoch size);
    ``max_epochs = ceil(max_steps / num_batches_per_epoch)`` and ``max_steps`` stops training at
    exactly ``max_steps``. GluonTS keeps the weights of the epoch with the lowest train loss.
    Seeded with ``lightning.seed_everything(seed)`` before training and ``torch.manual_seed(seed)``
    before sampling. On CPU, ``deterministic=True`` is passed to the Trainer and the global torch
    determinism flag is restored afterwards.
    """

    def __init__(
        self,
        context_length: int | None = None,
        max_steps: int = 1000,
        batch_size: int = 32,
        lr: float = 1e-3,
        num_samples: int = 100,
        seed: int = 0,
        hidden_size: int = 40,
        num_layers: int = 2,
        dropout_rate: float = 0.1,
        num_batches_per_epoch: int | None = None,
        accelerator: str = "cpu",
        enable_progress_bar: bool = False,
        estimator_kwargs: dict[str, Any] | None = None,
        trainer_kwargs: dict[str, Any] | None = None,
        name: str = "deepar",
    ):
        if max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        self.context_length = context_length
        self.max_steps = int(max_steps)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.dropout_rate = float(dropout_rate)
        self.num_batches_per_epoch = num_batches_per_epoch
        self.accelerator = accelerator
        self.enable_progress_bar = enable_progress_bar
        self.estimator_kwargs = dict(estimator_kwargs or {})
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.name = name
        self.train_seconds = 0.0
        self.train_steps = 0
        self.predictor = None

    @staticmethod
    def _dataset(entries: list[dict], freq: str):
        from gluonts.dataset.common import ListDataset

        return ListDataset(entries, freq=freq)

    def fit(self, task: ForecastTask) -> "DeepARBaseline":
        import lightning
        import torch
        from gluonts.torch.model.deepar import DeepAREstimator

        usable = [s for s in task.train if len(s.target) > task.horizon]
        if not usable:
            raise ValueError(
                f"DeepARBaseline: no training series longer than the horizon ({task.horizon})"
            )
        train_ds = self._dataset(
            [
                {"start": s.start, "target": np.asarray(s.target, dtype=np.float32), "item_id": s.item_id}
                for s in task.train
            ],
            task.freq,
        )
        nbpe = self.num_batches_per_epoch or min(50, self.max_steps)
        max_epochs = math.ceil(self.max_steps / nbpe)
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        with tempfile.TemporaryDirectory(prefix="deepar_") as tmp:
            trainer_kwargs: dict[str, Any] = dict(
                max_steps=self.max_steps,
                max_epochs=max_epochs,
                accelerator=self.accelerator,
                devices=1,
                enable_progress_bar=self.enable_progress_bar,
                enable_model_summary=False,
                logger=False,
                default_root_dir=tmp,
                deterministic=self.accelerator == "cpu",
            )
            # GluonTS always adds a ModelCheckpoint callback, so checkpointing cannot be disabled;
            # checkpoints go to a temporary directory that is removed after training.
            trainer_kwargs.update(self.trainer_kwargs)
            estimator = DeepAREstimator(
                freq=task.freq,
                prediction_length=task.horizon,
                context_length=self.context_length,
                num_layers=self.num_layers,
                hidden_size=self.hidden_size,
                lr=self.lr,
                dropout_rate=self.dropout_rate,
                batch_size=self.batch_size,
                num_batches_per_epoch=nbpe,
                num_parallel_samples=self.num_samples,
                trainer_kwargs=trainer_kwargs,
                **self.estimator_kwargs,
            )
            lightning.seed_everything(self.seed, workers=True, verbose=False)
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_GLUONTS_INDEXING_WARNING)
                    out = estimator.train_model(train_ds)
            finally:
                torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            self.train_seconds = time.perf_counter() - t0
        self.train_steps = int(out.trainer.global_step)
        predictor = out.predictor
        if self.accelerator == "cpu":
            predictor = predictor.to("cpu")
        self.predictor = predictor
        return self

    def predict(self, windows: list[TestWindow], task: ForecastTask) -> list[np.ndarray]:
        import torch

        if self.predictor is None:
            raise RuntimeError("DeepARBaseline.predict() called before fit()")
        if not windows:
            return []
        ds = self._dataset(
            [
                {"start": w.start, "target": np.asarray(w.past, dtype=np.float32), "item_id": str(i)}
                for i, w in enumerate(windows)
            ],
            task.freq,
        )
        torch.manual_seed(self.seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_GLUONTS_INDEXING_WARNING)
            out = [
                np.asarray(f.samples, dtype=np.float32)
                for f in self.predictor.predict(ds, num_samples=self.num_samples)
            ]
        if len(out) != len(windows):
            raise RuntimeError(f"DeepAR returned {len(out)} forecasts for {len(windows)} windows")
        return out


# --------------------------------------------------------------------------------------------------
# point forecast + Gaussian


class PointPlusGaussian:
    """Point forecaster plus Gaussian noise whose per-step sd is tuned on a validation tail.

    ``fit``: the wrapped point model (``point_forecaster_factory()``) is fitted on ``task.train``
    minus the last ``horizon`` steps of each series; on those held-out tails we measure, per
    horizon step ``h``, the root mean squared residual in mean-abs-scaled units,
    ``residual_sd[h] = sqrt(mean_i ((y_ih - yhat_ih) / scale_i)^2)``, with
    ``scale_i = mean |past_i|`` (last ``scale_context`` points if given). The RMS (not the
    centred sd) is the maximum-likelihood sd of a zero-mean Gaussian around the point, so a
    biased point model gets wider intervals. Nothing is refitted unless ``refit_on_full=True``.

    ``predict``: point = mean of the wrapped model's samples; returns
    ``point + residual_sd[h] * scale * N(0, 1)`` with ``num_samples`` draws, seeded by ``seed``
    (the same call gives the same samples).
    """

    def __init__(
        self,
        point_forecaster_factory: Callable[[], Forecaster],
        num_samples: int = 100,
        seed: int = 0,
        scale_context: int | None = None,
        refit_on_full: bool = False,
        name: str | None = None,
    ):
        self.point_forecaster_factory = point_forecaster_factory
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.scale_context = scale_context
        self.refit_on_full = refit_on_full
        self._name = name
        self.point_model: Forecaster | None = None
        self.residual_sd: np.ndarray | None = None
        self.num_validation_windows = 0
        self.train_seconds = 0.0
        self.train_steps = 0

    @property
    def name(self) -> str:
        if self._name is not None:
            return self._name
        inner = getattr(self.point_model, "name", None) or "point"
        return f"{inner}+gaussian"

    def _points(self, model: Forecaster, windows: list[TestWindow], task: ForecastTask) -> np.ndarray:
        preds = model.predict(windows, task)
        return np.stack([np.asarray(p, dtype=np.float64).reshape(-1, task.horizon).mean(0) for p in preds])

    def fit(self, task: ForecastTask) -> "PointPlusGaussian":
        t0 = time.perf_counter()
        cut_task, val = split_validation_tail(task)
        if not val:
            raise ValueError(
                "PointPlusGaussian: no training series is long enough for a validation tail"
            )
        model = self.point_forecaster_factory().fit(cut_task)
        points = self._points(model, val, cut_task)
        futures = np.stack([np.asarray(w.future, dtype=np.float64) for w in val])
        scales = np.array([mean_abs_scale(_tail(w.past, self.scale_context)) for w in val])
        resid = (futures - points) / scales[:, None]
        with np.errstate(invalid="ignore"):
            sq = np.where(np.isfinite(resid), resid**2, np.nan)
            counts = np.isfinite(sq).sum(0)
            sd = np.sqrt(np.nansum(sq, 0) / np.maximum(counts, 1))
        if counts.sum() == 0:
            raise ValueError("PointPlusGaussian: validation tails contain no observed values")
        if (counts == 0).any():  # steps never observed: use the pooled RMS
            pooled = math.sqrt(np.nansum(sq) / counts.sum())
            sd = np.where(counts > 0, sd, pooled)
        self.residual_sd = sd
        self.num_validation_windows = len(val)
        steps = int(getattr(model, "train_steps", 0))
        if self.refit_on_full:
            model = self.point_forecaster_factory().fit(task)
            steps += int(getattr(model, "train_steps", 0))
        self.point_model = model
        self.train_steps = steps
        self.train_seconds = time.perf_counter() - t0
        return self

    def predict(self, windows: list[TestWindow], task: ForecastTask) -> list[np.ndarray]:
        if self.point_model is None or self.residual_sd is None:
            raise RuntimeError("PointPlusGaussian.predict() called before fit()")
        if not windows:
            return []
        if len(self.residual_sd) != task.horizon:
            raise ValueError(
                f"fitted for horizon {len(self.residual_sd)}, task has horizon {task.horizon}"
            )
        points = self._points(self.point_model, windows, task)
        rng = np.random.default_rng(self.seed)
        out = []
        for w, p in zip(windows, points):
            sd = self.residual_sd * mean_abs_scale(_tail(w.past, self.scale_context))
            noise = rng.standard_normal((self.num_samples, task.horizon))
            out.append((p[None, :] + noise * sd[None, :]).astype(np.float32))
        return out

