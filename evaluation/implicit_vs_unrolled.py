"""Implicit-gradient against unrolled training of the forecasting EBT (issue 20): cost and accuracy.

Three ways to get the System 2 gradient, at thinking steps T in {2, 4, 8, 16} (fixed, not drawn):
- `unrolled`: backprop through every step (think.truncate=false): the full second-order graph of T steps;
- `truncated`: the project default (think.truncate=true): only the last step builds the second-order graph;
- `implicit`: think.gradient=implicit: the steps build no graph, the implicit-function-theorem gradient
  is attached at the final candidate (damped CG on Hessian-vector products, ebt_forecast/think/implicit.py).

Cost cells (one fresh subprocess each, 1 torch thread): the forecast module's real `training_step` on ETTh1
(OT) batches, + backward + AdamW step. Measured:
- `graph_mb`: bytes of the tensors autograd saved for backward that are still alive when the loss is formed
  (unique storages, seen by `torch.autograd.graph.saved_tensors_hooks`): the training graph, deterministic;
- `peak_rss_delta_mb`: the process's peak resident memory (`resource.getrusage(...).ru_maxrss`) after the
  timed steps minus the same reading just before the first step: everything a training step adds at its
  peak, transient buffers of backward and CG included (allocator-dependent, so coarser);
- `ms_per_step` / `cpu_ms_per_step`: the median wall / process CPU time of forward + backward + optimizer
  step over the timed steps (on a shared machine the CPU time is the steadier of the two).
Accuracy cells: `EBTForecaster.fit` (Lightning, the benchmark's training path) for a short budget, then the
test WQL of the validation-chosen forecast (`auto`) and of the refined level paths at T steps.

    OMP_NUM_THREADS=1 .venv/bin/python evaluation/implicit_vs_unrolled.py           # all cells, resumable
    .venv/bin/python evaluation/implicit_vs_unrolled.py --summary-only              # tables from finished cells

Cells are JSON files under --work (default results/implicit_vs_unrolled/); a finished cell is not rerun.
Writes evaluation/implicit_vs_unrolled.csv and .md.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("unrolled", "truncated", "implicit")


def think_overrides(variant: str, steps: int) -> dict:
    """The think settings of one variant at T fixed training (and inference) steps."""
    base = {"train_steps": steps, "train_steps_min": 0, "infer_steps": steps}
    if variant == "unrolled":
        return {**base, "truncate": False}
    if variant == "truncated":
        return {**base, "truncate": True}
    return {**base, "gradient": "implicit"}


def forecaster_config(variant: str, steps: int, seed: int, max_steps: int, batch_size: int):
    """The forecasting EBT's config: project defaults, small backbone, verifier off, T fixed steps."""
    from dataclasses import replace

    from ebt_forecast.tasks.forecast.config import ForecasterConfig, VerifierConfig

    cfg = ForecasterConfig(seed=seed)
    cfg.think = replace(cfg.think, **think_overrides(variant, steps))
    cfg.trainer = replace(cfg.trainer, max_steps=max_steps, batch_size=batch_size, progress_bar=False)
    cfg.task = replace(cfg.task, verifier=VerifierConfig(enabled=False))
    return cfg.validate()


def load_data(root: str):
    from ebt_forecast.data.loaders import load_etth1

    return load_etth1(root, columns="OT")


# ------------------------------------------------------------------------------------------------
# one cell (run in a fresh subprocess)


