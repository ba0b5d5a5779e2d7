"""The forecasting EBT: a patch Transformer++ that proposes quantile paths and scores candidates.

Layout of one window (all values mean-abs scaled):

    context patches (bidirectional) | horizon tokens (see the context and each other)

The context is encoded once (its keys and values cached). The horizon tokens then serve two
heads on the same backbone:
- System 1 (`propose`): the horizon tokens with no candidate give a quantile path for any
  level u in (0, 1) (an implicit-quantile head), so M levels give M candidate paths in one pass.
- System 2 (`energy`): the horizon tokens plus an embedded candidate path and its level give
  one scalar energy; thinking descends it from the proposals.
The feed-forward twin is this model with only the System 1 head trained.

Several targets of one entity (`targets` = K > 1) are forecast jointly: every target has its own context patches
and horizon tokens (a learned target vector tells them apart), all attend to each other, candidates are the K paths
flattened (..., K * H), and the energy head's mean over every horizon token gives one scalar for the joint candidate.

Covariates enter as per-patch features (GluonTS's roles): past covariates (values and observed mask) join the
context patches, known-future covariates join the context patches and the horizon tokens, static ones every token.
Their projections start at zero, so a model given covariate slots (`past_covariates`, ...) starts as the model
without them: the pretrained EBT gains slots it can leave empty and fine-tuning learns to read them. Both heads run
on the horizon tokens, so the energy reads a candidate together with the future covariates it assumes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt_forecast.data.windows import seasonal_naive_path
from ebt_forecast.nn import EnergyHead, KVCache, RMSNorm, TransformerConfig, TransformerPP


@dataclass
class ForecastModelConfig:
    """Window and backbone sizes of the forecasting EBT."""

    context_length: int = 256
    horizon: int = 24
    patch_len: int = 16
    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    level_features: int = 32  # cosine features of the quantile level u
    season_length: int = 1  # for seasonal-naive candidate starts
    energy_init: str = "zero"  # the energy head's weights: "zero" (thinking starts as the identity) or "xavier" (the
    #                            reference's: dE/dy is not zero at the start, so refinement trains the backbone at once)
    step_embeddings: int = 0  # > 0: one learned landscape per thinking step (a step vector added to every horizon token)
    scaling: str = "mean"  # how windows are normalised (data/windows.context_scaling): mean |x|, or standard (mean, std)
    targets: int = 1  # K targets forecast jointly (contexts (B, K, L), candidates (..., K * H))
    past_covariates: int = 0  # covariate slots (data/windows.covariate_window); 0 = none
    future_covariates: int = 0
    static_real: int = 0
    static_cardinalities: list[int] = field(default_factory=list)  # one categorical static covariate per entry
    covariate_scaling: str = "window"  # data/windows.covariate_window: by the window's context, or the whole history

    @property
    def has_covariates(self) -> bool:
        return bool(self.past_covariates or self.future_covariates or self.static_real or self.static_cardinalities)

    @property
    def context_patches(self) -> int:
        return math.ceil(self.context_length / self.patch_len)

    @property
    def horizon_patches(self) -> int:
        return math.ceil(self.horizon / self.patch_len)


class LevelEmbedding(nn.Module):
    """Embeds a quantile level u in (0, 1) by cosine features cos(pi i u), as implicit quantile networks do."""

    def __init__(self, features: int, dim: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, features + 1, dtype=torch.float32), persistent=False)
        self.proj = nn.Linear(features, dim)

    def forward(self, u: Tensor) -> Tensor:
        return F.silu(self.proj(torch.cos(u.unsqueeze(-1) * self.freqs)))


class PatchForecastEBT(nn.Module):
    """Context encoder, quantile proposal head and candidate energy on one Transformer++."""

    def __init__(self, cfg: ForecastModelConfig):
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch_len, cfg.backbone.dim
        self.backbone = TransformerPP(cfg.backbone)
        self.context_embed = nn.Linear(2 * p, d)  # patch values and their observed mask
        self.horizon_queries = nn.Parameter(torch.randn(cfg.horizon_patches, d) * 0.02)
        # System 1: implicit-quantile proposal head
        self.proposal_norm = RMSNorm(d)
        self.proposal_level = LevelEmbedding(cfg.level_features, d)
        self.proposal_out = nn.Linear(d, p)
        # System 2: candidate embedding and energy head
        self.candidate_embed = nn.Linear(p, d)
        self.energy_level = LevelEmbedding(cfg.level_features, d)
        self.energy_head = EnergyHead(d, reduction="mean")
        # a zero energy map starts thinking as the identity: refinement can only learn to add (but dE/dy = 0 at the
        # start, so the backbone gets no refinement gradient until the head has moved); xavier is the reference's
        if cfg.energy_init == "xavier":
            nn.init.xavier_uniform_(self.energy_head.proj.weight)
        else:
            nn.init.zeros_(self.energy_head.proj.weight)
        self.step_embed = nn.Embedding(cfg.step_embeddings, d) if cfg.step_embeddings else None
        if self.step_embed is not None:
            nn.init.normal_(self.step_embed.weight, std=0.02)
        self.covariates = CovariateEmbedding(cfg)
        k = cfg.targets
        self.target_embed = nn.Parameter(torch.randn(k, 1, d) * 0.02) if k > 1 else None  # which target a token is
        self.register_buffer("context_positions", torch.arange(cfg.context_patches).repeat(k), persistent=False)
        self.register_buffer("horizon_positions", torch.arange(cfg.context_patches, cfg.context_patches +
                                                               cfg.horizon_patches).repeat(k), persistent=False)

    def encode(self, context: Tensor, context_mask: Tensor, **covariates: Tensor) -> KVCache:
        """Encode scaled contexts (B, context_length) once; return every layer's keys and values. With covariate
        slots, `covariates` (covariate_window's inputs; absent ones are left empty) add to the context tokens, and
        the horizon tokens' covariate features ride along as one more (B, 1, Nh, D) entry after the layers' keys
        and values, so every cache operation (grouping, gathering, detaching) applies to them too."""
        c, p = self.cfg, self.cfg.patch_len
        pad = c.context_patches * p - context.shape[-1]
        values = F.pad(context, (pad, 0)).unflatten(-1, (c.context_patches, p))
        mask = F.pad(context_mask, (pad, 0)).unflatten(-1, (c.context_patches, p))
        tokens = self.context_embed(torch.cat([values * mask, mask], dim=-1))  # (B, Nc, D) or (B, K, Nc, D)
        if self.target_embed is not None:
            tokens = (tokens + self.target_embed).flatten(1, 2)  # (B, K * Nc, D): target after target
        if not c.has_covariates:
            return self.backbone.encode_context(tokens, self.context_positions)[1]
        context_features, horizon_features = self.covariates(covariates, context)
        k = c.targets  # every target's tokens read the entity's covariates
        _, cache = self.backbone.encode_context(tokens + context_features.repeat(1, k, 1), self.context_positions)
        horizon_features = horizon_features.repeat(1, k, 1)
        return [*cache, (horizon_features.unsqueeze(1), horizon_features.unsqueeze(1))]

    def _horizon_tokens(self, extra: Tensor, cache: KVCache) -> Tensor:
        """Run horizon tokens (queries + `extra`, + their covariate features) against the cached context."""
        queries = self.horizon_queries if self.target_embed is None else (
            self.horizon_queries + self.target_embed).flatten(0, 1)  # (K * Nh, D)
        queries = queries + extra
        if len(cache) > len(self.backbone.blocks):  # the covariate entry: (..., 1, Nh, D) -> (..., Nh, D)
            queries = queries + cache[-1][0].squeeze(-3)
        return self.backbone.forward_with_context(queries, self.horizon_positions, cache)

    def propose(self, cache: KVCache, levels: Tensor) -> Tensor:
        """Quantile paths for levels (B, M) in (0, 1): -> (B, M, horizon)."""
        h = self.proposal_norm(self._horizon_tokens(torch.zeros(1, device=levels.device), cache))  # (B, K * Nh, D)
        gate = 1.0 + self.proposal_level(levels)  # (B, M, D)
        paths = self.proposal_out(h.unsqueeze(1) * gate.unsqueeze(2))  # (B, M, K * Nh, P)
        c = self.cfg
        return paths.unflatten(2, (c.targets, c.horizon_patches)).flatten(-2)[..., :c.horizon].flatten(-2)

    def propose_starts(
        self, cache: KVCache, context: Tensor, context_mask: Tensor, levels: Tensor, group: int, noise: float,
        generator: torch.Generator | None = None, init: str = "proposal",
    ) -> tuple[Tensor, Tensor]:
        """Proposals (B, M, H) at `levels` and G thinking starts per level (B, M, G, H).

        `init` picks start 0 (the one "refined" follows): the proposal, the seasonal-naive path, or noise; "random"
        makes every start an independent N(0, 1) path in scaled units (the paper's candidates from noise)."""
        with_median = torch.cat([levels, torch.full_like(levels[:, :1], 0.5)], dim=1)
        paths = self.propose(cache, with_median)
        proposals, median = paths[:, :-1], paths[:, -1]
        k, h = self.cfg.targets, self.cfg.horizon  # each target's own seasonal-naive path
        naive = seasonal_naive_path(context.reshape(-1, context.shape[-1]), context_mask.reshape(-1, context.shape[-1]),
                                    self.cfg.season_length, h, median.detach().reshape(-1, h)).reshape(-1, k * h)
        starts = candidate_starts(proposals, median, naive, max(group, 2), noise, generator)
        if init == "seasonal_naive":
            starts = starts[:, :, [1, 0, *range(2, starts.shape[2])]]
        elif init == "random":
            starts = torch.randn((*proposals.shape[:2], group, proposals.shape[-1]), generator=generator,
                                 device=proposals.device)
        elif init == "noise":
            start = torch.randn(starts[:, :, :1].shape, generator=generator, device=starts.device)
            starts = torch.cat([start, starts[:, :, 1:]], dim=2)
        elif init != "proposal":
            raise ValueError(f"init={init!r} is invalid: must be proposal, seasonal_naive, noise or random")
        return proposals, starts[:, :, :group]

    def energy(self, candidates: Tensor, levels: Tensor, cache: KVCache, step: int | None = None) -> Tensor:
        """Energies of candidate paths (..., horizon) at levels (...) against a cache that broadcasts, in thinking
        step `step`'s landscape (with step embeddings; None = the last trained one, where final candidates are
        compared)."""
        c = self.cfg
        pad = c.horizon_patches * c.patch_len - c.horizon
        per_target = candidates.unflatten(-1, (c.targets, c.horizon))  # (..., K, H)
        patches = F.pad(per_target, (0, pad)).unflatten(-1, (c.horizon_patches, c.patch_len)).flatten(-3, -2)
        extra = self.candidate_embed(patches) + self.energy_level(levels).unsqueeze(-2)
        if self.step_embed is not None:
            last = self.step_embed.num_embeddings - 1
            extra = extra + self.step_embed.weight[last if step is None else min(step, last)]
        return self.energy_head(self._horizon_tokens(extra, cache))

    def energy_fn(self, cache: KVCache, levels: Tensor):
        """The engine's energy function for candidates (B, M, horizon) at levels (B, M)."""
        grouped = TransformerPP.expand_cache(cache, "grouped")
        batch, m = levels.shape
        flat_levels = levels.reshape(-1)

        def fn(x: Tensor, index: Tensor | None, step: int | None = None) -> Tensor:
            if index is None:
                return self.energy(x.view(batch, m, -1), levels, grouped, step).reshape(-1)
            rows = TransformerPP.expand_cache(cache, "gather", torch.div(index, m, rounding_mode="floor"))
            return self.energy(x, flat_levels[index], rows, step)

        return fn


class CovariateEmbedding(nn.Module):
    """Per-patch features of past, known-future and static covariates, from zero-initialised projections."""

    def __init__(self, cfg: ForecastModelConfig):
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch_len, cfg.backbone.dim
        self.past = nn.Linear(2 * p * cfg.past_covariates, d, bias=False) if cfg.past_covariates else None
        self.future = nn.Linear(p * cfg.future_covariates, d, bias=False) if cfg.future_covariates else None
        self.static_real = nn.Linear(cfg.static_real, d, bias=False) if cfg.static_real else None
        self.static_cat = nn.ModuleList(nn.Embedding(n, d) for n in cfg.static_cardinalities)
        for layer in [self.past, self.future, self.static_real, *self.static_cat]:
            if layer is not None:
                nn.init.zeros_(layer.weight)

    def _patches(self, x: Tensor, patches: int, front: bool) -> Tensor:
        """(B, C, T) -> (B, patches, C * patch_len), zero-padded at the front (context) or the back (horizon)."""
        p = self.cfg.patch_len
        pad = patches * p - x.shape[-1]
        x = F.pad(x, (pad, 0) if front else (0, pad)).unflatten(-1, (patches, p))  # (B, C, N, P)
        return x.transpose(1, 2).flatten(2)

    def forward(self, inputs: dict[str, Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
        """Features of the context patches (B, Nc, D) and of the horizon patches (B, Nh, D) for the batch of `like`;
        a missing input counts as an empty slot (zero features)."""
        c, dim, batch = self.cfg, self.cfg.backbone.dim, like.shape[0]
        context = like.new_zeros(batch, c.context_patches, dim)
        horizon = like.new_zeros(batch, c.horizon_patches, dim)
        if self.past is not None and "past_covariates" in inputs:
            x, m = inputs["past_covariates"], inputs["past_covariates_mask"]
            values = torch.cat([self._patches(x * m, c.context_patches, True),
                                self._patches(m, c.context_patches, True)], dim=-1)
            context = context + self.past(values)
        if self.future is not None and "future_covariates" in inputs:
            x = inputs["future_covariates"]
            length = c.context_length
            context = context + self.future(self._patches(x[..., :length], c.context_patches, True))
            horizon = horizon + self.future(self._patches(x[..., length:length + c.horizon], c.horizon_patches, False))
        static = like.new_zeros(batch, 1, dim)
        if self.static_real is not None and "static_real" in inputs:
            static = static + self.static_real(inputs["static_real"]).unsqueeze(1)
        if "static_cat" in inputs:
            for i, table in enumerate(self.static_cat):
                static = static + table(inputs["static_cat"][:, i].clamp(0, table.num_embeddings - 1)).unsqueeze(1)
        return context + static, horizon + static


def evenly_spaced_levels(m: int, batch: int = 1, device: torch.device | None = None) -> Tensor:
    """Levels (j + 0.5) / M, j = 0..M-1: M candidates that together trace the forecast distribution."""
    return ((torch.arange(m, device=device, dtype=torch.float32) + 0.5) / m).expand(batch, m)


def candidate_starts(
    proposals: Tensor, median: Tensor, naive: Tensor, group: int, noise: float, generator: torch.Generator | None = None,
) -> Tensor:
    """G starts per level (B, M, G, H): the proposal, the seasonal-naive path carrying the proposal's
    offset from the median (a second System 1 opinion), then proposals perturbed by noise x set half-width."""
    starts = [proposals.unsqueeze(2)]
    if group >= 2:
        starts.append((naive.unsqueeze(1) + proposals - median.unsqueeze(1)).unsqueeze(2))
    if group >= 3:
        spread = set_spread(proposals).unsqueeze(-1)
        eps = torch.randn((*proposals.shape[:2], group - 2, proposals.shape[-1]), generator=generator, device=proposals.device)
        starts.append(proposals.unsqueeze(2) + noise * spread * eps)
    return torch.cat(starts, dim=2)


def set_spread(paths: Tensor) -> Tensor:
    """Half the mean width of a candidate set (B, M, H) -> (B, 1, 1): the unit for perturbing it."""
    return ((paths.amax(1) - paths.amin(1)).mean(-1) / 2).clamp_min(1e-3).view(-1, 1, 1)


def candidate_pinball(paths: Tensor, target: Tensor, levels: Tensor, mask: Tensor) -> Tensor:
    """Per-candidate mean pinball loss: (B, M, H) -> (B, M)."""
    diff = target.unsqueeze(1) - paths
    u = levels.unsqueeze(-1)
    loss = torch.maximum(u * diff, (u - 1.0) * diff) * mask.unsqueeze(1)
    return loss.sum(-1) / mask.sum(-1, keepdim=True).clamp(min=1)
