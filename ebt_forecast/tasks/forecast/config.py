"""The forecast task's configuration: its node in Hydra's `task` group and the fields its commands read.

One source of defaults: `ForecasterConfig()` (the Python API and `EBTEstimator()`) and the CLI's
`ForecastAppConfig` take their model, think, trainer and task defaults from the same factories.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from ebt_forecast.baselines import STATSFORECAST_MODELS
from ebt_forecast.data.pretrain_windows import PretrainDataConfig
from ebt_forecast.data.windows import COVARIATE_SCALINGS
from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import AppConfig, TrainerConfig
from ebt_forecast.errors import ConfigError
from ebt_forecast.think import SELECTIONS, ThinkConfig

INITS = ("proposal", "seasonal_naive", "noise", "random")
ENERGY_INITS = ("zero", "xavier")
REFINE_FROM = ("proposal", "all")


def small_backbone() -> TransformerConfig:
    """The CPU default: a ~0.1M-parameter Transformer++ shared by the EBT and its feed-forward twin."""
    return TransformerConfig(dim=64, depth=2, heads=4, ffn_multiplier=2.0)


def forecast_think() -> ThinkConfig:
    """Thinking for forecasts: 2 steps, training steps drawn from [1, 2], alpha randomised x/÷2."""
    return ThinkConfig(train_steps=2, train_steps_min=1, infer_steps=2, alpha_random_scale=2.0)


@dataclass
class ForecastLossConfig:
    """Weights of the three things training teaches (DESIGN.md)."""

    proposal: float = 1.0  # System 1: pinball of the proposals at random levels
    refine: float = 1.0  # System 2: pinball of the refined candidates, averaged over thinking steps
    verify: float = 1.0  # listwise ranking: within a level, lower energy = lower pinball loss
    train_candidates: int = 4  # random levels per window while training
    train_group: int = 3  # starts per level while training: proposal, seasonal naive, perturbed proposal
    verify_noise_train: float = 0.5  # perturbation std, in half-widths of the proposal set
    rank_temperature: float = 0.1  # soft ranking targets softmax(-error / (t * mean error))
    refine_from: str = "proposal"  # the starts the refinement loss reads: each level's own path (start 0), or "all"
    #                                (the paper: every start is trained to descend to the target)
    set_crps: float = 0.0  # weight of the fair CRPS (scoringrules) of each refined level set, a proper set score
    set_energy: float = 0.0  # several targets: weight of the fair energy score of the refined joint candidates over
    #                          the targets at each step (teaches thinking to make the joint samples coherent)
    detach_context: bool = False  # System 2 losses do not reach the cached context keys / values


@dataclass
class VerifierConfig:
    """The EBT as a slow verifier above fast forecasters (tasks/forecast/sources.py)."""

    enabled: bool = False  # `forecast` and EBTEstimator verify among the sources (true: slower; statsforecast per window)
    fast_sources: list[str] = field(default_factory=lambda: ["autoets", "autotheta"])  # statsforecast models
    pool_windows: int = 256  # windows before the validation tail that teach the energy to rank the sources
    steps: int = 200  # optimizer steps of that teaching (0: the energy as trained or pretrained, zero-shot)
    out_of_fold: bool = True  # the verifier's EBT never trains on the pool windows (false: in-sample, as before)

    def held_out_windows(self) -> int:
        """About how many windows the verifier's EBT holds out of training: the pool out of fold, none in-sample."""
        return self.pool_windows if self.out_of_fold else 0


