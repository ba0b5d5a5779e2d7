"""Starts -> think -> select: the System 2 procedure every task runs at inference.

A task supplies `Starts` for a batch: M System 1 proposals (B, M, *event), G thinking starts per
proposal (B, M, G, *event; start 0 is the proposal's own path) and the energy over the flat set of
B x (M * G) starts (the engine's `energy_fn(x, index)` contract, rows in (B, M * G) order). The
pipeline refines every start, then turns the set into samples with a selection strategy
(`select_candidates`). `Thought` carries the samples and everything thinking did.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ebt_forecast.think.candidates import select_candidates
from ebt_forecast.think.config import ThinkConfig
from ebt_forecast.think.engine import EnergyFn, ThinkRecord, think
from ebt_forecast.think.step_size import StepSize


@dataclass
class Starts:
    """What a task proposes for one batch."""

    proposals: Tensor  # (B, M, *event) System 1 proposals
    starts: Tensor  # (B, M, G, *event) thinking starts per proposal; [:, :, 0] is the proposal's own path
    energy_fn: EnergyFn  # energies of the flat (B, M * G) starts, proposal-major


@dataclass
class Thought:
    """The samples a selection made, and what thinking did to get there."""

    samples: Tensor  # (B, S, *event)
    proposals: Tensor  # (B, M, *event)
    grouped: Tensor  # (B, M, G, *event) every start's final candidate
    energies: Tensor  # (B, M, G) their final energies (NaN when no energy was read)
    path: Tensor  # (B, T + 1, M, *event) each proposal's own start after every step
    path_energies: Tensor  # (B, T + 1, M) its energy at every step
    record: ThinkRecord | None  # None when no energy was evaluated


def think_and_select(
    starts: Starts, cfg: ThinkConfig, step_size: StepSize, *, steps: int, selection: str,
    generator: torch.Generator | None = None, temperature: float | None = None,
) -> Thought:
    """Refine every start for `steps` (inference: first order, cfg's stopping policy), then select
    (`temperature` for weighted / resample; default cfg.temperature).

    With `cfg.enabled=False`, or the energy-free `proposal` selection at step 0, no energy is read:
    the proposals are the samples and no pass is spent.
    """
    proposals, grouped = starts.proposals.detach(), starts.starts.detach()
    b, m, g = grouped.shape[:3]
    event = grouped.shape[3:]
    if not cfg.enabled or (steps == 0 and selection == "proposal"):
        nan = torch.full((b, m, g), float("nan"))
        return Thought(proposals, proposals, grouped, nan, proposals.unsqueeze(1), nan[:, None, :, 0], None)
    result = think(starts.energy_fn, grouped.reshape(b, m * g, *event), cfg, step_size, training=False, steps=steps,
                   keep_trajectory=True, generator=generator)
    record = result.record
    final = result.candidates.detach().view(b, m, g, *event)
    energies = result.energies.detach().view(b, m, g)
    samples = select_candidates(selection, proposals, final, energies, temperature or cfg.temperature, generator)
    # a stopping policy can end every candidate before the budget: they stay at their last state
    trajectory = result.trajectory + result.trajectory[-1:] * (steps + 1 - len(result.trajectory))
    path = torch.stack(trajectory, dim=1).detach().view(b, steps + 1, m, g, *event)[:, :, :, 0]
    path_energies = record.energies.transpose(0, 1).reshape(b, steps + 1, m, g)[..., 0]
    return Thought(samples, proposals, final, energies, path, path_energies, record)
