"""The control task: energy gradients, bounded planners, LQR recovery, the world model's training, the CLI."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

from ebt_forecast.cli import main
from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import TrainerConfig, fit_module
from ebt_forecast.tasks.control.config import ControlTaskConfig, control_think
from ebt_forecast.tasks.control.data import collect, save_transitions
from ebt_forecast.tasks.control.envs import ControlEnv, make_env
from ebt_forecast.tasks.control.model import WorldShape
from ebt_forecast.tasks.control.module import ControlModule, WindowDataset
from ebt_forecast.tasks.control.objectives import SimulatorObjective, WorldModelObjective
from ebt_forecast.tasks.control.planners import cem, energy_descent, mppi, random_shooting
from ebt_forecast.tasks.control.run import split_episodes, world_stats

TINY = TransformerConfig(dim=32, depth=1, heads=2, ffn_multiplier=2.0)


def tiny_world(env: ControlEnv, frame: pd.DataFrame, horizon: int = 6) -> ControlModule:
    shape = WorldShape(len(env.state_names), len(env.action_names), len(env.covariate_names), 2, horizon)
    torch.manual_seed(0)
    return ControlModule(TINY, control_think(), TrainerConfig(), ControlTaskConfig(horizon=horizon), shape,
                         world_stats(frame, env))


@pytest.fixture(scope="module")
def pendulum_frame() -> pd.DataFrame:
    return collect(make_env("pendulum"), 2000, seed=0)


def test_energy_gradient_with_respect_to_actions_matches_finite_differences(pendulum_frame):
    env = make_env("pendulum")
    world = tiny_world(env, pendulum_frame).double()
    b, h = 2, 6
    states = torch.tensor(env.reset_states(b, 3), dtype=torch.float64)
    context = world.model.encode(states.unsqueeze(1).repeat(1, 3, 1), torch.zeros(b, 2, 1, dtype=torch.float64),
                                 torch.zeros(b, 2, 0, dtype=torch.float64))
    objective = WorldModelObjective(env, world.model, context, states, torch.zeros(b, h, 0, dtype=torch.float64),
                                    constraint_weight=1.0, energy_weight=1.0)
    actions = (torch.rand(b, h, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 - 1.5)
    actions.requires_grad_(True)
    rows = torch.arange(b)
    value = objective(actions, rows)
    (grad,) = torch.autograd.grad(value.sum(), actions)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    _, energy = objective.parts(actions, rows, True)
    (energy_grad,) = torch.autograd.grad(energy.sum(), actions)
    assert energy_grad.abs().max() > 0  # the energy itself depends on the actions
    eps = 1e-6
    numeric = torch.zeros_like(actions)
    for i in range(h):
        bump = torch.zeros_like(actions)
        bump[:, i, 0] = eps
        numeric[:, i, 0] = (objective(actions + bump, rows) - objective(actions - bump, rows)).detach() / (2 * eps)
    assert torch.allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_every_planner_returns_plans_inside_the_action_bounds():
    env = make_env("pendulum")
    low, high = (t.float() for t in env.action_bounds)
    states = torch.tensor(env.reset_states(4, 0), dtype=torch.float32)
    objective = SimulatorObjective(env, states, torch.zeros(4, 10, 0), constraint_weight=10.0)
    warm = torch.full((4, 10, 1), 1.9)
    g = torch.Generator().manual_seed(0)
    plans = [energy_descent(objective, low, high, torch.full((4, 10, 1), 5.0), starts=3, steps=4, alpha=5.0,
                            max_update=2.0, init_std=3.0, generator=g),
             cem(objective, low, high, warm, samples=20, iterations=3, generator=g),
             mppi(objective, low, high, warm, samples=20, iterations=3, noise_std=3.0, generator=g),
             random_shooting(objective, low, high, warm, samples=20, generator=g)]
    for plan in plans:
        assert (plan.actions >= low).all() and (plan.actions <= high).all()
        assert plan.actions.abs().max() > 0.5  # not trivially at the centre


@dataclass(frozen=True)
class LinearEnv(ControlEnv):
    """x' = A x + B u, cost x'Qx + u'Ru (no terminal cost), wide action bounds."""

    name: str = "linear"
    state_names: tuple = ("x1", "x2")
    action_names: tuple = ("u",)
    covariate_names: tuple = ()
    action_low: tuple = (-20.0,)
    action_high: tuple = (20.0,)
    episode_steps: int = 10

    A = torch.tensor([[1.0, 0.1], [0.0, 1.0]], dtype=torch.float64)
    B = torch.tensor([[0.005], [0.1]], dtype=torch.float64)
    Q = torch.diag(torch.tensor([1.0, 0.1], dtype=torch.float64))
    R = torch.tensor([[0.01]], dtype=torch.float64)

    def step(self, state: Tensor, action: Tensor, covariate: Tensor | None = None) -> Tensor:
        return state @ self.A.T + action @ self.B.T

    def cost(self, state: Tensor, action: Tensor, covariate: Tensor | None = None) -> Tensor:
        return ((state @ self.Q) * state).sum(-1) + ((action @ self.R) * action).sum(-1)

    def constraint_penalty(self, state: Tensor, covariate: Tensor | None = None) -> Tensor:
        return torch.zeros(state.shape[:-1], dtype=state.dtype)


