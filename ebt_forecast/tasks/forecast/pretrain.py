"""`ebt-forecast pretrain`: one patch EBT trained on many series, the zero-shot forecaster of DESIGN.md.

Contract:
    run_pretrain(app) -> PretrainRun        train (or resume) on `PretrainWindowStream` and write the run folder
    load_pretrained(folder) -> ForecastModule   rebuilt from model.json, weights.pt loaded (weights_only), eval mode
    validation_sets(root, names, ...) -> [ValidationSet]   fixed, seeded windows of the zero-shot suite's training parts
    score_validation(module, sets, step) -> rows            the proposals' WQL / MASE and their ratio to seasonal naive

One window (scaled by the mean |x| of its observed context; data.max_context = 512, data.max_horizon = 64):

    context: 32 patches of 16  [ pad ... pad | c_1 ... c_C ]  left-padded, mask 0 on the pads
    horizon:  4 patches of 16  [ f_1 ... f_H | pad ... pad ]  right-padded; the losses read the mask

The run folder (`runtime.output_dir`, default results/pretrain):

    checkpoints/last.ckpt       Lightning checkpoint (or trainer.checkpoint_dir); a rerun resumes it and continues
    checkpoints/run_key.json    the settings it trains under: a checkpoint of other settings is refused, by key
    weights.pt                  the module's state dict: torch.load(..., weights_only=True)
    model.json                  ForecastModelConfig, think / task / optimiser settings, mode, parameters, steps
    validation.csv              step, dataset, windows, wql, mase, seasonal naive's, their ratios; per step a geomean
    train.json                  one entry per call: steps from / to, seconds, windows and points per second
    config.yaml                 the resolved configuration of the last call

Lightning does the training (accelerators, precision, DDP: each process draws its own stream, `rank`); the
module is `ForecastModule` (mode ebt or feedforward, the twin) with its schedule spanning `pretrain.schedule_steps`.
"""
from __future__ import annotations

import json
import platform
import time
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ebt_forecast import __version__
from ebt_forecast.baselines import seasonal_naive_forecast
from ebt_forecast.data.loaders import load_etth1, load_exchange_rate, load_m4_hourly
from ebt_forecast.data.corpus import assert_disjoint
from ebt_forecast.data.pretrain_windows import PretrainWindowStream
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.data.windows import make_inference_batch
from ebt_forecast.errors import ConfigError, DataError
from ebt_forecast.io import atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text
from ebt_forecast.metrics import FORECAST_LEVELS, score_windows
from ebt_forecast.tasks.base import OptimConfig, _devices, _strategy
from ebt_forecast.tasks.forecast.config import ForecastAppConfig, ForecastTaskConfig
from ebt_forecast.tasks.forecast.model import ForecastModelConfig
from ebt_forecast.tasks.forecast.module import ForecastModule, inference_levels
from ebt_forecast.think import ThinkConfig

MODEL_FORMAT = "ebt_forecast.pretrained/1"
VALIDATION_LOADERS = {  # name -> (root -> data set): the zero-shot suite, never in the corpus
    "m4_hourly": lambda root: load_m4_hourly(root),
    "etth1": lambda root: load_etth1(root, columns="all"),
    "exchange_rate": lambda root: load_exchange_rate(root),
}


# ------------------------------------------------------------------------------------------------
# the module and its data


