"""Attention masks given as data: True = the query may attend to the key.

Every mask is a (queries, keys) bool tensor; attention broadcasts it over batch and heads.
"""
from __future__ import annotations

import torch


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Lower-triangular mask: token i sees tokens 0..i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def bidirectional_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Full mask: every token sees every token."""
    return torch.ones(length, length, dtype=torch.bool, device=device)


def doubled_sequence_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """The EBT autoregressive mask over `[observed 0..S-1 ; predicted 0..S-1]`.

    Observed tokens are causal among themselves and never see predictions; predicted token i
    sees observed 0..i and itself only.
    """
    mask = torch.zeros(2 * length, 2 * length, dtype=torch.bool, device=device)
    mask[:length, :length] = causal_mask(length, device)
    mask[length:, :length] = causal_mask(length, device)
    mask[length:, length:] = torch.eye(length, dtype=torch.bool, device=device)
    return mask


def doubled_sequence_positions(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Rotary positions for the doubled sequence: observed i at i, predicted i at i + 1."""
    observed = torch.arange(length, device=device)
    return torch.cat([observed, observed + 1])


def context_candidate_mask(
    context_length: int, candidate_length: int, context_causal: bool = False, device: torch.device | None = None
) -> torch.Tensor:
    """Mask over `[context ; candidate]`: the context never sees the candidate (so it can be cached);
    candidate tokens see the whole context and the whole candidate window."""
    total = context_length + candidate_length
    mask = torch.ones(total, total, dtype=torch.bool, device=device)
    if context_causal:
        mask[:context_length, :context_length] = causal_mask(context_length, device)
    mask[:context_length, context_length:] = False
    return mask
