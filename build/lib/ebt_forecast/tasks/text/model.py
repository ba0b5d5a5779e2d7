"""The EBT language model and its Transformer++ twin, on one Transformer++ backbone each.

One window of S tokens (E = the token embedding matrix, V x D, shared by input and candidates):

    observed    E[x_0]  E[x_1]  ...  E[x_{S-1}]         positions 0..S-1, causal; encoded once, K / V cached
                  |   \\    |   \\          |
    candidate   p_1 E   p_2 E   ...  p_S E              p_i = softmax(logits_i), positions 1..S
                candidate p_{i+1} sees observed x_0..x_i and itself only   (nn.masks.doubled_sequence_mask)
                  |       |             |
                RMSNorm -> Linear(D, 1): energy e_i of "x_{i+1} ~ p_{i+1}"; E(window) = sum_i e_i

The backbone, energy head, positions and masks are `nn.doubled.DoubledSequenceEBT`'s (shared with the
video task): the observed half never attends to candidates, so `encode` runs it once per window and
thinking recomputes only the candidate half against the cached keys and values; the result equals the full
doubled sequence `doubled_energies` computes. Energies are summed over positions before the
gradient, which leaves every position its own gradient (positions do not see each other's candidates).
Thinking descends the energy over the logits (B, S, V); they start N(0, 1) (the reference) or at the
tied head on the observed stream (`head_logits`, optional).

`TransformerPlusPlusLM`: the same backbone causal over the tokens, tied embedding head, next-token logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt_forecast.nn import (DoubledContext, DoubledSequenceEBT, KVCache, RMSNorm, TransformerConfig, TransformerPP,
                             causal_mask)

TextContext = DoubledContext  # an encoded window: keys / values (B, heads, S, d) and the observed stream (B, S, D)


def _embedding(vocab_size: int, dim: int) -> nn.Embedding:
    emb = nn.Embedding(vocab_size, dim)
    nn.init.normal_(emb.weight, std=0.02)
    return emb


CANDIDATES = ("logits", "probs")


class TextEBT(DoubledSequenceEBT):
    """Energy over next-token distributions, one scalar per position (the doubled sequence of `nn.doubled`).

    `candidate="logits"`: the energy reads logits, embedded as softmax(logits) @ E (the tied input embedding);
    `candidate="probs"` (the reference): it reads distributions p (the engine's softmax transform made them),
    embedded by their own bias-free Linear(V, D), xavier-initialised. `step_embeddings`: one learned landscape per
    thinking step (`nn.doubled`)."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int, context_length: int, candidate: str = "logits",
                 step_embeddings: int = 0):
        embed = _embedding(vocab_size, cfg.dim)  # drawn before the backbone: the same weights as before the refactor
        super().__init__(cfg, context_length, step_embeddings)
        self.vocab_size = vocab_size
        self.embed = embed
        self.head_norm = RMSNorm(cfg.dim)  # the optional System 1 head: tied logits of the observed stream
        self.candidate = candidate
        self.candidate_embed = nn.Linear(vocab_size, cfg.dim, bias=False) if candidate == "probs" else None
        if self.candidate_embed is not None:
            nn.init.xavier_uniform_(self.candidate_embed.weight)

    def encode(self, tokens: Tensor) -> TextContext:
        """The observed half of (B, S) tokens, once."""
        return self.encode_observed(self.embed(tokens))

    def head_logits(self, context: TextContext) -> Tensor:
        """System 1 proposal (B, S, V): the tied head on the observed stream."""
        return F.linear(self.head_norm(context.hidden), self.embed.weight)

    def embed_candidates(self, candidates: Tensor) -> Tensor:
        """Candidates (..., S, V) -> embeddings (..., S, D): softmax(logits) @ E, or Linear(V, D)(p)."""
        if self.candidate_embed is not None:
            return self.candidate_embed(candidates)
        return torch.matmul(candidates.softmax(-1), self.embed.weight)

    def token_energies(self, cache: KVCache, candidates: Tensor, step: int | None = None) -> Tensor:
        """Per-position energies (..., S) of candidates (..., S, V) in step `step`'s landscape; `cache` broadcasts
        against the leading dims (`TransformerPP.expand_cache`)."""
        return self.candidate_energies(cache, self.embed_candidates(candidates), step)

    def energy(self, cache: KVCache, candidates: Tensor, step: int | None = None) -> Tensor:
        """One energy per window (...): the sum over positions."""
        return self.token_energies(cache, candidates, step).sum(-1)

    def doubled_energies(self, tokens: Tensor, candidates: Tensor, step: int | None = None) -> Tensor:
        """The same per-position energies (B, S) from the full doubled sequence without a cache (the reference
        the cached path must equal)."""
        return self.doubled_sequence_energies(self.embed(tokens), self.embed_candidates(candidates), step)


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
