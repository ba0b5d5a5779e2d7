"""The task interface: what a use of the EBT (forecast, control, text, ...) supplies, and what it gets.

A task is an adapter. It supplies
- its config node (a dataclass, the Hydra `task` group) and its commands (`TaskSpec`,
  `register_task`), with the root schema `AppConfig` extended by the fields its commands read;
- a data adapter: a torch Dataset of training batches (dicts of tensors);
- a `TaskModule`: `encode(batch)` once per batch, `propose(encoding, batch, M, G)` -> `Starts`
  (System 1 proposals, G thinking starts per proposal, and `energy_fn` over the (B, M * G) starts),
  its `training_step` (its loss) and its metrics.
Everything else is written once: Lightning wiring (`fit_module`: checkpoints that resume only the
same configuration and schedule, progress bars, gradient clipping, alpha's optimizer group and the schedule,
and Lightning's accelerators, precisions and data-parallel strategies with each global batch split by rank),
and `TaskModule.infer`: encode -> starts -> think -> select (`think.pipeline`).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import MISSING
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from ebt_forecast.nn import TransformerConfig, TransformerPP
from ebt_forecast.nn.transformer import KVCache
from ebt_forecast.think import (
    ConfigError,
    EnergyFn,
    InferencePolicy,
    Starts,
    StepSize,
    ThinkConfig,
    ThinkRecord,
    ThinkResult,
    Thought,
    Transform,
    check_settings,
    think,
    think_and_select,
)


# ------------------------------------------------------------------------------------------------
# configuration shared by every task


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (the EBT recipe)."""

    lr: float = 3e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1


@dataclass
class TrainerConfig(OptimConfig):
    """Training budget and optimiser (shared by an EBT and its feed-forward twin), and where training runs.

    `batch_size` is the global batch: under a data-parallel strategy (`strategy=ddp`, `devices=N`,
    `num_nodes=K`) each of the N x K processes takes `batch_size / (N x K)` rows of the same steps, so the
    processes change the speed, not the run (up to float rounding and each process's noise stream).
    """

    max_steps: int = 300
    batch_size: int = 64
    gradient_clip: float = 1.0
    progress_bar: bool = True
    checkpoint_dir: Optional[str] = None  # set: save `last.ckpt` there every checkpoint_every steps and resume from it
    checkpoint_every: int = 100
    # where and how training runs (Lightning's Trainer arguments); only precision changes what is computed
    accelerator: str = "cpu"  # cpu | gpu (cuda) | mps | auto
    devices: str = "1"  # processes per node: a count, -1 or auto (all), or GPU ids "0,1"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp (a process per device, the command runs in each) | ddp_spawn | ddp_fork | fsdp ...
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed | bf16-true | 16-true | 64-true

    def settings(self) -> dict[str, Any]:
        """The fields a run's result depends on: not the progress bar, where checkpoints go or where training
        runs (accelerator, devices, num_nodes, strategy); precision only when not the default 32-true."""
        skip = {"progress_bar", "checkpoint_dir", "checkpoint_every", *EXECUTION_FIELDS}
        if self.precision == "32-true":  # so results cached before the field existed keep their keys
            skip.add("precision")
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def validate(self) -> "TrainerConfig":
        """Raise ConfigError naming the first invalid key."""
        check_settings(self, "trainer", [("max_steps", self.max_steps >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                                         ("lr", self.lr > 0, "> 0"), ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                                         ("checkpoint_every", self.checkpoint_every >= 1, ">= 1"),
                                         ("num_nodes", self.num_nodes >= 1, ">= 1"),
                                         ("accelerator", self.accelerator in ACCELERATORS, f"one of {', '.join(ACCELERATORS)}"),
                                         ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
                                         ("strategy", self.strategy in strategies(), f"one of {', '.join(strategies())}"),
                                         ("devices", _devices(self.devices) is not None,
                                          "a count >= 1, -1, auto, or comma-separated device ids like 0,1")])
        return self


EXECUTION_FIELDS = ("accelerator", "devices", "num_nodes", "strategy")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def strategies() -> list[str]:
    """Lightning's registered strategy names, and auto."""
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *StrategyRegistry.available_strategies()]


