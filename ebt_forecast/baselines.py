"""Non-EBT baselines sharing one forecaster protocol.

Every forecaster has ``name``, ``fit(dataset)`` (trains on ``dataset.train`` only) and
``predict(windows, dataset)`` returning one ``(num_samples, horizon)`` float32 array per window, and after
``fit`` the fields ``train_seconds`` and ``train_steps`` (0 for untrained models).
"""
from __future__ import annotations

import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ebt_forecast.data.covariates import covariate_slots
from ebt_forecast.data.frames import gluonts_fields
from ebt_forecast.data.types import Covariates, ForecastDataset, TestWindow
from ebt_forecast.metrics import FORECAST_LEVELS
from ebt_forecast.data.windows import mean_abs_scale, seasonal_naive_path, split_train_val

__all__ = [
    "Forecaster",
    "SeasonalNaive",
    "GluonTSBaseline",
    "DeepARBaseline",
    "PatchTSTBaseline",
    "PointPlusGaussian",
    "StatsForecastBaseline",
    "STATSFORECAST_QUANTILES",
    "fill_missing",
    "uncross_quantile_paths",
    "seasonal_naive_forecast",
    "mean_abs_scale",
    "split_validation_tail",
]


@runtime_checkable
class Forecaster(Protocol):
    name: str
    train_seconds: float
    train_steps: int

    def fit(self, dataset: ForecastDataset) -> "Forecaster": ...

    def predict(self, windows: list[TestWindow], dataset: ForecastDataset) -> list[np.ndarray]: ...


# --------------------------------------------------------------------------------------------------
# helpers


def seasonal_naive_forecast(past: np.ndarray, horizon: int, season_length: int) -> np.ndarray:
    """Repeat the last season of ``past``: ``y_hat[h] = past[n - m + (h mod m)]``.

    NaN-safe: a missing value is replaced by the last observed value of the same phase (stepping
    back whole seasons), else by the last observed value of the series, else 0. With a past shorter
    than one season (or ``m < 1``) this is the naive forecast (last observed value). The same rule
    as the EBT's seasonal-naive start (`data.windows.seasonal_naive_path`).
    """
    import torch

    past = np.asarray(past, dtype=np.float64).ravel()
    observed = np.isfinite(past)
    path = seasonal_naive_path(torch.from_numpy(np.where(observed, past, 0.0))[None],
                               torch.from_numpy(observed.astype(np.float64))[None], int(season_length or 1), horizon)
    return path[0].numpy()


def _tail(past: np.ndarray, context: int | None) -> np.ndarray:
    return past[-context:] if context else past


def split_validation_tail(
    dataset: ForecastDataset, length: int | None = None
) -> tuple[ForecastDataset, list[TestWindow]]:
    """Cut the last ``length`` (default: horizon) steps of every training series off as validation.

    Returns the shortened dataset (no test windows) and one validation window per series long enough
    (`split_train_val`); shorter series stay whole in the training set.
    """
    train, val = split_train_val(dataset.train, dataset.horizon if length is None else int(length), 1)
    return replace(dataset, name=f"{dataset.name}/val-cut", train=train, test_windows=[]), val


# --------------------------------------------------------------------------------------------------
# seasonal naive


class SeasonalNaive:
    """Repeat the last season; one "sample" per window so every quantile equals the point forecast.

    This is the Chronos / GIFT-Eval convention for the seasonal naive reference model.
    ``season_length=None`` uses ``dataset.season_length``.
    """

    def __init__(self, season_length: int | None = None, name: str = "seasonal_naive"):
        self.season_length = season_length
        self.name = name
        self.train_seconds = 0.0
        self.train_steps = 0

    def fit(self, dataset: ForecastDataset) -> "SeasonalNaive":
        self.train_seconds = 0.0
        self.train_steps = 0
        return self

    def predict(self, windows: list[TestWindow], dataset: ForecastDataset) -> list[np.ndarray]:
        m = self.season_length if self.season_length is not None else dataset.season_length
        return [
            seasonal_naive_forecast(w.past, dataset.horizon, m)[None, :].astype(np.float32)
            for w in windows
        ]


# --------------------------------------------------------------------------------------------------
# GluonTS torch models (DeepAR, PatchTST)


