"""Implicit-gradient training (think.gradient=implicit): the gradient at the final candidate matches the
closed form on a quadratic energy and unrolling to convergence on a small network energy; bad settings
name their key; a forecast training step gets finite, non-zero gradients and alpha gets none."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ebt_forecast.think import ConfigError, StepSize, ThinkConfig, attach_implicit_gradient, damped_cg, think

D, N = 5, 3


def _implicit_cfg(**kw) -> ThinkConfig:
    base = dict(gradient="implicit", alpha_random_scale=1.0, learn_alpha=False, truncate=False, num_candidates=1)
    return ThinkConfig(**{**base, **kw}).validate()


# ---------------------------------------------------------------- the linear solve


def test_damped_cg_solves_each_row_of_a_positive_definite_system():
    """Per row, (H + lambda I) v = r is solved to float64 precision in at most D iterations."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(D, D, generator=g, dtype=torch.float64)
    h = m @ m.T + 0.5 * torch.eye(D, dtype=torch.float64)
    rhs = torch.randn(N, D, generator=g, dtype=torch.float64)
    v = damped_cg(lambda p: p @ h, rhs, damping=0.3, iters=D)
    expected = torch.linalg.solve(h + 0.3 * torch.eye(D, dtype=torch.float64), rhs.T).T
    torch.testing.assert_close(v, expected, rtol=1e-8, atol=1e-10)


def test_damped_cg_stops_at_negative_curvature_with_a_bounded_answer():
    """An indefinite H the damping does not fix: the row falls back to rhs / damping, never blows up."""
    h = torch.diag(torch.tensor([-4.0, 1.0], dtype=torch.float64))
    rhs = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # all of it along the negative direction
    v = damped_cg(lambda p: p @ h, rhs, damping=0.5, iters=10)
    torch.testing.assert_close(v, rhs / 0.5)


# ---------------------------------------------------------------- exact gradients


