"""What a plan costs under a model: the true simulator, the learned ensemble, the world-model EBT.

Every objective is built for one control step of B episodes and called on flat plans:

    objective(actions (R, H, A) env units, rows (R,) the episode of each plan) -> (R,)

cost = sum over the horizon of the environment's step cost at the state before each action, plus
`constraint_weight` x the safety penalty of every predicted state. The world-model objective adds
`energy_weight` x the EBT's energy of (actions, predicted states): plans whose future the model
finds implausible cost more. Each counts the plan rollouts it evaluates.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ebt_forecast.tasks.control.ensemble import EnsembleDynamics
from ebt_forecast.tasks.control.envs import ControlEnv
from ebt_forecast.tasks.control.model import WorldContext, WorldModelEBT


def trajectory_cost(env: ControlEnv, current: Tensor, future: Tensor, actions: Tensor, covariates: Tensor,
                    constraint_weight: float) -> Tensor:
    """(R,) cost of actions (R, H, A) from states current (R, S) through future (R, H, S)."""
    before = torch.cat([current.unsqueeze(1), future[:, :-1]], dim=1)
    step_cost = env.cost(before, actions, covariates).sum(1)
    penalty = env.constraint_penalty(future, covariates).sum(1)
    return step_cost + constraint_weight * penalty


class SimulatorObjective:
    """The true simulator's rollout cost (the upper bound)."""

    def __init__(self, env: ControlEnv, states: Tensor, covariates: Tensor, constraint_weight: float):
        self.env, self.states, self.covariates, self.constraint_weight = env, states, covariates, constraint_weight

    def rollout(self, actions: Tensor, rows: Tensor) -> Tensor:
        """Future states (R, H, S)."""
        s, cov, out = self.states[rows], self.covariates[rows], []
        for h in range(actions.shape[1]):
            s = self.env.step(s, actions[:, h], cov[:, h])
            out.append(s)
        return torch.stack(out, dim=1)

    def __call__(self, actions: Tensor, rows: Tensor) -> Tensor:
        future = self.rollout(actions, rows)
        return trajectory_cost(self.env, self.states[rows], future, actions, self.covariates[rows], self.constraint_weight)


class EnsembleObjective(SimulatorObjective):
    """A learned ensemble's rollout cost; plan r is rolled out by member r mod E (one particle per plan)."""

    def __init__(self, env: ControlEnv, ensemble: EnsembleDynamics, states: Tensor, covariates: Tensor,
                 constraint_weight: float):
        super().__init__(env, states, covariates, constraint_weight)
        self.ensemble = ensemble

    def rollout(self, actions: Tensor, rows: Tensor) -> Tensor:
        e = self.ensemble.members
        r = len(rows)
        per = -(-r // e)
        pad = per * e - r
        take = lambda t: torch.cat([t, t[:1].expand(pad, *t.shape[1:])]).view(per, e, *t.shape[1:]).transpose(0, 1)  # noqa: E731
        s, a, cov = take(self.states[rows]), take(actions), take(self.covariates[rows])  # (E, per, ...)
        out = []
        with torch.no_grad():
            for h in range(actions.shape[1]):
                s = self.ensemble.step(s, a[:, :, h], cov[:, :, h])
                out.append(s)
        future = torch.stack(out, dim=2)  # (E, per, H, S)
        return future.transpose(0, 1).reshape(per * e, *future.shape[2:])[:r]


class WorldModelObjective:
    """Task cost of System 1's predicted states, plus energy_weight x the EBT's energy of that future."""

    def __init__(self, env: ControlEnv, model: WorldModelEBT, context: WorldContext, states: Tensor,
                 covariates: Tensor, constraint_weight: float, energy_weight: float):
        self.env, self.model, self.context = env, model, context
        self.states, self.covariates = states, covariates
        self.constraint_weight, self.energy_weight = constraint_weight, energy_weight

    def parts(self, actions: Tensor, rows: Tensor, with_energy: bool) -> tuple[Tensor, Tensor]:
        """(task cost (R,), energy (R,); zeros unless `with_energy`) of flat plans."""
        context = WorldContext([(k[rows], v[rows]) for k, v in self.context.cache], self.context.current[rows])
        cov = self.covariates[rows]
        z = self.model.propose(context, actions, cov)
        future = self.model.denormalise_states(z)
        cost = trajectory_cost(self.env, self.states[rows], future, actions, cov, self.constraint_weight)
        if not with_energy:
            return cost, torch.zeros_like(cost)
        return cost, self.model.energy(context.cache, actions, cov, z)

    def __call__(self, actions: Tensor, rows: Tensor) -> Tensor:
        cost, energy = self.parts(actions, rows, self.energy_weight != 0)
        return cost + self.energy_weight * energy
