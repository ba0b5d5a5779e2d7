"""The forecasting benchmark: every model on every data set of a suite, one resumable cell at a time."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from gluonts.model.forecast import Forecast
from tqdm.auto import tqdm

from ebt_forecast.baselines import (
    STATSFORECAST_MODELS,
    DeepARBaseline,
    PatchTSTBaseline,
    PointPlusGaussian,
    SeasonalNaive,
    StatsForecastBaseline,
)
from ebt_forecast.data.covariate_sets import CALENDAR_SETS, COVARIATE_SETS, load_covariate_set, without_covariates
from ebt_forecast.data.covariates import covariate_slots
from ebt_forecast.data.frames import series_to_gluonts
from ebt_forecast.data.loaders import load_default_suite, load_etth1, load_exchange_rate, load_m4_hourly
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.errors import ConfigError
from ebt_forecast.experiment import Artifacts, CellJob, Cells
from ebt_forecast.io import atomic_save_figure, atomic_write_csv, atomic_write_text
from ebt_forecast.metrics import FORECAST_LEVELS, geometric_mean_relative
from ebt_forecast.tasks.forecast.config import ForecastAppConfig
from ebt_forecast.tasks.forecast.diagnostics import verification_diagnostics
from ebt_forecast.tasks.forecast.estimator import EBTPredictor
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from ebt_forecast.tasks.forecast.pretrained import PretrainedForecaster
from ebt_forecast.tasks.forecast.predictors import (HarnessEstimator, conventions_of, forecast_arrays, score_forecasts,
                                                    windows_dataset)
from ebt_forecast.tasks.forecast.sources import choose, fast_forecasts, train_verifier, verifier_rows

log = logging.getLogger(__name__)
SEEDLESS = ("seasonal_naive", *STATSFORECAST_MODELS, "autoarima_exog")  # deterministic: one cell whatever the seed
ZERO_SHOT = {"ebt_zero_shot": "ebt_1m", "twin_zero_shot": "twin_1m"}  # packaged pretrained models: nothing trained here
# a trained model's covariate control: `<model>_no_covariates` runs it on the same data without its covariates
NO_COVARIATES = "_no_covariates"
COVARIATE_MODELS = ("deepar", "ebt", "ebt_finetune")
MODELS = (*SEEDLESS, *ZERO_SHOT, "transformer_pp", "transformer_pp+gaussian", "deepar", "patchtst", "ebt",
          "ebt_verifier", "ebt_finetune", *(m + NO_COVARIATES for m in COVARIATE_MODELS))
RELATIVE_METRICS = ("wql", "mase", "crps_scaled", "smape", "msis")
SUITES = ("default", "shared", "etth1", "m4_hourly", "exchange_rate", "covariates", *COVARIATE_SETS, *CALENDAR_SETS)


def load_suite(app: ForecastAppConfig) -> list[ForecastDataset]:
    """The data sets of app.suite."""
    if app.suite == "default":
        return load_default_suite()
    root = app.data.root
    if app.suite == "covariates":  # the data sets with real covariates (issue 30)
        return [load_covariate_set(name, root) for name in COVARIATE_SETS]
    if app.suite in COVARIATE_SETS + CALENDAR_SETS:
        return [load_covariate_set(app.suite, root)]
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


def _row(dataset: ForecastDataset, model: str, forecasts: list[Forecast], extra: dict) -> dict:
    """One model's test metrics from its GluonTS forecasts (each read at its own levels, or as samples)."""
    scores = score_forecasts(forecasts, dataset.test_windows, dataset.season_length)
    return {"dataset": dataset.name, "model": model, **scores, **extra}


