"""A per-window backtest choice that departs from the pretrained proposals only on clear evidence (issue 28).

`backtest_choice.py` switched each test window to seasonal naive (or the two sources' average) whenever that scored
better on the window's own last H points: the suite's MASE fell below 0.95 but its WQL rose (0.781 -> 0.828), one
backtest window being a noisy judge. Here the proposals stay unless another source's backtest pinball loss is below
`r` times theirs; two ways to use the choice:

    <name>_margin     per window, the source chosen with margin r (the whole quantile fan of that source)
    <name>_recenter   per window, the proposals' fan shifted so its median is the chosen source's median

r is chosen once for the suite on validation windows before any test number is read: the choice made on the window
that ends 2H before each test window's start, scored on the H points after it (the test window's own backtest),
by the geometric mean over the suite of WQL relative to seasonal naive. Energy-free throughout. `--backtests K`
makes each choice on the mean loss over the K windows before it (rows `<name>_<use>_kK`): one window is a noisy judge.
`<name>_spread` chooses per window among the three medians and the proposals' spread scaled (1, 0.5, 0.25: a set
of these chosen on validation), on the mean backtest loss: on near-periodic series the proposals' fan is too wide.

    python evaluation/issue28/backtest_margin.py --ebt ebt_1m=ebt_forecast/pretrained/ebt_1m
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
import zero_shot  # noqa: E402  (the sibling script: its rows and table)
from backtest_choice import pinball, source_paths  # noqa: E402

from ebt_forecast.data.gift_eval import GIFT_SUITE, load_gift_config  # noqa: E402
from ebt_forecast.io import atomic_write_csv, atomic_write_text  # noqa: E402
from ebt_forecast.metrics import FORECAST_LEVELS, score_windows  # noqa: E402
from ebt_forecast.tasks.forecast.anchor import backtest  # noqa: E402
from ebt_forecast.tasks.forecast.config import ForecasterConfig  # noqa: E402
from ebt_forecast.tasks.forecast.pretrained import PretrainedForecaster  # noqa: E402

MARGINS = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)  # r = 0: the proposals always (no switch)
MEDIAN = FORECAST_LEVELS.index(0.5)
USES = ("margin", "recenter")
# `spread`: per window, the median of the three (r = 1) and the proposals' spread about it scaled by one of these
SPREAD_SETS = {"1": (1.0,), "1,0.5": (1.0, 0.5), "1,0.5,0.25": (1.0, 0.5, 0.25)}


def with_average(paths: np.ndarray) -> np.ndarray:
    """(N, 2, M, H) proposals and seasonal naive -> (N, 3, M, H) with their average."""
    return np.concatenate([paths, paths.mean(1, keepdims=True)], axis=1)


def choose(losses: np.ndarray, r: float) -> np.ndarray:
    """Per window, the proposals (0) unless another source's loss is below r times theirs; then the lowest."""
    others = losses[:, 1:].argmin(1) + 1
    switch = losses[np.arange(len(losses)), others] < r * losses[:, 0]
    return np.where(switch, others, 0)


def forecast_of(paths: np.ndarray, pick: np.ndarray, use: str) -> np.ndarray:
    """(N, M, H) level paths: the picked source's fan, or the proposals' fan moved to the picked median."""
    rows = np.arange(len(pick))
    if use == "margin":
        return paths[rows, pick]
    return paths[:, 0] + (paths[rows, pick, MEDIAN] - paths[:, 0, MEDIAN])[:, None, :]


def config_scores(config: str, folder: str, root: str, backtests: int) -> dict:
    """Validation and test scores of every (use, r) on one config, with seasonal naive's on the same windows."""
    dataset = load_gift_config(config, root)
    h, test, season = dataset.horizon, dataset.test_windows, dataset.season_length
    cuts = {k: [backtest(w, k, h) for w in test] for k in range(1, backtests + 2)}
    base = ForecasterConfig()
    forecaster = PretrainedForecaster(folder, replace(base, task=replace(base.task, selection="proposal"))).fit(dataset)
    start = time.perf_counter()
    paths = {k: with_average(source_paths(forecaster, dataset, ws)) for k, ws in cuts.items()}
    paths["test"] = with_average(source_paths(forecaster, dataset, test))
    loss = {k: np.stack([pinball(paths[k][:, j], np.stack([w.future for w in ws])) for j in range(3)], 1)
            for k, ws in cuts.items()}
    # the choice for a window: the mean loss over the `backtests` windows before it
    loss_val = np.mean([loss[k] for k in range(2, backtests + 2)], axis=0)
    loss_back = np.mean([loss[k] for k in range(1, backtests + 1)], axis=0)
    back = cuts[1]
    paths["back"] = paths[1]
    out = {"naive_val": score_windows(paths["back"][:, 1], back, season, FORECAST_LEVELS),
           "naive_test": score_windows(paths["test"][:, 1], test, season, FORECAST_LEVELS), "grid": {}}
    for use in USES:
        for r in MARGINS:
            pick_val, pick_test = choose(loss_val, r), choose(loss_back, r)
            out["grid"][use, r] = {
                "val": score_windows(forecast_of(paths["back"], pick_val, use), back, season, FORECAST_LEVELS),
                "test": score_windows(forecast_of(paths["test"], pick_test, use), test, season, FORECAST_LEVELS),
                "switched": float((pick_test > 0).mean())}
    for key, spreads in SPREAD_SETS.items():
        out["grid"]["spread", key] = spread_scores(paths, cuts, test, spreads, backtests, season)
    out["seconds"] = time.perf_counter() - start
    return out


