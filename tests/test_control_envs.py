"""Control environments match gymnasium, thermal behaves physically, logged data round-trips."""
from __future__ import annotations

import gymnasium
import numpy as np
import pandas as pd
import pytest
import torch

from ebt_forecast.errors import DataError
from ebt_forecast.tasks.control.data import (collect, held_out_starts, load_transitions, logged_dataset,
                                             save_transitions, transition_columns)
from ebt_forecast.tasks.control.envs import ENV_NAMES, MAX_POWER, STEP_HOURS, make_env
from ebt_forecast.think import ConfigError


def _gym_transitions(env_id: str, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gym's next observation and reward from each internal state (unwrapped: no checker or time limit)."""
    simulator = gymnasium.make(env_id).unwrapped
    simulator.reset(seed=0)
    nexts, rewards = [], []
    for state, action in zip(states, actions):
        simulator.state = state.copy()
        obs, reward, *_ = simulator.step(action.astype(np.float32))
        nexts.append(obs)
        rewards.append(reward)
    return np.array(nexts, dtype=np.float64), np.array(rewards, dtype=np.float64)


def test_pendulum_matches_gym():
    env, rng = make_env("pendulum"), np.random.default_rng(0)
    theta, thdot = rng.uniform(-np.pi, np.pi, 300), rng.uniform(-8, 8, 300)
    actions = rng.uniform(-3, 3, (300, 1)).astype(np.float32).astype(np.float64)  # beyond bounds: clipping too
    nexts, rewards = _gym_transitions("Pendulum-v1", np.stack([theta, thdot], -1), actions)
    state = torch.tensor(np.stack([np.cos(theta), np.sin(theta), thdot], -1))
    action, none = torch.tensor(actions), torch.zeros(300, 0, dtype=torch.float64)
    np.testing.assert_allclose(env.step(state, action, none).numpy(), nexts, atol=1e-5)
    np.testing.assert_allclose(env.cost(state, action, none).numpy(), -rewards, atol=1e-5)


def test_mountain_car_matches_gym_and_goal_absorbs():
    env, rng = make_env("mountain_car"), np.random.default_rng(1)
    states = np.stack([rng.uniform(-1.2, 0.6, 300), rng.uniform(-0.07, 0.07, 300)], -1)
    states[:20] = [-1.19, -0.05]  # hits the left wall: position clipped, velocity zeroed
    states = states[~((states[:, 0] >= 0.45) & (states[:, 1] >= 0))]  # gym has ended at a goal state
    actions = rng.uniform(-1.5, 1.5, (len(states), 1)).astype(np.float32).astype(np.float64)
    nexts, rewards = _gym_transitions("MountainCarContinuous-v0", states, actions)
    state, action = torch.tensor(states), torch.tensor(actions)
    none = torch.zeros(len(states), 0, dtype=torch.float64)
    np.testing.assert_allclose(env.step(state, action, none).numpy(), nexts, atol=1e-5)
    np.testing.assert_allclose(env.cost(state, action, none).numpy(), -rewards, atol=1e-5)
    goal = torch.tensor([[0.5, 0.01]], dtype=torch.float64)
    assert torch.equal(env.step(goal, torch.ones(1, 1, dtype=torch.float64), none[:1]), goal)
    assert env.cost(goal, torch.ones(1, 1, dtype=torch.float64), none[:1]).item() == 0.0


@pytest.mark.parametrize("name, env_id", [("pendulum", "Pendulum-v1"), ("mountain_car", "MountainCarContinuous-v0")])
def test_reset_states_follow_gyms_reset_stream(name, env_id):
    simulator = gymnasium.make(env_id)
    observations = [simulator.reset(seed=7)[0]] + [simulator.reset()[0] for _ in range(49)]
    np.testing.assert_allclose(make_env(name).reset_states(50, seed=7), np.array(observations), atol=1e-6)
    assert not np.allclose(held_out_starts(make_env(name), 50, seed=7), np.array(observations))


def test_pendulum_step_is_differentiable_and_success_reads_the_tail():
    env = make_env("pendulum")
    state = torch.tensor([[np.cos(2.0), np.sin(2.0), 1.0]], dtype=torch.float64, requires_grad=True)
    action = torch.tensor([[0.5]], dtype=torch.float64, requires_grad=True)
    env.cost(env.step(state, action, torch.zeros(1, 0)), action, None).sum().backward()
    assert action.grad.abs().item() > 0 and state.grad.abs().sum().item() > 0
    upright = np.tile([1.0, 0.0, 0.0], (200, 1))
    fallen = upright.copy()
    fallen[-10] = [-1.0, 0.0, 0.0]
    assert env.success(upright) is True and env.success(fallen) is False
    assert env.success(np.stack([upright, fallen])).tolist() == [True, False]


def test_thermal_heating_energy_cost_and_covariates():
    env = make_env("thermal")
    t = torch.tensor([0, 48, 96])
    cov = env.covariates(t, 4, torch.float64)
    assert cov.shape == (3, 4, len(env.covariate_names))
    assert torch.equal(cov, env.covariates(t, 4, torch.float64))  # deterministic
    assert torch.equal(cov[0], cov[2])  # one day repeats
    noon = cov[1, 0]  # 12:00, occupied band 20-23
    assert noon[2:4].tolist() == [20.0, 23.0]
    state = torch.tensor([21.0], dtype=torch.float64)
    heat, off = torch.tensor([MAX_POWER], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    assert env.step(state, heat, noon) > env.step(state, off, noon)
    assert env.step(state, off, noon) < state  # 21 °C room, colder outside: it cools
    assert env.cost(state, heat, noon).item() == pytest.approx(noon[1].item() * MAX_POWER * STEP_HOURS)
    assert env.cost(state, off, noon).item() == 0.0
    assert make_env("pendulum").covariates(t, 5).shape == (3, 5, 0)


def test_violation_and_penalty_zero_inside_positive_outside():
    pendulum, car, thermal = make_env("pendulum"), make_env("mountain_car"), make_env("thermal")
    speeds = torch.tensor([[1.0, 0.0, 5.0], [1.0, 0.0, -7.0]])
    assert pendulum.violation(speeds).tolist() == [False, True]
    assert pendulum.constraint_penalty(speeds).tolist() == [0.0, 1.0]
    assert not car.violation(torch.rand(4, 2)).any() and (car.constraint_penalty(torch.rand(4, 2)) == 0).all()
    cov = thermal.covariates(torch.tensor([48, 48, 8]), 1)[:, 0]  # noon, noon, 02:00 (band 17-24)
    temps = torch.tensor([[21.0], [18.0], [18.0]])
    assert thermal.violation(temps, cov).tolist() == [False, True, False]
    assert thermal.constraint_penalty(temps, cov).tolist() == [0.0, 4.0, 0.0]
    assert thermal.success(np.full((96, 1), 21.0)) is True
    with pytest.raises(ValueError, match="covariate"):
        thermal.violation(temps)


def test_make_env_names_the_unknown_env():
    assert [make_env(name).name for name in ENV_NAMES] == list(ENV_NAMES)
    with pytest.raises(ConfigError, match="'nope'.*pendulum, mountain_car, thermal"):
        make_env("nope")


@pytest.mark.parametrize("name, transitions", [("pendulum", 450), ("mountain_car", 700), ("thermal", 250)])
def test_collect_is_reproducible_exact_and_in_bounds(name, transitions):
    env = make_env(name)
    frame = collect(env, transitions, seed=3)
    assert len(frame) == transitions and list(frame.columns) == transition_columns(env)
    pd.testing.assert_frame_equal(frame, collect(env, transitions, seed=3))
    assert not frame.equals(collect(env, transitions, seed=4))
    assert set(frame["policy"]) == {"random", "behaviour"}
    for column, low, high in zip(env.action_names, env.action_low, env.action_high):
        assert frame[column].between(low, high).all()
    # consecutive rows of an episode chain: next state = the following row's state
    same = frame["episode"].to_numpy()[1:] == frame["episode"].to_numpy()[:-1]
    nxt = frame[[f"next_{s}" for s in env.state_names]].to_numpy()[:-1][same]
    np.testing.assert_allclose(nxt, frame[list(env.state_names)].to_numpy()[1:][same])


def test_pendulum_behaviour_swings_up():
    frame = collect(make_env("pendulum"), 2000, seed=0)  # 10 episodes, 5 of each policy
    returns = frame.groupby(["policy", "episode"])["cost"].sum().groupby("policy").mean()
    assert returns["behaviour"] * 2 < returns["random"]


def test_save_load_round_trip_and_logged_dataset(tmp_path):
    env = make_env("thermal")
    frame = collect(env, 200, seed=0)
    save_transitions(frame, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(load_transitions(tmp_path / "t.parquet", env), frame)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temp file left behind
    first = logged_dataset(env, tmp_path / "logs", 200, seed=0)
    assert (tmp_path / "logs" / "thermal_200_0.parquet").exists()
    pd.testing.assert_frame_equal(logged_dataset(env, tmp_path / "logs", 200, seed=0), first)


def test_load_errors_name_the_file_and_column(tmp_path):
    env = make_env("pendulum")
    frame = collect(env, 100, seed=0)
    with pytest.raises(DataError, match="absent.parquet"):
        load_transitions(tmp_path / "absent.parquet", env)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="junk.parquet"):
        load_transitions(tmp_path / "junk.parquet", env)
    save_transitions(frame.drop(columns="next_theta_dot"), tmp_path / "missing.parquet")
    with pytest.raises(DataError, match="missing.parquet.*next_theta_dot"):
        load_transitions(tmp_path / "missing.parquet", env)
    bad = frame.copy()
    bad.loc[37, "torque"] = np.nan
    save_transitions(bad, tmp_path / "nan.parquet")
    with pytest.raises(DataError, match=r"nan.parquet.*'torque'.*episode 0, t 37"):
        load_transitions(tmp_path / "nan.parquet", env)
    bad.loc[37, "torque"] = 2.5
    save_transitions(bad, tmp_path / "bounds.parquet")
    with pytest.raises(DataError, match=r"'torque'.*2.5"):
        load_transitions(tmp_path / "bounds.parquet", env)