def trained_ebt(dataset: ForecastDataset, app: ForecastAppConfig, cache: Path, reserve_windows: int = 0) -> EBTForecaster:
    """The EBT trained on `dataset` with app's settings and seed (holding about `reserve_windows` windows before
    the validation tail out of training): loaded from `cache` if a run of the same configuration saved it there,
    else trained and saved (so the EBT's cells share one training run)."""
    cfg = app.forecaster()
    depends = {"data": (dataset.name, dataset.horizon, [len(s) for s in dataset.train]), "model": cfg.model,
               "think": cfg.think, "trainer": cfg.trainer.settings(), "task": cfg.task.ebt_fields(), "seed": cfg.seed,
               "reserve_windows": reserve_windows}
    if covariate_slots(dataset.train):  # (absent without covariates: the keys of earlier runs stay valid)
        depends["covariates"] = covariate_slots(dataset.train)

    def make(folder: Path) -> EBTForecaster:
        ebt = EBTForecaster(cfg, "ebt", reserve_windows=reserve_windows).fit(dataset)
        EBTPredictor(ebt, dataset.horizon, dataset.freq).serialize(folder)
        return ebt

    def load(folder: Path) -> EBTForecaster:
        ebt = EBTPredictor.deserialize(folder).forecaster
        ebt.val_windows = ebt.split(dataset)[1]
        return ebt

    return Artifacts(cache).get(f"ebt__{dataset.name}", depends, make, load)


def run_ebt_cell(dataset: ForecastDataset, app: ForecastAppConfig, plots: Path, cache: Path) -> list[dict]:
    """Train the EBT once, then score its thinking settings: steps x selection, and M candidates (rows `ebt`,
    `ebt[steps=...]`)."""
    cfg = app.forecaster()
    ebt = trained_ebt(dataset, app, cache)
    predictor, test_data = EBTPredictor(ebt, dataset.horizon, dataset.freq), windows_dataset(dataset.test_windows)
    budget = {"train_seconds": ebt.train_seconds, "train_steps": ebt.train_steps}
    forecasts = list(predictor.predict(test_data))
    auto = cfg.task.selection == "auto"
    label = f"auto: {forecasts[0].info['selection']}" if auto else forecasts[0].info["selection"]
    rows = [_row(dataset, "ebt", forecasts, {**budget, **_record(forecasts), "selection": label,
                                              "candidates": cfg.task.num_candidates, "verify_group": cfg.task.verify_group,
                                              "validation_scores": json.dumps(ebt.validation_scores)})]
    plot_fans(dataset, {"ebt": [f.samples for f in forecasts]}, plots / f"{dataset.name}__ebt.png",
              app.benchmark.plot_series)
    if not cfg.think.enabled:  # think=no_thinking: every setting would be the proposals again
        return rows
    m0, g0, k0, b = cfg.task.num_candidates, cfg.task.verify_group, cfg.think.infer_steps, app.benchmark
    settings = [(0, "proposal", m0, 1)]
    settings += [(s, sel, m0, g0) for s in (0, k0) for sel in ("verified", "weighted", "average", "median")]
    settings += [(s, sel, m0, g0) for s in b.think_steps if s > 0 for sel in b.selections]
    settings += [(k0, "verified", m0, g) for g in b.verify_groups]
    settings += [(k0, sel, m, g0) for m in b.candidate_counts for sel in ("refined", "verified", "resample", "lowest")]
    for steps, selection, m, g in dict.fromkeys(settings):
        g = 1 if selection in ("proposal", "refined") else g
        forecasts = list(predictor.predict(test_data, num_samples=m, steps=steps, selection=selection, verify_group=g))
        rows.append(_row(dataset, f"ebt[steps={steps},{selection},M={m},G={g}]", forecasts, {
            **budget, **_record(forecasts), "candidates": m, "verify_group": g}))
    if ebt.val_windows:
        diag = verification_diagnostics(ebt, ebt.val_windows, dataset.season_length, cfg.think.infer_steps)
        rows[0].update({f"val_{k}": v for k, v in diag.items()})
    return rows


def _record(forecasts: list[Forecast]) -> dict:
    """The setting a predict call ran and the passes it spent (its forecasts' `info`)."""
    info = forecasts[0].info
    return {k: info[k] for k in ("steps", "selection", "forward_passes", "backward_passes", "nonfinite")}


