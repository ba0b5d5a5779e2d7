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

from ebt_forecast.think.candidates import ENERGY_FREE, select_candidates, sets_without_finite_energy
from ebt_forecast.think.config import ThinkConfig
from ebt_forecast.think.engine import EnergyFn, InferencePolicy, ThinkRecord, Transform, think
from ebt_forecast.think.step_size import StepSize


@dataclass
class Starts:
    """What a task proposes for one batch."""

    proposals: Tensor  # (B, M, *event) System 1 proposals
    starts: Tensor  # (B, M, G, *event) thinking starts per proposal; [:, :, 0] is the proposal's own path
    energy_fn: EnergyFn  # energies of the flat (B, M * G) starts, proposal-major
    transform: Transform | None = None  # the task's candidate transform (engine.py; text: softmax), None = identity


@dataclass
class Thought:
    """The samples a selection made, and what thinking did to get there."""

    samples: Tensor  # (B, S, *event)
    proposals: Tensor  # (B, M, *event)
    grouped: Tensor  # (B, M, G, *event) every start's final candidate
    energies: Tensor  # (B, M, G) their final energies (NaN when not read: an energy-free selection)
    path: Tensor  # (B, T + 1, M, *event) each proposal's own start after every step
    path_energies: Tensor  # (B, T + 1, M) its energy at every step (NaN where not read)
    record: ThinkRecord | None  # None when no energy was evaluated
    unverified: int = 0  # candidate sets the selection compared with no finite energy among them (equal weights)


def think_and_select(
    starts: Starts, cfg: ThinkConfig, step_size: StepSize, *, steps: int, selection: str,
    generator: torch.Generator | None = None, temperature: float | None = None, final_energy: bool = False,
    policy: InferencePolicy | None = None,
) -> Thought:
    """Refine every start for `steps` (inference: first order, under `policy`, default the one cfg names), then
    select (`temperature` for weighted / resample; default cfg.temperature).

    Only the passes the selection needs are spent: the final candidates' energies are evaluated for a
    selection that reads them, under uphill rejection (it picks the lowest seen), or when `final_energy`
    asks for them (diagnostics); an energy-free selection at step 0 spends none. With `cfg.enabled=False`
    no energy is read and the proposals are the samples.
    """
    proposals, grouped = starts.proposals.detach(), starts.starts.detach()
    b, m, g = grouped.shape[:3]
    event = grouped.shape[3:]
    temperature = temperature or cfg.temperature
    policy = policy or InferencePolicy.of(cfg)
    read_final = final_energy or selection not in ENERGY_FREE or policy.reject_uphill
    nan = grouped.new_full((b, m, g), float("nan"))
    if not cfg.enabled or (steps == 0 and not read_final):
        samples = proposals if not cfg.enabled else select_candidates(selection, proposals, grouped, nan, temperature)
        return Thought(samples, proposals, grouped, nan, grouped[:, None, :, 0], nan[:, None, :, 0], None)
    result = think(starts.energy_fn, grouped.reshape(b, m * g, *event), cfg, step_size, training=False, steps=steps,
                   final_energy=read_final, keep_trajectory=True, generator=generator, policy=policy,
                   transform=starts.transform)
    record = result.record
    final = result.candidates.detach().view(b, m, g, *event)
    energies = result.energies.detach().view(b, m, g) if read_final else nan
    samples = select_candidates(selection, proposals, final, energies, temperature, generator)
    # a stopping policy can end every candidate before the budget: they stay at their last state
    trajectory = result.trajectory + result.trajectory[-1:] * (steps + 1 - len(result.trajectory))
    path = torch.stack(trajectory, dim=1).detach().view(b, steps + 1, m, g, *event)[:, :, :, 0]
    path_energies = record.energies.transpose(0, 1).reshape(b, steps + 1, m, g)[..., 0]
    return Thought(samples, proposals, final, energies, path, path_energies, record,
                   sets_without_finite_energy(selection, energies))