# gluonts 0.17 indexes tensors with a list (torch deprecation warning on every batch)
_GLUONTS_INDEXING_WARNING = "Using a non-tuple sequence for multidimensional indexing"


class GluonTSBaseline:
    """A GluonTS torch estimator (Student-t output) trained on ``dataset.train``; subclasses build the
    estimator in :meth:`_estimator`.

    ``num_batches_per_epoch`` defaults to ``min(50, max_steps)`` (the GluonTS default epoch size);
    ``max_epochs = ceil(max_steps / num_batches_per_epoch)`` and ``max_steps`` caps training at
    exactly ``max_steps`` optimiser steps.

    ``early_stopping_patience=None``: exactly ``max_steps`` steps on the whole training series, no
    validation; GluonTS keeps the weights of the epoch with the lowest (epoch-mean) train loss.
    ``early_stopping_patience=k``: the last ``horizon`` points of every training series long enough
    (:func:`split_validation_tail`; shorter series stay whole in training) are held out. GluonTS
    trains on the cut series and, after every epoch, computes ``val_loss`` (NLL of the held-out tail
    given the past, one window per validation series: its ``ValidationSplitSampler`` takes the last
    ``prediction_length`` points of each series in ``validation_data``, which therefore holds the
    full training series of the split items only). A Lightning ``EarlyStopping(val_loss, patience=k)``
    stops training after ``k`` epochs without improvement, and the ``ModelCheckpoint(val_loss)``
    GluonTS adds whenever validation data is given restores the best epoch's weights after training.

    After ``fit``: ``train_steps`` (optimiser steps run), ``train_seconds`` (wall time of GluonTS's
    ``train_model``), ``stopped_early`` and ``best_val_loss`` (``None`` without validation).
    Seeded with ``lightning.seed_everything(seed)`` before training and ``torch.manual_seed(seed)``
    before sampling. On CPU, ``deterministic=True`` is passed to the Trainer and the global torch
    determinism flag is restored afterwards.
    """

    reads_covariates = False  # whether fit passes the data's known-future and static covariates to the model

    def __init__(
        self,
        *,
        context_length: int | None = None,
        max_steps: int = 1000,
        batch_size: int = 32,
        lr: float = 1e-3,
        num_samples: int = 100,
        seed: int = 0,
        num_batches_per_epoch: int | None = None,
        early_stopping_patience: int | None = None,
        accelerator: str = "cpu",
        enable_progress_bar: bool = False,
        estimator_kwargs: dict[str, Any] | None = None,
        trainer_kwargs: dict[str, Any] | None = None,
        name: str,
    ):
        if max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if early_stopping_patience is not None and early_stopping_patience < 1:
            raise ValueError("early_stopping_patience must be None or >= 1")
        self.context_length = context_length
        self.max_steps = int(max_steps)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.num_batches_per_epoch = num_batches_per_epoch
        self.early_stopping_patience = early_stopping_patience
        self.accelerator = accelerator
        self.enable_progress_bar = enable_progress_bar
        self.estimator_kwargs = dict(estimator_kwargs or {})
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.name = name
        self.covariates: dict = {}  # the covariate slots fit found (for models that read covariates)
        self._ahead = 0
        self.train_seconds = 0.0
        self.train_steps = 0
        self.stopped_early = False
        self.best_val_loss: float | None = None
        self.predictor = None

    def _estimator(self, dataset: ForecastDataset, common: dict[str, Any]):
        """The GluonTS estimator; ``common`` holds prediction_length, context_length, lr, batch_size,
        num_batches_per_epoch and trainer_kwargs."""
        raise NotImplementedError

    @staticmethod
    def _dataset(entries: list[dict], freq: str):
        from gluonts.dataset.common import ListDataset

        return ListDataset(entries, freq=freq)

    def _entry(self, item_id: str, start, target: np.ndarray, cov: Covariates | None = None) -> dict:
        """A GluonTS entry; with `covariates` (set by fit when the data carry them and the model reads them) its
        known-future and static covariates as feat_* fields (past-only covariates have no DeepAR / PatchTST field)."""
        entry = {"start": start, "target": np.asarray(target, dtype=np.float32), "item_id": item_id}
        if self.covariates and cov is not None:
            length = len(entry["target"])
            entry.update({k: v for k, v in gluonts_fields(cov).items() if k != "past_feat_dynamic_real"})
            if "feat_dynamic_real" in entry:  # training entries: as long as the target (prediction: + horizon)
                entry["feat_dynamic_real"] = entry["feat_dynamic_real"][:, :length + self._ahead]
        return entry

    def fit(self, dataset: ForecastDataset) -> "GluonTSBaseline":
        import lightning
        import torch

        cls = type(self).__name__
        val_ds = None
        train_series = dataset.train
        self.covariates = covariate_slots(dataset.train) if self.reads_covariates else {}
        self._ahead = 0
        full = {s.item_id: s.covariates for s in dataset.train}
        if self.early_stopping_patience is not None:
            cut, val = split_validation_tail(dataset)
            if not val:
                raise ValueError(f"{cls}: no training series is long enough for a validation tail")
            train_series = cut.train
            val_ds = self._dataset(
                [self._entry(w.item_id, w.start, np.concatenate([w.past, w.future]), full[w.item_id]) for w in val],
                dataset.freq,
            )
        if not any(len(s.target) > dataset.horizon for s in train_series):
            # GluonTS samples training windows with a full horizon of future; none -> endless loop
            raise ValueError(f"{cls}: no training series longer than the horizon ({dataset.horizon})")
        train_ds = self._dataset([self._entry(s.item_id, s.start, s.target, s.covariates) for s in train_series],
                                 dataset.freq)
        nbpe = self.num_batches_per_epoch or min(50, self.max_steps)
        max_epochs = math.ceil(self.max_steps / nbpe)
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        with tempfile.TemporaryDirectory(prefix="gluonts_") as tmp:
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
            if val_ds is not None:
                from lightning.pytorch.callbacks import EarlyStopping

                stopper = EarlyStopping(monitor="val_loss", patience=int(self.early_stopping_patience), mode="min")
                trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), stopper]
                trainer_kwargs.setdefault("num_sanity_val_steps", 0)
            estimator = self._estimator(
                dataset,
                dict(
                    prediction_length=dataset.horizon,
                    context_length=self.context_length,
                    lr=self.lr,
                    batch_size=self.batch_size,
                    num_batches_per_epoch=nbpe,
                    trainer_kwargs=trainer_kwargs,
                ),
            )
            lightning.seed_everything(self.seed, workers=True, verbose=False)
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_GLUONTS_INDEXING_WARNING)
                    out = estimator.train_model(train_ds, validation_data=val_ds)
            finally:
                torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            self.train_seconds = time.perf_counter() - t0
        self.train_steps = int(out.trainer.global_step)
        # EarlyStopping sets should_stop; reaching max_steps / max_epochs does not
        self.stopped_early = bool(val_ds is not None and out.trainer.should_stop and self.train_steps < self.max_steps)
        best = out.trainer.checkpoint_callback.best_model_score if val_ds is not None else None
        self.best_val_loss = None if best is None else float(best)
        predictor = out.predictor
        if self.accelerator == "cpu":
            predictor = predictor.to("cpu")
        self.predictor = predictor
        return self

    def predict(self, windows: list[TestWindow], dataset: ForecastDataset) -> list[np.ndarray]:
        import torch

        if self.predictor is None:
            raise RuntimeError(f"{type(self).__name__}.predict() called before fit()")
        if not windows:
            return []
        self._ahead = dataset.horizon  # known-future covariates run over the horizon
        ds = self._dataset([self._entry(str(i), w.start, w.past, w.covariates) for i, w in enumerate(windows)],
                           dataset.freq)
        torch.manual_seed(self.seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_GLUONTS_INDEXING_WARNING)
            out = [
                # DeepAR returns sample forecasts; PatchTST distribution forecasts, sampled here
                np.asarray(
                    f.samples if hasattr(f, "samples") else f.to_sample_forecast(self.num_samples).samples,
                    dtype=np.float32,
                )
                for f in self.predictor.predict(ds, num_samples=self.num_samples)
            ]
        if len(out) != len(windows):
            raise RuntimeError(f"{self.name} returned {len(out)} forecasts for {len(windows)} windows")
        return out


