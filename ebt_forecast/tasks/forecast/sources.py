"""The EBT as a slow verifier above fast forecasters, and its energy-free controls.

Per window and quantile level, the starts are level paths from several System 1 forecasters: the
EBT's own proposal, the seasonal-naive path (carrying the proposal's spread), and statsforecast's
AutoETS / AutoTheta (their 21 quantile paths, one per level). The energy then verifies (lowest
energy per level) or weights (softmax(-E / T), T chosen on validation) among them, optionally after
descending from each. The controls that matter use the same starts without the energy: their
equal-weight average, their median, and the single source that scored best on the validation
windows. Everything is chosen on validation windows; test numbers are only read afterwards.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from ebt_forecast.baselines import StatsForecastBaseline
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.data.windows import make_inference_batch, split_train_val
from ebt_forecast.experiment import Artifacts
from ebt_forecast.metrics import FORECAST_LEVELS, sample_levels, score_windows
from ebt_forecast.nn import TransformerPP
from ebt_forecast.tasks.base import fit_module
from ebt_forecast.tasks.forecast.diagnostics import candidate_errors, mean_spearman
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster, quantile_levels, validation_windows_per_series
from ebt_forecast.tasks.forecast.model import candidate_pinball
from ebt_forecast.tasks.forecast.module import ForecastModule, inference_levels
from ebt_forecast.think import InferenceSetting, listwise_ranking_loss, select_candidates

LEVELS = len(FORECAST_LEVELS)  # the EBT's and statsforecast's paths at the same 21 levels (0.025, 0.05, ..., 0.975)
OWN_SOURCES = ("ebt_proposal", "seasonal_naive")  # the EBT's own starts 0 and 1 of each level
TEMPERATURES = (0.03, 0.1, 0.3, 1.0, 3.0)


def fast_forecasts(model: str, dataset: ForecastDataset, windows: list[TestWindow], cache: Path | None,
                   context: int | None = None, num_paths: int = LEVELS) -> np.ndarray:
    """statsforecast level paths (N, num_paths, H) at `metrics.sample_levels(num_paths)` (the 21-level grid by
    default) for `windows`; with a `cache` folder computed once (they have no seed).
    `context`: the past points each window's model is fitted on (None: the baseline's own default, 1000)."""
    def forecast() -> np.ndarray:
        # one process per torch thread: runtime.threads is the share of the machine this run may take
        forecaster = StatsForecastBaseline(model, context_length=context, n_jobs=torch.get_num_threads(),
                                           levels=sample_levels(num_paths)).fit(dataset)
        return np.stack(forecaster.predict(windows, dataset))

    if cache is None:
        return forecast()
    depends = {"model": model, "data": (dataset.name, dataset.horizon, dataset.season_length),
               "windows": [(w.item_id, len(w.past), float(np.nansum(w.past[-50:]))) for w in windows],
               "context": context, "num_paths": num_paths}

    def make(folder: Path) -> np.ndarray:
        paths = forecast()
        np.save(folder / "paths.npy", paths)
        return paths

    return Artifacts(cache).get(f"{dataset.name}__{model}", depends, make, lambda folder: np.load(folder / "paths.npy"))


def _settings(steps_menu: tuple[int, ...], sources: list[str]) -> list[tuple[int, str, float | None]]:
    """(steps, selection, temperature) rows: energy settings, then the energy-free controls and single sources."""
    energy = [(s, "verified", None) for s in steps_menu] + [(s, "weighted", t) for s in steps_menu for t in TEMPERATURES]
    controls = [(0, "average", None), (0, "median", None)] + [(0, f"source:{name}", None) for name in sources]
    return energy + controls


def source_samples(candidates: np.ndarray, energies: np.ndarray, selection: str, temperature: float | None,
             sources: list[str]) -> np.ndarray:
    """Samples (N, M, H) from every start's candidate (N, M, G, H) and energy (N, M, G)."""
    if selection.startswith("source:"):
        return candidates[:, :, sources.index(selection.split(":", 1)[1])]
    grouped, energy = torch.from_numpy(candidates), torch.from_numpy(energies)
    return select_candidates(selection, grouped[:, :, 0], grouped, energy, temperature or 1.0).numpy()