def lqr_first_action(env: LinearEnv, x0: Tensor, horizon: int) -> Tensor:
    """Finite-horizon LQR by the backward Riccati recursion (P_H = 0): u_0 = -K_0 x_0."""
    p = torch.zeros(2, 2, dtype=torch.float64)
    for _ in range(horizon):
        k = torch.linalg.solve(env.R + env.B.T @ p @ env.B, env.B.T @ p @ env.A)
        p = env.Q + env.A.T @ p @ (env.A - env.B @ k)
    return -(x0 @ k.T)


def test_energy_minimising_planning_recovers_the_lqr_action():
    env = LinearEnv()
    horizon = 15
    x0 = torch.tensor([[1.0, 0.0], [-0.5, 1.0], [0.3, -2.0]], dtype=torch.float64)
    objective = SimulatorObjective(env, x0, torch.zeros(3, horizon, 0, dtype=torch.float64), constraint_weight=0.0)
    low, high = (t.double() for t in env.action_bounds)
    plan = energy_descent(objective, low, high, torch.zeros(3, horizon, 1, dtype=torch.float64), starts=2, steps=1500,
                          alpha=0.05, max_update=0.05, init_std=0.1, generator=torch.Generator().manual_seed(0))
    expected = lqr_first_action(env, x0, horizon)
    assert expected.abs().max() > 1.0  # a real action, well inside the bounds
    assert torch.allclose(plan.actions[:, 0], expected, atol=0.05), (plan.actions[:, 0], expected)


def test_world_model_training_lowers_the_prediction_error_and_thinking_lowers_the_energy(pendulum_frame):
    env = make_env("pendulum")
    train_frame, episodes, _ = split_episodes(pendulum_frame, env)
    world = tiny_world(env, train_frame)
    data = WindowDataset(episodes, 2, 6, 60 * 32, seed=0)
    batch = {k: torch.stack([data[i][k] for i in range(64)]) for k in data[0]}

    def proposal_error() -> float:
        with torch.no_grad():
            z = world.model.propose(world.encode(batch), batch["future_actions"], batch["future_covariates"])
            return float((z - world.model.normalise_states(batch["future_states"])).pow(2).mean())

    before = proposal_error()
    fit_module(world, data, TrainerConfig(max_steps=60, batch_size=32, warmup_steps=5, progress_bar=False), seed=0)
    assert proposal_error() < 0.5 * before
    thought = world.infer(batch, num_candidates=1, group=2, steps=3, selection="refined", final_energy=True)
    energies = thought.record.energies  # (T + 1, B, M)
    assert energies[-1].mean() < energies[0].mean()


def tiny_control_args(out, eval_starts: int, episode_steps: int, energy_weights: str) -> list[str]:
    """A pendulum `control` run small enough for a test, writing under `out`."""
    return ["control", "env=pendulum", "runtime.threads=1", f"runtime.output_dir={out}",
            "control.transitions=1200", "trainer.max_steps=10", "trainer.progress_bar=false",
            "control.ensemble_steps=10", f"control.eval_starts={eval_starts}", "control.validation_starts=2",
            f"control.episode_steps={episode_steps}", "control.budget=30", "control.budgets=[10]",
            "control.budget_starts=2", "control.seeds=[0]", f"control.energy_weights={energy_weights}",
            "task.horizon=5", "model.dim=32", "model.depth=1", "control.ensemble_hidden=32"]


def test_control_cli_runs_and_resumes(tmp_path, capsys):
    args = tiny_control_args(tmp_path, eval_starts=3, episode_steps=8, energy_weights="[0.0,1.0]")
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "pendulum" / "control.csv")
    assert set(table["planner"]) >= {"ebt", "ebt_no_energy", "ebt_cem", "ensemble_cem", "ensemble_mppi", "true_cem"}
    assert (table["evaluations_per_step"][table["planner"] == "ensemble_cem"] == 30).all()
    assert (tmp_path / "pendulum" / "plots" / "return_vs_evaluations.png").exists()
    assert main(args) == 0  # every cell and model is reused
    assert pd.read_csv(tmp_path / "pendulum" / "control.csv").equals(table)


