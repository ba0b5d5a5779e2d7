"""The EBT language model and its Transformer++ twin, on one Transformer++ backbone each.

One window of S tokens (E = the token embedding matrix, V x D, shared by input and candidates):

    observed    E[x_0]  E[x_1]  ...  E[x_{S-1}]         positions 0..S-1, causal; encoded once, K / V cached
                  |   \\    |   \\          |
    candidate   p_1 E   p_2 E   ...  p_S E              p_i = softmax(logits_i), positions 1..S
                candidate p_{i+1} sees observed x_0..x_i and itself only   (nn.masks.doubled_sequence_mask)
                  |       |             |
                RMSNorm -> Linear(D, 1): energy e_i of "x_{i+1} ~ p_{i+1}"; E(window) = sum_i e_i

The observed half never attends to candidates, so `encode` runs it once per window and thinking
recomputes only the candidate half against the cached keys and values (`TransformerPP.forward_with_context`
with a causal candidate-to-context mask and an identity candidate-to-candidate mask): the result equals
the full doubled sequence `doubled_energies` computes. Energies are summed over positions before the
gradient, which leaves every position its own gradient (positions do not see each other's candidates).
Thinking descends the energy over the logits (B, S, V); they start N(0, 1) (the reference) or at the
tied head on the observed stream (`head_logits`, optional).

`TransformerPlusPlusLM`: the same backbone causal over the tokens, tied embedding head, next-token logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt_forecast.nn import EnergyHead, RMSNorm, TransformerConfig, TransformerPP, causal_mask, doubled_sequence_mask
from ebt_forecast.nn.transformer import KVCache


@dataclass
class TextContext:
    """An encoded window: every layer's keys and values (B, heads, S, d) and the observed stream (B, S, D)."""

    cache: KVCache
    hidden: Tensor


def _embedding(vocab_size: int, dim: int) -> nn.Embedding:
    emb = nn.Embedding(vocab_size, dim)
    nn.init.normal_(emb.weight, std=0.02)
    return emb


class TextEBT(nn.Module):
    """Energy over next-token distributions, one scalar per position."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int, context_length: int):
        super().__init__()
        self.vocab_size, self.context_length = vocab_size, context_length
        self.embed = _embedding(vocab_size, cfg.dim)
        self.backbone = TransformerPP(cfg)
        self.energy_head = EnergyHead(cfg.dim, reduction="sum")
        self.head_norm = RMSNorm(cfg.dim)  # the optional System 1 head: tied logits of the observed stream
        s = context_length
        self.register_buffer("observed_positions", torch.arange(s), persistent=False)
        self.register_buffer("candidate_positions", torch.arange(s) + 1, persistent=False)
        self.register_buffer("observed_mask", causal_mask(s), persistent=False)  # also candidate -> observed
        self.register_buffer("candidate_mask", torch.eye(s, dtype=torch.bool), persistent=False)

    def encode(self, tokens: Tensor) -> TextContext:
        """The observed half of (B, S) tokens, once."""
        s = tokens.shape[-1]
        hidden, cache = self.backbone.encode_context(self.embed(tokens), self.observed_positions[:s],
                                                     self.observed_mask[:s, :s])
        return TextContext(cache, hidden)

    def head_logits(self, context: TextContext) -> Tensor:
        """System 1 proposal (B, S, V): the tied head on the observed stream."""
        return F.linear(self.head_norm(context.hidden), self.embed.weight)

    def embed_candidates(self, logits: Tensor) -> Tensor:
        """Logits (..., S, V) -> expected embeddings softmax(logits) @ E (..., S, D)."""
        return torch.matmul(logits.softmax(-1), self.embed.weight)

    def token_energies(self, cache: KVCache, logits: Tensor) -> Tensor:
        """Per-position energies (..., S) of candidate logits (..., S, V); `cache` broadcasts against the
        leading dims (`TransformerPP.expand_cache`)."""
        s = logits.shape[-2]
        h = self.backbone.forward_with_context(self.embed_candidates(logits), self.candidate_positions[:s], cache,
                                               self.candidate_mask[:s, :s], self.observed_mask[:s, :s])
        return self.energy_head.token_energies(h)

    def energy(self, cache: KVCache, logits: Tensor) -> Tensor:
        """One energy per window (...): the sum over positions."""
        return self.token_energies(cache, logits).sum(-1)

    def doubled_energies(self, tokens: Tensor, logits: Tensor) -> Tensor:
        """The same per-position energies (B, S) from the full doubled sequence under
        `doubled_sequence_mask`, without a cache (the reference the cached path must equal)."""
        s = tokens.shape[-1]
        seq = torch.cat([self.embed(tokens), self.embed_candidates(logits)], dim=-2)
        positions = torch.cat([self.observed_positions[:s], self.candidate_positions[:s]])
        h = self.backbone(seq, positions, doubled_sequence_mask(s, tokens.device))
        return self.energy_head.token_energies(h[..., s:, :])


class TransformerPlusPlusLM(nn.Module):
    """The feed-forward twin: causal Transformer++ over the tokens, tied embedding head."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int, context_length: int):
        super().__init__()
        self.vocab_size, self.context_length = vocab_size, context_length
        self.embed = _embedding(vocab_size, cfg.dim)
        self.backbone = TransformerPP(cfg)
        self.norm = RMSNorm(cfg.dim)
        self.register_buffer("positions", torch.arange(context_length), persistent=False)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, S) tokens -> (B, S, V) next-token logits."""
        s = tokens.shape[-1]
        h = self.backbone(self.embed(tokens), self.positions[:s], self.mask[:s, :s])
        return F.linear(self.norm(h), self.embed.weight)
