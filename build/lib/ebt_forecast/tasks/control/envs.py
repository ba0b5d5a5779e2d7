"""Three control environments with batched, differentiable torch dynamics.

Planners roll these out as the "true simulator" and they define the task cost, so for the two
gymnasium environments they reproduce gym's `step` exactly (tests compare to 1e-5). Contract,
with any leading batch shape `...`:

    step(state (..., S), action (..., A), covariate (..., C)) -> next state (..., S)
    cost(state, action, covariate)            -> (...,)  minus the simulator's reward for the step
    violation(state, covariate=None)          -> (...,)  bool, the safety constraint is broken
    constraint_penalty(state, covariate=None) -> (...,)  >= 0 squared hinge, 0 inside the constraint
    covariates(t (n,), horizon, dtype=None)   -> (n, horizon, C) known future inputs for t..t+horizon-1
    reset_states(n, seed)                     -> (n, S) numpy start states
    success(states (T, S) or (N, T, S))       -> bool or (N,) bool for whole episodes

Only thermal has covariates (C = 6, time-dependent); the gym environments have C = 0 and ignore
the covariate argument. Thermal's comfort band depends on the hour, so its violation and
penalty need the covariate; the gym environments accept and ignore it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ebt_forecast.errors import ConfigError

ENV_NAMES = ("pendulum", "mountain_car", "thermal")


@dataclass(frozen=True)
class ControlEnv:
    """What every environment declares; subclasses implement the dynamics."""

    name: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    covariate_names: tuple[str, ...]  # known future exogenous inputs, () for the gym environments
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    episode_steps: int
    gym_id: str | None = None  # the gymnasium id whose dynamics these are, None for our own

    def step(self, state: Tensor, action: Tensor, covariate: Tensor) -> Tensor:
        """Next state (..., S) after applying `action` in `state`."""
        raise NotImplementedError

    def cost(self, state: Tensor, action: Tensor, covariate: Tensor) -> Tensor:
        """Minus the simulator's reward for taking `action` in `state`, shape (...,)."""
        raise NotImplementedError

    def violation(self, state: Tensor, covariate: Tensor | None = None) -> Tensor:
        """True where the safety constraint is broken, shape (...,)."""
        raise NotImplementedError

    def constraint_penalty(self, state: Tensor, covariate: Tensor | None = None) -> Tensor:
        """Smooth (squared hinge) amount by which the constraint is broken, 0 inside, shape (...,)."""
        raise NotImplementedError

    def covariates(self, t: Tensor, horizon: int, dtype: torch.dtype | None = None) -> Tensor:
        """Known covariates (n, horizon, C) for steps t..t+horizon-1 of each time index in t (n,)."""
        return torch.zeros(t.shape[0], horizon, 0, dtype=dtype, device=t.device)

    def reset_states(self, n: int, seed: int) -> np.ndarray:
        """(n, S) start states drawn as the simulator's reset draws them."""
        raise NotImplementedError

    def success(self, states: np.ndarray) -> bool | np.ndarray:
        """Whether an episode of states (T, S), or each of (N, T, S), succeeded."""
        raise NotImplementedError

    @property
    def action_bounds(self) -> tuple[Tensor, Tensor]:
        """(low, high) as float64 tensors of shape (A,)."""
        return (torch.tensor(self.action_low, dtype=torch.float64),
                torch.tensor(self.action_high, dtype=torch.float64))