class DeepARBaseline(GluonTSBaseline):
    """GluonTS's torch ``DeepAREstimator`` (Student-t output, GluonTS default lags / time features);
    training, validation and seeding as in :class:`GluonTSBaseline`."""

    reads_covariates = True  # feat_dynamic_real (known-future), feat_static_real / _cat

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
        *,
        name: str = "deepar",
        **common: Any,
    ):
        super().__init__(context_length=context_length, max_steps=max_steps, batch_size=batch_size, lr=lr,
                         num_samples=num_samples, seed=seed, name=name, **common)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.dropout_rate = float(dropout_rate)

    def _estimator(self, dataset: ForecastDataset, common: dict[str, Any]):
        from gluonts.torch.model.deepar import DeepAREstimator

        slots = self.covariates
        features = dict(num_feat_dynamic_real=slots.get("future_covariates", 0),
                        num_feat_static_real=slots.get("static_real", 0),
                        num_feat_static_cat=len(slots.get("static_cardinalities", [])),
                        cardinality=slots.get("static_cardinalities") or None)
        return DeepAREstimator(
            freq=dataset.freq, num_layers=self.num_layers, hidden_size=self.hidden_size,
            dropout_rate=self.dropout_rate, num_parallel_samples=self.num_samples,
            **features, **common, **self.estimator_kwargs,
        )