@pytest.mark.parametrize("override, message", [
    ("env=acrobot", "env='acrobot' is unknown"),
    ("task.horizon=0", "task.horizon=0 is invalid"),
    ("control.action_low=[3.0]", "empty or inverted"),
    ("control.action_high=[-3.0]", "empty or inverted"),
])
def test_control_cli_rejects_bad_settings(tmp_path, capsys, override, message):
    assert main(["control", override, f"runtime.output_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_control_cli_rejects_bad_logged_data(tmp_path, capsys, pendulum_frame):
    broken = pendulum_frame.drop(columns=["next_theta_dot"])
    missing = sorted(set(pendulum_frame.columns) - set(broken.columns))[0]
    save_transitions(broken, tmp_path / "broken.parquet")
    nan = pendulum_frame.copy()
    nan.loc[5, "torque"] = np.nan
    save_transitions(nan, tmp_path / "nan.parquet")
    out = tmp_path / "out"
    assert main(["control", f"control.data={tmp_path / 'broken.parquet'}", f"runtime.output_dir={out}"]) == 2
    assert missing in capsys.readouterr().err
    assert main(["control", f"control.data={tmp_path / 'nan.parquet'}", f"runtime.output_dir={out}"]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not out.exists()


def test_failure_auroc_is_sklearns_roc_auc_and_one_for_a_perfect_signal():
    """The AUROC the control report gives for energy as a failure signal (metrics.auroc, as control.run calls it):
    sklearn's roc_auc_score on known signals, ties included; 1.0 when every failure has a higher energy than every
    success, 0.0 reversed, NaN when there is no failure to flag."""
    from sklearn.metrics import roc_auc_score

    from ebt_forecast.tasks.control import run as control_run

    auroc = control_run.auroc
    rng = np.random.default_rng(0)
    for n in (5, 12, 40):
        failed = rng.random(n) < 0.4
        failed[:2] = [True, False]
        energy = rng.normal(size=n) + failed
        energy[-4:] = energy[0]  # ties
        assert auroc(energy, failed) == pytest.approx(roc_auc_score(failed, energy), abs=1e-12)
    failed = np.array([False, True, False, True, True])
    energy = np.array([0.1, 2.0, -1.0, 0.5, 0.3])
    assert auroc(energy, failed) == 1.0 and auroc(-energy, failed) == 0.0
    assert auroc(np.array([1.0, 1.0, 1.0]), np.array([True, False, False])) == 0.5
    assert np.isnan(auroc(energy, np.zeros(5, dtype=bool)))


def test_the_control_report_gives_the_auroc_of_the_test_episodes_energies(tmp_path, monkeypatch):
    """The control command's failure AUROC, per EBT planner, is the AUROC of the executed plans' energies for the
    failed test episodes: the episodes here are given known energies and outcomes (from their start state), and the
    report says sklearn's roc_auc_score of them; 1.000 for the planner whose energy separates them perfectly,
    0.000 reversed."""
    import re

    from sklearn.metrics import roc_auc_score

    from ebt_forecast.tasks.control import run as control_run

    def known(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (energy, failed) of episodes from these starts
        theta = starts[:, 0]
        return np.cos(3 * theta) + theta, np.sin(5 * theta) > 0

    real = control_run.run_episodes

    def episodes_with_known_outcomes(env, controller, starts, *args, **kwargs):
        log = real(env, controller, starts, *args, **kwargs)
        if controller.kind not in ("ebt", "ebt_no_energy", "ebt_cem"):
            return log
        energy, failed = known(np.asarray(starts))
        if controller.kind != "ebt":  # a perfect signal (ebt_cem), and the reversed one (ebt_no_energy)
            energy = (failed.astype(float) if controller.kind == "ebt_cem" else -failed.astype(float)) + 0.01 * energy
        return dataclasses.replace(log, success=~failed, energy=energy)

    monkeypatch.setattr(control_run, "run_episodes", episodes_with_known_outcomes)
    args = tiny_control_args(tmp_path, eval_starts=10, episode_steps=4, energy_weights="[1.0]")
    assert main(args) == 0
    energy, failed = known(control_run.held_out_starts(make_env("pendulum"), 10, control_run.TEST_SEED))
    assert 0 < failed.sum() < len(failed)
    text = (tmp_path / "pendulum" / "control.md").read_text()
    reported = {k: float(v) for k, v in re.findall(r"(ebt\w*) (\d\.\d{3})", text.split("## Energy as a failure signal")[1])}
    assert reported["ebt"] == pytest.approx(roc_auc_score(failed, energy), abs=5e-4)
    assert reported["ebt_cem"] == 1.0 and reported["ebt_no_energy"] == 0.0