def run_verifier_cell(dataset: ForecastDataset, app: ForecastAppConfig, cache: Path) -> list[dict]:
    """The EBT as a verifier above fast forecasters, beside the energy-free controls of the same starts.

    First the EBT's energy as trained (zero-shot on the new sources), then after teaching it to rank exactly
    those starts on pool windows cut before the validation tail (`sources.train_verifier`). With
    `task.verifier.out_of_fold` (the default) the verifier's EBT never trained on the pool windows. Main rows:
    `ebt_verifier` (the trained energy's setting best on validation), `ebt_verifier_zero_shot`,
    `sources_average` (equal weights), `sources_median`, `sources_best_on_val` (the single source best on
    validation); every setting also gets a row `ebt_verifier[...]` / `ebt_verifier_zero_shot[...]` with its
    validation WQL, so each choice can be audited."""
    v = app.task.verifier
    ebt = trained_ebt(dataset, app, cache, reserve_windows=v.held_out_windows())
    sets = {"val": ebt.val_windows, "test": dataset.test_windows}
    zero_shot, zs_diag = verifier_rows(ebt, dataset, v.fast_sources, sets, cache)
    training = train_verifier(ebt, dataset, v.fast_sources, cache, windows=v.pool_windows, steps=v.steps)
    trained, diag = verifier_rows(ebt, dataset, v.fast_sources, sets, cache)
    controls = {r["selection"]: r for r in trained if r["steps"] == 0}
    picks = {"ebt_verifier": choose(trained, "energy"), "ebt_verifier_zero_shot": choose(zero_shot, "energy"),
             "sources_average": controls["average"], "sources_median": controls["median"],
             "sources_best_on_val": choose(trained, "source")}
    out = []
    for name, r in picks.items():
        extra = {}
        if name == "ebt_verifier":
            extra = {**{f"val_{k}": v for k, v in diag.items()}, **{f"val_zero_shot_{k}": v for k, v in zs_diag.items()},
                     "train_seconds": training["train_seconds"], "train_steps": training["train_steps"],
                     "pool_windows": training["pool_windows"]}
        out.append({"dataset": dataset.name, "model": name, **_setting(r), **extra})
    for label, rows in (("ebt_verifier", trained), ("ebt_verifier_zero_shot", zero_shot)):
        for r in rows:
            if label != "ebt_verifier" and r["selection"] not in ("verified", "weighted"):
                continue  # the energy-free rows are the same for both
            temperature = "" if r["temperature"] is None else f",T={r['temperature']:g}"
            out.append({"dataset": dataset.name, "model": f"{label}[steps={r['steps']},{r['selection']}{temperature}]",
                        **_setting(r)})
    return out


def _setting(r: dict) -> dict:
    """A verifier row's test metrics, with its validation WQL and the setting it ran."""
    temperature = "" if r["temperature"] is None else f"@T={r['temperature']:g}"
    return {"train_seconds": 0.0, "train_steps": 0, **r["test"], "val_wql": r["val"]["wql"], "steps": r["steps"],
            "selection": f"{r['selection']}{temperature}"}


class CachedSource:
    """A statsforecast model's level paths as a harness forecaster, computed once per window set (`cache`)."""

    def __init__(self, model: str, cache: Path):
        self.model, self.cache = model, cache
        self.train_seconds, self.train_steps = 0.0, 0

    def fit(self, dataset: ForecastDataset) -> "CachedSource":
        """Nothing to learn across series: each window's model is fitted on its own past at predict time."""
        return self

    def predict(self, windows: list[TestWindow], dataset: ForecastDataset) -> np.ndarray:
        """(N, 21, H) paths at the quantile grid; the wall time counts as the local models' training."""
        start = time.perf_counter()
        paths = fast_forecasts(self.model, dataset, windows, self.cache)
        self.train_seconds = time.perf_counter() - start
        return paths