def fast_starts(dataset: ForecastDataset, fast: list[str], windows: list[TestWindow], cache: Path | None,
                twin: EBTForecaster | None = None, context: int | None = None, num_paths: int = LEVELS) -> np.ndarray:
    """Every fast forecaster's level paths for `windows`: (N, num_paths, S, H); with `twin`, the feed-forward
    twin's level paths are one more source (last)."""
    paths = [fast_forecasts(m, dataset, windows, cache, context, num_paths) for m in fast]
    if twin is not None:
        paths.append(twin.predict(windows, num_candidates=num_paths).samples)
    return np.stack(paths, axis=2)


def think_over_sources(ebt: EBTForecaster, windows: list[TestWindow], extra: np.ndarray, steps: int):
    """The EBT's own starts and the fast forecasters' paths `extra` (N, M, S, H) as starts, thought about for
    `steps`; M level paths at the same levels as the sources'."""
    # 64 windows a batch: thinking keeps the graph of M x (G + S) candidates per window (256 took 6 GB at S = 2)
    return ebt.predict(windows, steps=steps, selection="verified", verify_group=len(OWN_SOURCES),
                       num_candidates=extra.shape[1], extra_starts=extra, batch_size=64)


def verifier_rows(ebt: EBTForecaster, dataset: ForecastDataset, fast: list[str], sets: dict[str, list[TestWindow]],
                  cache: Path | None, steps_menu: tuple[int, ...] = (0, 1)) -> tuple[list[dict], dict[str, float]]:
    """Score every verifier setting and control on each set of windows (`{"val": ..., "test": ...}`).

    Returns one row per setting (each set's metrics side by side) and the within-level ranking
    diagnostics of the energy over the sources on the "val" set."""
    sources = [*OWN_SOURCES, *fast]
    thought: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for split, windows in sets.items():
        extra = fast_starts(dataset, fast, windows, cache)
        for steps in steps_menu:
            out = think_over_sources(ebt, windows, extra, steps)
            thought[split, steps] = (out.candidates, out.energies)
    rows = []
    for steps, selection, temperature in _settings(steps_menu, sources):
        row = {"steps": steps, "selection": selection, "temperature": temperature}
        for split, windows in sets.items():
            samples = source_samples(*thought[split, steps], selection, temperature, sources)
            row[split] = score_windows(samples, windows, dataset.season_length, FORECAST_LEVELS)
        rows.append(row)
    # does the energy rank the sources? within each (validation window, level), energy vs pinball loss
    candidates, energies = thought["val", 0]
    futures = np.stack([w.future for w in sets["val"]])
    errors = candidate_errors(candidates, futures, inference_levels(LEVELS, 1).numpy()[0])
    best = np.take_along_axis(errors, energies.argmin(-1)[..., None], -1)[..., 0]
    diagnostics = {"source_spearman": mean_spearman(energies.reshape(-1, len(sources)), errors.reshape(-1, len(sources))),
                   "source_pick_accuracy": float(np.mean(best <= errors.min(-1) + 1e-12)), "source_chance": 1 / len(sources)}
    return rows, diagnostics


def choose(rows: list[dict], kind: str) -> dict:
    """The row with the lowest validation WQL among energy settings (`kind="energy"`), single sources
    (`"source"`) or every setting (`"any"`)."""
    if kind == "energy":
        pool = [r for r in rows if r["selection"] in ("verified", "weighted")]
    elif kind == "source":
        pool = [r for r in rows if r["selection"].startswith("source:")]
    else:
        pool = rows
    return min(pool, key=lambda r: r["val"]["wql"])


# ------------------------------------------------------------------------------------------------
# training the energy on exactly those starts


def pool_windows(ebt: EBTForecaster, dataset: ForecastDataset, wanted: int) -> list[TestWindow]:
    """Windows for teaching the verifier: the EBT's reserved windows when it has them (out of fold: it never
    trained on them), else the last horizons of its own training series (in-sample, `task.verifier.out_of_fold=
    false`; the errors the energy learns to weigh are then training errors). Validation and test stay unseen."""
    if ebt.reserve_windows:
        return ebt.reserved(dataset)
    train, _ = ebt.split(dataset)
    _, pool = split_train_val(train, dataset.horizon, validation_windows_per_series(train, dataset.horizon, wanted))
    return pool


