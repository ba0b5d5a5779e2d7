"""Zero-shot evaluation of pretrained EBTs on the GIFT-Eval configs of the suite (issue 28), beside the
statistical baselines, with thinking rows and their energy-free controls.

    python evaluation/issue28/zero_shot.py --ebt ebt=results/pretrain_1m_ebt --ebt twin=results/pretrain_1m_s1 \
        --stats seasonalnaive autoets autotheta autoarima --out evaluation/issue28/zero_shot

Writes `<out>.csv` (config, model, wql, mase, seconds, ...; one row per config and model, rewritten after each)
and `<out>.md` (per-config WQL / MASE, relative to seasonal naive, and the geometric mean over configs).
`--split validation` scores the same rows one test span earlier, inside each config's training part
(`gift_eval.validation_split`; cached forecasts are keyed by their windows): where settings are chosen before the test is read.
Models already in `<out>.csv` are kept (a rerun adds only what is missing). statsforecast forecasts are cached
under results/issue28_cache. Rows of a pretrained model:

    <name>                    System 1: the proposals (no thinking)
    <name>_default            what `forecast` serves: the thinking setting chosen on the validation tail, anchored
    <name>_anchor{K}          the proposals anchored: per window, the median moves to seasonal naive's or the two's
                              average when that scored better over the window's own last K horizons (anchor.py)
    <name>_think{k}           the proposals refined k steps (from the start; alpha as trained)
    <name>_verify{G}          G starts per level (proposal, seasonal naive, perturbed), refined, lowest energy
    <name>_average{G}         the same G refined starts averaged per level (the energy-free control)
    (the verify rows' `spearman`: within (window, level), energy vs pinball loss of the G refined starts)
    <name>_verifier0          --verifier: the pretrained energy, untaught, over its proposal, seasonal naive, AutoETS,
                              AutoTheta; chosen on the validation tail among energy settings and controls
    sources_average / sources_best_on_val   the energy-free controls of the same starts
    --trained deepar patchtst ebt_verifier --seeds 0 1 2:  models trained per config on its training part
        (the benchmark's cells under experiment=shared: budget, early stopping, backbone sized like the EBT),
        one row per seed (`deepar_seed0`, ...), written as each finishes; trained EBTs and fast forecasts are
        cached under results/issue28_cache
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ebt_forecast.data.gift_eval import GIFT_SUITE, load_gift_config, validation_split
from ebt_forecast.data.types import ForecastDataset
from ebt_forecast.io import atomic_write_csv, atomic_write_text
from ebt_forecast.metrics import FORECAST_LEVELS, score_windows
from ebt_forecast.tasks.forecast.diagnostics import candidate_errors, mean_spearman
from ebt_forecast.tasks.forecast.module import inference_levels
from ebt_forecast.tasks.forecast.pretrained import PretrainedForecaster
from ebt_forecast.tasks.forecast.sources import fast_forecasts

CACHE = Path("results/issue28_cache")
TRAINED = ("deepar", "patchtst", "ebt_verifier")  # --trained: fitted per config, rows `<name>_seed<k>`
STATS_NAMES = {"seasonalnaive": "seasonal_naive", "autoets": "autoets", "autotheta": "autotheta",
               "autoarima": "autoarima"}


def load(config: str) -> ForecastDataset:
    """The config's test protocol, or (--split validation) the same one test span earlier."""
    dataset = load_gift_config(config, ROOT)
    return validation_split(dataset) if SPLIT == "validation" else dataset


def stats_rows(config: str, models: list[str], done: set) -> list[dict]:
    """statsforecast models on one config (full history for seasonal naive, the last 1000 points for the rest)."""
    dataset = load(config)
    rows = []
    for model in models:
        name = STATS_NAMES[model]
        if (config, name) in done:
            continue
        start = time.perf_counter()
        paths = fast_forecasts(model, dataset, dataset.test_windows, CACHE,
                               context=10**6 if model == "seasonalnaive" else None)
        scores = score_windows(list(paths), dataset.test_windows, dataset.season_length, levels=FORECAST_LEVELS)
        rows.append(row(config, name, scores, time.perf_counter() - start))
    return rows


def row(config: str, model: str, scores: dict, seconds: float, **extra) -> dict:
    return {"config": config, "model": model, "wql": scores["wql"], "mase": scores["mase"],
            "crps_scaled": scores["crps_scaled"], "coverage_80": scores["coverage_80"], "seconds": seconds, **extra}