def estimator_for(dataset: ForecastDataset, model: str, app: ForecastAppConfig, cache: Path) -> HarnessEstimator:
    """Every benchmark model other than the EBT's as a GluonTS Estimator on the data set's conventions."""
    cfg = app.forecaster()
    conventions = conventions_of(dataset)
    if model in STATSFORECAST_MODELS:
        return HarnessEstimator(lambda: CachedSource(model, cache), conventions, FORECAST_LEVELS)
    if model == "seasonal_naive":
        return HarnessEstimator(lambda: SeasonalNaive(dataset.season_length), conventions)
    if model == "autoarima_exog":  # statsforecast's AutoARIMA with the known-future covariates as regressors
        return HarnessEstimator(lambda: StatsForecastBaseline("autoarima", exogenous=True, n_jobs=app.runtime.threads,
                                                              name=model), conventions, FORECAST_LEVELS)
    if model in ZERO_SHOT:  # `pretrained=` replaces the packaged EBT (a `pretrain` run folder)
        source = app.pretrained if model == "ebt_zero_shot" and app.pretrained else ZERO_SHOT[model]
        return HarnessEstimator(lambda: PretrainedForecaster(source, cfg, name=model), conventions)
    if model == "ebt_finetune":  # the pretrained EBT adapted to the data set (gaining its covariates' slots)
        source = app.pretrained or ZERO_SHOT["ebt_zero_shot"]
        return HarnessEstimator(lambda: PretrainedForecaster(source, cfg, finetune_steps=app.benchmark.finetune_steps,
                                                             name=model), conventions)
    if model == "transformer_pp":
        return HarnessEstimator(lambda: EBTForecaster(cfg, "feedforward"), conventions)
    if model == "transformer_pp+gaussian":
        return HarnessEstimator(lambda: PointPlusGaussian(lambda: EBTForecaster(cfg, "feedforward"), seed=cfg.seed),
                                conventions)
    if model in ("deepar", "patchtst"):
        # GluonTS models at a fair budget: early stopping on a validation tail, up to `gluonts_budget` x the EBT's steps
        b, t = app.benchmark, cfg.trainer
        context, patch = cfg.window(dataset.horizon, dataset.season_length)
        common = dict(context_length=context, max_steps=int(b.gluonts_budget * t.max_steps), batch_size=t.batch_size,
                      lr=t.lr, seed=cfg.seed, early_stopping_patience=b.gluonts_patience, enable_progress_bar=False)
        if model == "deepar":
            return HarnessEstimator(lambda: DeepARBaseline(hidden_size=b.deepar_hidden_size,
                                                           num_layers=b.deepar_num_layers, **common), conventions)
        m = cfg.model
        return HarnessEstimator(lambda: PatchTSTBaseline(d_model=m.dim, nhead=m.heads, num_encoder_layers=m.depth,
                                                         dim_feedforward=int(m.dim * m.ffn_multiplier),
                                                         patch_len=patch, **common), conventions)
    raise ConfigError(f"benchmark.models contains unknown model {model!r}: must be among {', '.join(MODELS)}")