class PoolDataset(Dataset):
    """`size` rows drawn (seeded, with replacement) from a dict of tensors with a shared first dimension."""

    def __init__(self, tensors: dict[str, torch.Tensor], size: int, seed: int):
        self.tensors, self.size = tensors, size
        n = len(next(iter(tensors.values())))
        self.index = torch.randint(n, (size,), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[self.index[i]] for k, v in self.tensors.items()}


class SourceRanking(L.LightningModule):
    """Teaches the EBT's energy to rank each level's sources by their pinball loss (listwise); the backbone
    and the System 1 head stay frozen, so the proposals (one of the sources) do not move."""

    ENERGY_PARTS = ("candidate_embed", "energy_level", "energy_head")

    def __init__(self, module: ForecastModule, lr: float, temperature: float):
        super().__init__()
        self.inner, self.lr, self.temperature = module, lr, temperature
        for name, p in module.named_parameters():
            p.requires_grad_(name.split(".")[1] in self.ENERGY_PARTS if name.startswith("model.") else False)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        model = self.inner.model
        with torch.no_grad():
            cache = self.inner.encode(batch)
        starts = batch["starts"]
        b, m, g, h = starts.shape
        levels = inference_levels(m, b)
        energies = model.energy(starts, levels.unsqueeze(-1).expand(-1, -1, g),
                                TransformerPP.expand_cache(cache, "grouped", candidate_dims=2))
        errors = candidate_pinball(starts.reshape(b, m * g, h), batch["future"], levels.repeat_interleave(g, 1),
                                   batch["future_mask"]).view(b, m, g)
        loss = listwise_ranking_loss(energies, errors, self.temperature)
        self.log("verifier/rank_loss", loss, prog_bar=True, batch_size=b)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=0.01)


def ranking_tensors(ebt: EBTForecaster, windows: list[TestWindow], extra: np.ndarray) -> dict[str, torch.Tensor]:
    """What the energy's source ranking trains on, for `windows` whose futures are known: scaled contexts, every
    level's starts (the EBT's own and `extra`, the fast sources' (N, M, S, H) paths) and futures, padded to the
    model's horizon (the rest masked out)."""
    starts = ebt.predict(windows, steps=0, selection="verified", verify_group=len(OWN_SOURCES), num_candidates=LEVELS,
                         extra_starts=extra).candidates  # (N, M, G, H), data units
    model = ebt.module.model.cfg
    batch = make_inference_batch([w.past for w in windows], model.context_length, scaling=model.scaling)
    scale, loc = batch["scale"].view(-1, 1), batch["loc"].view(-1, 1)
    futures = np.stack([w.future for w in windows])
    pad = model.horizon - futures.shape[-1]  # a pretrained model reads its own horizon: the rest is masked out
    starts = np.pad(starts, [(0, 0)] * 3 + [(0, pad)], mode="edge")
    futures = np.pad(futures, [(0, 0), (0, pad)], constant_values=np.nan)
    return {"context": batch["context"], "context_mask": batch["context_mask"],
            "starts": (torch.from_numpy(starts.astype(np.float32)) - loc.view(-1, 1, 1, 1)) / scale.view(-1, 1, 1, 1),
            "future": (torch.from_numpy(np.nan_to_num(futures).astype(np.float32)) - loc) / scale,
            "future_mask": torch.from_numpy(np.isfinite(futures).astype(np.float32))}


def teach_ranking(ebt: EBTForecaster, tensors: dict[str, torch.Tensor], *, steps: int = 200, batch_size: int = 32,
                  lr: float = 1e-3) -> dict[str, float]:
    """Train only the energy parts of `ebt` to rank the starts in `tensors` by their pinball loss (listwise)."""
    trainer = replace(ebt.cfg.trainer, max_steps=steps, batch_size=batch_size, lr=lr, checkpoint_dir=None, progress_bar=False)
    ranking = SourceRanking(ebt.module, lr, ebt.cfg.task.loss.rank_temperature)
    report = fit_module(ranking, PoolDataset(tensors, steps * batch_size, ebt.cfg.seed), trainer, ebt.cfg.seed)
    ebt.module.eval()
    return {"pool_windows": len(tensors["context"]), "train_seconds": report.seconds, "train_steps": report.steps}


