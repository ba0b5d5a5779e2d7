"""`ebt-forecast study`: what accuracy thinking buys per pass spent, and whether the energy flags bad forecasts.

One EBT is trained per data set (or loaded from the study's cache), then inference settings are swept,
each scored on the validation windows and on the test windows, with the forward / backward passes the
engine counted and the wall time:

- fixed: thinking steps x selection (lowest energy, energy weighting, energy-weighted resampling, the
  refined set); fixed+uphill: the same with uphill rejection (a step that raises the energy is undone);
- candidates / group: M level paths and G starts per level;
- energy_change: stop a candidate when its energy changes by less than a tolerance;
- top_energy: think only on the windows whose step-0 energy is highest (the others keep step 0);
- verifier: the energy, taught to rank them, over its own starts and the AutoETS, AutoTheta and twin paths.

Out of distribution: the fixed sweep on another data set of the same frequency and horizon (a model
trained on ETTh1 forecasting M4 Hourly and back) and on the test split shifted in level. Uncertainty:
per test window, the energy against the window's error (Spearman, AUROC for the worst windows) and
selective forecasting, beside two signals that need no energy (interval width, spread of the starts).

Every part is a cell written to cells/ as it finishes; a rerun reuses cells of the same configuration.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from ebt_forecast.baselines import SeasonalNaive
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.data.windows import split_train_val
from ebt_forecast.experiment import Cells
from ebt_forecast.io import atomic_save_figure, atomic_write_csv, atomic_write_text
from ebt_forecast.metrics import FORECAST_LEVELS, aggregate, auroc, score_window, score_windows, selective_wql, window_errors
from ebt_forecast.tasks.base import config_key
from ebt_forecast.tasks.forecast.benchmark import load_suite, trained_ebt
from ebt_forecast.tasks.forecast.config import ForecastAppConfig, StudyConfig
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster, ThoughtForecast, quantile_levels
from ebt_forecast.think import ENERGY_FREE, InferencePolicy
from ebt_forecast.tasks.forecast.sources import (LEVELS, OWN_SOURCES, fast_forecasts, fast_starts, source_samples,
                                                 think_over_sources, train_verifier)

METRICS = ("wql", "crps_scaled", "mase")


@dataclass(frozen=True)
class Setting:
    """One inference setting of the sweep: a row of the declarative grid `study_settings`. The thinking policy is
    an object (`think.InferencePolicy`) handed to the engine; `policy` names the family the row belongs to."""

    policy: str  # fixed | fixed+uphill | candidates | group | energy_change | top_energy | verifier
    steps: int
    selection: str
    num_candidates: int
    group: int
    param: float | None = None  # energy_change: tolerance; top_energy: fraction of windows that think
    think: InferencePolicy = InferencePolicy()  # stopping rule and uphill rejection
    top_fraction: float | None = None  # think only on this share of windows, those with the highest start energy
    sources: bool = False  # the starts include the fast forecasters' paths (the verifier)

    def columns(self) -> dict:
        """The setting as flat table columns (the policy object as its stopping rule and uphill flag)."""
        flat = {k: v for k, v in asdict(self).items() if k != "think"}
        return {**flat, "stop": self.think.stop, "reject_uphill": self.think.reject_uphill}

    @classmethod
    def of(cls, policy: str, steps: int, selection: str, num_candidates: int, group: int,
           param: float | None = None) -> "Setting":
        """The setting of a named family: the one place names become policy objects."""
        objects = {"fixed+uphill": dict(think=InferencePolicy(reject_uphill=True)),
                   "energy_change": dict(think=InferencePolicy("energy_change", tolerance=param or 0.0)),
                   "top_energy": dict(top_fraction=param), "verifier": dict(sources=True)}
        return cls(policy, steps, selection, num_candidates, group, param, **objects.get(policy, {}))

    @property
    def label(self) -> str:
        extra = "" if self.param is None else f",{'tol' if self.policy == 'energy_change' else 'top'}={self.param:g}"
        return f"{self.policy}[steps={self.steps},{self.selection},M={self.num_candidates},G={self.group}{extra}]"


def study_settings(study: StudyConfig, m0: int, g0: int, k0: int) -> list[Setting]:
    """The sweep: M0 level paths, G0 starts and K0 steps are the forecaster's own defaults."""
    of = Setting.of
    out = [of("fixed", s, sel, m0, 1 if sel == "refined" else g0) for s in study.steps for sel in study.selections]
    out += [of("fixed+uphill", s, "verified", m0, g0) for s in dict.fromkeys((k0, 4, study.policy_steps))]
    out += [of("candidates", k0, "verified", m, g0) for m in study.candidate_counts]
    out += [of("group", k0, "verified", m0, g) for g in study.groups]
    out += [of("energy_change", study.policy_steps, "verified", m0, g0, tol) for tol in study.tolerances]
    out += [of("top_energy", study.policy_steps, "verified", m0, g0, f) for f in study.top_fractions]
    if study.verifier:  # own starts, AutoETS, AutoTheta and the twin
        out += [of("verifier", s, "verified", LEVELS, len(OWN_SOURCES) + 3) for s in (0, 1)]
    return list(dict.fromkeys(out))


