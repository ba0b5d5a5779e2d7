"""Does the energy verify? Ranking of candidates by energy against their real errors, on held-out windows."""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

import torch

from ebt_forecast.data.types import TestWindow
from ebt_forecast.metrics import aggregate, score_window, score_windows
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from ebt_forecast.tasks.forecast.model import candidate_pinball
from ebt_forecast.tasks.forecast.module import inference_levels


def mean_spearman(energies: np.ndarray, errors: np.ndarray) -> float:
    """Mean over rows of the Spearman correlation between two (N, K) tables (constant rows skipped)."""
    values = [spearmanr(e, err).statistic for e, err in zip(energies, errors) if np.ptp(e) > 0 and np.ptp(err) > 0]
    return float(np.mean(values)) if values else float("nan")


def candidate_errors(candidates: np.ndarray, futures: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Mean pinball loss of candidates (N, M, G, H) at levels (M,) against futures (N, H): -> (N, M, G)."""
    n, m, g, h = candidates.shape
    paths = torch.from_numpy(candidates.reshape(n, m * g, h)).double()
    target = torch.from_numpy(np.nan_to_num(futures)).double()
    mask = torch.from_numpy(np.isfinite(futures)).double()
    u = torch.from_numpy(np.repeat(levels, g)).double().expand(n, -1)
    return candidate_pinball(paths, target, u, mask).view(n, m, g).numpy()


def verification_diagnostics(forecaster: EBTForecaster, windows: list[TestWindow], season_length: int,
                             steps: int, group: int = 4) -> dict[str, float]:
    """How well the energy ranks what thinking produced, measured against the truth of held-out windows:
    - group_spearman: within each (window, level), energy vs pinball loss over the G refined starts;
    - pick_accuracy: how often the lowest-energy start is the lowest-error one (chance = 1 / G);
    - path_spearman: along each thinking path, energy vs absolute error of the states;
    - window_spearman: across windows, mean energy vs the window's WQL (selective forecasting);
    - wql_refined: the proposal's refinement alone; wql_verified / weighted / average: the lowest-energy
      start, the Boltzmann-weighted starts and their plain mean (the energy-free control)."""
    def wql(sets) -> float:
        return score_windows(sets, windows, season_length)["wql"]

    futures = np.stack([w.future for w in windows])
    refined = path_out = forecaster.predict(windows, steps=steps, selection="refined", final_energy=True)
    pair = {sel: wql(forecaster.predict(windows, steps=steps, selection=sel, verify_group=2))
            for sel in ("verified", "weighted", "average")}
    verified = out = forecaster.predict(windows, steps=steps, selection="verified", verify_group=group)
    m, g = out.energies.shape[1:]
    levels = inference_levels(m, 1).numpy()[0]
    errors = candidate_errors(out.candidates, futures, levels)  # (N, M, G)
    energies = out.energies
    pick = np.take_along_axis(errors, energies.argmin(-1)[..., None], -1)[..., 0]
    path_err = np.nanmean(np.abs(futures[:, None, None, :] - path_out.path), axis=-1)  # (N, T + 1, M)
    per_window = np.array([aggregate([score_window(r, w.future, w.past, season_length, refined.levels)])["wql"]
                           for r, w in zip(refined.samples, windows)])
    return {
        "group_spearman": mean_spearman(energies.reshape(-1, g), errors.reshape(-1, g)) if g > 2 else float("nan"),
        "pick_accuracy": float(np.mean(pick <= errors.min(-1) + 1e-12)),
        "chance": 1.0 / g,
        "path_spearman": mean_spearman(path_out.path_energies.transpose(0, 2, 1).reshape(-1, steps + 1),
                                        path_err.transpose(0, 2, 1).reshape(-1, steps + 1)) if steps else float("nan"),
        "window_spearman": float(spearmanr(path_out.path_energies[:, -1].mean(-1), per_window).statistic),
        "wql_refined": wql(refined),
        **{f"wql_{sel}_G2": value for sel, value in pair.items()},
        f"wql_verified_G{group}": wql(verified),
    }
