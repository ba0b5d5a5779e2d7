"""The modality-free System 2 engine: thinking loop, candidate sets and selection, verification
loss, replay, stopping policies, validation-chosen inference settings and implicit-gradient training."""
from ebt_forecast.think.auto import AUTO_SETTINGS, InferenceSetting, choose_on_validation
from ebt_forecast.think.candidates import (
    ENERGY_FREE,
    SELECTIONS,
    energy_weighted_resample,
    energy_weights,
    select_candidates,
    select_lowest_energy,
    select_lowest_fraction,
    sets_without_finite_energy,
)
from ebt_forecast.think.config import GRADIENTS, STOP_POLICIES, ConfigError, ThinkConfig, check_settings
from ebt_forecast.think.engine import (
    EnergyChangeStop,
    EnergyFn,
    EnergyThresholdStop,
    InferencePolicy,
    StopPolicy,
    ThinkRecord,
    ThinkResult,
    Transform,
    draw_train_steps,
    fixed_steps_passes,
    make_stop_policy,
    think,
)
from ebt_forecast.think.implicit import attach_implicit_gradient, damped_cg
from ebt_forecast.think.losses import listwise_ranking_loss
from ebt_forecast.think.pipeline import Starts, Thought, think_and_select
from ebt_forecast.think.replay import ReplayBuffer, mix_replay
from ebt_forecast.think.step_size import StepSize

__all__ = [
    "AUTO_SETTINGS", "ENERGY_FREE", "GRADIENTS", "SELECTIONS", "STOP_POLICIES", "ConfigError", "check_settings", "EnergyChangeStop", "EnergyFn",
    "EnergyThresholdStop", "InferencePolicy", "InferenceSetting", "ReplayBuffer", "Starts", "StepSize", "StopPolicy", "ThinkConfig",
    "ThinkRecord", "ThinkResult", "Thought", "Transform", "attach_implicit_gradient", "choose_on_validation", "damped_cg", "draw_train_steps", "energy_weighted_resample", "fixed_steps_passes",
    "energy_weights", "listwise_ranking_loss", "make_stop_policy", "mix_replay", "select_candidates",
    "select_lowest_energy", "select_lowest_fraction", "sets_without_finite_energy", "think", "think_and_select",
]
