"""Model-side windowing: train/val splits, random training windows, inference batches and scaling."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ebt_forecast.errors import DataError
from ebt_forecast.data.types import Covariates, Series, TestWindow


def mean_abs_scale(context: np.ndarray, min_scale: float = 1e-5) -> float:
    """Mean |x| over the observed (non-NaN) context values; 1.0 if none observed or all zero."""
    x = np.asarray(context, dtype=np.float64)
    x = np.abs(x[np.isfinite(x)])
    if x.size == 0:
        return 1.0
    scale = float(x.mean())
    if scale == 0.0:  # all-zero context: keep values as they are (Chronos convention)
        return 1.0
    return max(scale, min_scale)


SCALINGS = ("mean", "standard")


def context_scaling(context: np.ndarray, scaling: str = "mean", min_scale: float = 1e-5) -> tuple[float, float]:
    """(loc, scale) a window is normalised by, (x - loc) / scale, from its observed context: "mean" = (0, mean |x|)
    (Chronos); "standard" = (mean, std), the std floored at 1% of mean |x| for flat contexts (the instance
    normalisation of Chronos-Bolt and TiRex: a series with small moves on a large level keeps its moves)."""
    if scaling == "mean":
        return 0.0, mean_abs_scale(context, min_scale)
    if scaling != "standard":
        raise ValueError(f"scaling={scaling!r} is invalid: must be one of {', '.join(SCALINGS)}")
    x = np.asarray(context, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0, 1.0
    return float(x.mean()), max(float(x.std()), 0.01 * mean_abs_scale(x, min_scale), min_scale)


def tail_windows(s: Series, horizon: int, num_windows: int) -> tuple[Series, list[TestWindow]]:
    """Cut `num_windows` non-overlapping windows of `horizon` from the end of `s` (expanding past)."""
    n = len(s.target)
    cut = n - num_windows * horizon
    if horizon < 1 or num_windows < 1 or cut < 1:
        raise DataError(f"series {s.item_id!r}: length {n} too short for {num_windows} window(s) of {horizon}")
    target = np.asarray(s.target, dtype=np.float32)
    cov = s.covariates
    windows = [
        TestWindow(item_id=s.item_id, start=s.start, past=target[:o].copy(), future=target[o:o + horizon].copy(),
                   covariates=None if cov is None else cov.cut(0, o, o + horizon))
        for o in range(cut, n, horizon)
    ]
    return Series(item_id=s.item_id, start=s.start, target=target[:cut].copy(), anchor=s.anchor,
                  covariates=None if cov is None else cov.cut(0, cut)), windows


def split_train_val(series: list[Series], horizon: int, val_windows: int = 1) -> tuple[list[Series], list[TestWindow]]:
    """Cut the last val_windows*horizon points of each series into validation windows."""
    train, val = [], []
    for s in series:
        # Split only if at least horizon+1 training points remain; otherwise keep the series whole.
        if len(s.target) - val_windows * horizon < horizon + 1:
            train.append(s)
            continue
        short, windows = tail_windows(s, horizon, val_windows)
        train.append(short)
        val.extend(windows)
    return train, val


def _pad_left(x: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Last `length` values of x left-padded with NaN, and the observed mask."""
    x = np.asarray(x, dtype=np.float32)[-length:] if length > 0 else np.zeros(0, np.float32)
    out = np.full(length, np.nan, dtype=np.float32)
    if len(x):
        out[length - len(x):] = x
    mask = np.isfinite(out)
    return out, mask


def _scaled(x: np.ndarray, mask: np.ndarray, scale: float, loc: float = 0.0) -> torch.Tensor:
    """(x - loc) / scale with the missing entries zeroed."""
    return torch.from_numpy(np.where(mask, (x - loc) / scale, 0.0).astype(np.float32))


def _columns(x: np.ndarray, start: int, end: int) -> np.ndarray:
    """Columns [start, end) of x (C, T) as float32, NaN where the range runs outside x."""
    out = np.full((x.shape[0], end - start), np.nan, dtype=np.float32)
    a, b = max(start, 0), min(end, x.shape[1])
    if b > a:
        out[:, a - start:b - start] = x[:, a:b]
    return out


