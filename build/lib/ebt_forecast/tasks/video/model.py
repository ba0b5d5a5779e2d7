"""The video EBT and its Transformer++ twin: autoregressive next-frame prediction over frame latents.

One clip of L frames, latents z_0 .. z_{L-1} (d each, from the frozen autoencoder), S = L - 1 positions;
P = Linear(d, D), the latent projection shared by observed frames and candidates:

    observed    P z_0   P z_1   ...  P z_{S-1}          positions 0..S-1, causal; encoded once, K / V cached
                  |  \\    |  \\          |
    candidate   P c_1   P c_2   ...  P c_S              c_i: a candidate latent of frame i, positions 1..S
                candidate c_{i+1} sees frames z_0..z_i and itself only   (nn.doubled.DoubledSequenceEBT)
                  |       |             |
                RMSNorm -> Linear(D, 1): energy e_i of "frame i+1 is c_{i+1}"; E(clip) = sum_i e_i

The doubled sequence (backbone, energy head, positions, masks, the cached path and its uncached reference)
is `nn.doubled.DoubledSequenceEBT`, the same as the text EBT's; this file adds only the latent projection.
With `step_embeddings` > 0 (`think.step_embedding`, the reference's System 1) each thinking step has its own
landscape: step t's learned vector is added to every candidate embedding P c_i (`step` in the energies below;
None = the first, steps past the trained ones read the last). Thinking descends the energy over the candidate
latents (B, S, d).

`TransformerPlusPlusVideo`: the same projection and backbone causal over the frame latents, and a linear
head to the next frame's latent.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ebt_forecast.nn import DoubledContext, DoubledSequenceEBT, KVCache, LinearHead, TransformerConfig, TransformerPP
from ebt_forecast.nn import causal_mask


class VideoEBT(DoubledSequenceEBT):
    """Energy over next-frame latents, one scalar per position; `step_embeddings`: one learned landscape per
    thinking step (`nn.doubled`)."""

    def __init__(self, cfg: TransformerConfig, latent_dim: int, context_length: int, step_embeddings: int = 0):
        super().__init__(cfg, context_length, step_embeddings)
        self.latent_dim = latent_dim
        self.project = nn.Linear(latent_dim, cfg.dim)

    def encode(self, latents: Tensor) -> DoubledContext:
        """The observed half of (B, S, d) frame latents, once."""
        return self.encode_observed(self.project(latents))

    def token_energies(self, cache: KVCache, candidates: Tensor, step: int | None = None) -> Tensor:
        """Per-position energies (..., S) of candidate latents (..., S, d) in step `step`'s landscape; `cache`
        broadcasts against the leading dims (`TransformerPP.expand_cache`)."""
        return self.candidate_energies(cache, self.project(candidates), step)

    def energy(self, cache: KVCache, candidates: Tensor, step: int | None = None) -> Tensor:
        """One energy per clip (...): the sum over positions."""
        return self.token_energies(cache, candidates, step).sum(-1)

    def doubled_energies(self, latents: Tensor, candidates: Tensor, step: int | None = None) -> Tensor:
        """The same per-position energies (B, S) from the full doubled sequence, without a cache (the reference
        the cached path must equal)."""
        return self.doubled_sequence_energies(self.project(latents), self.project(candidates), step)


class TransformerPlusPlusVideo(nn.Module):
    """The feed-forward twin: causal Transformer++ over frame latents, a linear head to the next latent."""

    def __init__(self, cfg: TransformerConfig, latent_dim: int, context_length: int):
        super().__init__()
        self.latent_dim, self.context_length = latent_dim, context_length
        self.project = nn.Linear(latent_dim, cfg.dim)
        self.backbone = TransformerPP(cfg)
        self.head = LinearHead(cfg.dim, latent_dim)
        self.register_buffer("positions", torch.arange(context_length), persistent=False)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, latents: Tensor) -> Tensor:
        """(B, S, d) frame latents -> (B, S, d) predicted latents of frames 1..S."""
        s = latents.shape[-2]
        return self.head(self.backbone(self.project(latents), self.positions[:s], self.mask[:s, :s]))
