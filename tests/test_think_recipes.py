"""The engine's hooks for the reference recipes: candidate transform, noise at evaluation, step landscapes,
detaching between steps, alpha scaling for longer inference and per-position alpha."""
from __future__ import annotations

import torch

from ebt_forecast.think import InferencePolicy, StepSize, ThinkConfig, think


def linear_energy(weights: torch.Tensor):
    """E(p) = sum(weights * p) + 0.5 |p|^2 per candidate: dE/dp = weights + p."""

    def energy(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        return (weights * x).flatten(1).sum(1) + 0.5 * x.pow(2).flatten(1).sum(1)

    return energy


def test_softmax_transform_gives_the_reference_text_update():
    torch.manual_seed(0)
    state = torch.randn(2, 1, 3, 5)  # B=2, M=1, S=3 positions, V=5
    weights = torch.randn(3, 5)
    cfg = ThinkConfig(alpha=7.0, learn_alpha=False)
    result = think(linear_energy(weights), state, cfg, StepSize(7.0, learnable=False), steps=1,
                   transform=lambda s: s.softmax(-1), final_energy=False)
    p = state.reshape(2, 3, 5).softmax(-1)
    expected = p - 7.0 * (weights + p)  # p - alpha dE/dp: the new state, read as logits
    torch.testing.assert_close(result.candidates.reshape(2, 3, 5), expected)
    # and differs from the plain gradient step on the logits through the softmax
    z = state.reshape(2, 3, 5).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(linear_energy(weights)(z.softmax(-1), None).sum(), z)
    assert not torch.allclose(result.candidates.reshape(2, 3, 5), z.detach() - 7.0 * g, atol=1e-2)


def test_langevin_noise_never_enters_the_state():
    flat = lambda x, index: 0.0 * x.flatten(1).sum(1)  # noqa: E731  (zero gradient: only noise could move x)
    init = torch.randn(4, 2, 6)
    for training in (False, True):
        cfg = ThinkConfig(langevin_std=5.0, infer_langevin_std=5.0, alpha=1.0, truncate=False)
        result = think(flat, init, cfg, StepSize(1.0), training=training, steps=6, keep_trajectory=True)
        torch.testing.assert_close(result.candidates.detach(), init)


def test_noise_is_where_the_gradient_is_taken():
    """Quadratic E = 0.5 |x|^2: x' = x - alpha (x + noise), the noise entering through the gradient only."""
    init = torch.randn(3, 1, 4)
    cfg = ThinkConfig(infer_langevin_std=0.5, alpha=0.3, learn_alpha=False)
    gen = torch.Generator().manual_seed(3)
    result = think(linear_energy(torch.zeros(4)), init, cfg, StepSize(0.3, learnable=False), steps=1, generator=gen,
                   final_energy=False)
    noise = 0.5 * torch.randn((3, 4), generator=torch.Generator().manual_seed(3))
    x = init.reshape(3, 4)
    torch.testing.assert_close(result.candidates.reshape(3, 4), x - 0.3 * (x + noise))


def test_step_embedding_passes_each_step_its_landscape():
    seen: list[int] = []

    def energy(x: torch.Tensor, index: torch.Tensor | None, step: int) -> torch.Tensor:
        seen.append(step)
        return (step + 1.0) * 0.5 * x.pow(2).flatten(1).sum(1)

    cfg = ThinkConfig(train_steps=2, step_embedding=True, alpha=0.1, learn_alpha=False)
    init = torch.ones(1, 1, 2)
    result = think(energy, init, cfg, StepSize(0.1, learnable=False), steps=4, final_energy=True)
    assert seen == [0, 1, 1, 1, 1]  # 4 steps, then the final energy; beyond the trained steps: the last landscape
    # the landscape's curvature reached the update: (1 - 0.1) (1 - 0.2)^3
    torch.testing.assert_close(result.candidates.flatten(), torch.full((2,), 0.9 * 0.8 ** 3))


def test_detach_steps_cuts_the_graph_between_steps():
    init = torch.randn(2, 1, 3, requires_grad=True)
    scale = torch.tensor(2.0, requires_grad=True)
    energy = lambda x, index: scale * 0.5 * x.pow(2).flatten(1).sum(1)  # noqa: E731
    for detach, reaches_init in ((True, False), (False, True)):
        cfg = ThinkConfig(train_steps=2, alpha=0.1, detach_init=False, detach_steps=detach, truncate=False)
        result = think(energy, init, cfg, StepSize(0.1), training=True, steps=2, keep_trajectory=True,
                       final_energy=False)
        last = result.loss_states[-1].sum()
        grad_init, grad_scale = torch.autograd.grad(last, [init, scale], allow_unused=True)
        assert (grad_init is not None and grad_init.abs().sum() > 0) == reaches_init
        assert grad_scale is not None and grad_scale.abs() > 0  # each step still trains its own landscape
        assert len(result.loss_states) == 2


def test_alpha_scaling_for_longer_inference():
    init = torch.ones(1, 1, 2)
    energy = linear_energy(torch.zeros(2))  # E = 0.5 |x|^2: x_T = x_0 (1 - alpha)^T
    for scaled, factor in ((True, 0.25 * 2 / 4), (False, 0.25)):
        cfg = ThinkConfig(train_steps=2, alpha=0.25, infer_alpha_scaling=scaled, learn_alpha=False)
        result = think(energy, init, cfg, StepSize(0.25, learnable=False), steps=4, final_energy=False)
        torch.testing.assert_close(result.candidates.flatten(), torch.full((2,), (1 - factor) ** 4))
        assert result.record.policy.alpha_scaling == scaled
    # a policy asks for it without touching the config
    result = think(energy, init, ThinkConfig(train_steps=2, alpha=0.25), StepSize(0.25, learnable=False), steps=4,
                   final_energy=False, policy=InferencePolicy(alpha_scaling=True))
    torch.testing.assert_close(result.candidates.flatten(), torch.full((2,), 0.875 ** 4))


def test_alpha_randomised_per_position():
    init = torch.ones(3, 1, 5, 4)  # 5 positions of 4 values
    energy = linear_energy(torch.zeros(5, 4))
    cfg = ThinkConfig(alpha=0.2, alpha_random_scale=2.0, alpha_random_dims=1, truncate=False)
    result = think(energy, init, cfg, StepSize(0.2), training=True, steps=1, generator=torch.Generator().manual_seed(0),
                   final_energy=False)
    shrink = 1 - result.candidates.detach().reshape(3, 5, 4)  # = alpha per (candidate, position)
    torch.testing.assert_close(shrink, shrink[..., :1].expand(-1, -1, 4))  # one alpha per position
    assert shrink[:, :, 0].std(dim=1).min() > 1e-3  # which differs between positions
    assert ((shrink >= 0.1 - 1e-6) & (shrink <= 0.4 + 1e-6)).all()  # within [alpha / 2, alpha * 2]
