"""Tests of the Transformer++ building blocks and of the forecasting EBT's cached energy."""
import pytest
import torch
import torch.nn.functional as F

from ebt_forecast.nn import (
    EnergyHead,
    RMSNorm,
    TransformerConfig,
    TransformerPP,
    causal_mask,
    context_candidate_mask,
    doubled_sequence_mask,
    doubled_sequence_positions,
)
from ebt_forecast.nn.transformer import apply_rotary, rotary_angles
from ebt_forecast.tasks.forecast.model import ForecastModelConfig, PatchForecastEBT, evenly_spaced_levels
from ebt_forecast.think import StepSize, ThinkConfig, think


def _tiny_forecast_model(seed=0, **overrides):
    torch.manual_seed(seed)
    # context 30 and horizon 10 are not multiples of the patch: both paddings are exercised
    backbone = dict(dim=16, depth=2, heads=2, ffn_multiplier=1.5)
    backbone.update({k: overrides.pop(k) for k in list(overrides) if k in backbone})
    kwargs = dict(context_length=30, horizon=10, patch_len=4, level_features=4)
    kwargs.update(overrides)
    model = PatchForecastEBT(ForecastModelConfig(backbone=TransformerConfig(**backbone), **kwargs)).eval()
    # a fresh model's energy map is zero (thinking starts as the identity); give it a slope to test
    torch.nn.init.normal_(model.energy_head.proj.weight, std=0.5)
    return model