class PatchTSTBaseline(GluonTSBaseline):
    """GluonTS's torch ``PatchTSTEstimator`` (Student-t output, mean scaling), sized like the EBT's
    backbone: ``d_model``, ``nhead``, ``num_encoder_layers``, ``dim_feedforward``. ``patch_len``
    defaults to the EBT's rule (16 for horizons >= 24, else 4); ``stride = patch_len`` (non-overlapping
    patches). ``context_length=None`` is GluonTS's default, 10 x horizon. Training, validation and
    seeding as in :class:`GluonTSBaseline` (``common``: its keyword arguments)."""

    def __init__(
        self,
        context_length: int | None = None,
        max_steps: int = 1000,
        batch_size: int = 32,
        lr: float = 1e-3,
        num_samples: int = 100,
        seed: int = 0,
        d_model: int = 64,
        nhead: int = 4,
        num_encoder_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.1,
        patch_len: int | None = None,
        *,
        name: str = "patchtst",
        **common: Any,
    ):
        super().__init__(context_length=context_length, max_steps=max_steps, batch_size=batch_size, lr=lr,
                         num_samples=num_samples, seed=seed, name=name, **common)
        self.d_model = int(d_model)
        self.nhead = int(nhead)
        self.num_encoder_layers = int(num_encoder_layers)
        self.dim_feedforward = int(dim_feedforward)
        self.dropout = float(dropout)
        self.patch_len = patch_len

    def _estimator(self, dataset: ForecastDataset, common: dict[str, Any]):
        from gluonts.torch.model.patch_tst import PatchTSTEstimator

        patch = int(self.patch_len or (16 if dataset.horizon >= 24 else 4))
        return PatchTSTEstimator(
            patch_len=patch, stride=patch, d_model=self.d_model, nhead=self.nhead,
            num_encoder_layers=self.num_encoder_layers, dim_feedforward=self.dim_feedforward,
            dropout=self.dropout, **common, **self.estimator_kwargs,
        )


# --------------------------------------------------------------------------------------------------
# point forecast + Gaussian


