"""Logged transitions for training world models: collect, save, load with validation.

One row per transition, columns (see `transition_columns`):

    episode, t, policy ('random' | 'behaviour'), <state>, <action>, <covariate>, next_<state>, cost, violation

`cost` is minus the simulator's reward for the step; `violation` is `env.violation` of the row's
state (before the step, like the cost). Episodes alternate between uniform random actions and a
noisy behaviour controller (`behaviour_fraction` of them, by count). Pendulum and mountain car
step the real gymnasium environment; thermal steps `envs.py`'s dynamics.

Seeds: gym resets draw from `env.reset(seed=seed)` then plain resets, which is the stream
`env.reset_states(n, seed)` reproduces (thermal draws its starts from that too); actions and
noise draw from `default_rng([seed, 1])`. `held_out_starts` uses `seed + 10_000`, a different
stream, so evaluation starts are not collection starts.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ebt_forecast.errors import DataError
from ebt_forecast.tasks.control.envs import BAND_OCCUPIED, ControlEnv

META_COLUMNS = ("episode", "t", "policy")
HELD_OUT_SEED_OFFSET = 10_000
THERMOSTAT_SETPOINT = BAND_OCCUPIED[0] + 0.5  # °C


def transition_columns(env: ControlEnv) -> list[str]:
    """Every column of a transition frame for `env`, in order."""
    return [*META_COLUMNS, *env.state_names, *env.action_names, *env.covariate_names,
            *next_names(env), "cost", "violation"]


def next_names(env: ControlEnv) -> list[str]:
    """The next-state column names, `next_<state>`."""
    return [f"next_{name}" for name in env.state_names]


def _numeric_columns(env: ControlEnv) -> list[str]:
    return [*env.state_names, *env.action_names, *env.covariate_names, *next_names(env), "cost"]


# ---------------------------------------------------------------------------------------------
def behaviour_action(env: ControlEnv, state: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    """A noiseless hand-written controller, (n, S), (n, C) -> (n, A) inside the action bounds."""
    if env.name == "pendulum":
        theta, thdot = np.arctan2(state[:, 1], state[:, 0]), state[:, 2]
        # θdd = a·sinθ + b·u, so E = θdot²/2 + a·cosθ grows at rate b·u·θdot; upright at rest is E = a
        a = 3 * env.g / (2 * env.length)
        energy = 0.5 * thdot ** 2 + a * np.cos(theta)
        swing = 0.5 * (a - energy) * np.where(thdot >= 0, 1.0, -1.0)
        stabilise = -(10.0 * theta + 2.0 * thdot)  # PD on the linearisation, stable for gains > a/b
        u = np.where(np.cos(theta) > 0.9, stabilise, swing)
    elif env.name == "mountain_car":
        u = np.where(state[:, 1] >= 0, 1.0, -1.0)  # pump: push along the velocity
    elif env.name == "thermal":
        # a fixed-setpoint thermostat 0.5 °C above the day band's floor, so the night never leaves
        # the room too cold for 07:00 (heating only below the band in force fails every morning)
        u = np.where(state[:, 0] < THERMOSTAT_SETPOINT, env.action_high[0], 0.0)
    else:
        raise ValueError(f"no behaviour controller for env {env.name!r}")
    return np.clip(u[:, None], env.action_low, env.action_high)


def _actions(env: ControlEnv, behaviour: np.ndarray, state: np.ndarray, covariate: np.ndarray,
             rng: np.random.Generator, noise: float) -> np.ndarray:
    """Actions (n, A): uniform random rows, or behaviour + N(0, (noise·half-range)^2), clipped."""
    low, high = np.asarray(env.action_low), np.asarray(env.action_high)
    random = rng.uniform(low, high, size=(len(state), len(low)))
    noisy = behaviour_action(env, state, covariate) + rng.normal(size=random.shape) * noise * (high - low) / 2
    return np.clip(np.where(behaviour[:, None], noisy, random), low, high)


def _is_behaviour(episodes: np.ndarray, fraction: float) -> np.ndarray:
    # spreads the behaviour episodes evenly: episode i is behaviour when floor((i+1)f) > floor(i f)
    return np.floor((episodes + 1) * fraction) > np.floor(episodes * fraction)


def _collect_gym(env: ControlEnv, transitions: int, seed: int, fraction: float, noise: float) -> dict[str, np.ndarray]:
    import gymnasium  # only the gym environments need it

    simulator = gymnasium.make(env.gym_id, max_episode_steps=env.episode_steps)
    rng = np.random.default_rng([seed, 1])
    states = np.empty((transitions, len(env.state_names)))
    actions = np.empty((transitions, len(env.action_names)))
    nexts, costs = np.empty_like(states), np.empty(transitions)
    episode, steps = np.empty(transitions, dtype=np.int64), np.empty(transitions, dtype=np.int64)
    no_covariate = np.empty((1, 0))
    obs, _ = simulator.reset(seed=seed)
    i, ep = 0, 0
    while i < transitions:
        behaviour = _is_behaviour(np.array([ep]), fraction)
        for t in range(env.episode_steps):
            action = _actions(env, behaviour, obs[None].astype(np.float64), no_covariate, rng, noise)[0]
            action = action.astype(np.float32)  # what gym receives; stored exactly
            nxt, reward, terminated, truncated, _ = simulator.step(action)
            states[i], actions[i], nexts[i], costs[i] = obs, action, nxt, -reward
            episode[i], steps[i] = ep, t
            i += 1
            obs = nxt
            if terminated or truncated or i == transitions:
                break
        ep += 1
        obs, _ = simulator.reset()
    simulator.close()
    return {"episode": episode, "t": steps, "state": states, "action": actions,
            "covariate": np.empty((transitions, 0)), "next": nexts, "cost": costs}


def _collect_model(env: ControlEnv, transitions: int, seed: int, fraction: float, noise: float) -> dict[str, np.ndarray]:
    """All episodes in one batch through envs.py's dynamics (start at t = 0), cut to `transitions`."""
    n_episodes, steps = math.ceil(transitions / env.episode_steps), env.episode_steps
    rng = np.random.default_rng([seed, 1])
    behaviour = _is_behaviour(np.arange(n_episodes), fraction)
    state = env.reset_states(n_episodes, seed)
    covariates = env.covariates(torch.zeros(n_episodes, dtype=torch.long), steps, torch.float64).numpy()  # (E, T, C)
    trace = {key: [] for key in ("state", "action", "next", "cost")}
    for t in range(steps):
        action = _actions(env, behaviour, state, covariates[:, t], rng, noise)
        s, a, c = (torch.from_numpy(x) for x in (state, action, covariates[:, t]))
        nxt = env.step(s, a, c).numpy()
        for key, value in zip(trace, (state, action, nxt, env.cost(s, a, c).numpy())):
            trace[key].append(value)
        state = nxt
    # (T, E, ...) -> episode-major rows, then cut
    flat = {key: np.swapaxes(np.stack(value), 0, 1).reshape(n_episodes * steps, -1)[:transitions]
            for key, value in trace.items()}
    return {"episode": np.repeat(np.arange(n_episodes), steps)[:transitions],
            "t": np.tile(np.arange(steps), n_episodes)[:transitions],
            "state": flat["state"], "action": flat["action"], "next": flat["next"], "cost": flat["cost"][:, 0],
            "covariate": covariates.reshape(n_episodes * steps, -1)[:transitions]}


