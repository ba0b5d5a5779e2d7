"""What data-parallel training costs on CPU: the default forecasting EBT trained on 1 process and on 2 gloo
processes (each 1 torch thread), wall time and test metrics on the default suite (RESULTS.md section 14).

    OMP_NUM_THREADS=1 .venv/bin/python evaluation/ddp_cost.py trainer.max_steps=100 [key=value ...]

Modes: `1 process` (the default trainer) and `ddp_fork x2` (trainer.strategy, devices=2: the global batch of
trainer.batch_size rows is split between the two processes) on every data set; `ddp_spawn x2` on the first
data set only (it starts fresh interpreters for every training run: its start-up cost). Each (mode, data set) cell is
saved under results/ddp_cost/ as it finishes and reused on a rerun; the table goes to evaluation/ddp_cost.csv
and evaluation/ddp_cost.md.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the spawned training processes read it at start

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ebt_forecast.config import compose  # noqa: E402
from ebt_forecast.data.loaders import load_default_suite  # noqa: E402
from ebt_forecast.io import atomic_write_json, atomic_write_text, atomic_write_csv  # noqa: E402
from ebt_forecast.metrics import score_windows  # noqa: E402
from ebt_forecast.tasks.base import config_key  # noqa: E402
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster  # noqa: E402

HERE = Path(__file__).resolve().parent
CELLS = HERE.parent / "results" / "ddp_cost"
MODES = {"1 process": {}, "ddp_fork x2": {"strategy": "ddp_fork", "devices": "2"},
         "ddp_spawn x2": {"strategy": "ddp_spawn", "devices": "2"}}


def run_cell(dataset, cfg, mode: str) -> dict:
    """Train the EBT in one mode and score its default forecast (auto setting) on the test windows."""
    forecaster = EBTForecaster(replace(cfg, trainer=replace(cfg.trainer, **MODES[mode])), "ebt")
    start = time.perf_counter()
    forecaster.fit(dataset)  # training, then the inference setting chosen on the validation tail
    fit_seconds = time.perf_counter() - start
    out = forecaster.predict(dataset.test_windows)
    scores = score_windows(out, dataset.test_windows, dataset.season_length)
    return {"mode": mode, "dataset": dataset.name, "train_seconds": forecaster.train_seconds, "fit_seconds": fit_seconds,
            "train_steps": forecaster.train_steps, "setting": f"{out.setting.steps} steps, {out.setting.selection}",
            "wql": scores["wql"], "mase": scores["mase"], "crps_scaled": scores["crps_scaled"]}


def summary(table: pd.DataFrame, overrides: list[str]) -> str:
    """Each 2-process mode against 1 process on the data sets it ran: summed training seconds, mean metrics."""
    one = table[table["mode"] == "1 process"].set_index("dataset")
    rows = []
    for mode, part in table[table["mode"] != "1 process"].groupby("mode", sort=False):
        base = one.loc[part["dataset"]]
        rows.append({"mode": mode, "data sets": len(part), "train s, 1 process": base["train_seconds"].sum(),
                     "train s, 2 processes": part["train_seconds"].sum(),
                     "time ratio": part["train_seconds"].sum() / base["train_seconds"].sum(),
                     "WQL, 1 process": base["wql"].mean(), "WQL, 2 processes": part["wql"].mean(),
                     "MASE, 1 process": base["mase"].mean(), "MASE, 2 processes": part["mase"].mean()})
    return "\n".join([
        f"# Data-parallel training on CPU: 1 process against 2 gloo processes ({' '.join(overrides) or 'defaults'})\n",
        "Each 2-process mode against 1 process on the same data sets (training seconds summed, metrics averaged):\n",
        pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"), "\n## Per data set\n",
        table.to_markdown(index=False, floatfmt=".4f"), ""])


def main(overrides: list[str]) -> None:
    torch.set_num_threads(1)
    app = compose("benchmark", ["runtime.threads=1", "trainer.progress_bar=false", *overrides])
    cfg = app.forecaster()
    rows = []
    for i, dataset in enumerate(load_default_suite()):
        for mode in MODES if i == 0 else [m for m in MODES if m != "ddp_spawn x2"]:
            key = config_key(mode, dataset.name, cfg.model, cfg.think, cfg.trainer.settings(), cfg.task, cfg.seed)
            cell = CELLS / f"{dataset.name}__{mode.replace(' ', '_')}__{key}.json"
            if cell.exists():
                rows.append(json.loads(cell.read_text()))
                continue
            row = run_cell(dataset, cfg, mode)
            print(json.dumps(row), flush=True)
            atomic_write_json(cell, row)
            rows.append(row)
    table = pd.DataFrame(rows)
    atomic_write_csv(table, HERE / "ddp_cost.csv")
    atomic_write_text(HERE / "ddp_cost.md", summary(table, overrides))
    print((HERE / "ddp_cost.md").read_text())


if __name__ == "__main__":  # the guard matters: ddp_spawn's processes import this file
    main(sys.argv[1:])