@dataclass
class ForecastTaskConfig:
    """The forecast task: window sizes, candidates at inference, how they become samples, and the loss."""

    context_length: int = 0  # 0 = auto: 4 horizons (at least 2 seasons), within [32, 512]
    patch_len: int = 0  # 0 = auto: 16 for horizons >= 24, else 4
    init: str = "proposal"  # start 0 of each level: proposal | seasonal_naive | noise; random: every start N(0, 1)
    energy_init: str = "zero"  # the energy head's weights: zero (thinking starts as the identity) | xavier (reference)
    covariate_scaling: str = "window"  # covariates standardised by the window's context | the series' whole history
    # fine-tuning the pretrained EBT: its new covariate slots learn at this x the fine-tuning rate (they start at zero)
    covariate_slot_lr: float = 30.0
    num_candidates: int = 21  # M level paths at inference (21 levels j/20 put sample quantiles on 0.05 steps)
    selection: str = "auto"  # one of SELECTIONS, or auto = the best of think.AUTO_SETTINGS on validation windows
    verify_group: int = 2  # G starts per level (proposal, seasonal naive, perturbed proposals)
    verify_noise: float = 0.5  # std of the perturbations, in half-widths of the proposal set
    val_windows: int = 64  # validation windows cut from the end of the training series
    # the pretrained EBT: per window, the median moves to seasonal naive's (or the two's average) when that scored
    # better over the window's own last K horizons (tasks/forecast/anchor.py); 0 = off
    anchor_backtests: int = 3
    loss: ForecastLossConfig = field(default_factory=ForecastLossConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)

    def ebt_fields(self) -> dict:
        """The fields the EBT itself (training and its own inference) depends on: all but `verifier`."""
        # the verifier, fine-tuning's slot rate and the pretrained model's anchoring act after the EBT
        fields = {k: v for k, v in asdict(self).items() if k not in ("verifier", "covariate_slot_lr", "anchor_backtests")}
        if fields["covariate_scaling"] == "window":  # the default is left out: keys of runs before it stay valid
            del fields["covariate_scaling"]
        return fields


@dataclass
class ForecasterConfig:
    """Everything one forecaster run needs (the Python API's config)."""

    model: TransformerConfig = field(default_factory=small_backbone)
    think: ThinkConfig = field(default_factory=forecast_think)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    task: ForecastTaskConfig = field(default_factory=ForecastTaskConfig)
    seed: int = 0

    def validate(self) -> "ForecasterConfig":
        """Raise ConfigError naming the first invalid key."""
        self.think.validate("think")
        self.trainer.validate()
        m, k = self.model, self.task
        for key, value, ok, allowed in [
            ("model.dim", m.dim, m.dim >= 1 and m.dim % max(m.heads, 1) == 0, "a positive multiple of model.heads"),
            ("model.depth", m.depth, m.depth >= 1, ">= 1"), ("model.heads", m.heads, m.heads >= 1, ">= 1"),
            ("task.context_length", k.context_length, k.context_length >= 0, ">= 0"),
            ("task.patch_len", k.patch_len, k.patch_len >= 0, ">= 0"),
            ("task.num_candidates", k.num_candidates, k.num_candidates >= 1, ">= 1"),
            ("task.loss.train_candidates", k.loss.train_candidates, k.loss.train_candidates >= 1, ">= 1"),
            ("task.loss.train_group", k.loss.train_group, k.loss.train_group >= 1, ">= 1"),
            ("task.verify_group", k.verify_group, k.verify_group >= 1, ">= 1"),
            ("task.anchor_backtests", k.anchor_backtests, k.anchor_backtests >= 0, ">= 0 (0 = off)"),
            ("task.init", k.init, k.init in INITS, f"one of {', '.join(INITS)}"),
            ("task.energy_init", k.energy_init, k.energy_init in ENERGY_INITS, f"one of {', '.join(ENERGY_INITS)}"),
            ("task.covariate_slot_lr", k.covariate_slot_lr, k.covariate_slot_lr > 0, "> 0"),
            ("task.covariate_scaling", k.covariate_scaling, k.covariate_scaling in COVARIATE_SCALINGS,
             f"one of {', '.join(COVARIATE_SCALINGS)}"),
            ("task.loss.refine_from", k.loss.refine_from, k.loss.refine_from in REFINE_FROM,
             f"one of {', '.join(REFINE_FROM)}"),
            ("task.loss.set_crps", k.loss.set_crps, k.loss.set_crps >= 0, ">= 0"),
            ("task.loss.set_energy", k.loss.set_energy, k.loss.set_energy >= 0, ">= 0"),
            ("task.verify_noise", k.verify_noise, k.verify_noise >= 0, ">= 0"),
            ("task.selection", k.selection, k.selection in (*SELECTIONS, "auto"), f"auto or one of {', '.join(SELECTIONS)}"),
            ("task.verifier.fast_sources", k.verifier.fast_sources,
             bool(k.verifier.fast_sources) and set(k.verifier.fast_sources) <= set(STATSFORECAST_MODELS),
             f"a non-empty list of {', '.join(STATSFORECAST_MODELS)}"),
            ("task.verifier.pool_windows", k.verifier.pool_windows, k.verifier.pool_windows >= 1, ">= 1"),
            ("task.verifier.steps", k.verifier.steps, k.verifier.steps >= 0, ">= 0"),
        ]:
            if not ok:
                raise ConfigError(f"{key}={value!r} is invalid: must be {allowed}")
        return self

    def window(self, horizon: int, season_length: int) -> tuple[int, int]:
        """(context length, patch length) for a data set's horizon and season."""
        k = self.task
        context = k.context_length or int(np.clip(max(4 * horizon, 2 * season_length), 32, 512))
        return context, k.patch_len or (16 if horizon >= 24 else 4)


