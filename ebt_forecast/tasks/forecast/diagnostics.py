"""Does the energy verify? Within-window ranking of candidates and the value of keeping the best."""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from ebt_forecast.data.types import TestWindow
from ebt_forecast.metrics import aggregate, score_window
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster, inference_levels


def _mean_spearman(energies: np.ndarray, errors: np.ndarray) -> float:
    """Mean over rows of the Spearman correlation between two (N, K) tables (rows with ties skipped)."""
    values = []
    for e, err in zip(energies, errors):
        if np.ptp(e) > 0 and np.ptp(err) > 0:
            values.append(spearmanr(e, err).statistic)
    return float(np.mean(values)) if values else float("nan")


def verification_diagnostics(forecaster: EBTForecaster, windows: list[TestWindow], season_length: int,
                             steps: int) -> dict[str, float]:
    """Energy-vs-error Spearman within windows (across candidates, and along each thinking path),
    and WQL of the lowest-energy half of the candidates against the full set."""
    forecaster.predict(windows, None, steps=steps, selection="refined")
    out = forecaster.last_forecast
    futures = np.stack([w.future for w in windows])  # (N, H)
    m = out.candidates.shape[1]
    levels = inference_levels(m, 1).numpy()[0]  # (M,)
    diff = futures[:, None, :] - out.candidates
    pinball = np.nanmean(np.maximum(levels[None, :, None] * diff, (levels[None, :, None] - 1) * diff), axis=-1)
    mae = np.nanmean(np.abs(diff), axis=-1)
    final_energy = out.energies[:, -1, :]
    # along the path: the energy of each state against that state's error, per candidate
    path_spearman = float("nan")
    if steps > 0:
        path_err = np.nanmean(np.abs(futures[:, None, None, :] - out.path), axis=-1)  # (N, T+1, M)
        e = out.energies.transpose(0, 2, 1).reshape(-1, steps + 1)
        path_spearman = _mean_spearman(e, path_err.transpose(0, 2, 1).reshape(-1, steps + 1))
    order = np.argsort(final_energy, axis=1)[:, : max(1, m // 2)]
    best_half = np.take_along_axis(out.candidates, order[:, :, None], axis=1)
    score = lambda sets: aggregate([score_window(s, w.future, w.past, season_length) for s, w in zip(sets, windows)])["wql"]  # noqa: E731
    return {
        "spearman_energy_vs_pinball": _mean_spearman(final_energy, pinball),
        "spearman_energy_vs_mae": _mean_spearman(final_energy, mae),
        "spearman_energy_vs_mae_along_path": path_spearman,
        "wql_full_set": score(out.candidates),
        "wql_lowest_energy_half": score(best_half),
    }
