"""The control task's configuration: its node in Hydra's `task` group and the `control` command's fields.

`ebt-forecast control env=pendulum` reads `env`, `task` (the world model and its planner) and
`control` (data, evaluation and baselines). Defaults live here once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import AppConfig, TrainerConfig
from ebt_forecast.errors import ConfigError
from ebt_forecast.think import ThinkConfig

PLANNERS = ("ebt", "ebt_no_energy", "ebt_cem", "ensemble_rs", "ensemble_cem", "ensemble_mppi",
            "true_rs", "true_cem", "true_mppi", "zero", "random")


def control_backbone() -> TransformerConfig:
    """A ~25k-parameter Transformer++ energy (dim 32, depth 2, 2 heads): planning evaluates it thousands of
    times per control step."""
    return TransformerConfig(dim=32, depth=2, heads=2, ffn_multiplier=2.0)


def control_think() -> ThinkConfig:
    """Thinking over future states while training: 2 steps drawn from [1, 2], alpha randomised x/÷2."""
    return ThinkConfig(train_steps=2, train_steps_min=1, infer_steps=2, alpha=0.5, alpha_random_scale=2.0)


def control_trainer() -> TrainerConfig:
    """The world model's budget: 1,000 AdamW steps of 64 windows."""
    return TrainerConfig(max_steps=1000, batch_size=64, lr=2e-3, warmup_steps=50)


@dataclass
class PlannerConfig:
    """Energy-minimising planning over future actions (tasks/control/planners.py::EnergyPlanner)."""

    starts: int = 6  # plans refined in parallel per control step: the warm start and random ones
    steps: int = 8  # gradient steps of the engine on each plan
    alpha: float = 1.0  # step size on the unsquashed actions (halved per plan on an uphill step)
    max_update: float = 0.5  # clamp of each step, in unsquashed action units
    energy_weight: float = 1.0  # weight of the world model's energy beside the task cost
    constraint_weight: float = 10.0  # weight of the safety penalty
    init_std: float = 1.0  # random starts: unsquashed actions ~ N(0, init_std)


@dataclass
class ControlTaskConfig:
    """The world-model EBT: window sizes and the weights of its training losses."""

    context_steps: int = 2  # past (state, action) steps the model reads before the current state
    horizon: int = 15  # planned steps (0.75 s on the pendulum; true-simulator CEM scores as well as at 25)
    start_noise: float = 0.3  # training: a second start per window, the proposal + N(0, noise) (normalised units)
    refine_weight: float = 1.0  # weight of the refined states' loss beside the proposal's
    planner: PlannerConfig = field(default_factory=PlannerConfig)

    def validate(self) -> "ControlTaskConfig":
        """Raise ConfigError naming the first invalid key."""
        p = self.planner
        for key, value, ok, allowed in [("horizon", self.horizon, self.horizon >= 1, ">= 1"),
                                        ("context_steps", self.context_steps, self.context_steps >= 0, ">= 0"),
                                        ("start_noise", self.start_noise, self.start_noise >= 0, ">= 0"),
                                        ("planner.starts", p.starts, p.starts >= 1, ">= 1"),
                                        ("planner.steps", p.steps, p.steps >= 0, ">= 0"),
                                        ("planner.alpha", p.alpha, p.alpha > 0, "> 0")]:
            if not ok:
                raise ConfigError(f"task.{key}={value!r} is invalid: must be {allowed}")
        return self


@dataclass
class ControlRunConfig:
    """Data, evaluation and baselines of `ebt-forecast control`."""

    data: Optional[str] = None  # a logged-transitions Parquet file; None = collect (or reuse) under output_dir/data
    transitions: int = 30000  # logged transitions collected per environment
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # world models (EBT and ensemble) trained per seed
    eval_starts: int = 50  # held-out start states per seed
    planners: list[str] = field(default_factory=lambda: ["ebt", "ebt_no_energy", "ebt_cem", "ensemble_cem",
                                                          "ensemble_mppi", "ensemble_rs", "true_cem", "true_mppi",
                                                          "true_rs", "zero", "random"])
    budget: int = 100  # model evaluations per control step in the main table
    budgets: list[int] = field(default_factory=lambda: [10, 30, 100, 300, 1000])  # the evaluations sweep
    budget_planners: list[str] = field(default_factory=lambda: ["ebt", "ebt_cem", "ensemble_cem", "ensemble_mppi",
                                                                 "true_cem"])
    budget_starts: int = 10  # held-out starts (seed 0 only) in the sweep
    cem_iterations: int = 4  # CEM / MPPI iterations per control step (samples = budget / iterations)
    ensemble_members: int = 5
    ensemble_hidden: int = 200
    ensemble_steps: int = 3000
    action_low: Optional[list[float]] = None  # override the environment's action bounds (checked)
    action_high: Optional[list[float]] = None
    episode_steps: int = 0  # 0 = the environment's own length
    validation_starts: int = 10  # held-out starts (disjoint from test) where the energy weight is chosen
    energy_weights: list[float] = field(default_factory=lambda: [0.0, 1.0, 3.0])  # chosen on validation starts


@dataclass
class ControlAppConfig(AppConfig):
    """Root schema of the `control` command."""

    env: str = "pendulum"
    model: TransformerConfig = field(default_factory=control_backbone)
    think: ThinkConfig = field(default_factory=control_think)
    trainer: TrainerConfig = field(default_factory=control_trainer)
    task: ControlTaskConfig = field(default_factory=ControlTaskConfig)
    control: ControlRunConfig = field(default_factory=ControlRunConfig)