def run_cell(dataset: ForecastDataset, model: str, app: ForecastAppConfig, plots: Path, cache: Path) -> list[dict]:
    """Fit and score one model on one data set through GluonTS's API (Estimator.train -> Predictor.predict ->
    Forecasts); return its result rows. The EBT and the verifier have cells of their own (many settings each)."""
    if model.endswith(NO_COVARIATES):  # the same model on the same data without its covariates (issue 30's control)
        base = model.removesuffix(NO_COVARIATES)
        rows = run_cell(without_covariates(dataset), base, app, plots / model, cache)  # its plots apart
        return [{**r, "model": model + r["model"].removeprefix(base)} for r in rows]  # ebt[steps=2] -> ..._no_covariates[steps=2]
    if model == "ebt":
        return run_ebt_cell(dataset, app, plots, cache)
    if model == "autoarima_exog" and covariate_slots(dataset.train).get("future_covariates", 0) == 0:
        log.warning("%s: no known-future covariates to regress on; autoarima_exog skipped", dataset.name)
        return []
    if model == "ebt_verifier":
        return run_verifier_cell(dataset, app, cache)
    if model in ZERO_SHOT:  # the pretrained EBT cannot read covariates zero-shot: it forecasts from the target alone
        dataset = without_covariates(dataset)
    predictor = estimator_for(dataset, model, app, cache).train(series_to_gluonts(dataset.train, dataset.freq))
    forecasts = list(predictor.predict(windows_dataset(dataset.test_windows)))
    if model == "transformer_pp":
        plot_fans(dataset, {model: [forecast_arrays(f)[0] for f in forecasts]}, plots / f"{dataset.name}__{model}.png",
                  app.benchmark.plot_series)
    return [_row(dataset, model, forecasts, {k: forecasts[0].info[k] for k in ("train_seconds", "train_steps")})]


def plot_fans(dataset: ForecastDataset, forecasts: dict[str, list[np.ndarray]], path: Path, count: int) -> None:
    """Forecast fans (median, 10-90% band) against the truth for the first `count` series' last windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if count <= 0:
        return
    last_by_item: dict[str, int] = {}
    for i, w in enumerate(dataset.test_windows):
        last_by_item[w.item_id] = i
    picks = list(last_by_item.values())[:count]
    fig, axes = plt.subplots(len(picks), 1, figsize=(9, 2.6 * len(picks)), squeeze=False)
    for ax, i in zip(axes[:, 0], picks):
        w = dataset.test_windows[i]
        tail = w.past[-3 * dataset.horizon:]
        t_past = np.arange(-len(tail), 0)
        t_future = np.arange(dataset.horizon)
        ax.plot(t_past, tail, color="black", lw=1)
        ax.plot(t_future, w.future, color="black", lw=1, ls="--", label="truth")
        for name, samples in forecasts.items():
            q = np.quantile(samples[i], [0.1, 0.5, 0.9], axis=0)
            ax.fill_between(t_future, q[0], q[2], alpha=0.3, label=f"{name} 10-90%")
            ax.plot(t_future, q[1], lw=1.5, label=f"{name} median")
        ax.set_title(f"{dataset.name} / {w.item_id}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    atomic_save_figure(fig, path)


def relative_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Geometric-mean scores relative to seasonal naive, per seed, then their mean and spread (sd) over seeds.

    Seedless models (seasonal naive, statsforecast) enter every seed's table; their sd is 0."""
    seeds = sorted(table["seed"].dropna().unique()) if "seed" in table else []
    per_seed = []
    for seed in seeds or [None]:
        part = table if seed is None else table[(table["seed"] == seed) | table["seed"].isna()]
        per_seed.append(geometric_mean_relative(part, metrics=RELATIVE_METRICS).assign(seed=seed))
    stacked = pd.concat(per_seed, ignore_index=True)
    stats = stacked.groupby("model", sort=False)[list(RELATIVE_METRICS)].agg(["mean", "std"])
    out = pd.DataFrame({"model": stats.index})
    for metric in RELATIVE_METRICS:
        out[metric] = stats[(metric, "mean")].to_numpy()
        out[f"{metric}_sd"] = stats[(metric, "std")].fillna(0.0).to_numpy()
    out["seeds"] = stacked.groupby("model", sort=False)["seed"].nunique().to_numpy()
    return out.sort_values("wql", kind="stable").reset_index(drop=True)


