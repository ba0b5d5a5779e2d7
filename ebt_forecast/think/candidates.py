"""Candidate sets: self-verification by lowest energy and energy-weighted resampling."""
from __future__ import annotations

import torch
from torch import Tensor


def select_lowest_energy(candidates: Tensor, energies: Tensor) -> Tensor:
    """Keep each prediction's lowest-energy candidate: (B, M, *event), (B, M) -> (B, *event)."""
    best = energies.nan_to_num(float("inf")).argmin(dim=1)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), best]


def select_lowest_fraction(candidates: Tensor, energies: Tensor, fraction: float) -> Tensor:
    """Keep the lowest-energy share of each set: (B, M, *event) -> (B, ceil(fraction * M), *event)."""
    keep = max(1, int(round(fraction * candidates.shape[1])))
    order = energies.nan_to_num(float("inf")).argsort(dim=1)[:, :keep]
    return torch.gather(candidates, 1, order.view(*order.shape, *[1] * (candidates.dim() - 2)).expand(-1, -1, *candidates.shape[2:]))


def energy_weights(energies: Tensor, temperature: float) -> Tensor:
    """Boltzmann weights softmax(-energy / temperature) over each candidate set (B, M)."""
    return torch.softmax(-energies.nan_to_num(float("inf")) / temperature, dim=1)


def energy_weighted_resample(
    candidates: Tensor, energies: Tensor, num_samples: int, temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw num_samples candidates per set with probability softmax(-E / T): -> (B, S, *event)."""
    weights = energy_weights(energies, temperature)
    idx = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
    return torch.gather(candidates, 1, idx.view(*idx.shape, *[1] * (candidates.dim() - 2)).expand(-1, -1, *candidates.shape[2:]))
