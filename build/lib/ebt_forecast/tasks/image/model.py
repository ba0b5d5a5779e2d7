"""The image EBT (bidirectional, energy over the clean image given the noisy one) and its DiT twin.

One 32 x 32 crop, patch 4 (P = 64 patches of C x 4 x 4 pixels; D = model width):

    context     W_c y_1 + pos_1  ...  W_c y_P + pos_P       y = the noisy image; bidirectional among
                                                            themselves; encoded once, K / V cached
                      |       \\  (every candidate patch sees every context patch)
    candidate   W_x x_1 + pos_1  ...  W_x x_P + pos_P       x = the candidate clean image (starts at y);
                                                            bidirectional among themselves
                      |                   |
                RMSNorm -> Linear(D, 1): e_1 ... e_P;   E(y, x) = mean_i e_i

Thinking descends E over x (the engine: x <- x - alpha * dE/dx), so a thinking step is one forward and
one backward of the candidate half against the cached context (`TransformerPP.forward_with_context`).
Patch i of the context and of the candidate share rotary position i and the learned position embedding.

Unconditional (`conditional=False`, the reference's E(x)): the context tokens are a learned constant
c_1 ... c_P (`condition`, the counterpart of the reference's `learned_adaln_condition` in this
context-attention backbone) instead of W_c y_i + pos_i, so the energy never reads y; the noisy image only
enters as the start of thinking. `encode(noisy)` then reads only the batch size.

`DiT`: the same backbone width, depth and heads (Transformer++ attention and SwiGLU blocks) over the
patches of x_t, conditioned on the diffusion time by adaLN-Zero (per block: shift, scale and gate of both
sub-layers from the time embedding), predicting the noise eps (DDPM). It has no context: it denoises a
given image by starting the reverse process at the time whose noise level matches (SDEdit-style).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebt_forecast.nn import EnergyHead, RMSNorm, TransformerConfig, TransformerPP, bidirectional_mask
from ebt_forecast.nn.transformer import Attention, KVCache, SwiGLU


@dataclass
class ImageShape:
    """Crop geometry: channels, side (pixels) and patch side."""

    channels: int = 3
    size: int = 32
    patch: int = 4

    @property
    def patches(self) -> int:
        return (self.size // self.patch) ** 2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch * self.patch


def _permute_last5(x: Tensor, order: list[int]) -> Tensor:
    lead = list(range(x.dim() - 5))
    return x.permute(*lead, *[len(lead) + i for i in order])


def patchify(images: Tensor, patch: int) -> Tensor:
    """(..., C, H, W) -> (..., H/p * W/p, C * p * p), patches in raster order."""
    *lead, c, h, w = images.shape
    x = images.reshape(*lead, c, h // patch, patch, w // patch, patch)  # (..., C, gh, p, gw, p)
    x = _permute_last5(x, [1, 3, 0, 2, 4])  # (..., gh, gw, C, p, p)
    return x.reshape(*lead, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: Tensor, shape: ImageShape) -> Tensor:
    """The inverse of `patchify`: (..., P, C * p * p) -> (..., C, H, W)."""
    *lead, _, _ = tokens.shape
    g, p, c = shape.size // shape.patch, shape.patch, shape.channels
    x = _permute_last5(tokens.reshape(*lead, g, g, c, p, p), [2, 0, 3, 1, 4])  # (..., C, gh, p, gw, p)
    return x.reshape(*lead, c, g * p, g * p)


@dataclass
class ImageContext:
    """An encoded noisy image: every layer's keys and values (B, heads, P, d)."""

    cache: KVCache


class ImageEBT(nn.Module):
    """Energy of a candidate clean image given the noisy one (or, unconditional, given a learned constant): the mean
    of per-patch scalars."""

    def __init__(self, cfg: TransformerConfig, shape: ImageShape, conditional: bool = True):
        super().__init__()
        self.shape, self.conditional = shape, conditional
        n = shape.patches
        if conditional:
            self.context_embed = nn.Linear(shape.patch_dim, cfg.dim)
        else:  # the learned constant condition: P context tokens that no input changes
            self.condition = nn.Parameter(torch.randn(n, cfg.dim) * 0.02)
        self.candidate_embed = nn.Linear(shape.patch_dim, cfg.dim)
        self.position = nn.Parameter(torch.randn(n, cfg.dim) * 0.02)
        self.backbone = TransformerPP(cfg)
        self.energy_head = EnergyHead(cfg.dim, reduction="mean")
        self.register_buffer("positions", torch.arange(n), persistent=False)
        self.register_buffer("mask", bidirectional_mask(n), persistent=False)

    def context_tokens(self, noisy: Tensor) -> Tensor:
        """The context (B, P, D): the embedded noisy patches, or (unconditional) the learned constant per image."""
        if not self.conditional:
            return self.condition.expand(noisy.shape[0], *self.condition.shape)
        return self.context_embed(patchify(noisy, self.shape.patch)) + self.position

    def encode(self, noisy: Tensor) -> ImageContext:
        """The noisy images (B, C, H, W), once."""
        tokens = self.context_tokens(noisy)
        _, cache = self.backbone.encode_context(tokens, self.positions, self.mask)
        return ImageContext(cache)

    def patch_energies(self, cache: KVCache, candidates: Tensor) -> Tensor:
        """Per-patch energies (..., P) of candidates (..., C, H, W); `cache` broadcasts against the leading dims."""
        tokens = self.candidate_embed(patchify(candidates, self.shape.patch)) + self.position
        h = self.backbone.forward_with_context(tokens, self.positions, cache, self.mask, self.mask)
        return self.energy_head.token_energies(h)

    def energy(self, cache: KVCache, candidates: Tensor) -> Tensor:
        """One energy per candidate (...): the mean over patches."""
        return self.patch_energies(cache, candidates).mean(-1)

    def joint_energy(self, noisy: Tensor, candidates: Tensor) -> Tensor:
        """The same energies (B,) from one pass over [context ; candidate] without a cache (the reference)."""
        n = self.shape.patches
        ctx = self.context_tokens(noisy)
        cand = self.candidate_embed(patchify(candidates, self.shape.patch)) + self.position
        mask = torch.ones(2 * n, 2 * n, dtype=torch.bool, device=noisy.device)
        mask[:n, n:] = False  # the context never sees the candidate
        h = self.backbone(torch.cat([ctx, cand], dim=-2), torch.cat([self.positions, self.positions]), mask)
        return self.energy_head(h[..., n:, :])