def angle_normalize(x: Tensor) -> Tensor:
    """Angle wrapped into [-pi, pi), as gym's pendulum does it."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def _as_bool(flags: np.ndarray) -> bool | np.ndarray:
    return bool(flags) if flags.ndim == 0 else flags


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pendulum(ControlEnv):
    """gymnasium Pendulum-v1 on the observed state (cos θ, sin θ, θdot); θ = 0 is upright.

    Safety constraint: |θdot| <= 6. Success: upright within 0.2 rad for each of the last 50 steps.
    """

    name: str = "pendulum"
    state_names: tuple[str, ...] = ("cos_theta", "sin_theta", "theta_dot")
    action_names: tuple[str, ...] = ("torque",)
    covariate_names: tuple[str, ...] = ()
    action_low: tuple[float, ...] = (-2.0,)
    action_high: tuple[float, ...] = (2.0,)
    episode_steps: int = 200
    gym_id: str | None = "Pendulum-v1"
    g: float = 10.0
    m: float = 1.0
    length: float = 1.0
    dt: float = 0.05
    max_speed: float = 8.0
    speed_limit: float = 6.0  # the safety constraint on |θdot|
    success_steps: int = 50
    success_angle: float = 0.2

    def _split(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        theta = torch.atan2(state[..., 1], state[..., 0])
        u = action[..., 0].clamp(self.action_low[0], self.action_high[0])
        return theta, state[..., 2], u

    def step(self, state: Tensor, action: Tensor, covariate: Tensor | None = None) -> Tensor:
        theta, thdot, u = self._split(state, action)
        accel = 3 * self.g / (2 * self.length) * torch.sin(theta) + 3.0 / (self.m * self.length ** 2) * u
        thdot = (thdot + accel * self.dt).clamp(-self.max_speed, self.max_speed)
        theta = theta + thdot * self.dt
        return torch.stack([torch.cos(theta), torch.sin(theta), thdot], dim=-1)

    def cost(self, state: Tensor, action: Tensor, covariate: Tensor | None = None) -> Tensor:
        theta, thdot, u = self._split(state, action)
        return angle_normalize(theta) ** 2 + 0.1 * thdot ** 2 + 0.001 * u ** 2

    def violation(self, state: Tensor, covariate: Tensor | None = None) -> Tensor:
        return state[..., 2].abs() > self.speed_limit

    def constraint_penalty(self, state: Tensor, covariate: Tensor | None = None) -> Tensor:
        return torch.relu(state[..., 2].abs() - self.speed_limit) ** 2

    def reset_states(self, n: int, seed: int) -> np.ndarray:
        # gym draws uniform([-pi, -1], [pi, 1]) from default_rng(seed): row i equals the i-th reset
        # after env.reset(seed=seed) (float64 here, float32 in gym's observation)
        theta, thdot = np.random.default_rng(seed).uniform([-np.pi, -1.0], [np.pi, 1.0], size=(n, 2)).T
        return np.stack([np.cos(theta), np.sin(theta), thdot], axis=-1)

    def success(self, states: np.ndarray) -> bool | np.ndarray:
        states = np.asarray(states)
        if states.shape[-2] < self.success_steps:
            return _as_bool(np.zeros(states.shape[:-2], dtype=bool))
        tail = states[..., -self.success_steps:, :]
        theta = np.arctan2(tail[..., 1], tail[..., 0])
        return _as_bool(np.all(np.abs(theta) < self.success_angle, axis=-1))


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MountainCar(ControlEnv):
    """gymnasium MountainCarContinuous-v0: state (position, velocity), force in [-1, 1].

    Gym ends the episode at the goal (position >= 0.45 and velocity >= 0). Batched rollouts cannot
    stop, so here the goal is absorbing: from a goal state the state stays put and the step costs 0.
    The step cost is 0.1 a^2 with the *unclipped* action (as gym's reward) minus 100 when the step
    reaches the goal. Episodes are 300 steps (gym's limit is 999; a pumping controller needs ~120).
    No safety constraint is natural (|velocity| <= 0.07 always holds), so violation is always False
    and the penalty 0.
    """

    name: str = "mountain_car"
    state_names: tuple[str, ...] = ("position", "velocity")
    action_names: tuple[str, ...] = ("force",)
    covariate_names: tuple[str, ...] = ()
    action_low: tuple[float, ...] = (-1.0,)
    action_high: tuple[float, ...] = (1.0,)
    episode_steps: int = 300
    gym_id: str | None = "MountainCarContinuous-v0"
    power: float = 0.0015
    max_speed: float = 0.07
    min_position: float = -1.2
    max_position: float = 0.6
    goal_position: float = 0.45
    goal_velocity: float = 0.0

    def at_goal(self, state: Tensor) -> Tensor:
        """True where the state is a goal state (gym's termination condition)."""
        return (state[..., 0] >= self.goal_position) & (state[..., 1] >= self.goal_velocity)

    def _gym_step(self, state: Tensor, action: Tensor) -> Tensor:
        position, velocity = state[..., 0], state[..., 1]
        force = action[..., 0].clamp(self.action_low[0], self.action_high[0])
        velocity = (velocity + force * self.power - 0.0025 * torch.cos(3 * position)).clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position <= self.min_position) & (velocity < 0), torch.zeros_like(velocity), velocity)
        return torch.stack([position, velocity], dim=-1)

    def step(self, state: Tensor, action: Tensor, covariate: Tensor | None = None) -> Tensor:
        return torch.where(self.at_goal(state)[..., None], state, self._gym_step(state, action))

    def cost(self, state: Tensor, action: Tensor, covariate: Tensor | None = None) -> Tensor:
        reached = self.at_goal(self._gym_step(state, action))
        cost = 0.1 * action[..., 0] ** 2 - 100.0 * reached.to(action.dtype)
        return torch.where(self.at_goal(state), torch.zeros_like(cost), cost)

    def violation(self, state: Tensor, covariate: Tensor | None = None) -> Tensor:
        return torch.zeros(state.shape[:-1], dtype=torch.bool, device=state.device)

    def constraint_penalty(self, state: Tensor, covariate: Tensor | None = None) -> Tensor:
        return torch.zeros(state.shape[:-1], dtype=state.dtype, device=state.device)

    def reset_states(self, n: int, seed: int) -> np.ndarray:
        # gym draws position ~ U[-0.6, -0.4] from default_rng(seed), velocity 0: row i equals the
        # i-th reset after env.reset(seed=seed)
        position = np.random.default_rng(seed).uniform(-0.6, -0.4, size=n)
        return np.stack([position, np.zeros(n)], axis=-1)

    def success(self, states: np.ndarray) -> bool | np.ndarray:
        states = np.asarray(states)
        reached = (states[..., 0] >= self.goal_position) & (states[..., 1] >= self.goal_velocity)
        return _as_bool(np.any(reached, axis=-1))


# ---------------------------------------------------------------------------------------------
STEP_HOURS = 0.25  # 15-minute steps
STEPS_PER_DAY = 96
CAPACITANCE = 3.0  # kWh/°C, room air and furnishings
RESISTANCE = 6.0  # °C/kW, envelope to outside (time constant R·C = 18 h)
EFFICIENCY = 1.0  # resistive electric heater
MAX_POWER = 5.0  # kW
T_OUT_MEAN, T_OUT_AMPLITUDE, T_OUT_MIN_HOUR = 5.0, 5.0, 5.0  # °C, °C, coldest at 05:00
PRICE_BASE = 0.12  # €/kWh
PRICE_PEAKS = ((8.0, 1.5, 0.18), (19.0, 2.0, 0.28))  # (hour, width h, height €/kWh): morning, evening
OCCUPIED_HOURS = (7.0, 22.0)  # [start, end)
BAND_OCCUPIED = (20.0, 23.0)  # °C
BAND_EMPTY = (17.0, 24.0)  # °C
COMFORT_WEIGHT = 1.0  # € per (°C outside the band)^2 per step
START_TEMPERATURE = (17.0, 22.0)  # °C, uniform at hour 0 (inside the night band, so success is reachable)


def thermal_covariates(t: np.ndarray) -> np.ndarray:
    """(..., 6) covariates at integer step indices t (t = 0 is midnight; the day repeats)."""
    hour = (np.asarray(t) % STEPS_PER_DAY) * STEP_HOURS
    t_out = T_OUT_MEAN - T_OUT_AMPLITUDE * np.cos(2 * np.pi * (hour - T_OUT_MIN_HOUR) / 24)
    price = np.full_like(hour, PRICE_BASE, dtype=np.float64)
    for centre, width, height in PRICE_PEAKS:
        distance = (hour - centre + 12) % 24 - 12  # circular, in hours
        price = price + height * np.exp(-0.5 * (distance / width) ** 2)
    occupied = (hour >= OCCUPIED_HOURS[0]) & (hour < OCCUPIED_HOURS[1])
    low = np.where(occupied, BAND_OCCUPIED[0], BAND_EMPTY[0])
    high = np.where(occupied, BAND_OCCUPIED[1], BAND_EMPTY[1])
    angle = 2 * np.pi * hour / 24
    return np.stack([t_out, price, low, high, np.sin(angle), np.cos(angle)], axis=-1)


@dataclass(frozen=True)
class Thermal(ControlEnv):
    """One heated room, a first-order RC model (equations and constants in data_cards/control_thermal.md).

        T' = T + dt/C * ((T_out - T)/R + η·P),   P clipped to [0, P_max]
        cost = price·P·dt + w·(distance of T outside the comfort band)^2

    Covariates (t_out, price, comfort_low, comfort_high, hour_sin, hour_cos) are deterministic in
    the step index. Violation: T outside the band in force at that step. Episodes start at midnight.
    """

    name: str = "thermal"
    state_names: tuple[str, ...] = ("temperature",)
    action_names: tuple[str, ...] = ("power",)
    covariate_names: tuple[str, ...] = ("t_out", "price", "comfort_low", "comfort_high", "hour_sin", "hour_cos")
    action_low: tuple[float, ...] = (0.0,)
    action_high: tuple[float, ...] = (MAX_POWER,)
    episode_steps: int = STEPS_PER_DAY

    def _power(self, action: Tensor) -> Tensor:
        return action[..., 0].clamp(self.action_low[0], self.action_high[0])

    def step(self, state: Tensor, action: Tensor, covariate: Tensor) -> Tensor:
        temperature, t_out = state[..., 0], covariate[..., 0]
        flow = (t_out - temperature) / RESISTANCE + EFFICIENCY * self._power(action)  # kW
        return (temperature + STEP_HOURS / CAPACITANCE * flow)[..., None]

    def cost(self, state: Tensor, action: Tensor, covariate: Tensor) -> Tensor:
        energy = covariate[..., 1] * self._power(action) * STEP_HOURS
        return energy + COMFORT_WEIGHT * self.constraint_penalty(state, covariate)

    def _outside(self, state: Tensor, covariate: Tensor | None) -> tuple[Tensor, Tensor]:
        if covariate is None:
            raise ValueError("thermal: violation and penalty need the covariate (the comfort band depends on the hour)")
        temperature = state[..., 0]
        return covariate[..., 2] - temperature, temperature - covariate[..., 3]

    def violation(self, state: Tensor, covariate: Tensor | None = None) -> Tensor:
        below, above = self._outside(state, covariate)
        return (below > 0) | (above > 0)

    def constraint_penalty(self, state: Tensor, covariate: Tensor | None = None) -> Tensor:
        below, above = self._outside(state, covariate)
        return torch.relu(below) ** 2 + torch.relu(above) ** 2

    def covariates(self, t: Tensor, horizon: int, dtype: torch.dtype | None = None) -> Tensor:
        steps = t.detach().cpu().numpy().astype(np.int64)[:, None] + np.arange(horizon)
        return torch.as_tensor(thermal_covariates(steps), dtype=dtype or torch.get_default_dtype(), device=t.device)

    def reset_states(self, n: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).uniform(*START_TEMPERATURE, size=(n, 1))

    def success(self, states: np.ndarray) -> bool | np.ndarray:
        # states[..., k, :] is the temperature at step k of an episode started at midnight
        states = np.asarray(states)
        band = thermal_covariates(np.arange(states.shape[-2]))
        inside = (states[..., 0] >= band[:, 2]) & (states[..., 0] <= band[:, 3])
        return _as_bool(np.all(inside, axis=-1))


_ENVS = {"pendulum": Pendulum, "mountain_car": MountainCar, "thermal": Thermal}


def make_env(name: str) -> ControlEnv:
    """The environment called `name` (one of ENV_NAMES)."""
    if name not in _ENVS:
        raise ConfigError(f"env={name!r} is unknown: must be one of {', '.join(ENV_NAMES)}")
    return _ENVS[name]()