def add_verifier(config: str, name: str, folder: str, dataset, rows: list[dict], done: set) -> None:
    """The pretrained energy (untaught: task.verifier.steps=0) verifying among its proposal, seasonal naive, AutoETS
    and AutoTheta, chosen on the validation tail among its settings and the energy-free controls (equal weights,
    median, the best single source); the controls' own rows beside it."""
    from dataclasses import replace

    from ebt_forecast.tasks.forecast.config import ForecasterConfig, VerifierConfig
    from ebt_forecast.tasks.forecast.sources import choose, verifier_rows

    model = f"{name}_verifier0"
    if (config, model) in done:
        return
    start = time.perf_counter()
    base = ForecasterConfig()
    cfg = replace(base, task=replace(base.task, verifier=VerifierConfig(enabled=True, steps=0)))
    ebt = PretrainedForecaster(folder, cfg).fit(dataset)
    table, diag = verifier_rows(ebt, dataset, ["autoets", "autotheta"], {"val": ebt.val_windows,
                                                                         "test": dataset.test_windows}, CACHE)
    seconds = time.perf_counter() - start
    picks = {model: choose(table, "any"), f"{name}_verifier0_energy": choose(table, "energy"),
             "sources_average": next(r for r in table if r["selection"] == "average"),
             "sources_best_on_val": choose(table, "source")}
    for label, r in picks.items():
        if (config, label) not in done:
            rows.append(row(config, label, r["test"], seconds, choice=f"{r['selection']}@steps={r['steps']}",
                            spearman=diag["source_spearman"], pick_accuracy=diag["source_pick_accuracy"]))


def ebt_rows(config: str, name: str, folder: str, thinking: bool, group: int, done: set,
             verifier: bool = False, refine: bool = True) -> list[dict]:
    """A pretrained model's zero-shot rows on one config."""
    dataset = load(config)
    windows = dataset.test_windows
    forecaster = PretrainedForecaster(folder).fit(dataset)
    rows = []

    def add(model: str, **kwargs) -> None:
        if (config, model) in done:
            return
        start = time.perf_counter()
        out = forecaster.predict(windows, **kwargs)
        scores = score_windows(out, windows, dataset.season_length)
        extra = {}
        if kwargs.get("selection") == "verified":  # the energy's ranking of the G refined starts, against the truth
            futures = np.stack([w.future for w in windows])
            m, g = out.energies.shape[1:]
            errors = candidate_errors(out.candidates, futures, inference_levels(m, 1).numpy()[0])
            extra["spearman"] = mean_spearman(out.energies.reshape(-1, g), errors.reshape(-1, g))
        if not kwargs:  # the served forecast: which setting the validation tail chose
            extra["choice"] = f"{forecaster.chosen.selection}@steps={forecaster.chosen.steps}"
        rows.append(row(config, model, scores, time.perf_counter() - start, passes=out.forward_passes, **extra))

    add(name, steps=0, selection="proposal")
    add(f"{name}_anchor{forecaster.cfg.task.anchor_backtests}", steps=0, selection="proposal", anchor=True)
    add(f"{name}_default")  # no arguments: the served forecast
    if verifier and dataset.horizon <= forecaster.model_horizon and forecaster.mode == "ebt":
        add_verifier(config, name, folder, dataset, rows, done)
    if thinking and forecaster.mode == "ebt":
        trained = forecaster.cfg.think.train_steps
        for k in sorted({1, trained, 2 * trained}) if refine else []:
            add(f"{name}_think{k}", steps=k, selection="refined")
        add(f"{name}_verify{group}", steps=trained, selection="verified", verify_group=group)
        add(f"{name}_average{group}", steps=trained, selection="average", verify_group=group)
    return rows


def trained_rows(config: str, models: list[str], seeds: list[int], done: set) -> Iterator[dict]:
    """Models trained per config (the benchmark's cells, experiment=shared), one row per seed, yielded as each
    finishes (an ETTh1 long seed takes over an hour: the caller writes every row at once)."""
    from ebt_forecast.config import compose
    from ebt_forecast.tasks.forecast.benchmark import run_cell

    dataset = load(config)
    for model in models:
        for seed in seeds:
            name = f"{model}_seed{seed}"
            if (config, name) in done:
                continue
            app = compose("benchmark", ["experiment=shared", f"seed={seed}", f"data.root={ROOT}",
                                        f"runtime.threads={torch.get_num_threads()}"])
            start = time.perf_counter()
            cell = run_cell(dataset, model, app, CACHE / "plots", CACHE / "cells")
            best = cell[0]  # the cell's chosen row (the verifier's validation choice; one row for the others)
            scores = {k: best.get(k, float("nan")) for k in ("wql", "mase", "crps_scaled", "coverage_80")}
            yield row(config, name, scores, time.perf_counter() - start)