def _standardised(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each row of x minus its mean over the observed reference, over its std (floored); NaN -> 0."""
    finite = np.isfinite(reference)
    count = finite.sum(-1, keepdims=True)
    ref = np.where(finite, reference, 0.0)
    mean = ref.sum(-1, keepdims=True) / np.maximum(count, 1)
    var = (np.where(finite, reference - mean, 0.0) ** 2).sum(-1, keepdims=True) / np.maximum(count, 1)
    scale = np.maximum(np.sqrt(var), 1e-3 * np.maximum(np.abs(mean), 1.0))
    return np.nan_to_num((x - mean) / scale, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


COVARIATE_SCALINGS = ("window", "history")


def covariate_window(cov: Covariates | None, forecast_start: int, context_length: int,
                     horizon: int, scaling: str = "window") -> dict[str, torch.Tensor]:
    """A window's covariates as model inputs: past ones over the context (C, L) with their observed mask, known-future
    ones over context + horizon (C, L + H), static reals squashed by sign(x) log(1 + |x|), static categories as codes.

    Each dynamic covariate is standardised by `scaling`: "window" = its mean and std over the window's context (only
    its moves count, as for the target), "history" = over the series' whole history before the forecast start (its
    level counts too: 35 degrees is hot whatever the last week was)."""
    if cov is None:
        return {}
    if scaling not in COVARIATE_SCALINGS:
        raise ValueError(f"covariate scaling {scaling!r} is invalid: must be one of {', '.join(COVARIATE_SCALINGS)}")
    out: dict[str, torch.Tensor] = {}
    begin = forecast_start - context_length
    if cov.past is not None:
        past = _columns(cov.past, begin, forecast_start)
        reference = past if scaling == "window" else cov.past[:, :forecast_start]
        out["past_covariates"] = torch.from_numpy(_standardised(past, reference))
        out["past_covariates_mask"] = torch.from_numpy(np.isfinite(past).astype(np.float32))
    if cov.future is not None:
        future = _columns(cov.future, begin, forecast_start + horizon)
        reference = future[:, :context_length] if scaling == "window" else cov.future[:, :forecast_start]
        out["future_covariates"] = torch.from_numpy(_standardised(future, reference))
    if cov.static_real is not None:
        x = np.asarray(cov.static_real, dtype=np.float32)
        out["static_real"] = torch.from_numpy(np.sign(x) * np.log1p(np.abs(x)))
    if cov.static_cat is not None:
        out["static_cat"] = torch.as_tensor(np.asarray(cov.static_cat), dtype=torch.long)
    return out


class TrainWindowDataset(Dataset):
    """Deterministic random (context + horizon) training windows drawn from a list of Series.

    Item `i` is drawn with numpy Generator seeded by (seed, i), uniformly over all valid
    (series, window end) pairs, so longer series give more windows. A valid window has at
    least one observed value in both its context and its future; series with fewer than
    horizon+1 observed values are skipped. Short histories are left-padded with mask 0.
    Values are divided by `scale` (mean |x| of the observed context); NaN -> 0 with mask 0.
    """

    def __init__(self, series: list[Series], context_length: int, horizon: int,
                 num_samples: int = 10_000, seed: int = 0, min_scale: float = 1e-5, scaling: str = "mean",
                 covariate_horizon: int | None = None, covariate_scaling: str = "window") -> None:
        self.covariate_horizon = covariate_horizon  # known-future covariates reach this far (the model's horizon)
        self.covariate_scaling = covariate_scaling
        if context_length < 1 or horizon < 1 or num_samples < 1:
            raise DataError("context_length, horizon and num_samples must be >= 1")
        self.context_length, self.horizon, self.scaling = context_length, horizon, scaling
        self.num_samples, self.seed, self.min_scale = num_samples, seed, min_scale
        self.targets: list[np.ndarray] = []
        self.covariates: list[Covariates | None] = []
        self.ends: list[np.ndarray] = []  # valid exclusive window ends per kept series
        h, c = horizon, context_length
        for s in series:
            y = np.asarray(s.target, dtype=np.float32)
            obs = np.isfinite(y)
            if obs.sum() < h + 1:
                continue
            cum = np.r_[0, np.cumsum(obs)]
            e = np.arange(h + 1, len(y) + 1)  # future = y[e-h:e], context = y[max(0, e-h-c):e-h]
            fut_obs = cum[e] - cum[e - h]
            ctx_obs = cum[e - h] - cum[np.maximum(0, e - h - c)]
            e = e[(fut_obs > 0) & (ctx_obs > 0)]
            if len(e):
                self.targets.append(y)
                self.covariates.append(s.covariates)
                self.ends.append(e)
        if not self.ends:
            raise DataError(f"no series has a usable window (need >= {h + 1} observed points "
                            f"and observed values in both context and future)")
        self.cum_counts = np.cumsum([len(e) for e in self.ends])

    def __len__(self) -> int:
        return self.num_samples

    @property
    def num_windows(self) -> int:
        """Number of distinct valid (series, end) windows."""
        return int(self.cum_counts[-1])

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if not 0 <= idx < self.num_samples:
            raise IndexError(idx)
        rng = np.random.default_rng([self.seed, idx])
        k = int(rng.integers(self.num_windows))
        j = int(np.searchsorted(self.cum_counts, k, side="right"))
        end = int(self.ends[j][k - (self.cum_counts[j - 1] if j else 0)])
        y, h = self.targets[j], self.horizon
        ctx, ctx_mask = _pad_left(y[max(0, end - h - self.context_length):end - h], self.context_length)
        fut = y[end - h:end]
        fut_mask = np.isfinite(fut)
        loc, scale = context_scaling(ctx, self.scaling, self.min_scale)
        return {
            "context": _scaled(ctx, ctx_mask, scale, loc),
            "context_mask": torch.from_numpy(ctx_mask.astype(np.float32)),
            "future": _scaled(fut, fut_mask, scale, loc),
            "future_mask": torch.from_numpy(fut_mask.astype(np.float32)),
            "scale": torch.tensor(scale, dtype=torch.float32),
            "loc": torch.tensor(loc, dtype=torch.float32),
            **covariate_window(self.covariates[j], end - h, self.context_length, self.covariate_horizon or h,
                               self.covariate_scaling),
        }


def make_inference_batch(pasts: list[np.ndarray], context_length: int, min_scale: float = 1e-5,
                         scaling: str = "mean", covariates: list[Covariates | None] | None = None,
                         horizon: int = 0, covariate_scaling: str = "window") -> dict[str, torch.Tensor]:
    """Batch the last context_length points of each past: normalised ((x - loc) / scale), left-padded, masked
    tensors; a model output y is y * scale + loc in data units. `covariates` (one per past, aligned with it; the
    known-future ones run `horizon` steps past its end) join as `covariate_window` inputs."""
    if context_length < 1:
        raise DataError("context_length must be >= 1")
    ctxs, masks, scales, locs = [], [], [], []
    for past in pasts:
        ctx, mask = _pad_left(past, context_length)
        loc, scale = context_scaling(ctx, scaling, min_scale)
        ctxs.append(_scaled(ctx, mask, scale, loc))
        masks.append(torch.from_numpy(mask.astype(np.float32)))
        scales.append(scale)
        locs.append(loc)
    if not ctxs:
        empty = torch.zeros(0, context_length)
        return {"context": empty, "context_mask": empty.clone(), "scale": torch.zeros(0), "loc": torch.zeros(0)}
    batch = {
        "context": torch.stack(ctxs),
        "context_mask": torch.stack(masks),
        "scale": torch.tensor(scales, dtype=torch.float32),
        "loc": torch.tensor(locs, dtype=torch.float32),
    }
    if covariates is not None:
        rows = [covariate_window(c, len(p), context_length, horizon, covariate_scaling) for p, c in zip(pasts, covariates)]
        batch.update({k: torch.stack([r[k] for r in rows]) for k in rows[0]})
    return batch


def seasonal_naive_path(context: torch.Tensor, mask: torch.Tensor, season: int, horizon: int,
                        fallback: torch.Tensor | None = None) -> torch.Tensor:
    """The last season of each context (B, L) repeated over the horizon: (B, H).

    A missing value (mask 0) takes the same phase one or more whole seasons earlier; where none is
    observed, `fallback` (B, H), by default the last observed value of the row (0 if none). With a
    context shorter than one season this is the naive forecast (the fallback). The seasonal-naive
    baseline and the EBT's seasonal-naive start both use this one rule.
    """
    length = context.shape[-1]
    m = max(int(season), 1)
    if fallback is None:
        positions = torch.arange(length, device=context.device).expand_as(mask)
        last = torch.where(mask > 0, positions, -1).amax(-1, keepdim=True) if length else mask.new_full((len(mask), 1), -1).long()
        last_value = context.gather(-1, last.clamp(min=0)) if length else torch.zeros_like(last, dtype=context.dtype)
        fallback = torch.where(last >= 0, last_value, torch.zeros_like(last_value)).expand(-1, horizon)
    if m > length:
        return fallback
    phase = length - m + torch.arange(horizon, device=context.device) % m  # (H,)
    index = phase[:, None] - m * torch.arange(length // m + 1, device=context.device)  # (H, K): seasons back
    observed = (mask[:, index.clamp(min=0)] > 0) & (index >= 0)  # (B, H, K)
    first = observed.float().argmax(-1, keepdim=True)  # the most recent observed season of each phase
    values = context[:, index.clamp(min=0)].gather(-1, first).squeeze(-1)
    return torch.where(observed.any(-1), values, fallback)
