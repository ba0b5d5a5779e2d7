"""Issue 30: ETTh1's 7 columns forecast jointly by one EBT (one energy per joint candidate) against independent
per-target forecasts (the same EBT recipe trained univariately on the 7 columns), by scoringrules' energy score.

    python evaluation/issue30/joint_etth1.py --seeds 0 1 2 --threads 1

Train: the first 16 months (the last 24 hours of it are the validation tail where thinking is chosen); test: rolling
windows of H = 24 every 24 hours over the next 4 months (120 windows). Every model has the same backbone, budget
(trainer.max_steps) and seed. Rows per seed:

    joint              the joint EBT's samples (each a joint candidate: all 7 targets at one level, thought jointly)
    joint_shuffled     the same samples, each target's order permuted independently (its marginals, no dependence)
    independent        the per-target EBT's samples, permuted independently per target (independent forecasts)
    independent_comono the per-target EBT's samples at the same level for every target (a comonotone copula)

Energy score over the 7 targets at each step (targets scaled by their window's mean |past|; lower is better), and
over all 7 x 24 at once; mean WQL over the targets. Writes evaluation/issue30/joint_etth1.{csv,md}.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ebt_forecast.data.loaders import ETT_COLUMNS, ETT_MONTH, etth1_series
from ebt_forecast.data.types import ForecastDataset, Series, TestWindow
from ebt_forecast.io import atomic_write_csv, atomic_write_text
from ebt_forecast.tasks.forecast.config import ForecasterConfig
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from ebt_forecast.tasks.forecast.joint import (JointDataset, JointForecaster, energy_score, independent_coupling,
                                               joint_wql)

H, SEASON = 24, 24
OUT = Path("evaluation/issue30/joint_etth1")  # --out


def etth1_joint(root: str) -> JointDataset:
    """ETTh1 as one entity of 7 targets: 16 months train, rolling 24-hour windows over the next 4 months."""
    by_id = {s.item_id: s for s in etth1_series(root)}
    values = np.stack([by_id[c].target for c in ETT_COLUMNS])
    start, train_end = by_id["OT"].start, 16 * ETT_MONTH
    tests = [TestWindow("etth1", start, values[:, :o], values[:, o:o + H])
             for o in range(train_end, train_end + 4 * ETT_MONTH - H + 1, H)]
    return JointDataset("etth1_joint", "h", H, SEASON, list(ETT_COLUMNS), [Series("etth1", start, values[:, :train_end])],
                        tests)


def per_target(dataset: JointDataset) -> ForecastDataset:
    """The same data as 7 univariate series (the independent forecasters' training set)."""
    s = dataset.train[0]
    return ForecastDataset("etth1_per_target", dataset.freq, H, SEASON,
                           [Series(c, s.start, s.target[k]) for k, c in enumerate(dataset.targets)])


def univariate_samples(forecaster: EBTForecaster, dataset: JointDataset) -> np.ndarray:
    """The per-target EBT's level paths for every test window and target: (N, S, K, H)."""
    k = len(dataset.targets)
    windows = [TestWindow(c, w.start, w.past[j], w.future[j]) for w in dataset.test_windows
               for j, c in enumerate(dataset.targets)]
    samples = forecaster.predict(windows).samples  # (N * K, S, H), window-major
    return samples.reshape(len(dataset.test_windows), k, *samples.shape[1:]).transpose(0, 2, 1, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    dataset = etth1_joint(args.root)
    rows = pd.read_csv(out.with_suffix(".csv")).to_dict("records") if out.with_suffix(".csv").exists() else []
    done = {(r["seed"], r["model"]) for r in rows}
    for seed in args.seeds:
        if (seed, "joint") in done:
            continue
        cfg = ForecasterConfig(seed=seed)
        cfg.trainer.max_steps, cfg.trainer.progress_bar = args.steps, False
        start = time.perf_counter()
        joint = JointForecaster(cfg).fit(dataset)
        samples = joint.predict(dataset.test_windows)
        joint_seconds = time.perf_counter() - start
        start = time.perf_counter()
        single = EBTForecaster(cfg).fit(per_target(dataset))
        independent = univariate_samples(single, dataset)
        single_seconds = time.perf_counter() - start
        for model, x, seconds, setting in [
            ("joint", samples, joint_seconds, joint.chosen.key),
            ("joint_shuffled", independent_coupling(samples, seed), joint_seconds, joint.chosen.key),
            ("independent", independent_coupling(independent, seed), single_seconds, single.chosen.key),
            ("independent_comono", independent, single_seconds, single.chosen.key),
        ]:
            rows.append({"seed": seed, "model": model, **energy_score(x, dataset.test_windows),
                         "wql": joint_wql(x, dataset.test_windows, SEASON), "setting": setting, "seconds": seconds,
                         "steps": args.steps})
            print(rows[-1], flush=True)
        atomic_write_csv(pd.DataFrame(rows), out.with_suffix(".csv"))
    frame = pd.DataFrame(rows)
    table = frame.groupby("model")[["energy_score_per_step", "energy_score", "wql"]].agg(["mean", "std"])
    table.columns = [f"{a} {b}" for a, b in table.columns]
    atomic_write_text(out.with_suffix(".md"), table.sort_values("energy_score_per_step mean").to_markdown(floatfmt=".4f")
                      + f"\n\nseeds: {sorted(frame.seed.unique().tolist())}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
