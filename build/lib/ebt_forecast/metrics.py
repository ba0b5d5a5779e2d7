"""Probabilistic forecast metrics with GluonTS ``Evaluator`` conventions.

Scoring is split in two steps so that metrics aggregate over a data set the way GluonTS does:

* :func:`score_window` turns one window's sample forecast into per-window sums and components;
* :func:`aggregate` combines a list of those dicts into data-set-level metrics.

Conventions (checked against ``gluonts.evaluation.Evaluator`` in ``tests/test_metrics.py``):

* Quantiles come from the samples with ``np.quantile(..., method="nearest")``, which picks the sorted
  sample at index ``round((num_samples - 1) * q)`` (round half to even), exactly what GluonTS's
  ``SampleForecast.quantile`` does. A single-sample forecast therefore has all quantiles equal to it.
* ``QuantileLoss[q] = 2 * sum |(y - q_hat) * (1[y <= q_hat] - q)|`` over observed points;
  ``wql`` = mean over ``QUANTILE_LEVELS`` of ``sum QuantileLoss[q] / sum |y|`` (GluonTS
  ``mean_wQuantileLoss``; the "WQL"/"CRPS" of Chronos and GIFT-Eval).
* ``mase`` = mean over windows of ``mean |y - median| / seasonal_error``; the seasonal error is the
  in-sample seasonal naive mean absolute error of the window's past (pairs with a NaN are skipped;
  season 1 when the past is not longer than one season). A window whose seasonal error is 0 gets
  ``inf`` (or NaN when its error is 0 too), as in GluonTS; NaN windows are skipped in the mean.
* ``smape`` and ``msis`` are means over windows of per-window values (MSIS from the 2.5% / 97.5%
  quantiles, alpha = 0.05, scaled by the seasonal error). One deviation from GluonTS: an sMAPE term
  with ``|y| + |y_hat| = 0`` counts as 0 (GluonTS would make the whole window NaN).
* ``coverage_80`` / ``coverage_95`` = fraction of all observed points (pooled over windows) inside
  ``[q0.1, q0.9]`` / ``[q0.025, q0.975]``.
* Two kinds of forecast, each read at exactly the levels a metric names:
  - a **sample** forecast ``(num_samples, horizon)``: quantiles are sample quantiles (GluonTS's
    convention above); ``crps`` is the sample estimator ``properscoring.crps_ensemble``
    (``E|X - y| - 0.5 E|X - X'|``, *not* the "fair" one; it penalises small ensembles);
  - a **quantile** forecast: rows are the quantile paths at the given ``levels`` (``levels=`` in
    :func:`score_window`); rows that cross are first sorted per step (the monotone rearrangement of a
    quantile function), then a metric reads the row of its level and fails when the forecast lacks it
    (no nearest-level substitute); ``crps`` is the quantile estimator ``scoringrules.crps_quantile``
    (``2/K sum_k pinball_k`` over the K levels).
  ``crps_estimator`` names which one a score used (``sample[S]`` or ``quantile[K]``), so tables never
  compare the two silently. ``crps_scaled`` = ``sum crps / sum |y|`` = mean CRPS / mean |y|.

NaN targets in ``future`` are ignored everywhere (GluonTS masks them).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import properscoring
import scoringrules as sr

QUANTILE_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MSIS_ALPHA = 0.05
# The project's quantile grid: every level a metric reads (0.1..0.9, MSIS's and 95% coverage's 0.025 / 0.975)
# plus the 0.05 steps between, for the quantile CRPS. Quantile forecasts (statsforecast, the EBT's level paths)
# are made at exactly these levels.
FORECAST_LEVELS: tuple[float, ...] = (0.025,) + tuple(round(j / 20, 2) for j in range(1, 20)) + (0.975,)
DEFAULT_RELATIVE_METRICS: tuple[str, ...] = ("wql", "mase", "crps_scaled", "smape", "msis")

__all__ = [
    "QUANTILE_LEVELS",
    "FORECAST_LEVELS",
    "MSIS_ALPHA",
    "sample_levels",
    "forecast_quantiles",
    "DEFAULT_RELATIVE_METRICS",
    "sample_quantiles",
    "seasonal_error",
    "score_window",
    "aggregate",
    "relative_to_baseline",
    "geometric_mean_relative",
    "psnr",
]


def _ql_key(q: float) -> str:
    return f"quantile_loss[{q:g}]"


def sample_quantiles(samples: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Quantiles of a ``(num_samples, horizon)`` sample array, shape ``(len(levels), horizon)``.

    Uses the GluonTS ``SampleForecast.quantile`` convention (nearest sorted sample at index
    ``round((num_samples - 1) * q)``), which ``np.quantile(method="nearest")`` reproduces.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim == 1:
        samples = samples[None, :]
    return np.quantile(samples, np.asarray(levels, dtype=np.float64), axis=0, method="nearest")


def sample_levels(num_paths: int) -> np.ndarray:
    """The levels of `num_paths` level paths: the :data:`FORECAST_LEVELS` grid when there are 21 (a quantile
    forecast), else the stratified levels (j + 0.5) / num_paths (a sample forecast: one draw per stratum of U(0, 1))."""
    if num_paths == len(FORECAST_LEVELS):
        return np.asarray(FORECAST_LEVELS, dtype=np.float64)
    return (np.arange(num_paths, dtype=np.float64) + 0.5) / num_paths


def sorted_quantiles(forecast: np.ndarray, levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A quantile forecast's levels in increasing order and its rows sorted per step (non-crossing)."""
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1 or len(levels) != len(forecast) or np.any((levels <= 0) | (levels >= 1)):
        raise ValueError(f"a quantile forecast needs one level in (0, 1) per row: {len(forecast)} rows, levels {levels}")
    return np.sort(levels), np.sort(np.asarray(forecast, dtype=np.float64), axis=0)


