"""The modality-free System 2 engine: thinking loop, candidate sets, replay, stopping policies."""
from ebt_forecast.think.candidates import (
    energy_weighted_resample,
    energy_weights,
    select_lowest_energy,
    select_lowest_fraction,
)
from ebt_forecast.think.config import STOP_POLICIES, ConfigError, ThinkConfig
from ebt_forecast.think.engine import (
    EnergyChangeStop,
    EnergyThresholdStop,
    StopPolicy,
    ThinkRecord,
    ThinkResult,
    draw_train_steps,
    make_stop_policy,
    think,
)
from ebt_forecast.think.replay import ReplayBuffer
from ebt_forecast.think.step_size import StepSize

__all__ = [
    "STOP_POLICIES", "ConfigError", "EnergyChangeStop", "EnergyThresholdStop", "ReplayBuffer", "StepSize",
    "StopPolicy", "ThinkConfig", "ThinkRecord", "ThinkResult", "draw_train_steps", "energy_weighted_resample",
    "energy_weights", "make_stop_policy", "select_lowest_energy", "select_lowest_fraction", "think",
]