def collect(env: ControlEnv, transitions: int, seed: int, behaviour_fraction: float = 0.5,
            behaviour_noise: float = 0.2) -> pd.DataFrame:
    """Exactly `transitions` logged transitions; behaviour_noise is the action noise std as a fraction of half the action range."""
    if transitions < 1:
        raise ValueError(f"transitions={transitions} must be >= 1")
    collector = _collect_gym if env.gym_id is not None else _collect_model
    parts = collector(env, transitions, seed, behaviour_fraction, behaviour_noise)
    frame = pd.DataFrame({"episode": parts["episode"], "t": parts["t"],
                          "policy": np.where(_is_behaviour(parts["episode"], behaviour_fraction), "behaviour", "random")})
    for names, key in ((env.state_names, "state"), (env.action_names, "action"),
                       (env.covariate_names, "covariate"), (next_names(env), "next")):
        for j, name in enumerate(names):
            frame[name] = parts[key][:, j].astype(np.float64)
    frame["cost"] = parts["cost"].astype(np.float64)
    covariate = torch.from_numpy(parts["covariate"]) if env.covariate_names else None
    frame["violation"] = env.violation(torch.from_numpy(parts["state"]), covariate).numpy()
    return frame


# ---------------------------------------------------------------------------------------------
def save_transitions(frame: pd.DataFrame, path: str | Path) -> None:
    """Write the frame as Parquet atomically (temp file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_transitions(path: str | Path, env: ControlEnv) -> pd.DataFrame:
    """Read a transition file and check it: columns present, values finite, actions inside the bounds."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: transition file not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({error})") from error
    missing = [name for name in transition_columns(env) if name not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} for env {env.name!r}")
    for name in _numeric_columns(env):
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = frame.iloc[int(np.argmax(bad))]
            raise DataError(f"{path}: column {name!r} has a NaN / inf / non-numeric value "
                            f"(first at episode {row['episode']}, t {row['t']})")
    for name, low, high in zip(env.action_names, env.action_low, env.action_high):
        values = frame[name].to_numpy(dtype=np.float64)
        outside = (values < low) | (values > high)
        if outside.any():
            raise DataError(f"{path}: column {name!r} has value {values[outside][0]} outside [{low}, {high}]")
    return frame


def logged_dataset(env: ControlEnv, root: str | Path, transitions: int, seed: int) -> pd.DataFrame:
    """root/<env>_<transitions>_<seed>.parquet, loaded with validation if present, else collected and saved."""
    path = Path(root) / f"{env.name}_{transitions}_{seed}.parquet"
    if path.exists():
        return load_transitions(path, env)
    frame = collect(env, transitions, seed)
    save_transitions(frame, path)
    return frame


def held_out_starts(env: ControlEnv, n: int, seed: int) -> np.ndarray:
    """(n, S) evaluation start states from the stream seed + 10_000, apart from collection's."""
    return env.reset_states(n, seed + HELD_OUT_SEED_OFFSET)