def forecast_quantiles(forecast: np.ndarray, wanted: Sequence[float], levels: Sequence[float] | None) -> np.ndarray:
    """Rows of ``forecast`` at the ``wanted`` levels: sample quantiles when ``levels`` is None, else the rows
    of a quantile forecast (sorted per step) at exactly those levels (a ValueError names a level it lacks)."""
    if levels is None:
        return sample_quantiles(forecast, wanted)
    levels, forecast = sorted_quantiles(np.asarray(forecast), levels)
    rows = []
    for q in wanted:
        hit = np.flatnonzero(np.isclose(levels, q, rtol=0, atol=1e-9))
        if not hit.size:
            raise ValueError(f"the quantile forecast has no level {q:g} (its levels: "
                             f"{', '.join(f'{x:g}' for x in levels)}); metrics read exact levels only")
        rows.append(forecast[hit[0]])
    return np.stack(rows)


def seasonal_error(past: np.ndarray, season_length: int) -> float:
    """In-sample seasonal naive mean absolute error of ``past`` (GluonTS ``calculate_seasonal_error``).

    Pairs ``(past[t], past[t - m])`` with a NaN are skipped; ``m`` falls back to 1 when the past is
    not longer than one season. Returns NaN when no pair is observed.
    """
    past = np.asarray(past, dtype=np.float64).ravel()
    m = int(season_length) if season_length and int(season_length) >= 1 else 1
    if m >= len(past):
        m = 1
    if len(past) <= m:
        return float("nan")
    diff = np.abs(past[m:] - past[:-m])
    diff = diff[np.isfinite(diff)]
    return float(diff.mean()) if diff.size else float("nan")