def window_energy(out: ThoughtForecast) -> np.ndarray:
    """Per window, the mean over levels of the lowest final energy among each level's starts."""
    return np.nanmean(np.nanmin(out.energies, axis=-1), axis=-1)


def run_setting(ebt: EBTForecaster, windows: list[TestWindow], s: Setting, extra: np.ndarray | None = None,
                sources: list[str] | None = None) -> ThoughtForecast:
    """Forecast `windows` with one setting; the result's passes are everything the setting spent."""
    if s.sources:
        out = think_over_sources(ebt, windows, extra, s.steps)
        return _with_samples(out, source_samples(out.candidates, out.energies, "verified", None, sources), "verified")
    kw = dict(steps=s.steps, selection=s.selection, num_candidates=s.num_candidates, verify_group=s.group,
              policy=s.think)
    if s.top_fraction is not None:
        first = ebt.predict(windows, **{**kw, "steps": 0})
        energy = window_energy(first)
        chosen = np.argsort(-energy, kind="stable")[:max(1, int(round(s.top_fraction * len(windows))))]
        thought = ebt.predict([windows[i] for i in chosen], **kw)
        samples = first.samples.copy()
        samples[chosen] = thought.samples
        energies = first.energies.copy()
        energies[chosen] = thought.energies
        return ThoughtForecast(samples, first.proposals, first.candidates, energies, first.path, first.path_energies,
                               thought.setting, first.forward_passes + thought.forward_passes,
                               first.backward_passes + thought.backward_passes, first.nonfinite + thought.nonfinite,
                               thought.levels)
    return ebt.predict(windows, **kw)


def _with_samples(out: ThoughtForecast, samples: np.ndarray, selection: str) -> ThoughtForecast:
    from dataclasses import replace

    return replace(out, samples=samples, levels=quantile_levels(selection, samples.shape[1]))


def scored(out: ThoughtForecast, windows: list[TestWindow], season: int, seconds: float, prefix: str = "") -> dict:
    """Metrics, passes per window and wall time of one forecast."""
    metrics = score_windows(out, windows, season)
    n = max(len(windows), 1)
    row = {f"{prefix}{k}": metrics[k] for k in METRICS}
    row.update({f"{prefix}forward_per_window": out.forward_passes / n, f"{prefix}backward_per_window": out.backward_passes / n,
                f"{prefix}passes_per_window": (out.forward_passes + out.backward_passes) / n,
                f"{prefix}forward_passes": out.forward_passes, f"{prefix}backward_passes": out.backward_passes,
                f"{prefix}wall_seconds": seconds})
    return row