def cost_cell(variant: str, steps: int, seed: int, root: str, batch_size: int, warmup: int, timed: int) -> dict:
    """Graph bytes, peak RSS growth and time of real training steps of the forecast module."""
    import torch
    from torch.utils.data import DataLoader

    from ebt_forecast.data.windows import TrainWindowDataset
    from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
    from ebt_forecast.tasks.forecast.module import ForecastModule

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    dataset = load_data(root)
    cfg = forecaster_config(variant, steps, seed, warmup + timed, batch_size)
    ebt = EBTForecaster(cfg, "ebt")
    train, _ = ebt.split(dataset)
    model_cfg = ebt.model_config(dataset.horizon, dataset.season_length)
    module = ForecastModule(model_cfg, cfg.think, cfg.trainer, cfg.task)
    data = TrainWindowDataset(train, model_cfg.context_length, dataset.horizon,
                              num_samples=(warmup + timed) * batch_size, seed=seed)
    batches = list(DataLoader(data, batch_size=batch_size, shuffle=False))
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.trainer.lr)

    saved: list[weakref.ref] = []

    def pack(t: torch.Tensor):
        saved.append(weakref.ref(t))
        return t

    def live_graph_bytes() -> int:  # saved tensors still held (by the graph) when the loss is formed
        storages = {}
        for ref in saved:
            t = ref()
            if t is not None:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(storages.values())

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu_times, graph_bytes = [], [], []
    for i, batch in enumerate(batches):
        saved.clear()
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = module.training_step(batch, i)
        graph_bytes.append(live_graph_bytes())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "steps": steps, "seed": seed, "batch_size": batch_size,
            "candidate_rows": batch_size * cfg.task.loss.train_candidates * cfg.task.loss.train_group,
            "graph_mb": max(graph_bytes) / 2**20, "peak_rss_delta_mb": (rss_after - rss_before) / 1024,
            "peak_rss_mb": rss_after / 1024, "ms_per_step": 1000 * statistics.median(times),
            "cpu_ms_per_step": 1000 * statistics.median(cpu_times),
            "alpha_grad_is_none": module.step_size.raw.grad is None}


def accuracy_cell(variant: str, steps: int, seed: int, root: str, batch_size: int, max_steps: int) -> dict:
    """Train with Lightning for `max_steps`; the test WQL of the auto forecast and of the refined paths."""
    import torch

    from ebt_forecast.metrics import score_windows
    from ebt_forecast.tasks.forecast.forecaster import EBTForecaster

    torch.set_num_threads(1)
    dataset = load_data(root)
    ebt = EBTForecaster(forecaster_config(variant, steps, seed, max_steps, batch_size), "ebt").fit(dataset)
    windows, season = dataset.test_windows, dataset.season_length
    row = {"variant": variant, "steps": steps, "seed": seed, "max_steps": max_steps, "batch_size": batch_size,
           "train_s": ebt.train_seconds, "alpha": float(ebt.module.step_size().detach()),
           "auto_setting": f"{ebt.chosen.steps}/{ebt.chosen.selection}",
           "wql_auto": score_windows(ebt.predict(windows).samples, windows, season)["wql"]}
    for t in sorted({0, steps}):
        out = ebt.predict(windows, steps=t, selection="refined")
        row[f"wql_refined_{'T' if t else 0}"] = score_windows(out.samples, windows, season)["wql"]
    return row


# ------------------------------------------------------------------------------------------------
# driver: cells in subprocesses, then the tables