def summary_markdown(table: pd.DataFrame, app: ForecastAppConfig) -> str:
    """Results as markdown: relative scores (mean and sd over seeds), per-data-set metrics, thinking, diagnostics."""
    variant = table.model.str.contains(r"\[", regex=True)
    main = table[~variant]
    cols = ["dataset", "model", "seed", "wql", "mase", "crps_scaled", "smape", "msis", "coverage_80", "val_wql",
            "selection", "train_steps", "train_seconds", "reused"]
    parts = [f"# Benchmark: suite={app.suite}\n",
             "## Relative to seasonal naive (geometric mean over data sets, then mean and sd over seeds; lower is better)\n"]
    if "seasonal_naive" not in set(table.model):
        parts.append("(no seasonal_naive rows)")
    else:
        rel = relative_over_seeds(table)
        is_variant = rel.model.str.contains(r"\[", regex=True)
        parts += [rel[~is_variant].to_markdown(index=False, floatfmt=".3f"),
                  "\n### EBT inference settings, same trained model (`ebt[steps,selection,M candidates,G starts]`), "
                  "and the verifier's settings (`ebt_verifier[steps,selection,T]`, starts: EBT proposal, seasonal "
                  "naive, fast forecasters)\n",
                  rel[is_variant].to_markdown(index=False, floatfmt=".3f")]
    parts += ["\n## Per data set\n", main[[c for c in cols if c in main]].to_markdown(index=False, floatfmt=".4f")]
    first_seed = table["seed"].dropna().min() if "seed" in table and table["seed"].notna().any() else None
    think_rows = table[table.model.str.startswith("ebt") & ((table.get("seed") == first_seed) | (first_seed is None))]
    if len(think_rows):
        tcols = ["dataset", "model", "steps", "selection", "candidates", "verify_group", "wql", "mase", "coverage_80",
                 "val_wql", "forward_passes", "backward_passes"]
        parts += [f"\n## EBT thinking and verification settings (seed {first_seed}): step 0 beside thinking\n",
                  think_rows[[c for c in tcols if c in think_rows]].to_markdown(index=False, floatfmt=".4f")]
    diag_cols = [c for c in table.columns if c.startswith("val_") and c != "val_wql"]
    if diag_cols:
        d = table[table.model.isin(["ebt", "ebt_verifier"])][["dataset", "model", "seed", *diag_cols]]
        d = d.rename(columns=lambda c: c.removeprefix("val_"))
        parts += ["\n## Does the energy verify? (validation windows)\n", d.to_markdown(index=False, floatfmt=".3f")]
    return "\n".join(parts) + "\n"


def cell_depends(dataset: ForecastDataset, model: str, app: ForecastAppConfig) -> dict:
    """Everything a cell's numbers depend on: the data (loader settings and windows), the model, its budget and
    seed, and for the EBT the inference settings scored; a changed setting recomputes the cell."""
    data = (dataset.name, app.suite, app.data.etth1_stride, dataset.horizon, dataset.season_length,
            [len(s) for s in dataset.train], len(dataset.test_windows), *filter(None, [covariate_slots(dataset.train)]))
    if model in SEEDLESS:
        return {"data": data, "model": model}
    b = app.benchmark
    extra = {"deepar": (b.deepar_hidden_size, b.deepar_num_layers, b.gluonts_budget, b.gluonts_patience),
             "patchtst": (b.gluonts_budget, b.gluonts_patience),
             "ebt": (b.think_steps, b.selections, b.candidate_counts, b.verify_groups),
             # the slots' rate only matters with covariates; left out at 1 (the rate before it existed): keys stay
             "ebt_finetune": (app.pretrained, b.finetune_steps, *([app.task.covariate_slot_lr] if model == "ebt_finetune"
                                                                  and app.task.covariate_slot_lr != 1 else [])),
             "ebt_verifier": {k: v for k, v in asdict(app.task.verifier).items() if k != "enabled"}
             }.get(model.removesuffix(NO_COVARIATES))
    think = app.think if model.startswith("ebt") else None  # the feed-forward models never think
    return {"data": data, "model": model, "backbone": app.model, "think": think, "trainer": app.trainer.settings(),
            "task": app.task.ebt_fields(), "seed": app.seed, "extra": extra}


def timed_rows(run, *args) -> list[dict]:
    """A cell's rows, each with the cell's wall time."""
    start = time.perf_counter()
    rows = run(*args)
    return [{**r, "cell_seconds": time.perf_counter() - start} for r in rows]