@dataclass
class DataConfig:
    """Where the shared data sets live (the default suite needs no files)."""

    root: str = "../shared/data"
    etth1_stride: int = 48  # test origins every this many hours in ETTh1's test span


@dataclass
class BenchmarkConfig:
    """Which models a benchmark runs, and which extra thinking settings it scores for the EBT."""

    name: str = "default"
    models: list[str] = field(default_factory=lambda: [  # the demo (minutes): the pretrained EBT and its twin
        "seasonal_naive", "autoets", "autotheta", "ebt_zero_shot", "twin_zero_shot", "transformer_pp", "ebt"])
    seeds: list[int] = field(default_factory=list)  # every trained model once per seed; empty = [seed]
    datasets: list[str] = field(default_factory=list)  # only these data sets of the suite (empty: all of them)
    think_steps: list[int] = field(default_factory=lambda: [0, 1, 2, 4])  # EBT rows at these steps
    selections: list[str] = field(default_factory=lambda: ["refined", "verified"])
    candidate_counts: list[int] = field(default_factory=lambda: [1, 16])  # M level paths: the M=1 vs M=16 check
    verify_groups: list[int] = field(default_factory=lambda: [1, 2, 4])  # G starts per level for "verified"
    deepar_hidden_size: int = 40
    deepar_num_layers: int = 2
    gluonts_budget: float = 5.0  # DeepAR / PatchTST: at most this many times the EBT's optimizer steps ...
    gluonts_patience: int = 5  # ... with early stopping on a validation tail (epochs of 50 batches)
    plot_series: int = 3  # forecast fans per data set
    finetune_steps: int = 300  # ebt_finetune: steps of adapting the pretrained EBT to each data set (its covariates too)
    resume: bool = True  # reuse cells whose resolved configuration is unchanged
    compute: bool = True  # false: only summarise the cells already finished
    workers: int = 2  # cells computed at once (at most runtime.threads), each in a process of its own with
    #                   runtime.threads // workers torch threads (2 x 1 thread: the demo's trained cells 14% faster)


