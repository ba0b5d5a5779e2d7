"""Per-window choice between the pretrained EBT's proposals and seasonal naive (issue 28, the zero-shot MASE gap).

On m4_hourly a quarter of the series are near-perfectly daily-periodic; seasonal naive is almost exact there and the
pretrained proposals damp the peaks (MASE > 5 on those series, 3.3 over the set). Each test window's own past gives
a backtest: forecast its last H points from the rest, with both sources, and keep for the test the source whose
backtest pinball loss (the 21-level grid) is lower. Rows (GIFT-Eval's protocol, added to zero_shot.csv):

    <name>_backtest2   per window, the source better on its own backtest (energy-free: no energy involved)
    <name>_mix2        the two sources' level paths averaged (the energy-free average)
    <name>_backtest3   per window, the better on its backtest of the two sources and their average
    <name>_energy2     per window, the source of lower total energy over the levels (H <= 64: one pass)

    python evaluation/issue28/backtest_choice.py --ebt ebt_1m=ebt_forecast/pretrained/ebt_1m
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
import zero_shot  # noqa: E402  (the sibling script: its cache, rows and table)

from ebt_forecast.data.gift_eval import GIFT_SUITE, load_gift_config  # noqa: E402
from ebt_forecast.io import atomic_write_csv, atomic_write_text  # noqa: E402
from ebt_forecast.metrics import FORECAST_LEVELS, score_windows  # noqa: E402
from ebt_forecast.tasks.forecast import anchor  # noqa: E402
from ebt_forecast.tasks.forecast.config import ForecasterConfig  # noqa: E402
from ebt_forecast.tasks.forecast.pretrained import PretrainedForecaster  # noqa: E402
from ebt_forecast.tasks.forecast.sources import fast_forecasts  # noqa: E402


def pinball(paths: np.ndarray, future: np.ndarray) -> np.ndarray:
    """Mean pinball loss per window of level paths (N, M, H) at FORECAST_LEVELS against futures (N, H)."""
    return anchor.pinball(paths, future, FORECAST_LEVELS)


def source_paths(forecaster: PretrainedForecaster, dataset, windows) -> np.ndarray:
    """(N, 2, M, H): the proposals' and seasonal naive's level paths."""
    model = np.asarray(forecaster.predict(windows, dataset, steps=0, selection="proposal"))
    naive = fast_forecasts("seasonalnaive", dataset, windows, None, context=10**6)
    return np.stack([model, naive], axis=1)


def energies(forecaster: PretrainedForecaster, windows, paths: np.ndarray) -> np.ndarray:
    """(N, 2): each source's energy summed over the levels (the pretrained energy, untaught, no refinement)."""
    out = forecaster.predict(windows, steps=0, selection="verified", verify_group=1,
                             num_candidates=paths.shape[2], extra_starts=paths.transpose(0, 2, 1, 3)[:, :, 1:])
    own, naive = out.energies[..., 0], out.energies[..., 1]  # (N, M): the proposal's and the extra start's
    return np.stack([own.sum(-1), naive.sum(-1)], axis=1)


def rows_for(config: str, name: str, folder: str, root: str) -> list[dict]:
    dataset = load_gift_config(config, root)
    h, test = dataset.horizon, dataset.test_windows
    back = [replace(w, past=w.past[:-h], future=w.past[-h:]) for w in test]
    base = ForecasterConfig()  # the model's own thinking settings; no validation pass (selection=proposal)
    forecaster = PretrainedForecaster(folder, replace(base, task=replace(base.task, selection="proposal"))).fit(dataset)
    start = time.perf_counter()
    on_back, on_test = source_paths(forecaster, dataset, back), source_paths(forecaster, dataset, test)
    # the two sources and their average: (N, 3, M, H)
    on_back = np.concatenate([on_back, on_back.mean(1, keepdims=True)], axis=1)
    on_test = np.concatenate([on_test, on_test.mean(1, keepdims=True)], axis=1)
    losses = np.stack([pinball(on_back[:, k], np.stack([w.future for w in back])) for k in range(3)], axis=1)
    pick, pick3 = losses[:, :2].argmin(1), losses.argmin(1)
    rows = np.arange(len(test))
    seconds = time.perf_counter() - start
    out = [zero_shot.row(config, f"{name}_backtest2", score_windows(on_test[rows, pick], test, dataset.season_length,
                                                                   FORECAST_LEVELS), seconds,
                         naive_share=float(pick.mean())),
           zero_shot.row(config, f"{name}_backtest3", score_windows(on_test[rows, pick3], test,
                                                                   dataset.season_length, FORECAST_LEVELS), seconds,
                         naive_share=float((pick3 == 1).mean()), mix_share=float((pick3 == 2).mean())),
           zero_shot.row(config, f"{name}_mix2", score_windows(on_test[:, 2], test, dataset.season_length,
                                                              FORECAST_LEVELS), seconds)]
    if h <= forecaster.model_horizon:
        e = energies(forecaster, test, on_test[:, :2])
        by_energy = e.argmin(1)
        out.append(zero_shot.row(config, f"{name}_energy2", score_windows(on_test[np.arange(len(test)), by_energy],
                                                                          test, dataset.season_length,
                                                                          FORECAST_LEVELS),
                                 time.perf_counter() - start, naive_share=float(by_energy.mean()),
                                 agrees_with_backtest=float((by_energy == pick).mean())))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--configs", nargs="*", default=list(GIFT_SUITE))
    parser.add_argument("--ebt", nargs="+", required=True, help="NAME=FOLDER of a pretrained model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="evaluation/issue28/zero_shot")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    csv = Path(args.out).with_suffix(".csv")
    for config in args.configs:
        for spec in args.ebt:
            name, folder = spec.split("=", 1)
            new = rows_for(config, name, folder, args.root)
            # re-read: other runs of zero_shot.py may write beside this one
            frame = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["config", "model"])
            frame = frame[~frame.set_index(["config", "model"]).index.isin([(r["config"], r["model"]) for r in new])]
            atomic_write_csv(pd.concat([frame, pd.DataFrame(new)], ignore_index=True), csv)
            for r in new:
                print(f"{config:24s} {r['model']:22s} WQL {r['wql']:.4f} MASE {r['mase']:.3f}", flush=True)
    atomic_write_text(Path(args.out).with_suffix(".md"), zero_shot.table(pd.read_csv(csv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