def table(frame: pd.DataFrame) -> str:
    """Markdown: per config WQL / MASE and their ratio to seasonal naive; the geometric mean of the ratios."""
    naive = frame[frame.model == "seasonal_naive"].set_index("config")
    f = frame[frame.config.isin(naive.index)].copy()
    f["rel_wql"] = f.wql / naive.wql.reindex(f.config).to_numpy()
    f["rel_mase"] = f.mase / naive.mase.reindex(f.config).to_numpy()
    configs = [c for c in GIFT_SUITE if c in set(f.config)]
    lines = ["| model | " + " | ".join(f"{c} WQL (rel) / MASE" for c in configs) + " | geomean rel. WQL | geomean "
             "rel. MASE | configs |", "|---" * (len(configs) + 4) + "|"]
    order = f.groupby("model").rel_wql.apply(lambda v: np.exp(np.log(v).mean())).sort_values()
    for model in order.index:
        g = f[f.model == model].set_index("config")
        cells = [f"{g.wql[c]:.4f} ({g.rel_wql[c]:.3f}) / {g.mase[c]:.3f}" if c in g.index else "" for c in configs]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {np.exp(np.log(g.rel_wql).mean()):.3f} | "
                     f"{np.exp(np.log(g.rel_mase).mean()):.3f} | {len(g)} |")
    return "\n".join(lines) + "\n" + seeds_table(f, configs)


def seeds_table(f: pd.DataFrame, configs: list[str]) -> str:
    """Markdown: the models trained per config (`<model>_seed<k>` rows), rel. WQL mean (sd) over their seeds per
    config, and the geometric mean over configs of the seed means."""
    family = f.model.str.extract(rf"^({'|'.join(TRAINED)})_seed\d+$", expand=False)  # not a pretrained `_seed` run
    trained = f.assign(family=family).dropna(subset=["family"])
    if trained.empty:
        return ""
    lines = ["", "Trained per config: rel. WQL mean (sd) over seeds [seeds]; geometric mean of the seed means", "",
             "| model | " + " | ".join(configs) + " | geomean rel. WQL | geomean rel. MASE |",
             "|---" * (len(configs) + 3) + "|"]
    for family, g in trained.groupby("family"):
        per = g.groupby("config").agg(wql=("rel_wql", "mean"), sd=("rel_wql", "std"), mase=("rel_mase", "mean"),
                                      n=("rel_wql", "size"))
        cells = [f"{per.wql[c]:.3f} ({per.sd[c]:.3f}) [{per.n[c]}]" if c in per.index else "" for c in configs]
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {np.exp(np.log(per.wql).mean()):.3f} | "
                     f"{np.exp(np.log(per.mase).mean()):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    global ROOT, SPLIT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--configs", nargs="*", default=list(GIFT_SUITE))
    parser.add_argument("--stats", nargs="*", default=[], choices=list(STATS_NAMES))
    parser.add_argument("--ebt", nargs="*", default=[], help="NAME=FOLDER of a pretrained model")
    parser.add_argument("--no-thinking", action="store_true")
    parser.add_argument("--no-refine", action="store_true", help="thinking rows: only verify / average, no thinkK")
    parser.add_argument("--verifier", action="store_true", help="the pretrained energy over fast sources (H <= 64)")
    parser.add_argument("--trained", nargs="*", default=[], choices=list(TRAINED))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--split", choices=["test", "validation"], default="test")
    parser.add_argument("--out", default="evaluation/issue28/zero_shot")
    args = parser.parse_args(argv)
    ROOT, SPLIT = args.root, args.split
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    csv = out.with_suffix(".csv")
    def current() -> pd.DataFrame:
        # re-read before every write: another run of this script may have added rows meanwhile
        return pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["config", "model"])

    def write(config: str, new: list[dict]) -> pd.DataFrame:
        frame = current()
        frame = pd.concat([frame, pd.DataFrame(new)], ignore_index=True) if new else frame
        atomic_write_csv(frame, csv)
        for r in new:
            print(f"{config:24s} {r['model']:22s} WQL {r['wql']:.4f} MASE {r['mase']:.3f} ({r['seconds']:.1f} s)",
                  flush=True)
        return frame

    frame = current()
    for config in args.configs:
        done = set(zip(frame.config, frame.model))
        for trained in trained_rows(config, args.trained, args.seeds, done):
            frame = write(config, [trained])
        new = stats_rows(config, args.stats, done)
        for spec in args.ebt:
            name, folder = spec.split("=", 1)
            new += ebt_rows(config, name, folder, not args.no_thinking, args.group, done, args.verifier,
                            not args.no_refine)
        frame = write(config, new)
    atomic_write_text(out.with_suffix(".md"), table(frame))
    print(out.with_suffix(".md").read_text())
    return 0


ROOT, SPLIT = "../shared/data", "test"
if __name__ == "__main__":
    sys.exit(main())
