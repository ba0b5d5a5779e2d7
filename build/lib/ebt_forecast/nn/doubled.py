"""The autoregressive EBT's doubled sequence, modality-free: observed embeddings and candidate embeddings.

A task embeds its own inputs (tokens, frame latents, ...) into (B, S, D) and its candidates into (..., S, D);
this module owns the backbone, the energy head, the positions and the masks:

    observed    o_0   o_1   ...  o_{S-1}        positions 0..S-1, causal; encoded once, K / V cached
                 |  \\   |  \\         |
    candidate   c_1   c_2   ...  c_S            positions 1..S; c_{i+1} sees o_0..o_i and itself only
                 |     |           |             (nn.masks.doubled_sequence_mask)
               RMSNorm -> Linear(D, 1): energy e_i of "the next item is c_{i+1}"

The observed half never attends to candidates, so `encode_observed` runs it once and thinking recomputes only
the candidate half against the cached keys and values (`candidate_energies`: causal candidate-to-observed
mask, identity candidate-to-candidate mask). `doubled_sequence_energies` runs the full doubled sequence
without a cache: the reference the cached path must equal. Positions never see each other's candidates, so
summing energies over positions leaves every position its own gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebt_forecast.nn.heads import EnergyHead
from ebt_forecast.nn.masks import causal_mask, doubled_sequence_mask
from ebt_forecast.nn.transformer import KVCache, TransformerConfig, TransformerPP


@dataclass
class DoubledContext:
    """An encoded observed half: every layer's keys and values (B, heads, S, d) and the observed stream (B, S, D)."""

    cache: KVCache
    hidden: Tensor


class DoubledSequenceEBT(nn.Module):
    """Backbone + energy head over `[observed ; candidate]` embeddings of up to `context_length` positions."""

    def __init__(self, cfg: TransformerConfig, context_length: int, step_embeddings: int = 0):
        super().__init__()
        self.context_length = context_length
        self.backbone = TransformerPP(cfg)
        self.energy_head = EnergyHead(cfg.dim, reduction="sum")
        # each thinking step its own landscape: a learned vector per step added to every candidate embedding
        self.step_embed = nn.Embedding(step_embeddings, cfg.dim) if step_embeddings else None
        if self.step_embed is not None:
            nn.init.normal_(self.step_embed.weight, std=0.02)
        s = context_length
        self.register_buffer("observed_positions", torch.arange(s), persistent=False)
        self.register_buffer("candidate_positions", torch.arange(s) + 1, persistent=False)
        self.register_buffer("observed_mask", causal_mask(s), persistent=False)  # also candidate -> observed
        self.register_buffer("candidate_mask", torch.eye(s, dtype=torch.bool), persistent=False)

    def encode_observed(self, observed: Tensor) -> DoubledContext:
        """The observed half (B, S, D), once."""
        s = observed.shape[-2]
        hidden, cache = self.backbone.encode_context(observed, self.observed_positions[:s], self.observed_mask[:s, :s])
        return DoubledContext(cache, hidden)

    def candidate_energies(self, cache: KVCache, candidates: Tensor, step: int | None = None) -> Tensor:
        """Per-position energies (..., S) of candidate embeddings (..., S, D) in thinking step `step`'s landscape
        (with step embeddings; None = the first); `cache` broadcasts against the leading dims
        (`TransformerPP.expand_cache`)."""
        candidates = self.with_step(candidates, step)
        s = candidates.shape[-2]
        h = self.backbone.forward_with_context(candidates, self.candidate_positions[:s], cache,
                                               self.candidate_mask[:s, :s], self.observed_mask[:s, :s])
        return self.energy_head.token_energies(h)

    def with_step(self, candidates: Tensor, step: int | None) -> Tensor:
        """Candidate embeddings plus step `step`'s embedding (unchanged without step embeddings)."""
        if self.step_embed is None:
            return candidates
        return candidates + self.step_embed.weight[min(step or 0, self.step_embed.num_embeddings - 1)]

    def doubled_sequence_energies(self, observed: Tensor, candidates: Tensor, step: int | None = None) -> Tensor:
        """The same per-position energies (B, S) from the full doubled sequence of observed (B, S, D) and
        candidate (B, S, D) embeddings under `doubled_sequence_mask`, without a cache."""
        candidates = self.with_step(candidates, step)
        s = observed.shape[-2]
        positions = torch.cat([self.observed_positions[:s], self.candidate_positions[:s]])
        h = self.backbone(torch.cat([observed, candidates], dim=-2), positions,
                          doubled_sequence_mask(s, observed.device))
        return self.energy_head.token_energies(h[..., s:, :])
