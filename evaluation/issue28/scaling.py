"""Time-series scaling of the pretrained forecaster (issue 28): the EBT and its feed-forward twin at three sizes and
two training-FLOP budgets, under matched FLOPs (each run's steps = budget / its measured FLOPs per step), and at two
data budgets: the whole corpus, and a fixed seeded 5% of each corpus data set's series (`_d05` runs, at the c2 FLOPs;
TSMixup mixes only those series; pretrain.data.corpus_series_fraction), and the best cells (s, c2) at pretraining
seeds 1 and 2 (`_seed{n}` runs: the init and the data stream; the slopes use seed 0, the seeds get their own table).

    python evaluation/issue28/scaling.py flops       # FLOPs per training step of every (size, mode), counted
    python evaluation/issue28/scaling.py train       # every planned pretraining run, cheapest first; each resumes
    python evaluation/issue28/scaling.py evaluate    # GIFT-Eval zero-shot rows of every finished run
    python evaluation/issue28/scaling.py fit         # slopes -> evaluation/issue28/scaling.{csv,md}

FLOPs per step are counted by torch's FlopCounterMode on one training step (forward + backward) of a batch of the
pretraining stream: the EBT's step (proposals, refinement with second-order gradients, the energy's ranking loss)
costs ~7x the twin's, so at a matched budget it sees ~7x fewer windows. Runs go to results/scaling/<mode>_<size>_<budget>
with the phase-1 recipe of experiment=pretrain_1m (standard scaling, the corpus + TSMixup + KernelSynth mix, warm-up
10% of the steps, cosine to the end), one thread and one data worker (the 2-core CPU; one run at a time).
Validation loss = the proposals' WQL on the fixed validation windows of the zero-shot suite (validation.csv, the
end step); zero-shot WQL = the GIFT-Eval test configs' geometric-mean WQL relative to seasonal naive
(evaluation/issue28/zero_shot.py; for an EBT also its lowest-energy-of-4 row, `_verify4`).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SIZES = {"s": (64, 4, 4), "m": (96, 4, 4), "l": (128, 6, 4)}  # dim, depth, heads: 0.17M, 0.38M, 1.0M parameters
MODES = {"twin": "feedforward", "ebt": "ebt"}
BUDGETS = {"c1": 6e12, "c2": 1.8e13}  # training FLOPs
DATA = {"full": 1.0, "d05": 0.05}  # data budget -> share of each corpus data set's series (run names: `_d05`)
DATA_RUNS = {"d05": ("c2",)}  # the smaller data budget at these FLOP budgets only (the CPU's time)
# pretraining seeds (init and data stream; `_seed{n}` runs) of the best cells only (the CPU's time); seed 0 is the run
SEED_RUNS = {("twin", "s", "c2"): (1, 2), ("ebt", "s", "c2"): (1, 2)}
RUNS = Path("results/scaling")
OUT = Path("evaluation/issue28/scaling")
FLOPS = OUT.with_name("scaling_flops.json")
ZERO_SHOT = OUT.with_name("scaling_zero_shot")  # zero_shot.py's rows (.csv) and table (.md)


def overrides(mode: str, size: str, data: str = "full", seed: int = 0) -> list[str]:
    dim, depth, heads = SIZES[size]
    return ["experiment=pretrain_1m", f"pretrain.mode={MODES[mode]}", f"model.dim={dim}", f"model.depth={depth}",
            f"model.heads={heads}", *([f"pretrain.data.corpus_series_fraction={DATA[data]}"] if DATA[data] < 1 else []),
            *([f"seed={seed}", f"pretrain.data.seed={seed}"] if seed else [])]


def count_flops() -> dict:
    """FLOPs, parameters and seconds of one training step (batch 128) for every (mode, size)."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    from ebt_forecast.config import compose
    from ebt_forecast.data.pretrain_windows import PretrainWindowStream
    from ebt_forecast.tasks.forecast.pretrain import PretrainModule, count_parameters, model_config

    torch.set_num_threads(1)
    out = {}
    for mode in MODES:
        for size in SIZES:
            app = compose("pretrain", overrides(mode, size))
            torch.manual_seed(0)
            module = PretrainModule(model_config(app), app.think, app.trainer, app.task, mode=MODES[mode]).train()
            batch = next(iter(DataLoader(PretrainWindowStream(app.pretrain.data), batch_size=app.trainer.batch_size)))
            with FlopCounterMode(display=False) as counter:
                module.training_step(batch, 0).backward()
            start = time.perf_counter()
            module.training_step(batch, 0).backward()
            out[f"{mode}_{size}"] = {"flops_per_step": counter.get_total_flops(), "parameters": count_parameters(module),
                                     "seconds_per_step": time.perf_counter() - start}
            print(mode, size, out[f"{mode}_{size}"], flush=True)
    FLOPS.write_text(json.dumps(out, indent=1))
    return out