@dataclass
class StudyConfig:
    """`ebt-forecast study`: one trained EBT per data set, many inference settings (tasks/forecast/study.py)."""

    suite: str = "shared"  # the data sets studied unless input=PATH names a file
    steps: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16])  # fixed-steps policy (0 = the starts)
    selections: list[str] = field(default_factory=lambda: ["verified", "weighted", "resample", "average", "refined"])
    candidate_counts: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])  # M, at think.infer_steps
    groups: list[int] = field(default_factory=lambda: [1, 2, 4])  # G starts per level, at think.infer_steps
    policy_steps: int = 16  # the budget of the adaptive policies
    tolerances: list[float] = field(default_factory=lambda: [0.01, 0.001])  # energy_change: stop when |dE| < tol
    top_fractions: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5])  # think on the highest-energy windows
    verifier: bool = True  # the EBT as a verifier over AutoETS / AutoTheta / twin paths (taught, steps 0 and 1)
    fast_context: int = 336  # past points statsforecast fits per window here (the benchmark: 1000; 3-7x faster)
    ood: bool = True  # the fixed-steps sweep on another data set and on a level-shifted test split
    level_shift: float = 3.0  # the shift: this many standard deviations of each window's past
    ood_selections: list[str] = field(default_factory=lambda: ["verified"])  # add "refined" for the proposals' descent
    withheld: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5])  # selective forecasting
    worst_fraction: float = 0.2  # the windows an uncertainty signal should flag (AUROC)
    resume: bool = True  # reuse finished cells of the same configuration


PRETRAIN_MODES = ("ebt", "feedforward")
PRETRAIN_VAL_DATASETS = ("m4_hourly", "etth1", "exchange_rate")


def pretrain_data() -> PretrainDataConfig:
    """The pretraining stream of `ebt-forecast pretrain`: the shared corpus under `data.root`, mixed with
    TSMixup and KernelSynth; its max_context and max_horizon are the pretrained model's window (512, 64)."""
    return PretrainDataConfig(corpus_root="${data.root}/corpus")


@dataclass
class PretrainConfig:
    """`ebt-forecast pretrain`: one patch EBT trained on the pretraining stream (tasks/forecast/pretrain.py)."""

    mode: str = "ebt"  # ebt: proposals + refinement + verification | feedforward: the twin, System 1 head only
    patch_len: int = 16  # the model's context and horizon are data.max_context and data.max_horizon
    season_length: int = 1  # period of the seasonal-naive thinking start (1 = naive: the stream mixes frequencies)
    schedule_steps: int = 0  # length of the warm-up + cosine schedule (0 = trainer.max_steps); max_steps only says
    #                          where a call stops: a run resumes under any max_steps while the schedule stays the same
    num_workers: int = 0  # DataLoader processes drawing windows (each its own stream); 0 = in the training process
    init_from: Optional[str] = None  # start from this run folder's weights.pt (the EBT's energy on the pretrained twin)
    train: str = "all"  # all | energy: only the energy's own parameters learn (candidate and level embeddings, energy
    #                     head, step embeddings, alpha); the backbone and System 1 stay frozen, so proposals stay
    data: PretrainDataConfig = field(default_factory=pretrain_data)  # synthetic only: pretrain.data.corpus_root=null
    #   'pretrain.data.source_probs={corpus: 0, tsmixup: 0, kernelsynth: 1}' (a dict override merges: name all three)
    val_every: int = 500  # validate every this many steps, at step 0 and at the end (0 = never)
    val_datasets: list[str] = field(default_factory=lambda: list(PRETRAIN_VAL_DATASETS))  # under data.root
    val_windows: int = 128  # windows per data set, cut at seeded places of its training part
    val_seed: int = 0

    def validate(self) -> "PretrainConfig":
        """Raise ConfigError naming the first invalid key."""
        d = self.data
        for key, value, ok, allowed in [
            ("pretrain.mode", self.mode, self.mode in PRETRAIN_MODES, f"one of {', '.join(PRETRAIN_MODES)}"),
            ("pretrain.patch_len", self.patch_len, self.patch_len >= 1, ">= 1"),
            ("pretrain.season_length", self.season_length, self.season_length >= 1, ">= 1"),
            ("pretrain.schedule_steps", self.schedule_steps, self.schedule_steps >= 0, ">= 0 (0 = trainer.max_steps)"),
            ("pretrain.num_workers", self.num_workers, self.num_workers >= 0, ">= 0"),
            ("pretrain.train", self.train, self.train in ("all", "energy"), "all or energy"),
            ("pretrain.val_every", self.val_every, self.val_every >= 0, ">= 0 (0 = never)"),
            ("pretrain.val_windows", self.val_windows, self.val_windows >= 1, ">= 1"),
            ("pretrain.val_datasets", self.val_datasets, set(self.val_datasets) <= set(PRETRAIN_VAL_DATASETS),
             f"a list of {', '.join(PRETRAIN_VAL_DATASETS)}"),
        ]:
            if not ok:
                raise ConfigError(f"{key}={value!r} is invalid: must be {allowed}")
        try:
            d.validate()
        except ConfigError as err:  # the data layer names its key without the prefix: add it
            raise ConfigError(str(err).replace("pretrain data: ", "pretrain.data.", 1)) from None
        return self