def timed(fn, *args, **kwargs) -> tuple[ThoughtForecast, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------
# the parts of a study, each one cell


def sweep_cell(ebt: EBTForecaster, dataset: ForecastDataset, s: Setting, fast: list[str], cache: Path,
               twin: EBTForecaster | None = None, context: int | None = None) -> dict:
    """One setting on the validation and the test windows (verifier settings: a taught copy of the energy over
    its own starts, the fast forecasters' and the `twin`'s paths)."""
    row = {"dataset": dataset.name, "split": "test", "label": s.label, **s.columns()}
    for prefix, windows in (("val_", ebt.val_windows), ("", dataset.test_windows)):
        extra = fast_starts(dataset, fast, windows, cache, twin, context) if s.sources else None
        out, seconds = timed(run_setting, ebt, windows, s, extra, [*OWN_SOURCES, *fast, "transformer_pp"])
        row.update(scored(out, windows, dataset.season_length, seconds, prefix))
    return row


# read from one thinking run (the same starts and steps); average = the energy-free control of those starts
SHARED_SELECTIONS = ("verified", "weighted", "resample", "average")


def reselect(out: ThoughtForecast, selection: str, temperature: float, seed: int) -> np.ndarray:
    """Samples of another selection from the same thought candidates (data units) and energies."""
    import torch

    from ebt_forecast.think import select_candidates

    grouped, energies = torch.from_numpy(out.candidates), torch.from_numpy(out.energies)
    return select_candidates(selection, torch.from_numpy(out.proposals), grouped, energies, temperature,
                             torch.Generator().manual_seed(seed)).numpy()


def shared_fixed_cell(ebt: EBTForecaster, dataset: ForecastDataset, settings: list[Setting]) -> list[dict]:
    """Fixed-steps settings that differ only in their selection among the same starts: think once (lowest-energy
    selection), read the others from the same candidates. Each row carries the passes of that thinking run (what
    the setting alone spends) and its wall time plus the time of its own selection."""
    rows = {s: {"dataset": dataset.name, "split": "test", "label": s.label, **s.columns()}
            for s in settings}
    first = settings[0]
    for prefix, windows in (("val_", ebt.val_windows), ("", dataset.test_windows)):
        out, seconds = timed(ebt.predict, windows, steps=first.steps, selection="verified",
                             num_candidates=first.num_candidates, verify_group=first.group)
        for s in settings:
            start = time.perf_counter()
            samples = out.samples if s.selection == "verified" else reselect(out, s.selection, ebt.cfg.think.temperature,
                                                                             ebt.cfg.seed)
            spent = seconds + time.perf_counter() - start
            own = out if s.selection not in ENERGY_FREE else replace(  # an energy-free selection reads no final energy
                out, forward_passes=out.forward_passes - int(np.prod(out.candidates.shape[:3])))
            rows[s].update(scored(_with_samples(own, samples, s.selection), windows, dataset.season_length, spent, prefix))
    return list(rows.values())


def reference_cell(dataset: ForecastDataset, twin: EBTForecaster, fast: list[str], cache: Path,
                   context: int | None = None) -> list[dict]:
    """Horizontal references: seasonal naive, the feed-forward twin, and the statistical model best on validation."""
    rows = []
    sn = SeasonalNaive(dataset.season_length).fit(dataset)
    rows.append({"model": "seasonal_naive", **score_windows(sn.predict(dataset.test_windows, dataset),
                                                             dataset.test_windows, dataset.season_length)})
    rows.append({"model": "transformer_pp", **score_windows(twin.predict(dataset.test_windows),
                                                             dataset.test_windows, dataset.season_length),
                 "val_wql": score_windows(twin.predict(twin.val_windows), twin.val_windows,
                                          dataset.season_length)["wql"]})
    val = twin.val_windows
    stats = []
    for model in fast:
        val_wql = score_windows(list(fast_forecasts(model, dataset, val, cache, context)), val,
                                dataset.season_length, FORECAST_LEVELS)["wql"]
        test = score_windows(list(fast_forecasts(model, dataset, dataset.test_windows, cache, context)), dataset.test_windows,
                             dataset.season_length, FORECAST_LEVELS)
        stats.append({"model": model, **test, "val_wql": val_wql})
    rows += stats
    best = min(stats, key=lambda r: r["val_wql"])
    rows.append({**best, "model": f"best_statistical ({best['model']})"})
    return [{"dataset": dataset.name, **{k: r[k] for k in ("model", *METRICS) if k in r}, "val_wql": r.get("val_wql")}
            for r in rows]


def uncertainty_cell(ebt: EBTForecaster, dataset: ForecastDataset, study: StudyConfig) -> dict:
    """Per test window: is the energy a better flag for bad forecasts than signals that need no energy?"""
    windows, season = dataset.test_windows, dataset.season_length
    out = ebt.predict(windows)  # the forecast the EBT serves: its setting chosen on validation (task.selection=auto)
    starts = ebt.predict(windows, steps=0, selection="verified")
    scores = [score_window(s, w.future, w.past, season, out.levels) for s, w in zip(out.samples, windows)]
    errors = window_errors(scores)
    level = np.array([np.nanmean(np.abs(w.past[-ebt.module.model.cfg.context_length:])) + 1e-8 for w in windows])
    q10, q90 = np.quantile(out.samples, [0.1, 0.9], axis=1)
    served = window_energy(out)  # NaN where the served setting reads no energy (the proposals alone)
    signals = {"energy": served if np.isfinite(served).all() else window_energy(starts), "energy_step0": window_energy(starts),
               "interval_width": np.nanmean(q90 - q10, axis=-1) / level,
               "start_spread": np.nanmean(np.nanstd(starts.candidates, axis=2), axis=(1, 2)) / level}
    worst = errors >= np.quantile(errors, 1 - study.worst_fraction)
    crps = np.array([s["crps_sum"] / max(s["abs_target_sum"], 1e-12) for s in scores])
    row = {"dataset": dataset.name, "setting": f"served: steps={out.setting.steps},{out.setting.selection}",
           "windows": len(windows),
           "wql": aggregate(scores)["wql"]}
    for name, signal in signals.items():
        row[f"{name}_spearman"] = float(spearmanr(signal, crps).statistic)
        row[f"{name}_auroc"] = auroc(signal, worst)
        for x, wql in selective_wql(scores, signal, study.withheld).items():
            row[f"{name}_wql@{x:g}"] = wql
    return row


def shifted(windows: list[TestWindow], shift: float) -> list[TestWindow]:
    """The windows moved up by `shift` standard deviations of each window's past (past and future alike)."""
    out = []
    for w in windows:
        d = shift * float(np.nanstd(w.past)) + 1e-6
        out.append(TestWindow(w.item_id, w.start, (w.past + d).astype(np.float32), (w.future + d).astype(np.float32)))
    return out


def ood_cell(ebt: EBTForecaster, name: str, windows: list[TestWindow], season: int, steps: list[int],
             dataset_name: str, selections: list[str]) -> list[dict]:
    """The fixed sweep (lowest energy; optionally the refined proposals) on windows the model was not trained on."""
    rows = []
    for s in steps:
        for sel in selections:
            out, seconds = timed(ebt.predict, windows, steps=s, selection=sel)
            rows.append({"dataset": dataset_name, "split": name, "policy": "fixed", "steps": s, "selection": sel,
                         **scored(out, windows, season, seconds)})
    return rows


# ------------------------------------------------------------------------------------------------
# the driver


def as_rows(compute):
    """A cell's computation whose result is a list of rows (a single row becomes a list of one)."""
    def listed() -> list[dict]:
        result = compute()
        return result if isinstance(result, list) else [result]
    return listed


def study_datasets(app: ForecastAppConfig) -> list[ForecastDataset]:
    """The shared suite (or study.suite), or the user's file with the last horizon of each series as test."""
    if app.input:
        from ebt_forecast.tasks.forecast.cli_forecast import user_dataset

        full = user_dataset(app, "study")
        train, test = split_train_val(full.train, full.horizon, 1)
        if not test:
            from ebt_forecast.errors import DataError

            raise DataError(f"{app.input}: every series is too short to hold out its last horizon={app.horizon} "
                            f"points and keep horizon + 1 to train on")
        return [ForecastDataset(full.name, full.freq, full.horizon, full.season_length, train, test)]
    from dataclasses import replace

    return load_suite(replace(app, suite=app.study.suite))


def run_study(app: ForecastAppConfig) -> Path:
    """Train (or load) one EBT per data set, run every part, write study.csv / study.md / plots; return the folder."""
    study = app.study
    cfg = app.forecaster()
    datasets = study_datasets(app)
    suite = datasets[0].name if app.input else study.suite
    out = Path(app.runtime.output_dir) / suite
    cells, cache = Cells(out / "cells", resume=study.resume), out / "cache"

    def rows(name: str, depends, compute) -> list[dict]:
        return cells.run(name, depends, as_rows(compute))

    fast = list(cfg.task.verifier.fast_sources)
    k0 = cfg.think.infer_steps
    settings = study_settings(study, cfg.task.num_candidates, cfg.task.verify_group, k0)
    sweep, refs, unc, ood = [], [], [], []
    ebts: dict[str, EBTForecaster] = {}
    total = len(datasets) * (len(settings) + 2 + (2 if study.ood else 0))
    bar = tqdm(total=total, unit="cell", desc="study", disable=not app.trainer.progress_bar)
    for d in datasets:
        taught: dict[str, EBTForecaster] = {}

        def twin(d=d) -> EBTForecaster:  # trained once per data set, only if a cell needs it
            if "twin" not in taught:
                taught["twin"] = EBTForecaster(app.forecaster(), "feedforward").fit(d)
            return taught["twin"]

        base = config_key(d.name, d.horizon, [len(s) for s in d.train], len(d.test_windows), cfg.model, cfg.think,
                          cfg.trainer.settings(), cfg.task.ebt_fields(), cfg.seed)
        ebt = ebts[d.name] = trained_ebt(d, app, cache)
        shared = [s for s in settings if s.policy == "fixed" and s.selection in SHARED_SELECTIONS]
        for steps in dict.fromkeys(s.steps for s in shared):
            group = [s for s in shared if s.steps == steps]
            bar.set_postfix_str(f"{d.name} / fixed[steps={steps}]")
            sweep += rows(f"{d.name}__fixed_steps{steps}", config_key(base, [asdict(s) for s in group]),
                               lambda: shared_fixed_cell(ebt, d, group))
            bar.update(len(group))
        for s in settings:
            if s in shared:
                continue
            bar.set_postfix_str(f"{d.name} / {s.label}")
            v, verifier = cfg.task.verifier, s.sources
            key = config_key(base, asdict(s), (v.fast_sources, v.pool_windows, v.steps, v.out_of_fold,
                                               study.fast_context) if verifier else None)

            def compute(s=s, verifier=verifier, v=v, d=d):
                if verifier and "ebt" not in taught:  # teach the verifier once per data set, only if a cell needs it
                    taught["ebt"] = _taught(app, d, fast, cache, twin(), study.fast_context)
                return sweep_cell(taught["ebt"] if verifier else ebt, d, s, fast, cache, twin() if verifier else None,
                                  study.fast_context)

            sweep += rows(f"{d.name}__{s.policy}", key, compute)
            bar.update()
        refs += rows(f"{d.name}__references", config_key(base, fast, study.fast_context),
                          lambda: reference_cell(d, twin(), fast, cache, study.fast_context))
        unc += rows(f"{d.name}__uncertainty", config_key(base, asdict(study), "served"),
                         lambda: uncertainty_cell(ebt, d, study))
        bar.update(2)
    if study.ood:
        for d in datasets:
            partners = [o for o in datasets if o is not d and (o.freq, o.horizon, o.season_length) ==
                        (d.freq, d.horizon, d.season_length)]
            base = config_key(d.name, [len(s) for s in d.train], cfg.model, cfg.think, cfg.trainer.settings(),
                              cfg.task.ebt_fields(), cfg.seed, study.steps, study.ood_selections)
            ebt = ebts[d.name]
            ood += rows(f"{d.name}__ood_in", base, lambda: ood_cell(ebt, "in_distribution", d.test_windows,
                                                                         d.season_length, study.steps, d.name,
                                                                         study.ood_selections))
            ood += rows(f"{d.name}__ood_shift", config_key(base, study.level_shift), lambda: ood_cell(
                ebt, f"level_shift_{study.level_shift:g}sd", shifted(d.test_windows, study.level_shift),
                d.season_length, study.steps, d.name, study.ood_selections))
            for o in partners:
                ood += rows(f"{d.name}__ood_on_{o.name}", config_key(base, o.name, len(o.test_windows)),
                                 lambda: ood_cell(ebt, f"unseen:{o.name}", o.test_windows, o.season_length,
                                                  study.steps, d.name, study.ood_selections))
            bar.update(2)
    bar.close()
    print(cells.summary())
    tables = {"sweep": pd.DataFrame(sweep), "references": pd.DataFrame(refs), "uncertainty": pd.DataFrame(unc),
              "ood": pd.DataFrame(ood)}
    write_report(out, tables, study, app)
    return out


def _taught(app: ForecastAppConfig, dataset: ForecastDataset, fast: list[str], cache: Path, twin: EBTForecaster,
            context: int | None) -> EBTForecaster:
    """The verifier's own EBT (trained without the pool windows when `task.verifier.out_of_fold`), its energy
    taught to rank the sources on those windows."""
    v = app.task.verifier
    ebt = trained_ebt(dataset, app, cache, reserve_windows=v.held_out_windows())
    train_verifier(ebt, dataset, fast, cache, windows=v.pool_windows, steps=v.steps, twin=twin, context=context)
    return ebt


# ------------------------------------------------------------------------------------------------
# the report


def best_on_validation(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per data set: step 0, the fixed 1-step setting and the setting with the lowest validation WQL."""
    rows = []
    for name, part in sweep.groupby("dataset", sort=False):
        zero = part[(part.policy == "fixed") & (part.steps == 0) & (part.selection == "verified")]
        chosen = part.loc[[part.val_wql.idxmin()]]
        for tag, r in (("step 0 (verified)", zero), ("best on validation", chosen)):
            if len(r):
                rows.append({"dataset": name, "row": tag, "label": r.label.iloc[0], "val_wql": r.val_wql.iloc[0],
                             **{m: r[m].iloc[0] for m in METRICS}, "passes_per_window": r.passes_per_window.iloc[0]})
    return pd.DataFrame(rows)


def adaptive_savings(sweep: pd.DataFrame, policy_steps: int) -> pd.DataFrame:
    """For each adaptive setting: its passes and WQL against the fixed-steps budget of the same length."""
    rows = []
    for name, part in sweep.groupby("dataset", sort=False):
        fixed = part[(part.policy == "fixed") & (part.selection == "verified")].set_index("steps")
        if policy_steps not in fixed.index:
            continue
        ref = fixed.loc[policy_steps]
        for _, r in part[part.policy.isin(["energy_change", "top_energy", "fixed+uphill"])].iterrows():
            if r.policy == "fixed+uphill" and r.steps != policy_steps:
                continue
            rows.append({"dataset": name, "label": r.label, "wql": r.wql, "fixed_wql": ref.wql,
                         "passes_per_window": r.passes_per_window, "fixed_passes_per_window": ref.passes_per_window,
                         "pass_saving": 1 - r.passes_per_window / ref.passes_per_window,
                         "reaches_fixed": bool(r.wql <= ref.wql * 1.0005)})
    return pd.DataFrame(rows)


def candidate_cost(sweep: pd.DataFrame) -> pd.DataFrame:
    """Wall time of M candidates relative to M = 1 (the same steps and starts)."""
    part = sweep[sweep.policy == "candidates"]
    rows = []
    for name, p in part.groupby("dataset", sort=False):
        one = p[p.num_candidates == 1].wall_seconds
        for _, r in p.iterrows():
            rows.append({"dataset": name, "M": r.num_candidates, "wall_seconds": r.wall_seconds,
                         "relative_to_M1": r.wall_seconds / one.iloc[0] if len(one) else np.nan, "wql": r.wql})
    return pd.DataFrame(rows)


def ood_change(ood: pd.DataFrame) -> pd.DataFrame:
    """WQL at 1 and 16 steps (or the largest swept) in and out of distribution, and the relative change."""
    rows = []
    for (name, split, sel), p in ood.groupby(["dataset", "split", "selection"], sort=False):
        p = p.set_index("steps")
        if 1 not in p.index:
            continue
        last = p.index.max()
        rows.append({"trained_on": name, "tested_on": split, "selection": sel, "wql_step0": p.wql.get(0, np.nan),
                     "wql_step1": p.wql[1], f"wql_step{last}": p.wql[last],
                     "change_1_to_last": p.wql[last] / p.wql[1] - 1})
    return pd.DataFrame(rows)


SIGNALS = ("energy", "energy_step0", "interval_width", "start_spread")


def uncertainty_table(unc: pd.DataFrame, study: StudyConfig) -> pd.DataFrame:
    """One row per data set and signal: Spearman with the window's CRPS, AUROC, and the WQL kept at each
    withheld fraction with its reduction against keeping every window."""
    rows = []
    for _, r in unc.iterrows():
        for signal in SIGNALS:
            row = {"dataset": r.dataset, "forecast": r.setting, "signal": signal, "spearman": r[f"{signal}_spearman"],
                   "auroc": r[f"{signal}_auroc"]}
            for x in study.withheld:
                row[f"wql@{x:g}"] = r[f"{signal}_wql@{x:g}"]
            cut = f"{signal}_wql@{study.worst_fraction:g}"
            if cut in r:
                row[f"cut@{study.worst_fraction:g}"] = 1 - r[cut] / r["wql"]
            rows.append(row)
    return pd.DataFrame(rows)


def write_report(out: Path, tables: dict[str, pd.DataFrame], study: StudyConfig, app: ForecastAppConfig) -> None:
    """study.csv (every sweep row), the other tables as CSV, study.md and the plots."""
    sweep, refs, unc, ood = tables["sweep"], tables["references"], tables["uncertainty"], tables["ood"]
    atomic_write_csv(sweep, out / "study.csv")
    for name in ("references", "uncertainty", "ood"):
        if len(tables[name]):
            atomic_write_csv(tables[name], out / f"study_{name}.csv")
    fmt = dict(index=False, floatfmt=".4f")
    cols = ["dataset", "label", "val_wql", *METRICS, "forward_per_window", "backward_per_window", "wall_seconds"]
    parts = [f"# Study: {out.name}\n", "Every setting scored on validation windows (`val_wql`) and test windows; "
             "passes are the engine's counts per test window.\n", "## Sweep\n", sweep[cols].to_markdown(**fmt),
             "\n## References (test)\n", refs.to_markdown(**fmt),
             "\n## Step 0 beside the setting chosen on validation\n", best_on_validation(sweep).to_markdown(**fmt)]
    savings = adaptive_savings(sweep, study.policy_steps)
    if len(savings):
        parts += [f"\n## Adaptive policies against fixed {study.policy_steps} steps\n", savings.to_markdown(**fmt)]
    cost = candidate_cost(sweep)
    if len(cost):
        parts += ["\n## Cost of candidates (batched): wall time relative to M = 1\n", cost.to_markdown(**fmt)]
    if len(ood):
        parts += ["\n## Out of distribution: change from 1 step to the most\n", ood_change(ood).to_markdown(**fmt)]
    if len(unc):
        parts += [f"\n## Energy as uncertainty (test windows; AUROC for the worst {study.worst_fraction:.0%})\n",
                  uncertainty_table(unc, study).to_markdown(**fmt)]
    atomic_write_text(out / "study.md", "\n".join(parts) + "\n")
    plot_compute(sweep, refs, out / "plots")
    plot_selective(unc, study, out / "plots")


def _save(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    """Label the axes, add the legend and write the figure atomically."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def plot_compute(sweep: pd.DataFrame, refs: pd.DataFrame, folder: Path) -> None:
    """Test WQL against passes per window (log axis), one line per policy, references as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, part in sweep.groupby("dataset", sort=False):
        fig, ax = plt.subplots(figsize=(8, 5))
        lines = {f"fixed ({sel})": part[(part.policy == "fixed") & (part.selection == sel)] for sel in part.selection.unique()}
        for policy in ("fixed+uphill", "candidates", "group", "energy_change", "top_energy", "verifier"):
            lines[policy] = part[part.policy == policy]
        for label, p in lines.items():
            if len(p):
                p = p.sort_values("passes_per_window")
                ax.plot(p.passes_per_window.clip(lower=1), p.wql, marker="o", ms=3, lw=1, label=label)
        for _, r in refs[refs.dataset == name].iterrows():
            if r.model in ("seasonal_naive", "transformer_pp") or str(r.model).startswith("best_statistical"):
                ax.axhline(r.wql, ls="--", lw=1, color="grey")
                ax.text(0.01, r.wql, r.model, transform=ax.get_yaxis_transform(), fontsize=7, color="grey", va="bottom")
        ax.set_xscale("log")
        _save(fig, ax, "forward + backward passes per window (step 0 without energy plotted at 1)", "test WQL",
              f"{name}: accuracy against compute", folder / f"{name}__compute.png")


def plot_selective(unc: pd.DataFrame, study: StudyConfig, folder: Path) -> None:
    """WQL of the kept windows against the fraction withheld, one line per signal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for _, r in unc.iterrows():
        fig, ax = plt.subplots(figsize=(6, 4))
        for signal in SIGNALS:
            ax.plot(study.withheld, [r[f"{signal}_wql@{x:g}"] for x in study.withheld], marker="o", label=signal)
        _save(fig, ax, "fraction of windows withheld (highest signal first)", "WQL of the kept windows",
              f"{r.dataset}: selective forecasting", folder / f"{r.dataset}__selective.png")


def run_study_command(app: ForecastAppConfig) -> int:
    """`ebt-forecast study`: validate, run, say where the results are."""
    app.forecaster()
    out = run_study(app)
    print((out / "study.md").read_text())
    print(f"results: {out / 'study.csv'}, {out / 'study.md'}, plots in {out / 'plots'}")
    return 0