def plan() -> list[dict]:
    """Every run: name, mode, size, budget, steps (budget / FLOPs per step), cheapest first."""
    flops = json.loads(FLOPS.read_text())
    runs = []
    for mode in MODES:
        for size in SIZES:
            f = flops[f"{mode}_{size}"]
            for budget, total in BUDGETS.items():
                steps = max(10, round(total / f["flops_per_step"]))
                variants = [(data, 0) for data in DATA if data == "full" or budget in DATA_RUNS[data]]
                variants += [("full", seed) for seed in SEED_RUNS.get((mode, size, budget), ())]
                for data, seed in variants:
                    name = (f"{mode}_{size}_{budget}" + ("" if data == "full" else f"_{data}")
                            + (f"_seed{seed}" if seed else ""))
                    runs.append({"name": name, "mode": mode, "size": size,
                                 "budget": budget, "data": data, "series_fraction": DATA[data], "seed": seed,
                                 "budget_flops": total, "steps": steps, "parameters": f["parameters"],
                                 "flops": steps * f["flops_per_step"], "cost": steps * f["seconds_per_step"]})
    return sorted(runs, key=lambda r: (r["mode"] == "ebt", r["cost"]))


def finished(run: dict) -> bool:
    history = RUNS / run["name"] / "train.json"
    return history.exists() and json.loads(history.read_text())[-1]["end_step"] >= run["steps"]


def train(only: str = ".*") -> None:
    """Pretrain every planned run (whose name matches `only`) not yet finished; a killed run resumes from its
    checkpoint."""
    for run in plan():
        if finished(run) or not re.fullmatch(only, run["name"]):
            continue
        steps = run["steps"]
        cmd = [sys.executable, "-m", "ebt_forecast", "pretrain",
               *overrides(run["mode"], run["size"], run["data"], run["seed"]),
               f"runtime.output_dir={RUNS / run['name']}", f"trainer.max_steps={steps}", f"pretrain.schedule_steps={steps}",
               f"trainer.warmup_steps={max(5, steps // 10)}", f"trainer.checkpoint_every={max(10, steps // 5)}",
               f"pretrain.val_every={steps}", "pretrain.num_workers=1", "runtime.threads=1", "trainer.progress_bar=false"]
        print(f"{run['name']}: {steps} steps, {run['flops']:.2e} FLOPs, ~{run['cost'] / 60:.0f} min", flush=True)
        subprocess.run(cmd, check=True)