def train_verifier(ebt: EBTForecaster, dataset: ForecastDataset, fast: list[str], cache: Path, *, windows: int = 256,
                   steps: int = 200, batch_size: int = 32, lr: float = 1e-3,
                   twin: EBTForecaster | None = None, context: int | None = None) -> dict[str, float]:
    """Teach the energy of `ebt` to rank the sources of pool windows by error (the verifier's own EBT: its
    backbone and proposal head stay frozen, only the energy parts move); return what it did."""
    pool = pool_windows(ebt, dataset, windows)
    extra = fast_starts(dataset, fast, pool, cache, twin, context)
    return teach_ranking(ebt, ranking_tensors(ebt, pool, extra), steps=steps, batch_size=batch_size, lr=lr)


class VerifierForecaster:
    """The serving contract "slow verifier above fast forecasters", as a forecaster (`task.verifier`): it composes
    an EBT forecaster of its own (`self.ebt`, its parameters and checkpoint) with the fast source forecasters
    (`self.sources`, statsforecast models fitted per window).

    fit: train its EBT on the training series minus the pool windows (`task.verifier.out_of_fold`), teach that
    EBT's energy to rank the sources on those pool windows, out of fold, then choose on the validation windows
    among the energy's settings and the energy-free controls (so the energy is used only where it beat equal
    weights and the best single source on validation). predict: fit the fast forecasters on each window's past
    and select among every source's level paths."""

    def __init__(self, cfg, name: str = "ebt_verifier", cache: Path | None = None, ebt: EBTForecaster | None = None):
        v = cfg.task.verifier
        self.cfg, self.name, self.cache, self.dataset = cfg, name, cache, None
        self.ebt = ebt or EBTForecaster(cfg, "ebt", reserve_windows=v.held_out_windows())
        self.sources = list(v.fast_sources)
        self.verifier_choice: dict | None = None
        self.verifier_diagnostics: dict[str, float] = {}
        self.train_seconds, self.train_steps = 0.0, 0

    def fit(self, dataset: ForecastDataset) -> "VerifierForecaster":
        """Its EBT, then the energy's teaching on the pool windows, then the validation choice."""
        v = self.cfg.task.verifier
        self.ebt.fit(dataset)
        self.dataset = dataset
        report = {"train_seconds": 0.0, "train_steps": 0}  # task.verifier.steps=0: the energy as it came (pretrained)
        if v.steps:
            report = train_verifier(self.ebt, dataset, self.sources, self.cache, windows=v.pool_windows, steps=v.steps)
        self.train_seconds = self.ebt.train_seconds + report["train_seconds"]
        self.train_steps = self.ebt.train_steps + report["train_steps"]
        rows, self.verifier_diagnostics = verifier_rows(self.ebt, dataset, self.sources, {"val": self.ebt.val_windows},
                                                        self.cache)
        self.verifier_choice = choose(rows, "any")
        return self

    def predict(self, windows: list[TestWindow], dataset: ForecastDataset | None = None, *,
                num_candidates: int | None = None, **kwargs):
        """Samples from the setting chosen on validation: one path per level, at the 21-level grid (a quantile
        forecast) or, with `num_candidates=S`, at the stratified levels (j + 0.5) / S (S samples), every source
        made at those levels. Other keyword arguments reach its EBT alone instead."""
        if kwargs or self.verifier_choice is None:
            return self.ebt.predict(windows, dataset, num_candidates=num_candidates, **kwargs)
        choice = self.verifier_choice
        extra = fast_starts(self.dataset, self.sources, windows, self.cache, num_paths=num_candidates or LEVELS)
        out = think_over_sources(self.ebt, windows, extra, choice["steps"])
        samples = source_samples(out.candidates, out.energies, choice["selection"], choice["temperature"],
                                 [*OWN_SOURCES, *self.sources])
        label = choice["selection"] + ("" if choice["temperature"] is None else f"@T={choice['temperature']:g}")
        return replace(out, samples=samples, setting=InferenceSetting(choice["steps"], label),
                       levels=quantile_levels(choice["selection"], samples.shape[1]))