def run_benchmark(app: ForecastAppConfig) -> Path:
    """Run (or resume) the suite; write results.csv, relative.csv, results.md and plots; return the folder.

    Every trained model runs once per seed of `benchmark.seeds` (default: `seed`); seedless models once.
    Each (data set, model, seed) is a cell of the experiment layer (cells/<data set>__<model>__<key>.json, keyed
    by `cell_depends`); with benchmark.resume a cell of the same key is reused (column `reused`).
    Trained EBTs and fast forecasts are artifacts under cache/, shared by the cells that need them."""
    out = Path(app.runtime.output_dir) / app.suite
    plots, cache = out / "plots", out / "cache"
    cells = Cells(out / "cells", resume=app.benchmark.resume, compute=app.benchmark.compute)
    for m in app.benchmark.models:
        if m not in MODELS:
            raise ConfigError(f"benchmark.models contains unknown model {m!r}: must be among {', '.join(MODELS)}")
    if app.benchmark.workers < 1:
        raise ConfigError(f"benchmark.workers={app.benchmark.workers} is invalid: must be >= 1")
    seeds = list(app.benchmark.seeds) or [app.seed]
    datasets = load_suite(app)
    if app.benchmark.datasets:  # a part of the suite (the cells, keyed by data set, are the suite's own)
        unknown = sorted(set(app.benchmark.datasets) - {d.name for d in datasets})
        if unknown:
            raise ConfigError(f"benchmark.datasets names {unknown[0]!r}, not in suite {app.suite!r}: "
                              f"{', '.join(d.name for d in datasets)}")
        datasets = [d for d in datasets if d.name in app.benchmark.datasets]
    # seed-major: every model's first seed finishes before the next seed starts (a cut-short run stays comparable)
    jobs = [(d, m, None if m in SEEDLESS else s) for i, s in enumerate(seeds) for d in datasets
            for m in app.benchmark.models if i == 0 or m not in SEEDLESS]
    cell_jobs = []
    for dataset, model, seed in jobs:
        run_app = app if seed is None else replace(app, seed=seed)
        cell_jobs.append(CellJob(f"{dataset.name}__{model}", cell_depends(dataset, model, run_app), timed_rows,
                                 (run_cell, dataset, model, run_app, plots, cache)))
    # benchmark.workers cells at once, each process with its share of runtime.threads (the run's share of the
    # machine: never more processes than threads); small models train faster on one thread each than on two
    # threads of one process
    workers = min(app.benchmark.workers, app.runtime.threads)
    results = cells.run_all(cell_jobs, workers, max(1, app.runtime.threads // workers))
    rows: list[dict] = []
    progress = tqdm(zip(jobs, cell_jobs), total=len(jobs), desc="benchmark", unit="cell")
    for (dataset, model, seed), job in progress:
        progress.set_postfix_str(f"{dataset.name} / {model}" + ("" if seed is None else f" / seed {seed}"))
        cell_rows = next(results)
        if cell_rows is not None:  # None: not finished and benchmark.compute=false
            rows += [{**r, "seed": seed, "reused": cells.reused(job.name)} for r in cell_rows]
    print(cells.summary())
    table = pd.DataFrame(rows)
    atomic_write_csv(table, out / "results.csv")
    if "seasonal_naive" in set(table.model):
        atomic_write_csv(relative_over_seeds(table), out / "relative.csv")
    atomic_write_text(out / "results.md", summary_markdown(table, app))
    return out


def run_benchmark_command(app: ForecastAppConfig) -> int:
    """`ebt-forecast benchmark`: run, print the table and where the files are."""
    app.forecaster()  # fail at start on invalid model / think / trainer / task values
    out = run_benchmark(app)
    print((out / "results.md").read_text())
    print(f"results: {out}/results.csv, {out}/results.md, plots in {out}/plots")
    return 0