def evaluate() -> None:
    """The GIFT-Eval zero-shot rows of every finished run (proposals; an EBT's lowest energy of 4 and its average)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import zero_shot

    csv = ZERO_SHOT.with_suffix(".csv")
    scored = set(pd.read_csv(csv).model) if csv.exists() else set()
    done = [r for r in plan() if finished(r) and r["name"] not in scored]  # loading a model costs its validation pass
    specs = [f"{r['name']}={RUNS / r['name']}" for r in done if r["mode"] == "twin"]
    if specs:
        zero_shot.main(["--stats", "seasonalnaive", "--no-thinking", "--ebt", *specs, "--out", str(ZERO_SHOT)])
    specs = [f"{r['name']}={RUNS / r['name']}" for r in done if r["mode"] == "ebt"]
    if specs:
        zero_shot.main(["--stats", "seasonalnaive", "--no-refine", "--ebt", *specs, "--out", str(ZERO_SHOT)])


def slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """OLS slope of log y on log x and its standard error (nan with fewer than 3 points)."""
    lx, ly = np.log(x), np.log(y)
    if len(lx) < 3:
        return (float(np.polyfit(lx, ly, 1)[0]) if len(lx) == 2 else float("nan")), float("nan")
    coef, cov = np.polyfit(lx, ly, 1, cov=True)
    return float(coef[0]), float(np.sqrt(cov[0, 0]))


def data_budget_lines(frame: pd.DataFrame) -> list[str]:
    """Markdown: every size at the smaller data budget beside the whole corpus (same FLOPs), and the slopes."""
    small = frame[frame["data"] != "full"] if len(frame) else frame
    if not len(small):
        return []
    lines = ["", "Data budgets at matched FLOPs (val. WQL / zero-shot rel. WQL; the whole corpus against a seeded "
             "share of each data set's series):", "",
             "| mode | size | FLOPs | whole corpus | " + " | ".join(sorted(set(small.data))) + " |",
             "|---" * (4 + len(set(small.data))) + "|"]
    for (mode, size, budget), g in frame.groupby(["mode", "size", "budget"], sort=False):
        if set(g.data) == {"full"}:
            continue
        cells = {r.data: f"{r.val_wql:.4f} / {r.zero_shot_rel_wql:.3f}" for r in g.itertuples()}
        lines.append(f"| {mode} | {size} | {budget} | {cells.get('full', '')} | "
                     + " | ".join(cells.get(d, "") for d in sorted(set(small.data))) + " |")
    lines += ["", "| mode | data | at | val. WQL vs parameters | zero-shot rel. WQL vs parameters |", "|---|---|---|---|---|"]
    for (mode, data, budget), g in frame.groupby(["mode", "data", "budget"], sort=False):
        if budget in {b for d in DATA_RUNS.values() for b in d} and len(g) >= 2:
            a = slope(g.parameters.to_numpy(), g.val_wql.to_numpy())
            b = slope(g.parameters.to_numpy(), g.zero_shot_rel_wql.to_numpy())
            lines.append(f"| {mode} | {data} | {budget} | {a[0]:+.3f} +- {a[1]:.3f} | {b[0]:+.3f} +- {b[1]:.3f} |")
    return lines


def seed_lines(frame: pd.DataFrame) -> list[str]:
    """Markdown: the cells pretrained at several seeds, mean (sd) over seeds of validation and zero-shot WQL."""
    lines = []
    for (mode, size, budget, data), g in frame.groupby(["mode", "size", "budget", "data"], sort=False):
        if len(g) < 2:
            continue
        if not lines:
            lines = ["", "Pretraining seeds (init and data stream; mean (sd) over seeds):", "",
                     "| run | seeds | val. WQL | zero-shot rel. WQL | EBT lowest energy of 4 "
                     "| its energy-free average |",
                     "|---|---|---|---|---|---|"]
        stats = []
        for column in ("val_wql", "zero_shot_rel_wql", "zero_shot_verify4", "zero_shot_average4"):
            digits = 4 if column == "val_wql" else 3
            values = g[column]
            stats.append(f"{values.mean():.{digits}f} ({values.std():.{digits}f})" if values.notna().any() else "")
        lines.append(f"| {mode}_{size}_{budget}{'' if data == 'full' else '_' + data} | "
                     f"{', '.join(map(str, sorted(g.seed)))} | " + " | ".join(stats) + " |")
    return lines


def fit() -> None:
    """One row per run (validation loss, zero-shot rel. WQL) and the fitted slopes -> scaling.{csv,md}."""
    zero = pd.read_csv(ZERO_SHOT.with_suffix(".csv"))
    naive = zero[zero.model == "seasonal_naive"].set_index("config").wql
    zero["rel_wql"] = zero.wql / naive.reindex(zero.config).to_numpy()
    geo = zero.groupby("model").rel_wql.apply(lambda v: float(np.exp(np.log(v).mean())))
    # runs whose folders an earlier session left elsewhere keep their rows of the last fit
    kept = pd.read_csv(OUT.with_suffix(".csv")).set_index("name") if OUT.with_suffix(".csv").exists() else None
    rows = []
    for run in plan():
        if not finished(run):
            if kept is not None and run["name"] in kept.index:
                rows.append({**kept.loc[run["name"]].to_dict(), "name": run["name"]})
            continue
        val = pd.read_csv(RUNS / run["name"] / "validation.csv")
        last = val[val.step == val.step.max()]
        history = json.loads((RUNS / run["name"] / "train.json").read_text())
        rows.append({**run, "val_wql": float(np.exp(np.log(last[last.dataset != "geomean"].wql).mean())),
                     "val_rel_wql": float(last[last.dataset == "geomean"].rel_wql.iloc[0]),
                     "zero_shot_rel_wql": geo.get(run["name"], np.nan),
                     "zero_shot_verify4": geo.get(f"{run['name']}_verify4", np.nan),
                     "zero_shot_average4": geo.get(f"{run['name']}_average4", np.nan),
                     "windows": run["steps"] * 128,  # batch 128 (experiment=pretrain_1m)
                     "seconds": sum(h["seconds"] for h in history)})  # calls that finished (a killed one is not kept)
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].fillna(0).astype(int) if "seed" in frame else 0
    frame.to_csv(OUT.with_suffix(".csv"), index=False)
    seeds, frame = frame, frame[frame.seed == 0]  # the slopes: one run (seed 0) per cell
    lines = ["| run | parameters | steps | windows | training FLOPs | seconds | val. WQL (geomean) | val. rel. WQL | "
             "zero-shot rel. WQL | EBT lowest energy of 4 | its energy-free average |", "|---" * 11 + "|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['parameters']:,} | {r['steps']} | {r['windows']:,} | {r['flops']:.2e} | "
                     f"{r['seconds']:.0f} | {r['val_wql']:.4f} | {r['val_rel_wql']:.3f} | {r['zero_shot_rel_wql']:.3f} "
                     f"| {r['zero_shot_verify4']:.3f} | {r['zero_shot_average4']:.3f} |")
    lines += ["", "Fitted slopes (log-log OLS, +- standard error; 3 sizes per budget, 2 budgets per size):", "",
              "| mode | against | at | val. WQL slope | zero-shot rel. WQL slope |", "|---|---|---|---|---|"]
    for mode in MODES:
        m = frame[(frame["mode"] == mode) & (frame["data"] == "full")] if len(frame) else frame
        for budget in BUDGETS:
            g = m[m.budget == budget]
            if len(g) >= 2:
                a, b = slope(g.parameters.to_numpy(), g.val_wql.to_numpy()), slope(g.parameters.to_numpy(),
                                                                                   g.zero_shot_rel_wql.to_numpy())
                lines.append(f"| {mode} | parameters | {budget} ({BUDGETS[budget]:.1e} FLOPs) | {a[0]:+.3f} +- {a[1]:.3f} "
                             f"| {b[0]:+.3f} +- {b[1]:.3f} |")
        for size in SIZES:
            g = m[m["size"] == size]
            if len(g) >= 2:
                a, b = slope(g.flops.to_numpy(), g.val_wql.to_numpy()), slope(g.flops.to_numpy(),
                                                                              g.zero_shot_rel_wql.to_numpy())
                lines.append(f"| {mode} | FLOPs | size {size} | {a[0]:+.3f} | {b[0]:+.3f} |")
        if len(m) >= 3:
            a, b = slope(m.flops.to_numpy(), m.val_wql.to_numpy()), slope(m.flops.to_numpy(),
                                                                          m.zero_shot_rel_wql.to_numpy())
            lines.append(f"| {mode} | FLOPs | all runs | {a[0]:+.3f} +- {a[1]:.3f} | {b[0]:+.3f} +- {b[1]:.3f} |")
    lines += data_budget_lines(frame) + seed_lines(seeds)
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["flops", "train", "evaluate", "fit", "all"])
    parser.add_argument("--only", default=".*", help="train: the runs whose name matches this regex")
    args = parser.parse_args()
    step = args.step
    for name, action in [("flops", count_flops), ("train", lambda: train(args.only)), ("evaluate", evaluate),
                         ("fit", fit)]:
        if step in (name, "all") and not (name == "flops" and step == "all" and FLOPS.exists()):
            action()