def _devices(value: Any) -> int | str | list[int] | None:
    """`trainer.devices` as Lightning takes it (an int, auto, or a list of ids); None if invalid."""
    text = str(value).strip()
    if text == "auto":
        return text
    if text.lstrip("-").isdigit():
        n = int(text)
        return n if n >= 1 or n == -1 else None
    ids = [part.strip() for part in text.strip("[]").split(",") if part.strip()]
    return [int(i) for i in ids] if ids and all(i.isdigit() for i in ids) else None


@dataclass
class RuntimeConfig:
    """Process settings."""

    threads: int = 2  # torch threads; two processes that each take both cores slow each other 15-40x
    output_dir: str = "results/${command}"
    eval_device: str = "cpu"  # where evaluation runs (cpu | cuda | cuda:N); training runs where `trainer` says
    engine: str = "local"  # batch inference (`forecast`): local (this process) | dask (a Dask cluster's workers)
    workers: int = 2  # engine=dask without an address: worker processes of the local cluster started for the call
    address: Optional[str] = None  # engine=dask: a running scheduler (tcp://host:8786); None = a local cluster


@dataclass
class AppConfig:
    """The root of every command line: `ebt-forecast <command> key=value ...`. A task extends it
    with the fields its commands read and sets `task` to its own config node."""

    command: str = "benchmark"
    seed: int = 0
    model: TransformerConfig = field(default_factory=TransformerConfig)
    think: ThinkConfig = field(default_factory=ThinkConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    task: Any = MISSING


def cached_energy_fn(cache: KVCache, per_context: int, energy: Callable[[KVCache, Tensor], Tensor]) -> EnergyFn:
    """The engine's `energy_fn(x, index)` over candidates of contexts encoded once (`per_context` candidates each):
    all candidates broadcast the cached keys and values without a copy; a subset gathers its contexts' rows.
    `energy(cache, candidates)` scores candidates (..., *event) against a cache that broadcasts over `...`."""

    def fn(x: Tensor, index: Tensor | None, **landscape: Any) -> Tensor:  # landscape: step=t (step embeddings)
        if index is None:  # every candidate, context-major
            return grouped_energies(cache, x.view(-1, per_context, *x.shape[1:]), energy, **landscape).flatten()
        return energy(TransformerPP.expand_cache(cache, "gather", index // per_context), x, **landscape)

    return fn


def grouped_energies(cache: KVCache, candidates: Tensor, energy: Callable[..., Tensor], **landscape: Any) -> Tensor:
    """`energy` of grouped candidates (B, G, ...) against B cached contexts, broadcast over G without a copy."""
    return energy(TransformerPP.expand_cache(cache, "grouped", candidate_dims=1), candidates, **landscape)


def config_key(*parts: Any, length: int = 12) -> str:
    """A short stable hash of configuration parts (dataclasses, dicts, scalars): equal iff the parts are."""
    plain = [asdict(p) if is_dataclass(p) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:length]


# ------------------------------------------------------------------------------------------------
# registry: tasks register their commands; the CLI and the root config import no task


@dataclass
class Command:
    """One `ebt-forecast <name>` command: a line of help and the function that runs it (exit code)."""

    help: str
    run: Callable[[Any], int]


@dataclass
class TaskSpec:
    """A task as the CLI sees it."""

    name: str
    config: type  # the task's config node (Hydra group `task`, option `name`)
    app_config: type  # AppConfig extended with the fields its commands read
    commands: dict[str, Command]


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make a task's commands known to the CLI; a command name may belong to one task only."""
    for name in spec.commands:
        owner = next((t.name for t in _TASKS.values() if name in t.commands and t.name != spec.name), None)
        if owner:
            raise ValueError(f"command {name!r} of task {spec.name!r} is already registered by task {owner!r}")
    _TASKS[spec.name] = spec
    return spec


def registered_tasks() -> dict[str, TaskSpec]:
    """Every registered task by name."""
    return dict(_TASKS)


def task_of_command(command: str) -> TaskSpec | None:
    """The task that registered `command` (None if none did)."""
    return next((t for t in _TASKS.values() if command in t.commands), None)


# ------------------------------------------------------------------------------------------------
# the Lightning module a task subclasses


class TrainableModule(L.LightningModule):
    """What every trained model shares: AdamW groups and the warm-up + cosine schedule of `optim_cfg`. The
    feed-forward twins (Transformer++, DiT) subclass it directly: they predict, they do not think."""

    def __init__(self, optim_cfg: OptimConfig):
        super().__init__()
        self.optim_cfg = optim_cfg
        # name prefix -> learning-rate multiplier: fine-tuning gives parameters it adds (a pretrained model's new
        # covariate slots) a higher rate than the pretrained ones
        self.lr_multipliers: dict[str, float] = {}

    def parameter_groups(self) -> list[dict]:
        """AdamW groups: matrices with weight decay, gains and biases without; each prefix of `lr_multipliers`
        in groups of its own at lr x multiplier."""
        groups: dict[tuple[bool, float], list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad or name.startswith("step_size."):
                continue
            scale = next((m for prefix, m in self.lr_multipliers.items() if name.startswith(prefix)), 1.0)
            groups.setdefault((p.dim() >= 2, scale), []).append(p)
        groups.setdefault((True, 1.0), [])
        groups.setdefault((False, 1.0), [])
        return [{"params": params, "weight_decay": self.optim_cfg.weight_decay if decay else 0.0,
                 **({"lr": self.optim_cfg.lr * scale} if scale != 1.0 else {})}
                for (decay, scale), params in sorted(groups.items(), key=lambda kv: (kv[0][1] != 1.0, not kv[0][0]))]

    def schedule_length(self) -> int:
        """Steps the warm-up + cosine schedule spans: the trainer's max_steps (1000 without one)."""
        return max(1, int(self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 1000))

    def configure_optimizers(self):
        """AdamW over `parameter_groups()`, warm-up then cosine decay to `min_lr_ratio` over `schedule_length()`."""
        cfg = self.optim_cfg
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        total = self.schedule_length()

        def schedule(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TaskModule(TrainableModule):
    """Holds the step size and the thinking settings; a task adds its model, `encode`, `propose`
    and `training_step`. Training steps call `self.think(energy_fn, init)` (create_graph,
    randomised steps and alpha); inference calls `self.infer(batch, ...)`.
    """

    def __init__(self, think_cfg: ThinkConfig, optim_cfg: OptimConfig):
        super().__init__(optim_cfg)
        self.think_cfg = think_cfg.validate()
        self.step_size = StepSize(think_cfg.alpha, learnable=think_cfg.learn_alpha)

    # -- what a task supplies ------------------------------------------------------------------
    @abstractmethod
    def encode(self, batch: dict[str, Tensor]) -> Any:
        """The context's encoding, computed once and shared by every step and candidate."""

    @abstractmethod
    def propose(self, encoding: Any, batch: dict[str, Tensor], num_candidates: int, group: int,
                generator: torch.Generator | None = None) -> Starts:
        """M System 1 proposals per prediction, G thinking starts per proposal, and their energy."""

    # -- what every task gets ------------------------------------------------------------------
    def candidate_transform(self) -> Transform | None:
        """What the energy reads of a thinking state (engine.py); None = the state itself. Text: softmax."""
        return None

    def think(self, energy_fn, init: Tensor, *, training: bool | None = None, **kwargs) -> ThinkResult:
        """Run the engine with this module's settings and candidate transform (training mode follows the module's)."""
        training = self.training if training is None else training
        kwargs.setdefault("transform", self.candidate_transform())
        return think(energy_fn, init, self.think_cfg, self.step_size, training=training, **kwargs)

    def infer(self, batch: dict[str, Tensor], *, num_candidates: int, group: int, steps: int, selection: str,
              generator: torch.Generator | None = None, temperature: float | None = None,
              final_energy: bool = False, policy: InferencePolicy | None = None) -> Thought:
        """Encode the context once, propose starts, think for `steps` under `policy` (default: the one the
        module's think config names), select samples (`final_energy`: read the final energies even for an
        energy-free selection)."""
        with torch.no_grad():
            encoding = self.encode(batch)
            starts = self.propose(encoding, batch, num_candidates, group, generator)
        return think_and_select(starts, self.think_cfg, self.step_size, steps=steps, selection=selection,
                                generator=generator, temperature=temperature, final_energy=final_energy,
                                policy=policy)

    def log_think_record(self, record: ThinkRecord, prefix: str) -> None:
        """Log the energies, steps, passes and non-finite count of one thinking call."""
        e = record.energies
        evaluated = [row for row in e if not torch.isnan(row).all()]
        first, last = evaluated[0].nanmean(), evaluated[-1].nanmean()
        self.log_dict(
            {
                f"{prefix}/energy_start": first, f"{prefix}/energy_end": last,
                f"{prefix}/steps": record.steps_taken.float().mean(),
                f"{prefix}/forward_passes": float(record.forward_passes),
                f"{prefix}/backward_passes": float(record.backward_passes),
                f"{prefix}/nonfinite": record.nonfinite.float().sum(),
                f"{prefix}/alpha": self.step_size().detach(),
            },
            on_step=True, on_epoch=False, batch_size=e.shape[1],
        )

    def parameter_groups(self) -> list[dict]:
        """The shared groups, plus alpha on its own learning rate (multiplier x lr) when it is learnable."""
        groups = super().parameter_groups()
        if self.step_size.raw.requires_grad:
            groups.append({"params": [self.step_size.raw], "weight_decay": 0.0,
                           "lr": self.optim_cfg.lr * self.think_cfg.alpha_lr_multiplier})
        return groups


# ------------------------------------------------------------------------------------------------
# Lightning wiring


@dataclass
class FitReport:
    """How long training took and how many optimizer steps it made."""

    seconds: float
    steps: int


def fit_module(module: L.LightningModule, data: Dataset, trainer_cfg: TrainerConfig, seed: int | None,
               run_key: str = "") -> FitReport:
    """Train `module` on `data` (batches in order; the dataset draws its own seeded windows) with Lightning.

    `seed` seeds every generator before training; None when the caller seeded before building the module
    (then the weights' initialisation and the training draws come from one stream).

    With `trainer_cfg.checkpoint_dir`, `last.ckpt` is saved every `checkpoint_every` steps and a later
    call resumes from it, but only for the same configuration and learning-rate schedule: the directory
    records `run_key` and the trainer settings (max_steps and warmup_steps included), and a checkpoint
    written by another configuration, or another number of steps, is refused (ConfigError) rather than
    silently mixed in or resumed under a changed schedule.

    Under a data-parallel strategy with W processes, process r reads rows r, r + W, r + 2W, ... in
    batches of batch_size / W (`RankRows`), so step s of all processes together reads exactly rows
    [s * batch_size, (s + 1) * batch_size), the batch one process would read, and DDP averages the
    gradients. (Lightning's own sampler would shuffle: it turns shuffling on for every training loader.)
    Only global rank 0 writes the key and the checkpoints.
    """
    if seed is not None:
        L.seed_everything(seed, workers=True, verbose=False)
    t = trainer_cfg.validate()
    callbacks, resume = [_StepCount()], None
    key = json.dumps({"run": run_key, "trainer": t.settings()}, sort_keys=True)
    if t.checkpoint_dir:
        folder = Path(t.checkpoint_dir)
        key_file = folder / "run_key.txt"
        last = folder / "last.ckpt"
        if last.exists():
            written_by = key_file.read_text().strip() if key_file.exists() else "unknown"
            if written_by != key:
                raise ConfigError(f"trainer.checkpoint_dir={t.checkpoint_dir!r} holds a checkpoint of another "
                                  f"configuration ({_key_change(written_by, run_key, t)}); a checkpoint resumes "
                                  "only its own configuration and learning-rate schedule: use a new directory")
            resume = str(last)
        callbacks.append(ModelCheckpoint(dirpath=t.checkpoint_dir, save_last=True, save_top_k=0,
                                         every_n_train_steps=t.checkpoint_every))
    trainer = L.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=_devices(t.devices), num_nodes=t.num_nodes,
        strategy=_strategy(t.strategy), precision=t.precision, logger=False, enable_checkpointing=bool(t.checkpoint_dir),
        callbacks=callbacks, enable_model_summary=False, enable_progress_bar=t.progress_bar,
        gradient_clip_val=t.gradient_clip, num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    world = trainer.world_size
    if t.batch_size % world:
        raise ConfigError(f"trainer.batch_size={t.batch_size} is invalid: the global batch must divide evenly "
                          f"among the {world} training processes (devices x num_nodes)")
    if world > 1 and isinstance(data, IterableDataset):
        raise ConfigError(f"trainer.strategy={t.strategy!r} runs {world} processes, but an IterableDataset cannot "
                          "be split among them (every process would read the same rows): use a map-style Dataset")
    if t.checkpoint_dir and trainer.is_global_zero:
        Path(t.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        (Path(t.checkpoint_dir) / "run_key.txt").write_text(key)
    start = time.perf_counter()
    trainer.fit(module, datamodule=RankRows(data, t.batch_size), ckpt_path=resume, weights_only=True)
    module.eval()
    return FitReport(time.perf_counter() - start, _steps_done(trainer))


def _key_change(written: str, run_key: str, t: TrainerConfig) -> str:
    """What differs between a checkpoint's recorded key and this run's: the trainer settings by name, else the keys."""
    try:
        recorded = json.loads(written)
    except ValueError:
        recorded = None
    recorded = recorded if isinstance(recorded, dict) else {}
    if recorded.get("run") != run_key:
        return f"key {recorded.get('run', written)}, this run {run_key}"
    old = recorded.get("trainer", {})
    return ", ".join(f"trainer.{k}={old.get(k)!r} there, {v!r} here"
                     for k, v in t.settings().items() if old.get(k) != v)


class RankRows(L.LightningDataModule):
    """The training loader of one process: in order on one process; under W processes, process r's
    share of each global batch (rows r, r + W, ...). Built inside each process, where its rank is known
    (under ddp_spawn the loader made before the launch would give every process rank 0's rows)."""

    def __init__(self, data: Dataset, global_batch: int):
        super().__init__()
        self.data, self.global_batch = data, global_batch

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if world == 1:
            return DataLoader(self.data, batch_size=self.global_batch, shuffle=False)
        sampler = DistributedSampler(self.data, num_replicas=world, rank=rank, shuffle=False, drop_last=False)
        return DataLoader(self.data, batch_size=self.global_batch // world, sampler=sampler)


class _StepCount(Callback):
    """Puts the step count among the metrics, which ddp_spawn's workers send back to the main process."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.callback_metrics[STEPS_METRIC] = torch.tensor(float(trainer.global_step))


def _strategy(name: str) -> Any:
    """Lightning's strategy for a name; the plain DDP launchers look for parameters a step did not use,
    since some training steps leave some parameters out (the feed-forward twin never touches the energy head)."""
    if name in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(start_method={"ddp": "popen", "ddp_spawn": "spawn"}.get(name, "fork"),
                           find_unused_parameters=True)
    return name


def _steps_done(trainer: L.Trainer) -> int:
    """Optimizer steps made (under ddp_spawn the main process's loop did not run: the workers sent the count)."""
    sent = trainer.callback_metrics.get(STEPS_METRIC)
    return int(sent) if sent is not None and trainer.global_step == 0 else int(trainer.global_step)


STEPS_METRIC = "_fit_module/steps"
