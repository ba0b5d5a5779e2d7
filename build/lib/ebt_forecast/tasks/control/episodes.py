"""Closed-loop evaluation: B episodes in parallel in the true (batched, gym-exact) simulator, one planner each.

A controller is called once per control step with the current states (B, S), the history the world
model reads, and the known covariates of the next H steps; it returns a `Plan` whose first action is
executed (receding horizon) and keeps its own warm start for the next step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from ebt_forecast.tasks.control.envs import ControlEnv
from ebt_forecast.tasks.control.planners import Plan


@dataclass
class History:
    """What the world model reads: the last K + 1 states (B, K + 1, S), K actions and K covariates."""

    states: Tensor
    actions: Tensor
    covariates: Tensor

    @classmethod
    def start(cls, states: Tensor, covariate: Tensor, context_steps: int, action_dim: int) -> "History":
        """Padded as training windows are at an episode's start: the first state repeated, zero actions."""
        b = states.shape[0]
        return cls(states.unsqueeze(1).expand(b, context_steps + 1, -1).clone(),
                   torch.zeros(b, context_steps, action_dim), covariate.unsqueeze(1).expand(b, context_steps, -1).clone())

    def push(self, action: Tensor, covariate: Tensor, next_state: Tensor) -> "History":
        """The history one step later."""
        cat = lambda t, x: torch.cat([t[:, 1:], x.unsqueeze(1)], dim=1) if t.shape[1] else t  # noqa: E731
        return History(torch.cat([self.states[:, 1:], next_state.unsqueeze(1)], dim=1), cat(self.actions, action),
                       cat(self.covariates, covariate))


class Controller(Protocol):
    def __call__(self, states: Tensor, history: History, covariates: Tensor) -> Plan: ...


@dataclass
class EpisodeLog:
    """Per episode: return, the share of steps that broke the constraint, success; per step: evaluations."""

    returns: np.ndarray  # (B,)
    violation_rate: np.ndarray  # (B,) fraction of steps in violation
    success: np.ndarray  # (B,) bool
    energy: np.ndarray  # (B,) mean world-model energy of the executed plans (NaN without a world model)
    evaluations: float  # model evaluations per control step per episode
    seconds: float


def run_episodes(env: ControlEnv, controller: Controller, starts: np.ndarray, steps: int, horizon: int,
                 context_steps: int, energy_of: Callable[[Plan], Tensor] | None = None) -> EpisodeLog:
    """Run every start for `steps` control steps with `controller`."""
    t0 = time.perf_counter()
    s = torch.as_tensor(starts, dtype=torch.float32)
    b = len(s)
    covariates = env.covariates(torch.zeros(b, dtype=torch.long), horizon)
    history = History.start(s, covariates[:, 0], context_steps, len(env.action_names))
    total, violations, energies, evaluations, visited = torch.zeros(b), torch.zeros(b), [], 0.0, [s]
    for t in range(steps):
        covariates = env.covariates(torch.full((b,), t, dtype=torch.long), horizon)
        plan = controller(s, history, covariates)
        if energy_of is not None:
            energies.append(energy_of(plan))
        action, cov = plan.actions[:, 0].detach(), covariates[:, 0]
        with torch.no_grad():
            total += env.cost(s, action, cov)
            violations += env.violation(s, cov).float()
            s_next = env.step(s, action, cov)
        history = history.push(action, cov, s_next)
        s = s_next
        evaluations += plan.evaluations
        visited.append(s)
    success = np.asarray(env.success(torch.stack(visited[:-1], dim=1).numpy()), dtype=bool).reshape(b)
    energy = torch.stack(energies, 1).mean(1).numpy() if energies else np.full(b, np.nan)
    return EpisodeLog(-total.numpy(), (violations / steps).numpy(), success, energy, evaluations / steps,
                      time.perf_counter() - t0)