# ------------------------------------------------------------------------------------------------
# the DiT twin


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features (B, dim) of continuous times t in [0, 1] (scaled by 1000, as DiT's integer steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(-2)) + shift.unsqueeze(-2)


class DiTBlock(nn.Module):
    """A Transformer++ block with adaLN-Zero: x + g1 * attn(mod(norm(x))), then x + g2 * ffn(mod(norm(x)))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim)
        self.ffn = SwiGLU(cfg.dim, max(1, int(cfg.ffn_multiplier * cfg.dim)), cfg.dropout)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, positions: Tensor) -> Tensor:
        s1, a1, g1, s2, a2, g2 = self.ada(c).chunk(6, dim=-1)
        h, _ = self.attn(modulate(self.attn_norm(x), s1, a1), positions, None)
        x = x + g1.unsqueeze(-2) * h
        return x + g2.unsqueeze(-2) * self.ffn(modulate(self.ffn_norm(x), s2, a2))


class DiT(nn.Module):
    """Noise prediction eps(x_t, t) over patches, bidirectional, time by adaLN-Zero."""

    def __init__(self, cfg: TransformerConfig, shape: ImageShape, frequency_dim: int = 256):
        super().__init__()
        self.shape, self.frequency_dim = shape, frequency_dim
        self.embed = nn.Linear(shape.patch_dim, cfg.dim)
        self.position = nn.Parameter(torch.randn(shape.patches, cfg.dim) * 0.02)
        self.time = nn.Sequential(nn.Linear(frequency_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        for block in self.blocks:  # the backbone's initialisation (TransformerPP._init), then adaLN-Zero
            for m in (block.attn, block.ffn):
                m.apply(TransformerPP._init)
        self.final_norm = RMSNorm(cfg.dim)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.out = nn.Linear(cfg.dim, shape.patch_dim)
        for layer in (self.final_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("positions", torch.arange(shape.patches), persistent=False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predicted noise (B, C, H, W) of x_t (B, C, H, W) at times t (B,) in [0, 1]."""
        h = self.embed(patchify(x, self.shape.patch)) + self.position
        c = self.time(timestep_embedding(t, self.frequency_dim))
        for block in self.blocks:
            h = block(h, c, self.positions)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return unpatchify(self.out(modulate(self.final_norm(h), shift, scale)), self.shape)


# ------------------------------------------------------------------------------------------------
# the noise schedule (continuous time, cosine) and DDIM


def alpha_bar(t: Tensor, offset: float = 0.008) -> Tensor:
    """Cosine schedule (Nichol and Dhariwal): the signal fraction abar(t) for t in [0, 1], clamped away from 0."""
    f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    f0 = math.cos(offset / (1 + offset) * math.pi / 2) ** 2
    return (f / f0).clamp(1e-5, 1.0)


def time_of_sigma(sigma: float, offset: float = 0.008) -> float:
    """The time t whose x_t / sqrt(abar) = x0 + sigma * eps, i.e. abar(t) = 1 / (1 + sigma^2)."""
    f0 = math.cos(offset / (1 + offset) * math.pi / 2) ** 2
    target = f0 / (1 + sigma ** 2)
    return math.acos(math.sqrt(target)) * 2 / math.pi * (1 + offset) - offset


@torch.no_grad()
def ddim_denoise(model: DiT, noisy: Tensor, sigma: float, steps: int) -> Tensor:
    """Deterministic DDIM from the noisy image y = x0 + sigma * n: x_t* = sqrt(abar(t*)) y with
    abar(t*) = 1 / (1 + sigma^2), then `steps` evenly spaced steps down to t = 0; one network forward per step.
    Returns the x0 estimate."""
    t_start = time_of_sigma(sigma)
    times = torch.linspace(t_start, 0.0, steps + 1)
    x = noisy * alpha_bar(torch.tensor(t_start)).sqrt()
    b = noisy.shape[0]
    for t_now, t_next in zip(times[:-1], times[1:]):
        ab, ab_next = alpha_bar(t_now), alpha_bar(t_next) if t_next > 0 else torch.tensor(1.0)
        eps = model(x, t_now.expand(b))
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
    return x