def score_window(
    samples: np.ndarray,
    future: np.ndarray,
    past: np.ndarray,
    season_length: int,
    levels: Sequence[float] | None = None,
) -> dict[str, float]:
    """Per-window sums and components for :func:`aggregate`.

    Parameters
    ----------
    samples : ``(num_samples, horizon)`` sample paths (a ``(horizon,)`` array is one sample), or with
        ``levels`` the ``(len(levels), horizon)`` quantile paths of a quantile forecast.
    future : ``(horizon,)`` true values; NaN entries are ignored.
    past : history before the forecast start, used for the seasonal error.
    season_length : seasonality for the seasonal error (MASE / MSIS scaling).
    levels : the quantile levels of the rows of a quantile forecast; None for a sample forecast.

    Returns a dict of floats: ``num_obs``, ``abs_target_sum``, ``abs_error`` (of the median),
    ``seasonal_error``, ``mase``, ``smape_sum``, ``smape``, ``msis``, ``coverage_80_hits``,
    ``crps_sum`` (sum over points of the standard properscoring CRPS) and
    ``quantile_loss[q]`` for each ``q`` in :data:`QUANTILE_LEVELS`.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim == 1:
        samples = samples[None, :]
    future = np.asarray(future, dtype=np.float64).ravel()
    if samples.ndim != 2 or samples.shape[1] != future.shape[0]:
        raise ValueError(
            f"samples must have shape (num_samples, {future.shape[0]}), got {samples.shape}"
        )
    if samples.shape[0] == 0:
        raise ValueError("samples must contain at least one sample")
    if levels is not None:
        levels, samples = sorted_quantiles(samples, levels)
    if not np.all(np.isfinite(samples)):
        raise ValueError("samples contain NaN or inf")

    obs = np.isfinite(future)
    y = future[obs]
    s = samples[:, obs]
    n = int(obs.sum())
    seas = seasonal_error(past, season_length)

    out: dict[str, float] = {"num_obs": float(n), "seasonal_error": seas}
    read = tuple(QUANTILE_LEVELS) + (MSIS_ALPHA / 2, 1.0 - MSIS_ALPHA / 2)
    qd = dict(zip(read, forecast_quantiles(s, read, levels)))
    out["crps_estimator"] = f"sample[{len(s)}]" if levels is None else f"quantile[{len(levels)}]"

    for lev in QUANTILE_LEVELS:
        qh = qd[lev]
        out[_ql_key(lev)] = float(2.0 * np.sum(np.abs((qh - y) * ((y <= qh) - lev))))

    median = qd[0.5]
    abs_err = np.abs(y - median)
    out["abs_target_sum"] = float(np.sum(np.abs(y)))
    out["abs_error"] = float(abs_err.sum())

    with np.errstate(divide="ignore", invalid="ignore"):
        if n:
            out["mase"] = float(abs_err.mean() / seas) if np.isfinite(seas) else float("nan")
            denom = np.abs(y) + np.abs(median)
            terms = np.where(denom > 0, 2.0 * abs_err / np.where(denom > 0, denom, 1.0), 0.0)
            out["smape_sum"] = float(terms.sum())
            out["smape"] = float(terms.mean())
            lo, hi = qd[MSIS_ALPHA / 2], qd[1.0 - MSIS_ALPHA / 2]
            num = np.mean(
                hi
                - lo
                + 2.0 / MSIS_ALPHA * (lo - y) * (y < lo)
                + 2.0 / MSIS_ALPHA * (y - hi) * (y > hi)
            )
            out["msis"] = float(num / seas) if np.isfinite(seas) else float("nan")
            out["coverage_80_hits"] = float(np.sum((y >= qd[0.1]) & (y <= qd[0.9])))
            out["coverage_95_hits"] = float(np.sum((y >= lo) & (y <= hi)))
            if levels is None:
                crps = properscoring.crps_ensemble(y, s.T)
            else:
                crps = sr.crps_quantile(y, s.T, np.asarray(levels, dtype=np.float64), backend="numpy")
            out["crps_sum"] = float(np.sum(crps))
        else:
            out.update(mase=float("nan"), smape_sum=0.0, smape=float("nan"), msis=float("nan"),
                       coverage_80_hits=0.0, coverage_95_hits=0.0, crps_sum=0.0)
    return out


def _nanmean(values: Iterable[float]) -> float:
    """Mean ignoring NaN but keeping inf (GluonTS ``aggregate_no_nan``)."""
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def aggregate(window_scores: list[dict]) -> dict[str, float]:
    """Data-set-level metrics from :func:`score_window` outputs (see the module docstring).

    Returns ``wql``, ``wql[q]`` per level, ``mase``, ``smape``, ``msis``, ``coverage_80``,
    ``crps``, ``crps_scaled``, ``nd`` (sum abs error of the median / sum |y|), ``num_windows``
    and ``num_obs``.
    """
    if not window_scores:
        raise ValueError("aggregate() needs at least one window score")

    def total(key: str) -> float:
        return float(sum(w[key] for w in window_scores))

    abs_sum = total("abs_target_sum")
    n_obs = total("num_obs")
    with np.errstate(divide="ignore", invalid="ignore"):
        wq = {lev: np.float64(total(_ql_key(lev))) / abs_sum for lev in QUANTILE_LEVELS}
        res: dict[str, float] = {"wql": float(np.mean(list(wq.values())))}
        res.update({f"wql[{lev:g}]": float(v) for lev, v in wq.items()})
        res["mase"] = _nanmean(w["mase"] for w in window_scores)
        res["smape"] = _nanmean(w["smape"] for w in window_scores)
        res["msis"] = _nanmean(w["msis"] for w in window_scores)
        res["coverage_80"] = float(np.float64(total("coverage_80_hits")) / n_obs)
        res["coverage_95"] = float(np.float64(total("coverage_95_hits")) / n_obs)
        crps_sum = np.float64(total("crps_sum"))
        res["crps"] = float(crps_sum / n_obs)
        res["crps_scaled"] = float(crps_sum / abs_sum)
        res["nd"] = float(np.float64(total("abs_error")) / abs_sum)
    res["num_windows"] = float(len(window_scores))
    res["num_obs"] = n_obs
    res["crps_estimator"] = "+".join(sorted({w["crps_estimator"] for w in window_scores}))
    return res


def score_windows(samples: Sequence[np.ndarray], windows: Sequence, season_length: int,
                  levels: Sequence[float] | None = None) -> dict[str, float]:
    """Data-set-level metrics of one model's forecast per window against windows' `future` and `past`: samples
    (S, H), or with `levels` quantile paths at those levels; a forecast object's own `levels` attribute is used
    when it has one."""
    if levels is None:
        levels = getattr(samples, "levels", None)
    return aggregate([score_window(s, w.future, w.past, season_length, levels) for s, w in zip(samples, windows)])


def _metric_columns(table: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    missing = [c for c in ("dataset", "model") if c not in table.columns]
    if missing:
        raise KeyError(f"table lacks column(s) {missing}")
    cols = [m for m in metrics if m in table.columns]
    if not cols:
        raise KeyError(f"table has none of the metric columns {list(metrics)}")
    return cols


def relative_to_baseline(
    table: pd.DataFrame,
    baseline: str = "seasonal_naive",
    metrics: Sequence[str] = DEFAULT_RELATIVE_METRICS,
) -> pd.DataFrame:
    """Per-data-set ratios ``model / baseline`` for each metric in ``metrics`` present in ``table``.

    ``table`` has one row per (dataset, model) with metric columns. Returns columns ``dataset``,
    ``model`` and the metric ratios (NaN where the baseline lacks that data set). The baseline's own
    rows are kept (all ratios 1).
    """
    cols = _metric_columns(table, metrics)
    if table.duplicated(["dataset", "model"]).any():
        raise ValueError("table has duplicate (dataset, model) rows")
    base = table.loc[table["model"] == baseline, ["dataset", *cols]].set_index("dataset")
    if base.empty:
        raise ValueError(f"baseline model {baseline!r} not in table")
    rel = table[["dataset", "model", *cols]].copy()
    denom = base.reindex(rel["dataset"]).to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel[cols] = rel[cols].to_numpy(dtype=np.float64) / denom
    return rel.reset_index(drop=True)


def geometric_mean_relative(
    table: pd.DataFrame,
    baseline: str = "seasonal_naive",
    metrics: Sequence[str] = DEFAULT_RELATIVE_METRICS,
) -> pd.DataFrame:
    """One row per model: geometric mean over data sets of the ratios to ``baseline``.

    The Chronos Benchmark II / GIFT-Eval / fev aggregation. Data sets where a ratio is NaN (model or
    baseline missing) are skipped for that metric; ``num_datasets`` counts the data sets the model
    was scored on next to the baseline. Sorted by the first metric.
    """
    rel = relative_to_baseline(table, baseline=baseline, metrics=metrics)
    cols = [c for c in rel.columns if c not in ("dataset", "model")]
    rows = []
    for model, grp in rel.groupby("model", sort=False):
        row: dict[str, float | str] = {"model": model}
        for c in cols:
            v = grp[c].to_numpy(dtype=np.float64)
            v = v[~np.isnan(v)]
            with np.errstate(divide="ignore"):
                row[c] = float(np.exp(np.mean(np.log(v)))) if v.size else float("nan")
        row["num_datasets"] = int(grp[cols].notna().any(axis=1).sum())
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(cols[0], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# images


def psnr(estimate: np.ndarray, target: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    """Peak signal-to-noise ratio (dB) per image of (N, ...) arrays: 10 log10(data_range^2 / MSE); inf where equal."""
    diff = np.asarray(estimate, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    mse = (diff ** 2).reshape(len(diff), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range ** 2 / mse)


# ------------------------------------------------------------------------------------------------
# uncertainty signals: does a per-window score flag the windows that will be forecast badly?


def auroc(signal: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `signal` for flagging `positive` windows (Mann-Whitney U / (n+ n-))."""
    from scipy.stats import mannwhitneyu

    signal, positive = np.asarray(signal, dtype=np.float64), np.asarray(positive, dtype=bool)
    pos, neg = signal[positive], signal[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))


def selective_wql(window_scores: list[dict], signal: np.ndarray, withheld: Sequence[float]) -> dict[float, float]:
    """WQL of the windows kept when the fraction `x` with the highest `signal` is withheld, for each x."""
    order = np.argsort(-np.asarray(signal, dtype=np.float64), kind="stable")  # highest signal first
    out = {}
    for x in withheld:
        drop = int(round(x * len(order)))
        out[x] = aggregate([window_scores[i] for i in order[drop:]])["wql"]
    return out


def window_errors(window_scores: list[dict]) -> np.ndarray:
    """Each window's own scale-free error: its WQL (mean quantile loss over levels / sum |y|)."""
    return np.array([aggregate([w])["wql"] for w in window_scores])


def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of two (..., K) arrays (ties get average ranks); NaN where a row is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    denominator = np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(-1) / np.where(denominator > 0, denominator, 1), np.nan)