class PointPlusGaussian:
    """Point forecaster plus Gaussian noise whose per-step sd is tuned on a validation tail.

    ``fit``: the wrapped point model (``point_forecaster_factory()``) is fitted on ``dataset.train``
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

    def _points(self, model: Forecaster, windows: list[TestWindow], dataset: ForecastDataset) -> np.ndarray:
        preds = model.predict(windows, dataset)
        return np.stack([np.asarray(p, dtype=np.float64).reshape(-1, dataset.horizon).mean(0) for p in preds])

    def fit(self, dataset: ForecastDataset) -> "PointPlusGaussian":
        t0 = time.perf_counter()
        cut_dataset, val = split_validation_tail(dataset)
        if not val:
            raise ValueError(
                "PointPlusGaussian: no training series is long enough for a validation tail"
            )
        model = self.point_forecaster_factory().fit(cut_dataset)
        points = self._points(model, val, cut_dataset)
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
            model = self.point_forecaster_factory().fit(dataset)
            steps += int(getattr(model, "train_steps", 0))
        self.point_model = model
        self.train_steps = steps
        self.train_seconds = time.perf_counter() - t0
        return self

    def predict(self, windows: list[TestWindow], dataset: ForecastDataset) -> list[np.ndarray]:
        if self.point_model is None or self.residual_sd is None:
            raise RuntimeError("PointPlusGaussian.predict() called before fit()")
        if not windows:
            return []
        if len(self.residual_sd) != dataset.horizon:
            raise ValueError(
                f"fitted for horizon {len(self.residual_sd)}, dataset has horizon {dataset.horizon}"
            )
        points = self._points(self.point_model, windows, dataset)
        rng = np.random.default_rng(self.seed)
        out = []
        for w, p in zip(windows, points):
            sd = self.residual_sd * mean_abs_scale(_tail(w.past, self.scale_context))
            noise = rng.standard_normal((self.num_samples, dataset.horizon))
            out.append((p[None, :] + noise * sd[None, :]).astype(np.float32))
        return out


# --------------------------------------------------------------------------------------------------
# statsforecast (AutoETS / AutoTheta / AutoARIMA)

# Rows of a StatsForecastBaseline forecast: the quantile paths at `levels`, by default the project's 21-level
# grid FORECAST_LEVELS (0.025, 0.05, ..., 0.95, 0.975): a quantile forecast the metrics read at exact levels.
STATSFORECAST_QUANTILES: tuple[float, ...] = FORECAST_LEVELS
STATSFORECAST_MODELS: tuple[str, ...] = ("autoets", "autotheta", "autoarima", "seasonalnaive")


def _interval_level(q: float) -> int | float:
    """The central interval (in %) whose bounds are the quantiles 0.5 -/+ L / 200: L = |200 q - 100|."""
    level = round(abs(200.0 * q - 100.0), 6)
    return int(level) if float(level).is_integer() else level


def _statsforecast_key(q: float) -> str:
    """statsforecast output key of quantile ``q``: ``mean`` for 0.5, else the ``lo-L`` / ``hi-L`` bound."""
    level = _interval_level(q)
    if level == 0:
        return "mean"
    return f"lo-{level}" if q < 0.5 else f"hi-{level}"


def uncross_quantile_paths(paths: np.ndarray, levels: Sequence[float] = STATSFORECAST_QUANTILES) -> np.ndarray:
    """Make ``(21, H)`` quantile paths (rows at :data:`STATSFORECAST_QUANTILES`) non-crossing while
    keeping the rows the metrics read where possible.

    The even rows (quantiles 0.025, 0.1, ..., 0.9, 0.975: the ones ``sample_quantiles`` picks for
    WQL / MSIS) are sorted per step, which leaves them untouched when they do not cross; each odd row
    (0.05, 0.15, ..., 0.95, only seen by CRPS) is then clipped between its two neighbours. For
    Gaussian intervals around the mean (AutoETS, AutoARIMA) nothing crosses and nothing changes.
    AutoTheta's intervals are quantiles of 200 simulated paths while its median row is the analytic
    ``mean``, so the 0.45 / 0.55 rows can straddle the wrong side of it: clipping fixes that without
    moving the mean. Only a crossing among the even rows themselves (e.g. the mean beyond the
    simulated 0.4 quantile) changes what the metrics see (the sorted values).
    """
    paths = np.asarray(paths, dtype=np.float64).copy()
    if tuple(levels) != STATSFORECAST_QUANTILES:  # any other grid: sorted per step
        return np.sort(paths, axis=0)
    even = np.sort(paths[0::2], axis=0)
    paths[0::2] = even
    paths[1::2] = np.clip(paths[1::2], even[:-1], even[1:])
    return paths


def fill_missing(y: np.ndarray) -> np.ndarray:
    """NaN/inf handling for local models: leading missing values are dropped, interior gaps are
    filled by linear interpolation, trailing ones by the last observed value (forward fill).
    Returns a float64 array (empty when nothing is observed)."""
    y = np.asarray(y, dtype=np.float64).ravel()
    obs = np.flatnonzero(np.isfinite(y))
    if obs.size == 0:
        return y[:0]
    y = y[obs[0]:]
    obs = obs - obs[0]
    if obs.size == len(y):
        return y
    return np.interp(np.arange(len(y)), obs, y[obs])


def _interpolated(x: np.ndarray) -> np.ndarray:
    """x with its gaps linearly interpolated (the ends held); zeros when nothing is observed."""
    obs = np.flatnonzero(np.isfinite(x))
    if obs.size == 0:
        return np.zeros_like(x)
    return np.interp(np.arange(len(x)), obs, x[obs])


class StatsForecastBaseline:
    """statsforecast's ``AutoETS`` / ``AutoTheta`` / ``AutoARIMA`` / ``SeasonalNaive`` (GIFT-Eval's reference, with its Gaussian
    prediction intervals from the in-sample seasonal residuals) as local per-window models.

    ``fit`` only records the settings (the models are local: nothing is learned across series).
    ``predict`` fits the model on each window's past and forecasts ``horizon`` steps with the
    statsforecast prediction intervals whose bounds are the quantiles at ``levels`` (default the 21-level
    grid :data:`STATSFORECAST_QUANTILES`, intervals 5, 10, ..., 90, 95 %); the returned
    ``(len(levels), horizon)`` array holds the quantile paths at those levels (median =
    statsforecast's ``mean``; the level-L interval gives the 0.5 -/+ L/200 quantiles), made
    non-crossing by :func:`uncross_quantile_paths`: a quantile forecast, scored at its exact levels
    (``score_windows(..., levels=forecaster.levels)``). For AutoTheta, whose intervals come from 200
    simulated paths, a step whose mean falls outside its own simulated 0.4-0.6 quantiles is sorted.

    Past used per window: the last ``context_length`` points (default ``max_context = 1000``, for
    speed); leading NaNs are dropped, interior NaNs linearly interpolated, trailing NaNs forward
    filled (:func:`fill_missing`). A window with fewer than ``min_length`` observed points in that
    tail, a model error, or a non-finite forecast falls back to the seasonal naive forecast (one path
    repeated in all 21 rows, so every quantile equals it); ``fallbacks`` counts those windows in the
    last ``predict`` call and ``fallback_items`` lists their item ids.

    ``AutoARIMA`` uses ``approximation=None`` by default (R ``auto.arima``'s rule: the order search
    uses conditional sums of squares when the series is longer than 150 or the season exceeds 12,
    and the chosen model is then refitted by exact ML); statsforecast's own default (``False``) is
    10-20x slower at season 24 and ~700 points. ``model_kwargs`` are passed to the model class.
    ``n_jobs`` processes fit the windows in parallel (the forecasts do not depend on it).

    Timing: ``train_seconds`` is 0 after ``fit``; after ``predict`` it is the wall time of that
    ``predict`` call (per-window fit + forecast, the only "training" a local model has), also kept
    in ``predict_seconds``. ``train_steps`` is always 0.
    """

    def __init__(
        self,
        model: str = "autoets",
        season_length: int | None = None,
        context_length: int | None = None,
        max_context: int = 1000,
        min_length: int = 10,
        model_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        n_jobs: int = 1,
        levels: Sequence[float] = STATSFORECAST_QUANTILES,
        exogenous: bool = False,
    ):
        key = str(model).lower()
        if exogenous and key != "autoarima":
            raise ValueError(f"exogenous regressors need model='autoarima' (statsforecast's ARIMA with X), got {model!r}")
        self.exogenous = exogenous
        self.levels = tuple(float(q) for q in levels)
        if key not in STATSFORECAST_MODELS:
            raise ValueError(f"model must be one of {STATSFORECAST_MODELS}, got {model!r}")
        self.model = key
        self.season_length = season_length
        self.context_length = context_length
        self.max_context = int(max_context)
        self.min_length = int(min_length)
        self.model_kwargs = dict(model_kwargs or {})
        self.name = name or key
        self.n_jobs = max(int(n_jobs), 1)
        self.train_seconds = 0.0
        self.train_steps = 0
        self.predict_seconds = 0.0
        self.fallbacks = 0
        self.fallback_items: list[str] = []
        self._season: int | None = None

    def _make_model(self, season: int):
        from statsforecast.models import AutoARIMA, AutoETS, AutoTheta, SeasonalNaive

        kwargs = dict(self.model_kwargs)
        if self.model == "autoarima":
            kwargs.setdefault("approximation", None)
        cls = {"autoets": AutoETS, "autotheta": AutoTheta, "autoarima": AutoARIMA, "seasonalnaive": SeasonalNaive}[self.model]
        return cls(season_length=season, **kwargs)

    def fit(self, dataset: ForecastDataset) -> "StatsForecastBaseline":
        m = self.season_length if self.season_length is not None else dataset.season_length
        self._season = max(int(m or 1), 1)
        self.train_seconds = 0.0
        self.train_steps = 0
        return self

    def quantile_paths(self, past: np.ndarray, horizon: int, season: int, x: np.ndarray | None = None,
                       x_future: np.ndarray | None = None) -> np.ndarray:
        """Fit on ``past`` (already cut and NaN-filled; with regressors ``x`` (T, C) and their future ``x_future``
        (H, C)) and return the (21, horizon) quantile paths. Raises on a model error or a non-finite forecast."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence / overflow chatter of the optimisers
            intervals = sorted({_interval_level(q) for q in self.levels} - {0})
            regressors = {} if x is None else {"X": x, "X_future": x_future}
            out = self._make_model(season).forecast(y=past, h=horizon, level=intervals, **regressors)
        paths = np.stack([np.asarray(out[_statsforecast_key(q)], dtype=np.float64).ravel() for q in self.levels])
        if paths.shape != (len(self.levels), horizon) or not np.isfinite(paths).all():
            raise FloatingPointError(f"{self.model}: non-finite or misshaped forecast")
        return uncross_quantile_paths(paths, self.levels)

    def window_paths(self, past: np.ndarray, horizon: int, known: np.ndarray | None = None) -> np.ndarray | None:
        """The (21, horizon) paths for one window's past (and its known-future regressors (C, T + H) when
        exogenous), or None where it must fall back."""
        keep = self.context_length or self.max_context
        past = np.asarray(past, dtype=np.float64)
        x = x_future = None
        if known is not None:  # the regressors over the past and over the horizon, gaps interpolated per regressor
            known = np.stack([_interpolated(row) for row in np.asarray(known, dtype=np.float64)])
            x, x_future = known[:, :len(past)].T, known[:, len(past):len(past) + horizon].T
        past = past[-keep:]
        if np.isfinite(past).sum() < self.min_length:
            return None
        try:
            y = fill_missing(past)  # leading gaps dropped: the regressors keep the same last len(y) steps
            x = None if x is None else x[-len(y):]
            return self.quantile_paths(y, horizon, self._season, x, x_future).astype(np.float32)
        except Exception:  # noqa: BLE001 - any model failure -> seasonal naive
            return None

    def _regressors(self, window: TestWindow) -> np.ndarray | None:
        """A window's known-future covariates (C, T + H) when the model takes regressors (None otherwise)."""
        if not self.exogenous:
            return None
        if window.covariates is None or window.covariates.future is None:
            raise ValueError(f"{self.name}: window of {window.item_id!r} has no known-future covariates to regress on")
        return window.covariates.future

    def predict(self, windows: list[TestWindow], dataset: ForecastDataset) -> list[np.ndarray]:
        """Fit on each window's past and return its (21, horizon) quantile paths; windows run in
        ``n_jobs`` forked processes when there are enough of them to pay for the start-up."""
        if self._season is None:
            raise RuntimeError("StatsForecastBaseline.predict() called before fit()")
        t0 = time.perf_counter()
        h = dataset.horizon
        known = [self._regressors(w) for w in windows]
        if self.n_jobs > 1 and len(windows) >= 8 * self.n_jobs:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork: the workers inherit statsforecast's compiled (numba) models instead of compiling them again
            with ProcessPoolExecutor(self.n_jobs, mp_context=multiprocessing.get_context("fork")) as pool:
                found = list(pool.map(self.window_paths, [w.past for w in windows], [h] * len(windows), known,
                                      chunksize=8))
        else:
            found = [self.window_paths(w.past, h, x) for w, x in zip(windows, known)]
        self.fallbacks = 0
        self.fallback_items = []
        out = []
        for w, paths in zip(windows, found):
            if paths is None:
                self.fallbacks += 1
                self.fallback_items.append(w.item_id)
                point = seasonal_naive_forecast(w.past, h, self._season)
                paths = np.tile(point, (len(self.levels), 1)).astype(np.float32)
            out.append(paths)
        self.predict_seconds = self.train_seconds = time.perf_counter() - t0
        return out