class Quadratic(nn.Module):
    """E(y) = 0.5 y^T A y - b^T y per row, A = M M^T + I (theta = M and b); minimiser y* = A^-1 b."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.m = nn.Parameter(0.4 * torch.randn(D, D, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(N, D, generator=g, dtype=torch.float64))

    def a(self) -> torch.Tensor:
        return self.m @ self.m.T + torch.eye(D, dtype=torch.float64)

    def energy_fn(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        b = self.b if index is None else self.b[index]
        return 0.5 * ((x @ self.a()) * x).sum(-1) - (b * x).sum(-1)


def test_implicit_gradient_matches_the_closed_form_on_a_quadratic_energy():
    """L = ||y* - t||^2: dL/db = A^-1 2 (y* - t) and dL/dM from differentiating y* = A^-1 b exactly
    (torch.linalg.solve); the engine's implicit gradient agrees to 1e-8 (float64, damping 0)."""
    q = Quadratic()
    target = torch.randn(N, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # thinking to convergence: alpha below 2 / lambda_max, 300 steps
    alpha = 1.0 / float(torch.linalg.eigvalsh(q.a().detach()).max())
    cfg = _implicit_cfg(train_steps=300, alpha=alpha, implicit_cg_iters=2 * D, implicit_damping=0.0)
    init = torch.zeros(N, 1, D, dtype=torch.float64)
    out = think(q.energy_fn, init, cfg, StepSize(alpha, learnable=False), training=True)
    y_star = out.candidates[:, 0]
    ((y_star - target) ** 2).sum().backward()

    exact = torch.linalg.solve(q.a().detach(), q.b.detach().T).T
    torch.testing.assert_close(y_star.detach(), exact, rtol=1e-10, atol=1e-10)
    dldb = torch.linalg.solve(q.a().detach(), 2 * (exact - target).T).T  # A symmetric
    torch.testing.assert_close(q.b.grad, dldb, rtol=1e-8, atol=1e-10)
    m = q.m.detach().clone().requires_grad_(True)
    a = m @ m.T + torch.eye(D, dtype=torch.float64)
    ((torch.linalg.solve(a, q.b.detach().T).T - target) ** 2).sum().backward()
    torch.testing.assert_close(q.m.grad, m.grad, rtol=1e-8, atol=1e-10)


class NetEnergy(nn.Module):
    """E(y | c) = 0.5 mu |y|^2 + MLP([y, c]) with c = encoder(context): strongly convex in y for mu = 2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.encoder = nn.Linear(4, 3).double()
        self.mlp = nn.Sequential(nn.Linear(D + 3, 16), nn.Tanh(), nn.Linear(16, 1)).double()
        nn.init.normal_(self.mlp[0].weight, std=0.3)

    def energy_fn(self, context: torch.Tensor):
        c = self.encoder(context)  # the cached context encoding, shared by every step

        def fn(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
            rows = c if index is None else c[index]
            return 1.0 * (x ** 2).sum(-1) + self.mlp(torch.cat([x, rows], -1)).squeeze(-1)

        return fn


def _net_gradients(gradient: str, steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net = NetEnergy()
    g = torch.Generator().manual_seed(4)
    context = torch.randn(N, 4, generator=g, dtype=torch.float64)
    target = torch.randn(N, D, generator=g, dtype=torch.float64)
    init = torch.randn(N, 1, D, generator=g, dtype=torch.float64)
    cfg = _implicit_cfg(gradient=gradient, train_steps=steps, alpha=0.25, implicit_cg_iters=30, implicit_damping=0.0)
    out = think(net.energy_fn(context), init, cfg, StepSize(0.25, learnable=False), training=True)
    ((out.candidates[:, 0] - target) ** 2).sum().backward()
    return out.candidates.detach(), {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


def test_implicit_gradient_matches_unrolling_to_convergence_on_a_network_energy():
    """Unrolling 150 steps (contraction ~0.5 per step) is the fixed point's derivative to float64 precision;
    the implicit gradient from only 150 graph-free steps + 30 CG iterations matches it to 1e-7, for the
    energy MLP and for the encoder behind the cached context alike."""
    y_unrolled, unrolled = _net_gradients("unrolled", 150)
    y_implicit, implicit = _net_gradients("implicit", 150)
    torch.testing.assert_close(y_implicit, y_unrolled)
    # every parameter but the energy's constant offset (mlp.2.bias) moves the fixed point
    expected = {"encoder.weight", "encoder.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight"}
    assert set(implicit) == set(unrolled) == expected
    for name, grad in unrolled.items():
        assert grad.abs().max() > 1e-3, name  # a real gradient, not zero against zero
        torch.testing.assert_close(implicit[name], grad, rtol=1e-7, atol=1e-9, msg=name)
    # a few unrolled steps are far from that fixed point's gradient: the comparison above can fail
    _, short = _net_gradients("unrolled", 2)
    assert (short["encoder.weight"] - unrolled["encoder.weight"]).abs().max() > 1e-2


def test_implicit_training_skips_rows_with_a_nonfinite_energy():
    """A row whose energy is NaN at y* gets no gradient and a NaN energy; the others keep theirs."""
    q = Quadratic()

    def fn(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        e = q.energy_fn(x, index)
        rows = torch.arange(N) if index is None else index
        return torch.where(rows == 1, torch.full_like(e, float("nan")), e)

    y, e = attach_implicit_gradient(fn, torch.zeros(N, D, dtype=torch.float64), cg_iters=D, damping=0.0)
    y.sum().backward()
    assert torch.isnan(e[1]) and torch.isfinite(e[[0, 2]]).all()
    assert torch.isfinite(q.b.grad).all() and (q.b.grad[1] == 0).all() and (q.b.grad[[0, 2]] != 0).all()


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("kwargs, key, allowed", [
    ({"gradient": "adjoint"}, "think.gradient", "unrolled, implicit"),
    ({"implicit_cg_iters": 0}, "think.implicit_cg_iters", ">= 1"),
    ({"implicit_damping": -0.1}, "think.implicit_damping", ">= 0"),
])
def test_implicit_settings_are_validated_by_name(kwargs, key, allowed):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        ThinkConfig(**kwargs).validate()
    assert allowed in str(err.value)


# ---------------------------------------------------------------- a real task


def test_forecast_training_step_with_implicit_gradient():
    """System 2 losses only: the energy path and the context encoder get finite, non-zero gradients through
    the implicit gradient; the learnable alpha gets none (the fixed point does not depend on it)."""
    from ebt_forecast.nn import TransformerConfig
    from ebt_forecast.tasks.base import TrainerConfig
    from ebt_forecast.tasks.forecast.config import ForecastLossConfig, ForecastTaskConfig
    from ebt_forecast.tasks.forecast.model import ForecastModelConfig
    from ebt_forecast.tasks.forecast.module import ForecastModule

    torch.manual_seed(0)
    task_cfg = ForecastTaskConfig(loss=ForecastLossConfig(proposal=0.0, refine=1.0, verify=0.0))
    model_cfg = ForecastModelConfig(context_length=16, horizon=8, patch_len=4, season_length=4,
                                    backbone=TransformerConfig(dim=16, depth=1, heads=2))
    think_cfg = ThinkConfig(gradient="implicit", train_steps=4, learn_alpha=True)
    module = ForecastModule(model_cfg, think_cfg, TrainerConfig(), task_cfg)
    torch.nn.init.normal_(module.model.energy_head.proj.weight, std=0.5)
    batch = {"context": torch.randn(4, 16), "context_mask": torch.ones(4, 16),
             "future": torch.randn(4, 8), "future_mask": torch.ones(4, 8)}
    with pytest.warns(UserWarning):  # self.log outside a Trainer
        loss = module.training_step(batch, 0)
    loss.backward()
    model = module.model
    for name, p in [("energy_head", model.energy_head.proj.weight), ("candidate_embed", model.candidate_embed.weight),
                    ("context_embed", model.context_embed.weight), ("energy_level", model.energy_level.proj.weight)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert module.step_size.raw.grad is None


def test_forecaster_trains_with_implicit_gradient_and_a_learnable_alpha(monkeypatch):
    """A few Lightning steps with think.gradient=implicit: alpha is learnable but gets no gradient and stays
    put, every other weight the energy and the proposals depend on moves, and the forecasts are finite."""
    from test_forecast import make_task, seasonal_series, small_config

    from ebt_forecast.tasks.forecast import forecaster as forecaster_module
    from ebt_forecast.tasks.forecast.forecaster import EBTForecaster

    initial = {}
    real_fit = forecaster_module.fit_module

    def recording_fit(module, *args, **kwargs):
        initial.update({k: v.detach().clone() for k, v in module.state_dict().items()})
        return real_fit(module, *args, **kwargs)

    monkeypatch.setattr(forecaster_module, "fit_module", recording_fit)
    task = make_task(seasonal_series(2, 300, seed=1), num_windows=1)
    ebt = EBTForecaster(small_config(max_steps=4, num_candidates=5, think={"gradient": "implicit", "train_steps": 3,
                                                                             "learn_alpha": True, "alpha": 0.7}), "ebt")
    ebt.fit(task)
    alpha = ebt.module.step_size.raw
    assert alpha.requires_grad and float(initial["step_size.raw"]) == pytest.approx(0.7)
    assert float(alpha.detach()) == float(initial["step_size.raw"])  # learnable, yet not moved at all
    trained = ebt.module.state_dict()
    params = [n for n, p in ebt.module.named_parameters() if p.requires_grad and n != "step_size.raw"]
    still = [n for n in params if torch.equal(trained[n], initial[n])]
    assert not still, f"weights that did not move: {still}"
    assert any(n.startswith("model.energy_head.") for n in params)  # the energy itself is among the moved weights
    assert all(np.isfinite(s).all() for s in ebt.predict(task.test_windows))


@pytest.mark.parametrize("command", ["benchmark", "text", "control"])
def test_think_implicit_config_selects_the_option_for_every_task(command):
    """`think=implicit` switches the gradient and keeps the task's own thinking defaults."""
    from dataclasses import replace

    from ebt_forecast.config import compose

    plain = compose(command, []).think
    chosen = compose(command, ["think=implicit", "think.implicit_cg_iters=5"]).think
    assert chosen.gradient == "implicit" and chosen.implicit_cg_iters == 5
    assert replace(chosen, gradient="unrolled", implicit_cg_iters=plain.implicit_cg_iters) == plain