def _window(b, context_length, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(b, context_length, generator=g).to(dtype)
    mask = (torch.rand(b, context_length, generator=g) > 0.2).to(dtype)
    return context, mask


# ---------------------------------------------------------------- uncached reference energy


def _context_tokens(model, context, context_mask):
    """Mirror of PatchForecastEBT.encode up to the backbone: (R, Lc) -> (R, Pc, D)."""
    c, p = model.cfg, model.cfg.patch_len
    pad = c.context_patches * p - context.shape[-1]
    values = F.pad(context, (pad, 0)).unflatten(-1, (c.context_patches, p))
    mask = F.pad(context_mask, (pad, 0)).unflatten(-1, (c.context_patches, p))
    return model.context_embed(torch.cat([values * mask, mask], dim=-1))


def _uncached_energy(model, context, context_mask, candidates, levels):
    """Energies of candidates (R, K, horizon) at levels (R, K) from one full forward over
    [context tokens ; horizon tokens] under context_candidate_mask: no cache anywhere."""
    c = model.cfg
    ctx = _context_tokens(model, context, context_mask)  # (R, Pc, D)
    pad = c.horizon_patches * c.patch_len - c.horizon
    patches = F.pad(candidates, (0, pad)).unflatten(-1, (c.horizon_patches, c.patch_len))
    extra = model.candidate_embed(patches) + model.energy_level(levels).unsqueeze(-2)
    horizon_tokens = model.horizon_queries + extra  # (R, K, Ph, D)
    r, k = candidates.shape[:2]
    seq = torch.cat([ctx.unsqueeze(1).expand(r, k, *ctx.shape[1:]), horizon_tokens], dim=-2)
    positions = torch.arange(c.context_patches + c.horizon_patches)
    mask = context_candidate_mask(c.context_patches, c.horizon_patches)
    h = model.backbone(seq, positions, mask)[..., c.context_patches:, :]
    return model.energy_head(h)  # (R, K)


def _uncached_energy_fn(model, context, context_mask, levels):
    """The engine's energy_fn interface over the uncached reference."""
    b, m = levels.shape

    def fn(x, index):
        if index is None:
            return _uncached_energy(model, context, context_mask, x.view(b, m, -1), levels).reshape(-1)
        rows = torch.div(index, m, rounding_mode="floor")
        return _uncached_energy(model, context[rows], context_mask[rows], x.unsqueeze(1),
                                levels.reshape(-1)[index].unsqueeze(1)).reshape(-1)

    return fn


def test_reference_positions_match_model_buffers():
    model = _tiny_forecast_model()
    c = model.cfg
    assert torch.equal(torch.cat([model.context_positions, model.horizon_positions]),
                       torch.arange(c.context_patches + c.horizon_patches))


def test_cached_energy_matches_uncached_forward():
    model = _tiny_forecast_model()
    b, m, h = 3, 4, model.cfg.horizon
    context, cmask = _window(b, model.cfg.context_length)
    levels = evenly_spaced_levels(m, b)
    candidates = torch.randn(b, m, h, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model.encode(context, cmask)
        fn = model.energy_fn(cache, levels)
        reference = _uncached_energy(model, context, cmask, candidates, levels).reshape(-1)
        grouped = fn(candidates.reshape(b * m, h), None)
        index = torch.tensor([1, 4, 5, 10, 11])
        gathered = fn(candidates.reshape(b * m, h)[index], index)
    assert grouped.shape == (b * m,) and gathered.shape == (len(index),)
    torch.testing.assert_close(grouped, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gathered, reference[index], atol=1e-5, rtol=1e-5)
    # the energies are not trivially equal across candidates or windows
    assert reference.std() > 1e-4


def test_cached_energy_depends_on_context():
    model = _tiny_forecast_model()
    context, cmask = _window(2, model.cfg.context_length)
    levels = evenly_spaced_levels(2, 2)
    x = torch.randn(4, model.cfg.horizon)
    with torch.no_grad():
        e1 = model.energy_fn(model.encode(context, cmask), levels)(x, None)
        context2 = context.clone()
        context2[1, 0] += 5.0
        e2 = model.energy_fn(model.encode(context2, cmask), levels)(x, None)
    torch.testing.assert_close(e1[:2], e2[:2])  # window 0 unchanged
    assert (e1[2:] - e2[2:]).abs().min() > 1e-6  # window 1's candidates see the change


def test_padded_context_and_masked_values_are_ignored():
    model = _tiny_forecast_model()
    context, cmask = _window(1, model.cfg.context_length)
    levels = evenly_spaced_levels(2, 1)
    x = torch.randn(2, model.cfg.horizon)
    changed = context.clone()
    changed[cmask == 0] += 100.0  # unobserved values must not matter
    with torch.no_grad():
        e1 = model.energy_fn(model.encode(context, cmask), levels)(x, None)
        e2 = model.energy_fn(model.encode(changed, cmask), levels)(x, None)
    torch.testing.assert_close(e1, e2, atol=0, rtol=0)


@pytest.mark.parametrize("policy", ["fixed", "energy_threshold"])
def test_thinking_with_cache_matches_uncached(policy):
    model = _tiny_forecast_model()
    b, m = 2, 3
    context, cmask = _window(b, model.cfg.context_length)
    levels = evenly_spaced_levels(m, b)
    with torch.no_grad():
        cache = model.encode(context, cmask)
        init = model.propose(cache, levels)
        e0 = model.energy_fn(cache, levels)(init.reshape(b * m, -1), None)
    threshold = 0.0
    if policy == "energy_threshold":
        s = e0.sort().values
        threshold = float((s[2] + s[3]) / 2)  # half the candidates think (the gather path), half do not
    cfg = ThinkConfig(infer_steps=3, alpha=20.0, stop_policy=policy, energy_threshold=threshold).validate()
    cached = think(model.energy_fn(cache, levels), init, cfg, StepSize(cfg.alpha))
    reference = think(_uncached_energy_fn(model, context, cmask, levels), init, cfg, StepSize(cfg.alpha))
    assert torch.equal(cached.record.steps_taken, reference.record.steps_taken)
    if policy == "energy_threshold":
        assert 0 < int((cached.record.steps_taken > 0).sum()) < b * m
    torch.testing.assert_close(cached.candidates, reference.candidates, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.energies, reference.energies, atol=1e-5, rtol=1e-5)
    assert (cached.candidates - init).abs().max() > 1e-3  # thinking actually moved the candidates


# ---------------------------------------------------------------- gradient vs finite differences


def test_energy_gradient_matches_finite_differences():
    model = _tiny_forecast_model(dim=8, heads=2, depth=2).double()
    b, m = 2, 2
    context, cmask = _window(b, model.cfg.context_length, dtype=torch.float64)
    levels = evenly_spaced_levels(m, b).double()
    with torch.no_grad():
        cache = model.encode(context, cmask)
    fn = model.energy_fn(cache, levels)
    x = torch.randn(b * m, model.cfg.horizon, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fn(x, None), (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    index = torch.tensor([3, 0])
    xs = x[index].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fn(x, index), (xs,), eps=1e-6, atol=1e-6, rtol=1e-4)
    (g,) = torch.autograd.grad(fn(x, None).sum(), x)
    assert g.abs().max() > 1e-4  # the energy really depends on the candidate


def test_backbone_energy_gradient_matches_finite_differences_with_mask():
    torch.manual_seed(0)
    dim = 8
    backbone = TransformerPP(TransformerConfig(dim=dim, depth=2, heads=2, ffn_multiplier=1.0)).double()
    for p in backbone.parameters():  # larger weights than the init so every path is exercised
        p.data.normal_(0, 0.3)
    head = EnergyHead(dim, reduction="sum").double()
    x = torch.randn(2, 5, dim, dtype=torch.float64, requires_grad=True)
    positions = torch.arange(5)
    mask = causal_mask(5)
    assert torch.autograd.gradcheck(lambda x: head(backbone(x, positions, mask)), (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- doubled-sequence mask


def _perturbation_effects(model, x, positions, mask, token):
    """Max |change| of every output token when input `token` is perturbed."""
    with torch.no_grad():
        base = model(x, positions, mask)
        x2 = x.clone()
        x2[:, token] += torch.randn(x.shape[0], x.shape[-1], dtype=x.dtype, generator=torch.Generator().manual_seed(token))
        return (model(x2, positions, mask) - base).abs().amax(dim=(0, 2))  # (2S,)


def test_doubled_sequence_mask_dependencies():
    s, dim = 5, 16
    torch.manual_seed(0)
    model = TransformerPP(TransformerConfig(dim=dim, depth=3, heads=2)).double()
    x = torch.randn(2, 2 * s, dim, dtype=torch.float64)
    positions, mask = doubled_sequence_positions(s), doubled_sequence_mask(s)
    tol = 1e-12
    for j in range(s):  # observed token j
        effect = _perturbation_effects(model, x, positions, mask, j)
        for i in range(s):
            changed = bool(effect[s + i] > tol)
            assert changed == (j <= i), (j, i, float(effect[s + i]))
            # observed outputs are causal and never depend on predictions
            assert bool(effect[i] > tol) == (j <= i)
    for i in range(s):  # predicted token i
        effect = _perturbation_effects(model, x, positions, mask, s + i)
        assert effect[s + i] > tol
        for k in range(s):
            if k != i:
                assert effect[s + k] <= tol, (i, k, float(effect[s + k]))
        assert (effect[:s] <= tol).all()  # observed tokens never see predictions


def test_doubled_sequence_mask_layout():
    s = 4
    mask = doubled_sequence_mask(s)
    assert mask.shape == (2 * s, 2 * s) and mask.dtype == torch.bool
    for i in range(s):
        for j in range(s):
            assert mask[i, j] == (j <= i)  # observed -> observed: causal
            assert not mask[i, s + j]  # observed -> predicted: never
            assert mask[s + i, j] == (j <= i)  # predicted i -> observed 0..i
            assert mask[s + i, s + j] == (i == j)  # predicted i -> itself only


def test_doubled_sequence_positions_shift_predictions():
    s = 6
    pos = doubled_sequence_positions(s)
    assert pos.tolist() == list(range(s)) + list(range(1, s + 1))  # predicted token i sits at position i + 1


def test_doubled_sequence_positions_used_by_attention():
    """Predicted token i at position i+1: shifting the predicted positions changes their outputs,
    and a predicted token with the same content as observed i+1 sits at the same rotary angle."""
    s, dim = 4, 16
    torch.manual_seed(0)
    model = TransformerPP(TransformerConfig(dim=dim, depth=1, heads=2)).double()
    x = torch.randn(1, 2 * s, dim, dtype=torch.float64)
    mask = doubled_sequence_mask(s)
    with torch.no_grad():
        a = model(x, doubled_sequence_positions(s), mask)
        b = model(x, torch.arange(s).repeat(2), mask)
    torch.testing.assert_close(a[:, :s], b[:, :s])
    assert (a[:, s + 1:] - b[:, s + 1:]).abs().max() > 1e-8


# ---------------------------------------------------------------- context cache


def test_forward_with_context_matches_full_forward():
    torch.manual_seed(0)
    dim, lc, lq = 16, 7, 3
    model = TransformerPP(TransformerConfig(dim=dim, depth=2, heads=4)).double()
    ctx = torch.randn(2, lc, dim, dtype=torch.float64)
    cand = torch.randn(2, 5, lq, dim, dtype=torch.float64)  # 5 candidates per context
    positions = torch.arange(lc + lq)
    with torch.no_grad():
        _, cache = model.encode_context(ctx, positions[:lc], causal_mask(lc))
        cached = model.forward_with_context(cand, positions[lc:], TransformerPP.expand_cache(cache, "grouped"))
        full = model(torch.cat([ctx.unsqueeze(1).expand(2, 5, lc, dim), cand], dim=2), positions,
                     context_candidate_mask(lc, lq, context_causal=True))[:, :, lc:]
        idx = torch.tensor([1, 0, 1])
        gathered = model.forward_with_context(cand[idx, 0], positions[lc:], TransformerPP.expand_cache(cache, "gather", idx))
    torch.testing.assert_close(cached, full)
    torch.testing.assert_close(gathered, full[idx, 0])
    with pytest.raises(ValueError):
        TransformerPP.expand_cache(cache, "nope")


def test_context_candidate_mask_layout():
    mask = context_candidate_mask(3, 2, context_causal=True)
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert not context_candidate_mask(3, 2)[:3, 3:].any() and context_candidate_mask(3, 2)[:3, :3].all()


# ---------------------------------------------------------------- RMSNorm and rotary


def test_rmsnorm_unit_rms():
    norm = RMSNorm(32)
    x = torch.randn(4, 7, 32) * 5 + 1
    y = norm(x)
    rms = y.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)
    # scale invariant, and the gain scales the output
    torch.testing.assert_close(norm(3 * x), y, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        norm.weight.fill_(2.0)
    torch.testing.assert_close(norm(x).pow(2).mean(-1).sqrt(), 2 * torch.ones_like(rms), atol=2e-4, rtol=0)


def test_rotary_preserves_norm():
    hd = 16
    x = torch.randn(3, 2, 10, hd, dtype=torch.float64)
    cos, sin = rotary_angles(torch.arange(10) * 7, hd, 10000.0)
    y = apply_rotary(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    assert (y - x).abs().max() > 1e-2  # it does rotate
    # position 0 is the identity
    cos0, sin0 = rotary_angles(torch.zeros(1, dtype=torch.long), hd, 10000.0)
    torch.testing.assert_close(apply_rotary(x[..., :1, :], cos0, sin0), x[..., :1, :])


def test_rotary_dot_product_depends_only_on_relative_position():
    hd, base = 16, 10000.0
    g = torch.Generator().manual_seed(0)
    q = torch.randn(hd, dtype=torch.float64, generator=g)
    k = torch.randn(hd, dtype=torch.float64, generator=g)

    def dot(m, n):
        cq, sq = rotary_angles(torch.tensor([m]), hd, base)
        ck, sk = rotary_angles(torch.tensor([n]), hd, base)
        return float((apply_rotary(q.view(1, hd), cq, sq) * apply_rotary(k.view(1, hd), ck, sk)).sum())

    for offset in (0, 1, 3, 17):
        values = [dot(m + offset, m) for m in (0, 5, 40, 123)]
        assert max(values) - min(values) < 1e-4, (offset, values)
    # different offsets give different scores
    assert abs(dot(3, 0) - dot(4, 0)) > 1e-3
    assert abs(dot(0, 0) - dot(17, 0)) > 1e-3


def test_energy_head_reductions():
    torch.manual_seed(0)
    head = EnergyHead(8, reduction="sum").double()
    with torch.no_grad():
        head.norm.weight.normal_()  # a non-trivial gain, so the reference below has to apply it
    h = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    # reference, written out: RMS-normalise each token, apply the gain, project to a scalar
    normed = h / (h.pow(2).mean(-1, keepdim=True) + head.norm.eps).sqrt() * head.norm.weight
    tokens = normed @ head.proj.weight.view(8) + head.proj.bias  # (2, 3, 5)
    torch.testing.assert_close(head(h), tokens.sum(-1))
    # the energy of a candidate does not depend on the order of its tokens
    torch.testing.assert_close(head(h.flip(-2)), head(h))
    head.reduction = "mean"
    torch.testing.assert_close(head(h), tokens.sum(-1) / 5)
    # each candidate's energy is its own: changing one candidate's tokens leaves the others unchanged
    h2 = h.clone()
    h2[1, 2] += 1.0
    changed = (head(h2) - head(h)).abs() > 1e-9
    assert changed.tolist() == [[False, False, False], [False, False, True]]