@dataclass
class StreamConfig:
    """How `forecast` streams an input of any size (tasks/forecast/streaming.py): chunks of whole series, one Parquet
    part each in a resumable work folder, fanned out by `runtime.engine`."""

    chunk_points: int = 250_000  # input rows per chunk (memory ~ this, not the input); a series is never split
    fit_series: int = 128  # series of the first chunk the pretrained model's thinking is chosen on (selection=auto)
    progress: bool = True  # a bar with series per second and the time left (stderr)

    def validate(self) -> "StreamConfig":
        """Raise ConfigError naming the first invalid key."""
        for key in ("chunk_points", "fit_series"):
            if getattr(self, key) < 1:
                raise ConfigError(f"stream.{key}={getattr(self, key)!r} is invalid: must be >= 1")
        return self


@dataclass
class ForecastAppConfig(AppConfig):
    """`ebt-forecast benchmark ...`, `ebt-forecast forecast ...`, `study` and `pretrain`."""

    model: TransformerConfig = field(default_factory=small_backbone)
    think: ThinkConfig = field(default_factory=forecast_think)
    task: ForecastTaskConfig = field(default_factory=ForecastTaskConfig)
    # benchmark
    suite: str = "default"  # default (embedded statsmodels series), shared (ETTh1, M4 Hourly, exchange_rate) or one of those three
    data: DataConfig = field(default_factory=DataConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    # forecast
    input: Optional[str] = None
    horizon: int = 0
    freq: Optional[str] = None
    output: Optional[str] = None
    id_col: str = "item_id"
    time_col: str = "timestamp"
    target_col: str = "target"
    min_length: int = 0  # 0 = horizon + 1
    save: Optional[str] = None  # forecast: also save the trained predictor to this folder (GluonTS `serialize`)
    predictor: Optional[str] = None  # forecast: load a saved predictor from this folder instead of training
    pretrained: Optional[str] = "ebt_1m"  # forecast: the pretrained EBT (a packaged name or a `pretrain` run folder),
    #                                       zero-shot: no training per call; null = train an EBT from scratch on the file
    finetune: int = 0  # forecast: adapt the pretrained EBT for this many steps on the file's windows first (0 = zero-shot)
    stream: StreamConfig = field(default_factory=StreamConfig)  # forecast: chunks, resume, progress
    # forecast: covariates by role (columns of the long input), their horizon values, what-if scenarios
    past_covariates: list[str] = field(default_factory=list)  # known up to the forecast start
    future_covariates: list[str] = field(default_factory=list)  # known over the horizon too: values in future_input
    static: list[str] = field(default_factory=list)  # one value per series (numbers, or categories)
    future_input: Optional[str] = None  # item_id, timestamp and the future_covariates over the next `horizon` steps
    scenarios: Optional[str] = None  # item_id, timestamp, scenario and the future_covariates: a forecast per scenario
    targets: list[str] = field(default_factory=list)  # several target columns forecast jointly (instead of target_col)
    # pretrain
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def forecaster(self) -> ForecasterConfig:
        """The forecaster's part of the config, validated."""
        return ForecasterConfig(self.model, self.think, self.trainer, self.task, self.seed).validate()
