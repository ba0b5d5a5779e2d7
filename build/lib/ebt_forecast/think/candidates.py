"""Candidate sets: self-verification by lowest energy and energy-weighted resampling.

A NaN energy is never the lowest (a set of NaN: its first candidate). Energy weights give NaN and
infinite energies zero weight, and a set with no finite energy equal weights
(`sets_without_finite_energy` counts such sets).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def select_lowest_energy(candidates: Tensor, energies: Tensor) -> Tensor:
    """Keep each prediction's lowest-energy candidate: (B, M, *event), (B, M) -> (B, *event)."""
    best = energies.nan_to_num(float("inf")).argmin(dim=1)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), best]


def select_lowest_fraction(candidates: Tensor, energies: Tensor, fraction: float) -> Tensor:
    """Keep the lowest-energy share of each set: (B, M, *event) -> (B, ceil(fraction * M), *event)."""
    keep = max(1, math.ceil(fraction * candidates.shape[1] - 1e-9))
    order = energies.nan_to_num(float("inf")).argsort(dim=1)[:, :keep]
    return torch.gather(candidates, 1, order.view(*order.shape, *[1] * (candidates.dim() - 2)).expand(-1, -1, *candidates.shape[2:]))


def energy_weights(energies: Tensor, temperature: float) -> Tensor:
    """Boltzmann weights softmax(-energy / temperature) over each candidate set (B, M); NaN / inf
    energies get zero weight, a set with no finite energy equal weights."""
    finite = torch.isfinite(energies)
    logits = torch.where(finite, -energies / temperature, torch.full_like(energies, float("-inf")))
    return torch.softmax(torch.where(finite.any(dim=1, keepdim=True), logits, torch.zeros_like(logits)), dim=1)


def energy_weighted_resample(
    candidates: Tensor, energies: Tensor, num_samples: int, temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw num_samples candidates per set with probability softmax(-E / T): -> (B, S, *event)."""
    weights = energy_weights(energies, temperature)
    idx = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
    return torch.gather(candidates, 1, idx.view(*idx.shape, *[1] * (candidates.dim() - 2)).expand(-1, -1, *candidates.shape[2:]))


# How a grouped candidate set becomes samples. Every row of a set (B, M, G, *event) holds G starts
# for one of M proposals; the first start is the proposal's own path.
SELECTIONS = ("proposal", "refined", "verified", "weighted", "average", "median", "lowest", "resample")
ENERGY_FREE = ("proposal", "refined", "average", "median")  # selections that never read an energy


def select_candidates(
    selection: str, proposals: Tensor, grouped: Tensor, energies: Tensor, temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Turn thought candidates (B, M, G, *event) with energies (B, M, G) into samples (B, S, *event).

    proposal: the System 1 proposals; refined: each proposal's own refined start; verified: per
    proposal, the lowest-energy start; weighted: the starts averaged with softmax(-E / T); average /
    median: the energy-free controls of the same starts; lowest: the one lowest-energy candidate;
    resample: M draws over all candidates with probability softmax(-E / T).
    """
    b, m, g = grouped.shape[:3]
    event = grouped.shape[3:]
    if selection == "proposal":
        return proposals
    if selection == "refined":
        return grouped[:, :, 0]
    if selection == "verified":
        return select_lowest_energy(grouped.reshape(b * m, g, *event), energies.reshape(b * m, g)).view(b, m, *event)
    if selection == "weighted":
        weights = energy_weights(energies.reshape(b * m, g), temperature).view(b, m, g, *[1] * len(event))
        return (weights * grouped).sum(2)
    if selection == "average":
        return grouped.mean(2)
    if selection == "median":
        return grouped.quantile(0.5, dim=2)
    flat, flat_energy = grouped.reshape(b, m * g, *event), energies.reshape(b, m * g)
    if selection == "lowest":
        return select_lowest_energy(flat, flat_energy).unsqueeze(1)
    if selection == "resample":
        return energy_weighted_resample(flat, flat_energy, m, temperature, generator)
    raise ValueError(f"selection={selection!r} is invalid: must be one of {', '.join(SELECTIONS)}")


def sets_without_finite_energy(selection: str, energies: Tensor) -> int:
    """How many of the candidate sets `selection` compares in energies (B, M, G) hold no finite energy
    (weighted / resample: equal weights); 0 for an energy-free selection."""
    if selection in ENERGY_FREE:
        return 0
    sets = energies.flatten(1) if selection in ("lowest", "resample") else energies.flatten(0, 1)
    return int((~torch.isfinite(sets)).all(dim=-1).sum())