def run_cell(kind: str, variant: str, steps: int, seed: int, args: argparse.Namespace) -> dict:
    """The cell's JSON, computed in a fresh process unless already on disk."""
    from ebt_forecast.io import atomic_write_json

    batch = f"__b{args.batch_size}" + (f"__n{args.max_steps}" if kind == "accuracy" else "")
    path = Path(args.work) / f"{kind}__{variant}__T{steps}__s{seed}{batch}.json"
    if path.exists():
        return json.loads(path.read_text())
    command = [sys.executable, __file__, "--cell", kind, "--variant", variant, "--steps", str(steps),
               "--seed", str(seed), "--root", args.root, "--batch-size", str(args.batch_size),
               "--max-steps", str(args.max_steps), "--warmup", str(args.warmup), "--timed", str(args.timed)]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                         env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if out.returncode != 0:
        raise RuntimeError(f"cell {path.name} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["cell_s"] = time.perf_counter() - start
    atomic_write_json(path, row)
    print(f"{path.name}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})}",
          flush=True)
    return row


def summarise(cost: list[dict], accuracy: list[dict], args: argparse.Namespace) -> None:
    """evaluation/implicit_vs_unrolled.csv (every cell) and .md (the tables)."""
    import pandas as pd

    from ebt_forecast.io import atomic_write_csv, atomic_write_text

    frames = [pd.DataFrame(rows).assign(kind=kind) for kind, rows in (("cost", cost), ("accuracy", accuracy)) if rows]
    if not frames:
        return
    atomic_write_csv(pd.concat(frames, ignore_index=True), Path(args.output).with_suffix(".csv"))
    lines = ["# Implicit-gradient against unrolled training (issue 20)", "",
             "ETTh1 (OT, horizon 48), forecasting EBT defaults (dim 64, depth 2; 4 levels x 3 starts per window "
             "while training), 1 torch thread, 2-core CPU shared with other jobs. "
             "`python evaluation/implicit_vs_unrolled.py` (its docstring says what each column measures).", ""]
    if cost:
        c = pd.DataFrame(cost)
        lines += [f"## Cost per training step, batch {int(c.batch_size.iloc[0])} windows "
                  f"({int(c.candidate_rows.iloc[0])} candidates per thinking call)", ""]
        for metric, label in (("graph_mb", "graph MiB"), ("peak_rss_delta_mb", "peak RSS growth MiB"),
                              ("ms_per_step", "wall ms / step"), ("cpu_ms_per_step", "CPU ms / step")):
            if metric not in c:
                continue
            table = c.groupby(["variant", "steps"])[metric].mean().unstack("steps").reindex(VARIANTS)
            lines += [f"**{label}**", "", table.round(1).to_markdown(), ""]
    if accuracy:
        a = pd.DataFrame(accuracy)
        cols = ["wql_auto", "wql_refined_0", "wql_refined_T", "train_s"]
        groups = a.groupby(["variant", "steps"])
        mean, sd = groups[cols].mean(), groups[cols].std().fillna(0.0)
        table = pd.DataFrame({c: [f"{m:.4f} ± {v:.4f}" if c != "train_s" else f"{m:.0f} ± {v:.0f}"
                                  for m, v in zip(mean[c], sd[c])] for c in cols}, index=mean.index)
        table["seeds"] = groups.size()
        for c in ("wql_auto", "wql_refined_T"):  # mean WQL relative to unrolled training at the same steps
            ref = mean[c].xs("unrolled", level="variant").reindex(mean.index.get_level_values("steps")).to_numpy()
            table[f"{c} vs unrolled"] = [f"{100 * (m / r - 1):+.1f}%" for m, r in zip(mean[c], ref)]
        table = table.reset_index()
        table["order"] = table["variant"].map(VARIANTS.index)
        table = table.sort_values(["steps", "order"]).drop(columns="order")
        lines += [f"## Test WQL after {int(a.max_steps.iloc[0])} optimizer steps, batch {int(a.batch_size.iloc[0])} "
                  "(mean ± sd over seeds)", "",
                  table.to_markdown(index=False), "",
                  "`wql_auto`: the validation-chosen inference setting; `wql_refined_0` / `wql_refined_T`: the "
                  "level paths after 0 / T thinking steps.", ""]
    atomic_write_text(Path(args.output).with_suffix(".md"), "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=("cost", "accuracy"))
    parser.add_argument("--variant", choices=VARIANTS, default="implicit")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=150, help="optimizer steps of an accuracy cell")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=6)
    parser.add_argument("--cost-steps", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--accuracy-steps", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--parts", nargs="+", choices=("cost", "accuracy"), default=["cost", "accuracy"])
    parser.add_argument("--work", default=str(REPO / "results" / "implicit_vs_unrolled"))
    parser.add_argument("--output", default=str(REPO / "evaluation" / "implicit_vs_unrolled"))
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.cell:  # inside the subprocess: print the row as the last line
        import logging

        logging.getLogger("lightning").setLevel(logging.ERROR)
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        if args.cell == "cost":
            row = cost_cell(args.variant, args.steps, args.seed, args.root, args.batch_size, args.warmup, args.timed)
        else:
            row = accuracy_cell(args.variant, args.steps, args.seed, args.root, args.batch_size, args.max_steps)
        print(json.dumps(row))
        return
    if not args.summary_only:
        if "cost" in args.parts:
            for t in args.cost_steps:
                for v in VARIANTS:
                    run_cell("cost", v, t, args.seeds[0], args)
        if "accuracy" in args.parts:
            for s in args.seeds:
                for t in args.accuracy_steps:
                    for v in VARIANTS:
                        run_cell("accuracy", v, t, s, args)
    # the tables hold every finished cell of the work folder (cost and accuracy may be separate invocations)
    cells = [json.loads(p.read_text()) for p in sorted(Path(args.work).glob("*.json"))]
    summarise([c for c in cells if "ms_per_step" in c], [c for c in cells if "wql_auto" in c], args)


if __name__ == "__main__":
    main()
