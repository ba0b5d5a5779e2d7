"""The forecasting benchmark: every model on every data set of a suite, one resumable cell at a time."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ebt_forecast.baselines import DeepARBaseline, PointPlusGaussian, SeasonalNaive
from ebt_forecast.config import AppConfig
from ebt_forecast.data.loaders import load_default_suite, load_etth1, load_exchange_rate, load_m4_hourly
from ebt_forecast.data.types import ForecastTask, TestWindow
from ebt_forecast.io import atomic_write_csv, atomic_write_json, atomic_write_text
from ebt_forecast.metrics import aggregate, geometric_mean_relative, score_window
from ebt_forecast.tasks.forecast.diagnostics import verification_diagnostics
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from ebt_forecast.think import ConfigError

log = logging.getLogger(__name__)
MODELS = ("seasonal_naive", "transformer_pp", "transformer_pp+gaussian", "deepar", "ebt")
SUITES = ("default", "shared", "etth1", "m4_hourly", "exchange_rate")


def load_suite(app: AppConfig) -> list[ForecastTask]:
    """The data sets of app.suite."""
    if app.suite == "default":
        return load_default_suite()
    root = app.data.root
    shared = {
        "etth1": lambda: load_etth1(root, columns="all", stride=app.data.etth1_stride),
        "m4_hourly": lambda: load_m4_hourly(root),
        "exchange_rate": lambda: load_exchange_rate(root),
    }
    if app.suite == "shared":
        return [load() for load in shared.values()]
    if app.suite in shared:  # one shared data set alone
        return [shared[app.suite]()]
    raise ConfigError(f"suite={app.suite!r} is invalid: must be one of {', '.join(SUITES)}")


def score(samples: list[np.ndarray], windows: list[TestWindow], season_length: int) -> dict[str, float]:
    """Dataset-level metrics of one model's samples."""
    return aggregate([score_window(s, w.future, w.past, season_length) for s, w in zip(samples, windows)])


def _row(task: ForecastTask, model: str, samples, extra: dict) -> dict:
    return {"dataset": task.name, "model": model, **score(samples, task.test_windows, task.season_length), **extra}


def run_ebt_cell(task: ForecastTask, app: AppConfig, plots: Path) -> list[dict]:
    """Train the EBT once, then score its thinking settings: steps x selection, and M candidates."""
    cfg = app.forecaster()
    ebt = EBTForecaster(cfg, "ebt").fit(task)
    budget = {"train_seconds": ebt.train_seconds, "train_steps": ebt.train_steps}
    rows = []
    default = ebt.predict(task.test_windows, task)
    fc = ebt.last_forecast
    auto = cfg.task.selection == "auto"
    steps0, selection0 = ebt.chosen if auto else (cfg.think.infer_steps, cfg.task.selection)
    rows.append(_row(task, "ebt", default, {**budget, "steps": steps0,
                                            "selection": f"auto: {selection0}" if auto else selection0,
                                            "candidates": cfg.task.num_candidates, "verify_group": cfg.task.verify_group,
                                            "forward_passes": fc.forward_passes, "backward_passes": fc.backward_passes,
                                            "nonfinite": fc.nonfinite}))
    plot_fans(task, {"ebt": default}, plots / f"{task.name}__ebt.png", app.experiment.plot_series)
    m0, g0, k0 = cfg.task.num_candidates, cfg.task.verify_group, cfg.think.infer_steps
    settings = [(0, "proposal", m0, 1)] + [(s, sel, m0, g0) for s in (0, k0) for sel in ("verified", "weighted", "average")]
    settings += [(s, sel, m0, g0) for s in app.experiment.think_steps if s > 0 for sel in app.experiment.selections]
    settings += [(k0, "verified", m0, g) for g in app.experiment.verify_groups]
    settings += [(k0, sel, m, g0) for m in app.experiment.candidate_counts for sel in ("refined", "verified", "resample", "lowest")]
    for steps, selection, m, g in dict.fromkeys(settings):
        g = 1 if selection in ("proposal", "refined") else g
        samples = ebt.predict(task.test_windows, task, steps=steps, selection=selection, num_candidates=m, verify_group=g)
        fc = ebt.last_forecast
        rows.append(_row(task, f"ebt[steps={steps},{selection},M={m},G={g}]", samples, {
            **budget, "steps": steps, "selection": selection, "candidates": m, "verify_group": g,
            "forward_passes": fc.forward_passes, "backward_passes": fc.backward_passes, "nonfinite": fc.nonfinite}))
    if ebt.val_windows:
        diag = verification_diagnostics(ebt, ebt.val_windows, task.season_length, cfg.think.infer_steps)
        rows[0].update({f"val_{k}": v for k, v in diag.items()})
    return rows


def run_cell(task: ForecastTask, model: str, app: AppConfig, plots: Path) -> list[dict]:
    """Fit and score one model on one data set; return its result rows."""
    cfg = app.forecaster()
    if model == "ebt":
        return run_ebt_cell(task, app, plots)
    if model == "seasonal_naive":
        forecaster = SeasonalNaive(task.season_length)
    elif model == "transformer_pp":
        forecaster = EBTForecaster(cfg, "feedforward")
    elif model == "transformer_pp+gaussian":
        forecaster = PointPlusGaussian(lambda: EBTForecaster(cfg, "feedforward"), seed=cfg.seed)
    elif model == "deepar":
        context = cfg.model_config(task.horizon, task.season_length).context_length
        forecaster = DeepARBaseline(
            context_length=context, max_steps=cfg.trainer.max_steps, batch_size=cfg.trainer.batch_size,
            lr=cfg.trainer.lr, seed=cfg.seed, hidden_size=app.experiment.deepar_hidden_size,
            num_layers=app.experiment.deepar_num_layers, enable_progress_bar=cfg.trainer.progress_bar)
    else:
        raise ConfigError(f"experiment.models contains unknown model {model!r}: must be among {', '.join(MODELS)}")
    forecaster.fit(task)
    samples = forecaster.predict(task.test_windows, task)
    if model == "transformer_pp":
        plot_fans(task, {model: samples}, plots / f"{task.name}__{model}.png", app.experiment.plot_series)
    return [_row(task, model, samples, {"train_seconds": getattr(forecaster, "train_seconds", 0.0),
                                        "train_steps": getattr(forecaster, "train_steps", 0)})]