class PretrainModule(ForecastModule):
    """ForecastModule whose warm-up + cosine schedule spans `schedule_steps` (0: the trainer's max_steps), so a run
    can be stopped and extended without changing its schedule. Its state dict is a ForecastModule's."""

    def __init__(self, *args: Any, schedule_steps: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.schedule_steps = schedule_steps

    def schedule_length(self) -> int:
        """`schedule_steps`, or the trainer's max_steps when it is 0."""
        return self.schedule_steps or super().schedule_length()


class PretrainStream(L.LightningDataModule):
    """The training loader of one process: the stream drawn for its global rank, in batches of batch_size /
    processes. A resumed run draws a fresh stream (epoch = the step it resumes at), not the windows seen before."""

    def __init__(self, stream: PretrainWindowStream, global_batch: int, num_workers: int = 0):
        super().__init__()
        self.stream, self.global_batch, self.num_workers = stream, global_batch, num_workers

    def train_dataloader(self) -> DataLoader:
        trainer, stream = self.trainer, self.stream
        stream.rank = trainer.global_rank
        stream.set_epoch(trainer.global_step)
        return DataLoader(stream, batch_size=self.global_batch // trainer.world_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          pin_memory=trainer.strategy.root_device.type == "cuda")


def model_config(app: ForecastAppConfig) -> ForecastModelConfig:
    """The pretrained model's sizes: window from the stream's maxima, backbone from `model`."""
    p, think = app.pretrain, app.think
    return ForecastModelConfig(p.data.max_context, p.data.max_horizon, p.patch_len, app.model,
                               season_length=p.season_length, energy_init=app.task.energy_init,
                               step_embeddings=think.train_steps if think.step_embedding else 0,
                               scaling=p.data.scaling)


def count_parameters(module: torch.nn.Module) -> int:
    """Parameters of a module (frozen ones included: the model's size)."""
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------
# validation on the zero-shot suite's training parts


@dataclass
class ValidationSet:
    """Fixed windows of one evaluation data set and seasonal naive's scores on them."""

    name: str
    season_length: int
    horizon: int
    windows: list[TestWindow]  # past: at most the model's context; future: `horizon` points
    naive: dict[str, float]  # seasonal naive's wql and mase on `windows`


def cut_validation_windows(dataset: ForecastDataset, count: int, context_length: int,
                           rng: np.random.Generator) -> list[TestWindow]:
    """`count` windows at random places of the training series (never the test windows): a series uniformly, a
    cut with a full context where the series allows; both parts have observed values."""
    h = dataset.horizon
    usable = [s for s in dataset.train if len(s.target) > h]
    if not usable:
        raise DataError(f"validation: no training series of {dataset.name} is longer than its horizon {h}")
    windows: list[TestWindow] = []
    for _ in range(100 * count):
        if len(windows) == count:
            break
        s = usable[int(rng.integers(len(usable)))]
        y = np.asarray(s.target, dtype=np.float32)
        n = len(y)
        t = int(rng.integers(min(context_length, n - h), n - h + 1))
        past, future = y[max(0, t - context_length):t], y[t:t + h]
        if np.isfinite(past).any() and np.isfinite(future).any():
            windows.append(TestWindow(item_id=s.item_id, start=s.start, past=past.copy(), future=future.copy()))
    if len(windows) < count:
        raise DataError(f"validation: found only {len(windows)} of {count} windows with observed values in "
                        f"{dataset.name}")
    return windows


def validation_sets(root: str | Path, names: list[str], count: int, context_length: int, max_horizon: int,
                    seed: int = 0) -> list[ValidationSet]:
    """Seeded windows of each named data set's training part (data set i draws from Generator([seed, crc32(name)]))
    and seasonal naive's scores on them (its point forecast as every quantile, the Chronos / GIFT-Eval convention)."""
    out = []
    for name in names:
        if name not in VALIDATION_LOADERS:
            raise ConfigError(f"pretrain.val_datasets contains {name!r}: must be among {', '.join(VALIDATION_LOADERS)}")
        dataset = VALIDATION_LOADERS[name](root)
        if dataset.horizon > max_horizon:
            raise ConfigError(f"pretrain.val_datasets: {name} forecasts {dataset.horizon} steps, more than "
                              f"pretrain.data.max_horizon={max_horizon}")
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        windows = cut_validation_windows(dataset, count, context_length, rng)
        naive = [seasonal_naive_forecast(w.past, dataset.horizon, dataset.season_length)[None] for w in windows]
        scores = score_windows(naive, windows, dataset.season_length)
        out.append(ValidationSet(name, dataset.season_length, dataset.horizon, windows,
                                 {"wql": scores["wql"], "mase": scores["mase"]}))
    return out


@torch.no_grad()
def proposal_quantiles(module: ForecastModule, pasts: list[np.ndarray], horizon: int,
                       batch_size: int = 256) -> np.ndarray:
    """System 1 proposals at the 21 FORECAST_LEVELS in data units: (N, 21, horizon)."""
    model = module.model
    param = next(model.parameters())
    out = []
    for start in range(0, len(pasts), batch_size):
        batch = make_inference_batch(pasts[start:start + batch_size], model.cfg.context_length,
                                     scaling=model.cfg.scaling)
        context = batch["context"].to(param.device, param.dtype)
        mask = batch["context_mask"].to(param.device, param.dtype)
        cache = model.encode(context, mask)
        levels = inference_levels(len(FORECAST_LEVELS), len(context), param.device).to(param.dtype)
        paths = model.propose(cache, levels)[..., :horizon].float().cpu()
        out.append((paths * batch["scale"].view(-1, 1, 1) + batch["loc"].view(-1, 1, 1)).numpy())
    return np.concatenate(out)


def score_validation(module: ForecastModule, sets: list[ValidationSet], step: int) -> list[dict]:
    """One row per data set (the proposals' WQL and MASE, seasonal naive's, their ratios) and a geomean row."""
    was_training = module.training
    module.eval()
    try:
        rows = []
        for v in sets:
            paths = proposal_quantiles(module, [w.past for w in v.windows], v.horizon)
            scores = score_windows(list(paths), v.windows, v.season_length, levels=FORECAST_LEVELS)
            rows.append({"step": step, "dataset": v.name, "windows": len(v.windows), "wql": scores["wql"],
                         "mase": scores["mase"], "naive_wql": v.naive["wql"], "naive_mase": v.naive["mase"],
                         "rel_wql": scores["wql"] / v.naive["wql"], "rel_mase": scores["mase"] / v.naive["mase"]})
    finally:
        module.train(was_training)
    if rows:
        geo = {k: float(np.exp(np.mean(np.log([r[k] for r in rows])))) for k in ("rel_wql", "rel_mase")}
        rows.append({"step": step, "dataset": "geomean", "windows": sum(r["windows"] for r in rows), **geo})
    return rows


# ------------------------------------------------------------------------------------------------
# callbacks: validation, throughput, the progress bar


class ZeroShotValidation(Callback):
    """Scores the proposals on the validation sets at step 0, every `every` steps and at the end (global rank 0),
    prints a line and rewrites `path` (CSV) each time. On resume, rows after the resumed step are dropped."""

    def __init__(self, sets: list[ValidationSet], every: int, path: Path):
        self.sets, self.every, self.path = sets, every, path
        self.rows: list[dict] = []
        self.seconds = 0.0  # spent validating (the throughput leaves it out)

    def _validate(self, trainer: L.Trainer, pl_module: ForecastModule) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or not self.sets or any(r["step"] == step for r in self.rows):
            return
        start = time.perf_counter()
        rows = score_validation(pl_module, self.sets, step)
        self.rows += rows
        atomic_write_csv(pd.DataFrame(self.rows), self.path)
        self.seconds += time.perf_counter() - start
        parts = ", ".join(f"{r['dataset']} {r['rel_wql']:.3f}" for r in rows[:-1])
        pl_module.print(f"step {step}: zero-shot validation rel. WQL {rows[-1]['rel_wql']:.3f} ({parts}); "
                        f"rel. MASE {rows[-1]['rel_mase']:.3f}")

    def on_train_start(self, trainer: L.Trainer, pl_module: ForecastModule) -> None:
        if self.path.exists():
            self.rows = [r for r in pd.read_csv(self.path).to_dict("records") if r["step"] <= trainer.global_step]
        self._validate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: ForecastModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every and trainer.global_step % self.every == 0:
            self._validate(trainer, pl_module)
            if self.rows and self.rows[-1]["step"] == trainer.global_step:
                pl_module.log("val_rel_wql", self.rows[-1]["rel_wql"], prog_bar=True, batch_size=1)

    def on_train_end(self, trainer: L.Trainer, pl_module: ForecastModule) -> None:
        self._validate(trainer, pl_module)


class Throughput(Callback):
    """Training windows and observed points (context + future) per second, all processes together, on the
    progress bar (`win/s`, `pts/s`, over the last `interval` seconds or more) and in `summary()` (the whole call,
    validation time left out). Points are summed on the device and read once an interval (one sync)."""

    def __init__(self, interval: float = 2.0, validation: ZeroShotValidation | None = None):
        self.interval, self.validation = interval, validation
        self.windows, self.points, self.rates = 0, 0.0, {}
        self._pending: torch.Tensor | None = None
        self.start: float | None = None  # a call on a finished run never starts training

    def _excluded(self) -> float:
        return self.validation.seconds if self.validation is not None else 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step, self.start = trainer.global_step, time.perf_counter()
        self.mark = (self.start, self._excluded(), 0, 0.0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        world = trainer.world_size
        self.windows += batch["context"].shape[0] * world
        points = (batch["context_mask"].sum() + batch["future_mask"].sum()).detach() * world
        self._pending = points if self._pending is None else self._pending + points
        now, excluded = time.perf_counter(), self._excluded()
        t0, e0, w0, p0 = self.mark
        seconds = now - t0 - (excluded - e0)
        if seconds >= self.interval:
            self._flush()
            self.rates = {"win/s": (self.windows - w0) / seconds, "pts/s": (self.points - p0) / seconds}
            self.mark = (now, excluded, self.windows, self.points)
        if self.rates:
            pl_module.log_dict(self.rates, prog_bar=True, batch_size=1)

    def _flush(self) -> None:
        if self._pending is not None:
            self.points += float(self._pending)
            self._pending = None

    def summary(self, end_step: int) -> dict:
        """This call's steps, seconds (without validation), windows and points, and their rates."""
        self._flush()
        if self.start is None:
            self.start_step, self.start = end_step, time.perf_counter()
        seconds = max(time.perf_counter() - self.start - self._excluded(), 1e-9)
        return {"start_step": self.start_step, "end_step": end_step, "seconds": seconds, "windows": self.windows,
                "points": self.points, "windows_per_s": self.windows / seconds, "points_per_s": self.points / seconds,
                "validation_seconds": self._excluded()}


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar counting optimizer steps of the whole run (a resumed run starts where it stopped) out of
    max_steps, with the logged metrics (win/s, pts/s, losses, val_rel_wql)."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer, *_)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = trainer.global_step
        bar.set_description("pretrain")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = trainer.global_step
        if self._should_update(n, trainer.max_steps):
            bar = self.train_progress_bar
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()


# ------------------------------------------------------------------------------------------------
# the run


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b.c": leaf}."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def run_settings(app: ForecastAppConfig) -> dict[str, Any]:
    """What the checkpoint's training depends on, by config key: a checkpoint resumes only under the same values.
    Not the validation, workers, progress bar or where training runs, nor max_steps (where a call stops); the
    schedule's length is recorded as `pretrain.schedule_steps` (0 resolved to max_steps)."""
    p, t = app.pretrain, app.trainer
    trainer = {k: v for k, v in t.settings().items() if k != "max_steps"}
    pretrain = {"mode": p.mode, "patch_len": p.patch_len, "season_length": p.season_length, "init_from": p.init_from,
                "train": p.train,
                "schedule_steps": p.schedule_steps or t.max_steps, "data": asdict(p.data)}
    task = {"init": app.task.init, "energy_init": app.task.energy_init, "loss": asdict(app.task.loss)}
    return _flat({"model": asdict(app.model), "think": asdict(app.think), "task": task, "trainer": trainer,
                  "pretrain": pretrain, "seed": app.seed})


# settings added after runs were already checkpointed, with the value that gives the behaviour before them: a run
# key written without one resumes when the setting keeps that value
SETTINGS_ADDED_LATER: dict[str, Any] = {"pretrain.data.corpus_series_fraction": 1.0}


def check_resumable(folder: Path, settings: dict[str, Any]) -> Path | None:
    """The checkpoint to resume (None: start), after checking it was trained under `settings`; ConfigError names
    every key that differs. Comparison is through JSON, as the settings are stored."""
    last = folder / "last.ckpt"
    if not last.exists():
        return None
    key_file = folder / "run_key.json"
    if not key_file.exists():
        raise ConfigError(f"trainer.checkpoint_dir={str(folder)!r} holds a checkpoint without run_key.json (not a "
                          "pretrain run): use another runtime.output_dir or trainer.checkpoint_dir")
    old, new = json.loads(key_file.read_text()), json.loads(json.dumps(settings, default=str))
    old = {**{k: v for k, v in SETTINGS_ADDED_LATER.items() if k not in old}, **old}  # older runs: the old behaviour
    changed = [f"{k}={old.get(k)!r} there, {new.get(k)!r} here"
               for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
    if changed:
        schedule = old.get("pretrain.schedule_steps")
        hint = (f"; to continue its schedule to another trainer.max_steps, pass pretrain.schedule_steps={schedule}"
                if any(c.startswith("pretrain.schedule_steps=") for c in changed) else "")
        raise ConfigError(f"trainer.checkpoint_dir={str(folder)!r} holds a checkpoint of other settings ("
                          f"{'; '.join(changed)}): a checkpoint resumes only its own settings (or use a new "
                          f"runtime.output_dir){hint}")
    return last


def model_record(app: ForecastAppConfig, module: ForecastModule, steps: int) -> dict:
    """model.json: everything `load_pretrained` needs to rebuild the module, and what it was trained on."""
    t = app.trainer
    return {
        "format": MODEL_FORMAT, "mode": module.mode, "model": asdict(module.model.cfg), "think": asdict(app.think),
        "task": asdict(app.task), "optim": {f.name: getattr(t, f.name) for f in fields(OptimConfig)},
        "parameters": count_parameters(module), "steps": steps, "batch_size": t.batch_size,
        "schedule_steps": app.pretrain.schedule_steps or t.max_steps, "seed": app.seed,
        "data": asdict(app.pretrain.data),
        "versions": {"ebt_forecast": __version__, "torch": torch.__version__, "lightning": L.__version__,
                     "python": platform.python_version()},
    }


ENERGY_PARTS = ("step_size.", "model.candidate_embed.", "model.energy_level.", "model.energy_head.", "model.step_embed.")


def freeze_system1(module: ForecastModule) -> None:
    """Only the energy's own parameters keep learning: the backbone, the context embedding and the proposal head
    are frozen, so the proposals stay exactly those of the weights it started from."""
    for name, param in module.named_parameters():
        param.requires_grad_(name.startswith(ENERGY_PARTS))


def init_weights(module: ForecastModule, folder: Path) -> None:
    """Start from another run's weights.pt (weights_only; the same model sizes, every tensor matched by name)."""
    path = folder / "weights.pt"
    if not path.is_file():
        raise ConfigError(f"pretrain.init_from={str(folder)!r}: {path} not found (a run folder of `ebt-forecast "
                          "pretrain` holds weights.pt)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = module.state_dict()
    wrong = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if wrong:
        raise ConfigError(f"pretrain.init_from={str(folder)!r}: its weights do not fit this model ({wrong[0]!r} "
                          "missing or of another shape): pass the same model.* sizes and pretrain.data windows")
    module.load_state_dict(state)


def _structured(cls: type, values: dict) -> Any:
    """A dataclass (nested ones included) from a dict, type-checked by OmegaConf: a wrong key or type names it."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))


def load_pretrained(folder: str | Path, map_location: str | torch.device = "cpu") -> ForecastModule:
    """Rebuild the pretrained ForecastModule of a run folder from model.json and load weights.pt (weights_only)."""
    folder = Path(folder)
    meta_path, weights_path = folder / "model.json", folder / "weights.pt"
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise DataError(f"pretrained model file not found: {path}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != MODEL_FORMAT:
        raise DataError(f"{meta_path}: format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    model_cfg = _structured(ForecastModelConfig, meta["model"])
    module = ForecastModule(model_cfg, _structured(ThinkConfig, meta["think"]), _structured(OptimConfig, meta["optim"]),
                            _structured(ForecastTaskConfig, meta["task"]), mode=meta["mode"])
    module.load_state_dict(torch.load(weights_path, map_location=map_location, weights_only=True))
    return module.to(map_location).eval()


def export_checkpoint(folder: str | Path, checkpoint: str | Path | None = None, out: str | Path | None = None) -> Path:
    """weights.pt + model.json of a run's Lightning checkpoint (default checkpoints/last.ckpt), e.g. while it still
    trains; written into `out` (default the run folder). The run's config.yaml gives the settings."""
    folder = Path(folder)
    ckpt = Path(checkpoint) if checkpoint else folder / "checkpoints" / "last.ckpt"
    config = folder / "config.yaml"
    for path in (ckpt, config):
        if not path.is_file():
            raise DataError(f"export: {path} not found (a run folder of `ebt-forecast pretrain`)")
    app = _structured(ForecastAppConfig, OmegaConf.to_container(OmegaConf.load(config)))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    module = ForecastModule(model_config(app), app.think, app.trainer, app.task, mode=app.pretrain.mode)
    module.load_state_dict(state["state_dict"])
    target = Path(out) if out else folder
    target.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({k: v.detach().cpu() for k, v in module.state_dict().items()}, target / "weights.pt")
    atomic_write_json(target / "model.json", model_record(app, module, int(state["global_step"])))
    return target


@dataclass
class PretrainRun:
    """What one call of `run_pretrain` made."""

    folder: Path
    module: PretrainModule  # trained, in eval mode
    summary: dict  # this call's steps, seconds, windows / points per second
    validation: list[dict]  # every validation row of the run so far


def run_pretrain(app: ForecastAppConfig) -> PretrainRun:
    """Pretrain (or resume) one ForecastModule on the pretraining stream with Lightning; write the run folder."""
    p, t = app.pretrain.validate(), app.trainer
    app.forecaster()  # model / think / trainer / task keys, checked at start
    out = Path(app.runtime.output_dir)
    ckpt_dir = Path(t.checkpoint_dir) if t.checkpoint_dir else out / "checkpoints"
    settings = run_settings(app)
    resume = check_resumable(ckpt_dir, settings)
    if p.data.corpus_root:  # zero-shot honesty: no series of the evaluation suite may be in the pretraining pool
        suite = [Path(app.data.root) / name for name in ("ett", "m4", "exchange_rate")]
        assert_disjoint(p.data.corpus_root, [root for root in suite if root.is_dir()])
    data = PretrainStream(PretrainWindowStream(p.data), t.batch_size, p.num_workers)  # the corpus is indexed here
    sets = validation_sets(app.data.root, list(p.val_datasets), p.val_windows, p.data.max_context,
                           p.data.max_horizon, p.val_seed) if p.val_every else []
    L.seed_everything(app.seed, workers=True, verbose=False)
    module = PretrainModule(model_config(app), app.think, t, app.task, mode=p.mode, schedule_steps=p.schedule_steps)
    if p.init_from and resume is None:  # e.g. the EBT's energy taught on top of the pretrained System 1 (the twin)
        init_weights(module, Path(p.init_from))
    if p.train == "energy":
        freeze_system1(module)
    validation = ZeroShotValidation(sets, p.val_every, out / "validation.csv")
    throughput = Throughput(validation=validation)
    callbacks: list[Callback] = [validation, throughput, ModelCheckpoint(
        dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=t.checkpoint_every)]
    if t.progress_bar:
        callbacks.append(StepProgressBar())
    trainer = L.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=_devices(t.devices), num_nodes=t.num_nodes,
        strategy=_strategy(t.strategy), precision=t.precision, logger=False, callbacks=callbacks,
        enable_model_summary=False, enable_progress_bar=t.progress_bar, gradient_clip_val=t.gradient_clip,
        num_sanity_val_steps=0, use_distributed_sampler=False)
    if t.batch_size % trainer.world_size:
        raise ConfigError(f"trainer.batch_size={t.batch_size} is invalid: the global batch must divide evenly among "
                          f"the {trainer.world_size} training processes (devices x num_nodes)")
    if trainer.is_global_zero:
        atomic_write_json(ckpt_dir / "run_key.json", settings)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(app)))
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True)
    steps = trainer.global_step
    trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # the final step, whatever checkpoint_every
    module.eval()
    summary = {**throughput.summary(steps), "parameters": count_parameters(module), "mode": p.mode}
    if trainer.is_global_zero:
        atomic_torch_save({k: v.detach().cpu() for k, v in module.state_dict().items()}, out / "weights.pt")
        atomic_write_json(out / "model.json", model_record(app, module, steps))
        history_path = out / "train.json"
        history = json.loads(history_path.read_text()) if history_path.exists() else []
        atomic_write_json(history_path, [h for h in history if h["end_step"] <= summary["start_step"]] + [summary])
    return PretrainRun(out, module, summary, validation.rows)


def run_pretrain_command(app: ForecastAppConfig) -> int:
    """`ebt-forecast pretrain`: train, then print what was written and how fast it went."""
    run = run_pretrain(app)
    s = run.summary
    print(f"pretrained {s['parameters']:,}-parameter {s['mode']} model: steps {s['start_step']} -> {s['end_step']} in "
          f"{s['seconds']:.1f} s ({s['windows_per_s']:.1f} windows/s, {s['points_per_s']:,.0f} points/s)")
    if run.validation:
        last = run.validation[-1]
        print(f"zero-shot validation at step {last['step']}: rel. WQL {last['rel_wql']:.3f}, "
              f"rel. MASE {last['rel_mase']:.3f} (geometric mean over {', '.join(app.pretrain.val_datasets)})")
    print(f"run folder: {run.folder} (weights.pt, model.json, checkpoints/, validation.csv, train.json)")
    return 0