def spread_fan(paths: np.ndarray, median: int, spread: float) -> np.ndarray:
    """(N, M, H): source `median`'s median path with the proposals' deviations from their median times `spread`."""
    own = paths[:, 0, MEDIAN][:, None, :]
    return paths[:, median, MEDIAN][:, None, :] + spread * (paths[:, 0] - own)


def spread_scores(paths: dict, cuts: dict, test: list, spreads: tuple[float, ...], backtests: int,
                  season: int) -> dict:
    """Validation and test scores of the per-window choice among (median, spread) on the mean backtest loss."""
    options = [(j, s) for j in range(3) for s in spreads]

    def loss(k) -> np.ndarray:  # (N, options) on cut k
        future = np.stack([w.future for w in cuts[k]])
        return np.stack([pinball(spread_fan(paths[k], j, s), future) for j, s in options], 1)

    losses = {k: loss(k) for k in cuts}
    pick_val = np.mean([losses[k] for k in range(2, backtests + 2)], axis=0).argmin(1)
    pick_test = np.mean([losses[k] for k in range(1, backtests + 1)], axis=0).argmin(1)

    def forecast(split, pick) -> np.ndarray:
        fans = np.stack([spread_fan(paths[split], j, s) for j, s in options], 1)
        return fans[np.arange(len(pick)), pick]

    return {"val": score_windows(forecast(1, pick_val), cuts[1], season, FORECAST_LEVELS),
            "test": score_windows(forecast("test", pick_test), test, season, FORECAST_LEVELS),
            "switched": float((pick_test != 0).mean())}


def geomean_ratio(scores: dict, use: str, r: float, split: str, metric: str) -> float:
    """Geometric mean over the configs of (use, r)'s metric relative to seasonal naive on the same windows."""
    ratios = [s["grid"][use, r][split][metric] / s[f"naive_{split}"][metric] for s in scores.values()]
    return float(np.exp(np.mean(np.log(ratios))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--configs", nargs="*", default=list(GIFT_SUITE))
    parser.add_argument("--ebt", required=True, help="NAME=FOLDER of a pretrained model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backtests", type=int, default=1, help="windows before each one its choice is made on")
    parser.add_argument("--out", default="evaluation/issue28/zero_shot")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    name, folder = args.ebt.split("=", 1)
    suffix = "" if args.backtests == 1 else f"_k{args.backtests}"
    scores = {config: config_scores(config, folder, args.root, args.backtests) for config in args.configs}
    grid = pd.DataFrame([{"use": use, "r": r, **{f"{split}_{metric}": geomean_ratio(scores, use, r, split, metric)
                                                  for split in ("val", "test") for metric in ("wql", "mase")}}
                         for use, r in [*((u, m) for u in USES for m in MARGINS), *(("spread", k) for k in SPREAD_SETS)]])
    new = []
    for use in (*USES, "spread"):  # r chosen on validation WQL, before the test columns are read
        r = grid[grid.use == use].sort_values("val_wql").iloc[0].r
        r = r if use == "spread" else float(r)
        new += [zero_shot.row(config, f"{name}_{use}{suffix}", s["grid"][use, r]["test"], s["seconds"], choice=f"r={r}",
                              naive_share=s["grid"][use, r]["switched"]) for config, s in scores.items()]
    csv = Path(args.out).with_suffix(".csv")
    frame = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["config", "model"])  # re-read: runs beside
    frame = frame[~frame.set_index(["config", "model"]).index.isin([(r["config"], r["model"]) for r in new])]
    atomic_write_csv(pd.concat([frame, pd.DataFrame(new)], ignore_index=True), csv)
    atomic_write_text(Path(args.out).with_suffix(".md"), zero_shot.table(pd.read_csv(csv)))
    atomic_write_text(Path(f"{args.out}_{name}_margins{suffix}.md"),
                      f"# {name}: backtest margin r, geometric means relative to seasonal naive\n\n"
                      + grid.to_markdown(index=False, floatfmt=".3f") + "\n")
    print(grid.round(3).to_string(index=False))
    for r in new:
        print(f"{r['config']:24s} {r['model']:22s} WQL {r['wql']:.4f} MASE {r['mase']:.3f} {r['choice']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
