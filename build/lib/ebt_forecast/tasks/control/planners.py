"""Planners over future actions: energy descent on the thinking engine, and the sampling baselines.

Contract. At one control step a planning problem for B episodes is an objective over flat plans:

    objective(actions (R, H, A) env units, rows (R,) episode of each plan) -> (R,) cost to minimise

Three objectives: the true simulator's rollout cost, a learned ensemble's (PETS-style), and the
world-model EBT's (task cost of System 1's predicted states plus `energy_weight` x the energy).
The energy planner descends the objective over unsquashed actions u (a = low + (high - low) *
(tanh(u) + 1) / 2, so every plan is inside the bounds) with `think.think`, unchanged, from several
starts (the warm start and random ones), with uphill rejection, and keeps the lowest plan per
episode (self-verification). Random shooting, CEM and MPPI sample plans, clipped to the bounds.
Each returns the plans (B, H, A) and the evaluations spent per episode (a forward or a backward
pass of one plan counts one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ebt_forecast.think import StepSize, ThinkConfig, select_lowest_energy, think

Objective = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Plan:
    """What a planner chose for B episodes."""

    actions: Tensor  # (B, H, A) env units
    evaluations: float  # model evaluations per episode
    cost: Tensor  # (B,) the objective of the chosen plan
    warm: Tensor  # (B, H, A) the planner's own parameters of the chosen plan (u for descent, actions otherwise)


def squash(u: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Unbounded u -> actions inside [low, high]."""
    return low + (high - low) * (torch.tanh(u) + 1) / 2


def unsquash(actions: Tensor, low: Tensor, high: Tensor, eps: float = 1e-4) -> Tensor:
    """Actions inside [low, high] -> u."""
    return torch.atanh((2 * (actions - low) / (high - low) - 1).clamp(-1 + eps, 1 - eps))


def shift(plan: Tensor, fill: Tensor) -> Tensor:
    """A receding-horizon warm start: drop the executed step, repeat `fill` (B, A) at the end."""
    return torch.cat([plan[:, 1:], fill.unsqueeze(1)], dim=1)


def evaluate_plans(objective: Objective, actions: Tensor) -> Tensor:
    """The objective of (B, N, H, A) plans as a (B, N) table."""
    b, n = actions.shape[:2]
    rows = torch.arange(b, device=actions.device).repeat_interleave(n)
    return objective(actions.reshape(b * n, *actions.shape[2:]), rows).view(b, n)


def energy_descent(objective: Objective, low: Tensor, high: Tensor, warm_u: Tensor, *, starts: int, steps: int,
                   alpha: float, max_update: float, init_std: float, generator: torch.Generator | None = None) -> Plan:
    """The EBT planner: descend the objective over u from the warm start and `starts - 1` random starts
    (think's loop, first order, uphill rejection), keep each episode's lowest-objective plan."""
    b, h, a = warm_u.shape
    random_u = init_std * torch.randn((b, starts - 1, h, a), generator=generator)
    init = torch.cat([warm_u.unsqueeze(1), random_u], dim=1)  # (B, M, H, A)

    def energy_fn(u: Tensor, index: Tensor | None) -> Tensor:
        rows = (torch.arange(len(u)) if index is None else index) // starts
        return objective(squash(u, low, high), rows)

    cfg = ThinkConfig(infer_steps=steps, alpha=alpha, learn_alpha=False, max_update=max_update, reject_uphill=True)
    result = think(energy_fn, init, cfg, StepSize(alpha, learnable=False), training=False, steps=steps)
    best_u = select_lowest_energy(result.candidates, result.energies)
    record = result.record
    cost = result.energies.nan_to_num(float("inf")).min(dim=1).values
    return Plan(squash(best_u, low, high), (record.forward_passes + record.backward_passes) / b, cost, best_u)