def plot_fans(task: ForecastTask, forecasts: dict[str, list[np.ndarray]], path: Path, count: int) -> None:
    """Forecast fans (median, 10-90% band) against the truth for the first `count` series' last windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if count <= 0:
        return
    last_by_item: dict[str, int] = {}
    for i, w in enumerate(task.test_windows):
        last_by_item[w.item_id] = i
    picks = list(last_by_item.values())[:count]
    fig, axes = plt.subplots(len(picks), 1, figsize=(9, 2.6 * len(picks)), squeeze=False)
    for ax, i in zip(axes[:, 0], picks):
        w = task.test_windows[i]
        tail = w.past[-3 * task.horizon:]
        t_past = np.arange(-len(tail), 0)
        t_future = np.arange(task.horizon)
        ax.plot(t_past, tail, color="black", lw=1)
        ax.plot(t_future, w.future, color="black", lw=1, ls="--", label="truth")
        for name, samples in forecasts.items():
            q = np.quantile(samples[i], [0.1, 0.5, 0.9], axis=0)
            ax.fill_between(t_future, q[0], q[2], alpha=0.3, label=f"{name} 10-90%")
            ax.plot(t_future, q[1], lw=1.5, label=f"{name} median")
        ax.set_title(f"{task.name} / {w.item_id}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def summary_markdown(table: pd.DataFrame, app: AppConfig) -> str:
    """Results as markdown: geometric-mean relative scores, per-data-set metrics, thinking and diagnostics."""
    main = table[~table.model.str.startswith("ebt[")]
    has_baseline = "seasonal_naive" in set(table.model)
    rel = geometric_mean_relative(table, metrics=("wql", "mase", "crps_scaled", "smape", "msis")) if has_baseline else None
    cols = ["dataset", "model", "wql", "mase", "crps_scaled", "smape", "msis", "coverage_80", "train_steps", "train_seconds"]
    parts = [f"# Benchmark: suite={app.suite}\n",
             "## Relative to seasonal naive (geometric mean over data sets; lower is better)\n"]
    if rel is None:
        parts.append("(no seasonal_naive rows)")
    else:
        variant = rel.model.str.startswith("ebt[")
        parts += [rel[~variant].to_markdown(index=False, floatfmt=".3f"),
                  "\n### EBT inference settings, same trained model (`ebt[steps,selection,M candidates,G starts]`)\n",
                  rel[variant].to_markdown(index=False, floatfmt=".3f")]
    parts += [
        "\n## Per data set\n", main[[c for c in cols if c in main]].to_markdown(index=False, floatfmt=".4f")]
    think_rows = table[table.model.str.startswith("ebt")]
    if len(think_rows):
        tcols = ["dataset", "model", "steps", "selection", "candidates", "verify_group", "wql", "mase", "coverage_80",
                 "forward_passes", "backward_passes"]
        parts += ["\n## EBT thinking: step 0 (proposals) beside thinking settings\n",
                  think_rows[[c for c in tcols if c in think_rows]].to_markdown(index=False, floatfmt=".4f")]
        diag_cols = [c for c in table.columns if c.startswith("val_")]
        if diag_cols:
            d = table[table.model == "ebt"][["dataset", *diag_cols]].rename(columns=lambda c: c.removeprefix("val_"))
            parts += ["\n## Does the energy verify? (validation windows)\n", d.to_markdown(index=False, floatfmt=".3f")]
    return "\n".join(parts) + "\n"


def run_benchmark(app: AppConfig) -> Path:
    """Run (or resume) the suite; write results.csv, relative.csv, results.md and plots; return the folder."""
    out = Path(app.runtime.output_dir) / app.suite
    cells, plots = out / "cells", out / "plots"
    for m in app.experiment.models:
        if m not in MODELS:
            raise ConfigError(f"experiment.models contains unknown model {m!r}: must be among {', '.join(MODELS)}")
    tasks = load_suite(app)
    rows: list[dict] = []
    progress = tqdm([(t, m) for t in tasks for m in app.experiment.models], desc="benchmark", unit="cell")
    for task, model in progress:
        progress.set_postfix_str(f"{task.name} / {model}")
        cell = cells / f"{task.name}__{model.replace('+', '_')}.json"
        if app.experiment.resume and cell.exists():
            rows += json.loads(cell.read_text())["rows"]
            continue
        start = time.perf_counter()
        cell_rows = run_cell(task, model, app, plots)
        for r in cell_rows:
            r["cell_seconds"] = time.perf_counter() - start
        atomic_write_json(cell, {"dataset": task.name, "model": model, "rows": cell_rows})
        rows += cell_rows
    table = pd.DataFrame(rows)
    atomic_write_csv(table, out / "results.csv")
    if "seasonal_naive" in set(table.model):
        atomic_write_csv(geometric_mean_relative(table), out / "relative.csv")
    markdown = summary_markdown(table, app)
    atomic_write_text(out / "results.md", markdown)
    return out