def budget_to_descent(budget: int) -> tuple[int, int]:
    """(starts, steps) whose passes starts * (2 * steps + 1) come nearest a budget of evaluations."""
    table = {10: (2, 2), 30: (3, 4), 100: (6, 8), 300: (10, 15), 1000: (20, 25)}
    if budget in table:
        return table[budget]
    starts = max(1, round((budget / 5) ** 0.5))
    return starts, max(0, round((budget / starts - 1) / 2))


def budget_to_samples(budget: int, iterations: int) -> tuple[int, int]:
    """(samples, iterations) for a sampling planner that spend the budget exactly where they can: the most
    iterations (at most `iterations`) that divide it with at least 2 samples each."""
    for it in range(max(1, iterations), 0, -1):
        if budget % it == 0 and budget // it >= 2:
            return budget // it, it
    samples = max(2, budget // max(1, iterations))
    return samples, max(1, budget // samples)


def random_shooting(objective: Objective, low: Tensor, high: Tensor, warm: Tensor, *, samples: int,
                    generator: torch.Generator | None = None) -> Plan:
    """The best of `samples` uniform random plans per episode."""
    b, h, a = warm.shape
    plans = low + (high - low) * torch.rand((b, samples, h, a), generator=generator)
    costs = evaluate_plans(objective, plans)
    best = costs.argmin(1)
    chosen = plans[torch.arange(b), best]
    return Plan(chosen, float(samples), costs.min(1).values, chosen)


def cem(objective: Objective, low: Tensor, high: Tensor, warm: Tensor, *, samples: int, iterations: int,
        elite_fraction: float = 0.1, generator: torch.Generator | None = None) -> Plan:
    """Cross-entropy method: Gaussian around the warm start, refit to the elites each iteration; the elites'
    mean after the last iteration is the plan (the best sample seen if it scores lower)."""
    b, h, a = warm.shape
    mean, std = warm.clone(), ((high - low) / 2).expand(b, h, a).clone()
    elites = max(1, round(elite_fraction * samples))
    best_plan, best_cost = warm.clone(), torch.full((b,), float("inf"))
    for _ in range(iterations):
        plans = (mean.unsqueeze(1) + std.unsqueeze(1) * torch.randn((b, samples, h, a), generator=generator))
        plans = torch.maximum(torch.minimum(plans, high), low)
        costs = evaluate_plans(objective, plans)
        order = costs.argsort(1)[:, :elites]
        top = plans[torch.arange(b)[:, None], order]  # (B, elites, H, A)
        mean, std = top.mean(1), top.std(1, unbiased=False) + 1e-3
        lowest = costs.gather(1, order[:, :1]).squeeze(1)
        better = lowest < best_cost
        best_plan = torch.where(better[:, None, None], top[:, 0], best_plan)
        best_cost = torch.minimum(best_cost, lowest)
    return Plan(best_plan, float(samples * iterations), best_cost, mean)


def mppi(objective: Objective, low: Tensor, high: Tensor, warm: Tensor, *, samples: int, iterations: int,
         noise_std: float = 0.5, temperature: float = 0.1, generator: torch.Generator | None = None) -> Plan:
    """Model-predictive path integral: perturb the warm start, average with weights softmax(-cost / lambda),
    lambda = temperature x the cost spread of the iteration (so it is scale-free); the last mean is the plan."""
    b, h, a = warm.shape
    mean = warm.clone()
    std = noise_std * (high - low) / 2
    cost = torch.zeros(b)
    for _ in range(iterations):
        plans = mean.unsqueeze(1) + std * torch.randn((b, samples, h, a), generator=generator)
        plans = torch.maximum(torch.minimum(plans, high), low)
        costs = evaluate_plans(objective, plans)
        spread = (costs.max(1, keepdim=True).values - costs.min(1, keepdim=True).values).clamp_min(1e-6)
        weights = torch.softmax(-(costs - costs.min(1, keepdim=True).values) / (temperature * spread), dim=1)
        mean = (weights[..., None, None] * plans).sum(1)
        cost = (weights * costs).sum(1)
    return Plan(mean, float(samples * iterations), cost, mean)
