"""Tests of the modality-free thinking engine: convergence, pass accounting, stopping policies,
non-finite handling, second-order training, candidate selection, replay and config validation."""
import math

import pytest
import torch

from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.forecast.model import ForecastModelConfig, PatchForecastEBT, evenly_spaced_levels
from ebt_forecast.think import (
    ENERGY_FREE,
    ConfigError,
    ReplayBuffer,
    Starts,
    StepSize,
    ThinkConfig,
    draw_train_steps,
    energy_weighted_resample,
    energy_weights,
    select_lowest_energy,
    select_lowest_fraction,
    think,
    think_and_select,
)
from ebt_forecast.think.step_size import MIN_ALPHA


# ---------------------------------------------------------------- helpers


class QuadraticEnergy:
    """E(x) = ||x - x*_b||^2 per candidate, x*_b the target of the prediction the row belongs to.

    Counts the rows it is called with: every call is a forward pass over those rows; calls made
    with grad enabled on an input that requires grad are followed by one backward over them.
    """

    def __init__(self, targets, num_candidates, nan_rows=None, nan_above=None):
        self.targets = targets  # (B, *event)
        self.m = num_candidates
        self.nan_rows = nan_rows  # flat row ids whose energy is NaN once x[..., 0] > nan_above
        self.nan_above = nan_above
        self.forward_rows = 0
        self.backward_rows = 0
        self.calls = 0

    def __call__(self, x, index):
        n = x.shape[0]
        rows = torch.arange(n) if index is None else index
        self.calls += 1
        self.forward_rows += n
        if torch.is_grad_enabled() and x.requires_grad:
            self.backward_rows += n
        target = self.targets[torch.div(rows, self.m, rounding_mode="floor")]
        e = (x - target).pow(2).flatten(1).sum(1)
        if self.nan_rows is not None:
            bad = torch.isin(rows, torch.as_tensor(self.nan_rows)) & (x.detach().flatten(1)[:, 0] > self.nan_above)
            e = torch.where(bad, torch.full_like(e, float("nan")), e)
        return e


def _error(candidates, targets):
    """Max |x - x*| over everything: (B, M, *event) vs (B, *event)."""
    return (candidates - targets.unsqueeze(1)).abs().max().item()


def _quadratic_problem(batch=3, m=4, event=(5,), seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randn(batch, *event, generator=g) * 2
    init = torch.randn(batch, m, *event, generator=g) * 2
    return targets, init


# ---------------------------------------------------------------- convergence


def test_think_converges_to_quadratic_minimiser_monotonically():
    targets, init = _quadratic_problem()
    cfg = ThinkConfig(alpha=0.2, learn_alpha=False).validate()
    errors = []
    for k in (1, 2, 4, 8, 16, 32):
        res = think(QuadraticEnergy(targets, 4), init, cfg, StepSize(cfg.alpha, learnable=False), steps=k)
        errors.append(_error(res.candidates, targets))
        # the update is x <- x - 2 alpha (x - x*): the error contracts by exactly 1 - 2 alpha per step
        expected = init + (targets.unsqueeze(1) - init) * (1 - (1 - 2 * cfg.alpha) ** k)
        torch.testing.assert_close(res.candidates, expected, atol=1e-5, rtol=1e-5)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3, errors
    assert errors[0] > 0.1  # the first step alone is far from the minimiser: the test has teeth


def test_think_energies_decrease_and_record_is_consistent():
    targets, init = _quadratic_problem()
    cfg = ThinkConfig(alpha=0.2, infer_steps=6)
    res = think(QuadraticEnergy(targets, 4), init, cfg, StepSize(cfg.alpha), keep_trajectory=True)
    e = res.record.energies  # (T + 1, B, M)
    # E_t = ||x_t - x*||^2 = (1 - 2 alpha)^(2t) E_0 with E_0 computed here, not by the engine
    e0 = (init - targets.unsqueeze(1)).pow(2).sum(-1)
    expected = torch.stack([e0 * (1 - 2 * cfg.alpha) ** (2 * t) for t in range(7)])
    torch.testing.assert_close(e, expected, atol=1e-5, rtol=1e-4)
    assert (e[1:] < e[:-1]).all()
    torch.testing.assert_close(res.energies, e[-1])
    assert len(res.trajectory) == 7
    torch.testing.assert_close(res.trajectory[0], init)
    torch.testing.assert_close(res.trajectory[-1], res.candidates)
    assert not res.record.any_nonfinite
    assert (res.record.steps_taken == 6).all()


def test_max_update_clamps_each_step():
    targets = torch.full((1, 3), 100.0)
    init = torch.zeros(1, 2, 3)
    cfg = ThinkConfig(alpha=0.25, max_update=0.5, infer_steps=4)
    res = think(QuadraticEnergy(targets, 2), init, cfg, StepSize(cfg.alpha))
    torch.testing.assert_close(res.candidates, torch.full((1, 2, 3), 2.0))


# ---------------------------------------------------------------- pass accounting and stop policies


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_fixed_policy_pass_counts_exact(steps):
    batch, m = 3, 4
    n = batch * m
    targets, init = _quadratic_problem(batch, m)
    energy = QuadraticEnergy(targets, m)
    cfg = ThinkConfig(alpha=0.1, infer_steps=steps, stop_policy="fixed")
    res = think(energy, init, cfg, StepSize(cfg.alpha), final_energy=True)
    rec = res.record
    assert rec.forward_passes == n * (steps + 1) == energy.forward_rows
    assert rec.backward_passes == n * steps == energy.backward_rows
    assert rec.steps_budget == steps
    assert (rec.steps_taken == steps).all()


@pytest.mark.parametrize("steps", [0, 2])
def test_energy_free_selections_spend_no_final_energy_pass(steps):
    """A selection that never reads the final energies is not charged for them: its passes are lower by
    exactly that evaluation (at step 0: none at all). Asked for, or needed by uphill rejection, it is read."""
    b, m, g = 2, 3, 2
    n = b * m * g
    gen = torch.Generator().manual_seed(0)
    targets, grouped = torch.randn(b, 4, generator=gen), torch.randn(b, m, g, 4, generator=gen)

    def run(selection, cfg=ThinkConfig(alpha=0.1), **kwargs):
        energy = QuadraticEnergy(targets, m * g)
        thought = think_and_select(Starts(grouped[:, :, 0], grouped, energy), cfg, StepSize(cfg.alpha), steps=steps,
                                   selection=selection, **kwargs)
        passes = 0 if thought.record is None else thought.record.forward_passes
        assert passes == energy.forward_rows
        return thought, passes

    verified, full = run("verified")
    assert full == n * (steps + 1)
    for selection in ENERGY_FREE:
        thought, passes = run(selection)
        assert passes == full - n, selection
        assert torch.isnan(thought.energies).all() and (thought.record is None) == (steps == 0)
        torch.testing.assert_close(thought.grouped, verified.grouped)
    forced, passes = run("refined", final_energy=True)
    assert passes == full and torch.equal(forced.energies, verified.energies)
    assert run("refined", ThinkConfig(alpha=0.1, reject_uphill=True))[1] == full


def _expected_energy_change_steps(e0, alpha, tol, budget):
    """Energy after t steps is e0 * c^t, c = (1 - 2 alpha)^2; a sample evaluated at step t (t >= 1)
    stops when |E_t - E_{t-1}| < tol, after applying that step's update."""
    c = (1 - 2 * alpha) ** 2
    for t in range(budget):
        if t >= 1 and abs(e0 * c**t - e0 * c ** (t - 1)) < tol:
            return t + 1
    return budget


class WavyEnergy:
    """E(x) = sum(x^2 + 2 sin(3 x)): many local minima, so a fixed step of alpha overshoots uphill."""

    def __call__(self, x, index):
        return (x.pow(2) + 2 * torch.sin(3 * x)).flatten(1).sum(1)


def test_uphill_rejection_more_steps_never_raise_the_final_energy():
    """Without rejection alpha=0.6 overshoots (the energy goes up on some samples); with it, each sample's final
    energy is non-increasing in the number of steps, its mean falls, and passes are still counted per step."""
    g = torch.Generator().manual_seed(3)
    init = torch.randn(6, 5, 3, generator=g) * 2
    energy = WavyEnergy()
    plain = ThinkConfig(alpha=0.6, learn_alpha=False)
    start = energy(init.reshape(-1, 3), None).view(6, 5)
    free = think(energy, init, plain, StepSize(0.6), steps=8).energies
    assert (free > start + 1e-3).any()  # the plain loop ends uphill of its start somewhere
    guarded = ThinkConfig(alpha=0.6, learn_alpha=False, reject_uphill=True)
    finals = [think(energy, init, guarded, StepSize(0.6), steps=k) for k in (0, 1, 2, 4, 8, 16)]
    for fewer, more in zip(finals, finals[1:]):
        assert (more.energies <= fewer.energies + 1e-5).all()
        # the returned candidate is the one whose energy is reported
        recomputed = energy(more.candidates.reshape(-1, 3), None).view(6, 5)
        torch.testing.assert_close(recomputed, more.energies)
    assert finals[-1].energies.mean() < 0.8 * start.mean()
    assert finals[-1].record.backward_passes == 16 * 30 and finals[-1].record.forward_passes == 17 * 30


def test_energy_change_policy_steps_differ_and_passes_match_counter():
    # one prediction per distance; each candidate starts at a known squared distance from the target
    distances = torch.tensor([0.01, 1.0, 30.0, 300.0])
    batch, m, dim = len(distances), 2, 4
    targets = torch.zeros(batch, dim)
    init = torch.zeros(batch, m, dim)
    init[..., 0] = distances.sqrt().view(-1, 1)  # E0 = distance
    alpha, tol, budget = 0.25, 1e-3, 30
    energy = QuadraticEnergy(targets, m)
    cfg = ThinkConfig(alpha=alpha, infer_steps=budget, stop_policy="energy_change", stop_tolerance=tol).validate()
    res = think(energy, init, cfg, StepSize(alpha), final_energy=True)
    rec = res.record
    steps = rec.steps_taken
    expected = torch.tensor([_expected_energy_change_steps(float(d), alpha, tol, budget) for d in distances])
    assert torch.equal(steps, expected.view(-1, 1).expand(batch, m))
    assert len(set(expected.tolist())) == batch  # every distance stops at a different step
    assert (steps < budget).all()
    n = batch * m
    assert rec.backward_passes == int(steps.sum()) == energy.backward_rows
    assert rec.forward_passes == int(steps.sum()) + n == energy.forward_rows
    # energies are recorded exactly where a sample was evaluated
    evaluated = ~torch.isnan(rec.energies[:-1])
    assert torch.equal(evaluated.sum(0), steps)


def test_energy_threshold_policy_skips_low_energy_samples():
    batch, m, dim = 2, 3, 2
    targets = torch.zeros(batch, dim)
    init = torch.zeros(batch, m, dim)
    init[0, :, 0] = torch.tensor([0.1, 0.2, 3.0])  # energies 0.01, 0.04, 9
    init[1, :, 0] = torch.tensor([2.0, 0.05, 1.5])  # energies 4, 0.0025, 2.25
    energy = QuadraticEnergy(targets, m)
    k = 4
    cfg = ThinkConfig(alpha=0.1, infer_steps=k, stop_policy="energy_threshold", energy_threshold=0.5).validate()
    res = think(energy, init, cfg, StepSize(cfg.alpha), final_energy=True)
    rec = res.record
    above = torch.tensor([[False, False, True], [True, False, True]])
    assert torch.equal(rec.steps_taken, torch.where(above, k, 0))
    torch.testing.assert_close(res.candidates[~above], init[~above], atol=0, rtol=0)
    assert (res.candidates[above].abs().sum(-1) < init[above].abs().sum(-1)).all()
    n, active = batch * m, int(above.sum())
    assert rec.forward_passes == n + active * k + n == energy.forward_rows
    assert rec.backward_passes == active * k == energy.backward_rows


def test_energy_threshold_policy_all_below_spends_no_gradient():
    targets = torch.zeros(2, 3)
    init = torch.full((2, 2, 3), 0.01)
    energy = QuadraticEnergy(targets, 2)
    cfg = ThinkConfig(infer_steps=5, stop_policy="energy_threshold", energy_threshold=1.0)
    res = think(energy, init, cfg, StepSize(1.0))
    assert res.record.backward_passes == 0 == energy.backward_rows
    assert res.record.forward_passes == 8 == energy.forward_rows
    torch.testing.assert_close(res.candidates, init, atol=0, rtol=0)


# ---------------------------------------------------------------- non-finite energies


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_nonfinite_sample_keeps_last_finite_candidate(noise):
    batch, m, dim = 2, 2, 3
    targets = torch.full((batch, dim), 10.0)
    init = torch.zeros(batch, m, dim)
    bad_row = 1  # flat row (prediction 0, candidate 1)
    # the energy of row 1 is NaN once x[0] > 5: it is at 5 +- noise after one step and 7.5 after two
    energy = QuadraticEnergy(targets, m, nan_rows=[bad_row], nan_above=6.0)
    cfg = ThinkConfig(alpha=0.25, infer_steps=6, infer_langevin_std=noise)
    gen = torch.Generator().manual_seed(0)
    res = think(energy, init, cfg, StepSize(cfg.alpha), keep_trajectory=True, generator=gen)
    rec = res.record
    expected_flags = torch.zeros(batch * m, dtype=torch.bool)
    expected_flags[bad_row] = True
    assert torch.equal(rec.nonfinite.reshape(-1), expected_flags)
    flat = res.candidates.reshape(batch * m, dim)
    traj = [t.reshape(batch * m, dim) for t in res.trajectory]
    # row 1's energy is finite at step 0 (x = 0) and step 1 (x ~ 5), NaN at step 2 (x ~ 7.5)
    assert rec.steps_taken.reshape(-1)[bad_row] == 2
    last_finite = traj[2][bad_row]
    torch.testing.assert_close(flat[bad_row], last_finite, atol=0, rtol=0)
    assert torch.isfinite(flat).all()
    # the energy before the bad step was finite; the record holds the NaN at the bad step
    e = rec.energies.reshape(-1, batch * m)
    assert torch.isfinite(e[:2, bad_row]).all() and torch.isnan(e[2, bad_row])
    # the others keep improving to the end
    good = ~expected_flags
    err = lambda x: (x[good] - 10.0).abs().max(dim=1).values  # noqa: E731
    assert (err(flat) < err(traj[2])).all()
    assert (rec.steps_taken.reshape(-1)[good] == 6).all()
    assert err(flat).max() < 0.5


def test_nonfinite_sample_frozen_in_training_mode():
    targets = torch.full((1, 2), 10.0)
    init = torch.zeros(1, 3, 2)
    energy = QuadraticEnergy(targets, 3, nan_rows=[2], nan_above=6.0)
    cfg = ThinkConfig(alpha=0.25, train_steps=4, langevin_std=0.0, truncate=False)
    res = think(energy, init, cfg, StepSize(cfg.alpha), training=True, keep_trajectory=True)
    assert res.record.nonfinite.reshape(-1).tolist() == [False, False, True]
    torch.testing.assert_close(res.candidates[0, 2], res.trajectory[2][0, 2], atol=0, rtol=0)
    assert torch.isfinite(res.candidates).all()


# ---------------------------------------------------------------- training: second order through the loop


def _tiny_forecast_model(seed=0):
    torch.manual_seed(seed)
    cfg = ForecastModelConfig(context_length=12, horizon=6, patch_len=4, level_features=4,
                              backbone=TransformerConfig(dim=16, depth=2, heads=2, ffn_multiplier=1.0))
    model = PatchForecastEBT(cfg)
    # a fresh model's energy map is zero (thinking starts as the identity); give it a slope to test
    torch.nn.init.normal_(model.energy_head.proj.weight, std=0.5)
    return model


@pytest.mark.parametrize("truncate", [False, True])
def test_training_backprop_through_two_steps_reaches_backbone_and_alpha(truncate):
    model = _tiny_forecast_model()
    g = torch.Generator().manual_seed(1)
    b, m = 2, 3
    context = torch.randn(b, 12, generator=g)
    mask = torch.ones(b, 12)
    target = torch.randn(b, m, 6, generator=g)
    levels = evenly_spaced_levels(m, b)
    cache = model.encode(context, mask)
    init = model.propose(cache, levels)
    step = StepSize(1.0, learnable=True)
    cfg = ThinkConfig(train_steps=2, alpha=1.0, truncate=truncate, alpha_random_scale=1.0).validate()
    res = think(model.energy_fn(cache, levels), init, cfg, step, training=True)
    assert res.record.steps_taken.eq(2).all()
    assert res.candidates.requires_grad
    # the loss sees the backbone only through grad(energy): its gradient is second order
    loss = (res.candidates - target).pow(2).mean()
    loss.backward()
    for name, p in model.backbone.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # the energy head's weights shape grad(energy); its output bias does not (no gradient reaches it)
    for p in (model.energy_head.norm.weight, model.energy_head.proj.weight, model.candidate_embed.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # detach_init: the proposal head is not reached through the refinement
    assert model.proposal_out.weight.grad is None
    assert step.raw.grad is not None and torch.isfinite(step.raw.grad) and step.raw.grad != 0


def test_truncation_changes_alpha_gradient():
    grads = {}
    for truncate in (False, True):
        model = _tiny_forecast_model()
        levels = evenly_spaced_levels(2, 1)
        cache = model.encode(torch.randn(1, 12, generator=torch.Generator().manual_seed(3)), torch.ones(1, 12))
        init = torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(4))
        step = StepSize(50.0)
        cfg = ThinkConfig(train_steps=3, alpha=50.0, truncate=truncate)
        res = think(model.energy_fn(cache, levels), init, cfg, step, training=True)
        res.candidates.pow(2).sum().backward()
        grads[truncate] = step.raw.grad.item()
    assert math.isfinite(grads[False]) and math.isfinite(grads[True])
    assert grads[False] != pytest.approx(grads[True], rel=1e-6)


@pytest.mark.parametrize("truncate", [True, False])
def test_truncated_training_loss_reads_the_last_step_only(truncate):
    """Truncated, the steps before the last carry no gradient: a loss over the trajectory would add constants
    and weight the last step 1 / T. The trajectory then holds [init, final], so a loss over `loss_states`
    (or the tasks' `trajectory[1:]`) is the last step's alone; unrolled, it reads every step."""
    w = torch.nn.Parameter(torch.tensor(0.5))
    context = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    energy = lambda x, index: 0.5 * ((x - w * context.repeat_interleave(2, 0)) ** 2).sum(-1)  # noqa: E731
    cfg = ThinkConfig(train_steps=3, alpha=0.3, learn_alpha=False, truncate=truncate)
    init = torch.zeros(4, 2, 3)
    res = think(energy, init, cfg, StepSize(cfg.alpha, learnable=False), training=True, keep_trajectory=True)
    states = res.trajectory[1:] or [res.candidates]  # what the tasks' training steps average their loss over
    assert len(states) == (1 if truncate else 3)
    assert torch.equal(res.trajectory[0], init)
    torch.testing.assert_close(res.trajectory[-1], res.candidates, atol=0, rtol=0)
    assert all(a is b for a, b in zip(res.loss_states, states, strict=True))
    loss = lambda x: ((x - 2 * context.unsqueeze(1)) ** 2).mean()  # noqa: E731
    (over_states,) = torch.autograd.grad(torch.stack([loss(x) for x in states]).mean(), w, retain_graph=True)
    (last,) = torch.autograd.grad(loss(res.candidates), w)
    assert last.abs() > 1e-3
    if truncate:
        torch.testing.assert_close(over_states, last)
    else:
        assert not torch.allclose(over_states, last)


def test_inference_mode_builds_no_graph():
    model = _tiny_forecast_model()
    levels = evenly_spaced_levels(2, 1)
    cache = model.encode(torch.randn(1, 12), torch.ones(1, 12))
    init = model.propose(cache, levels)
    cfg = ThinkConfig(infer_steps=2, alpha=1.0)
    res = think(model.energy_fn(cache, levels), init, cfg, StepSize(1.0))
    assert not res.candidates.requires_grad
    assert not res.energies.requires_grad


# ---------------------------------------------------------------- step size and randomised steps


def test_randomised_alpha_within_bounds():
    alpha, s = 2.0, 3.0
    step = StepSize(alpha)
    g = torch.Generator().manual_seed(0)
    a = step.randomised((20000,), s, g)
    assert a.min() >= alpha / s - 1e-6 and a.max() <= alpha * s + 1e-6
    # the draw covers the range, close to both ends, uniformly: mean and median at the midpoint
    assert a.min() < alpha / s + 0.05 and a.max() > alpha * s - 0.05
    mid = (alpha / s + alpha * s) / 2
    assert a.mean().item() == pytest.approx(mid, abs=0.05)
    assert (a < mid).float().mean().item() == pytest.approx(0.5, abs=0.02)
    # scale 1 is a constant alpha
    assert torch.equal(step.randomised((5,), 1.0), torch.full((5,), alpha))


def test_randomised_alpha_is_differentiable_wrt_raw():
    step = StepSize(1.5)
    a = step.randomised((10,), 2.0, torch.Generator().manual_seed(0))
    a.sum().backward()
    assert step.raw.grad > 0


def test_step_size_floor_when_raw_negative():
    step = StepSize(0.5)
    with torch.no_grad():
        step.raw.fill_(-3.0)
    assert step().item() == pytest.approx(MIN_ALPHA)
    a = step.randomised((1000,), 2.0, torch.Generator().manual_seed(0))
    assert (a >= MIN_ALPHA / 2 - 1e-12).all() and (a > 0).all()


def test_frozen_step_size_gets_no_gradient_while_the_model_does():
    model = _tiny_forecast_model()
    levels = evenly_spaced_levels(2, 1)
    cache = model.encode(torch.randn(1, 12, generator=torch.Generator().manual_seed(5)), torch.ones(1, 12))
    init = torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(6))
    step = StepSize(1.0, learnable=False)
    res = think(model.energy_fn(cache, levels), init, ThinkConfig(train_steps=2), step, training=True)
    res.candidates.pow(2).sum().backward()
    assert step.raw.grad is None
    assert step().item() == 1.0
    assert model.energy_head.proj.weight.grad.abs().sum() > 0  # the loss did reach the model


def test_draw_train_steps_in_range_and_hits_both_ends():
    cfg = ThinkConfig(train_steps=5, train_steps_min=2).validate()
    g = torch.Generator().manual_seed(0)
    draws = [draw_train_steps(cfg, g) for _ in range(4000)]
    assert set(draws) == {2, 3, 4, 5}
    # uniform over the range: each value about a quarter of the draws (4 sigma ~ 0.027)
    for k in (2, 3, 4, 5):
        assert draws.count(k) / len(draws) == pytest.approx(0.25, abs=0.03), k
    # off: always train_steps
    assert {draw_train_steps(ThinkConfig(train_steps=3, train_steps_min=0), g) for _ in range(20)} == {3}


def test_training_think_uses_drawn_steps():
    targets, init = _quadratic_problem(1, 2)
    cfg = ThinkConfig(train_steps=4, train_steps_min=1, alpha=0.1)
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        energy = QuadraticEnergy(targets, 2)
        res = think(energy, init, cfg, StepSize(0.1), training=True, generator=g)
        k = res.record.steps_budget
        # the candidates really took k steps: x_k = x* + (1 - 2 alpha)^k (x_0 - x*), and k gradients were spent
        expected = targets.unsqueeze(1) + (1 - 2 * 0.1) ** k * (init - targets.unsqueeze(1))
        torch.testing.assert_close(res.candidates, expected, atol=1e-5, rtol=1e-5)
        assert res.record.backward_passes == 2 * k and energy.forward_rows == 2 * (k + 1)  # + the final energy
        assert (res.record.steps_taken == k).all()
        seen.add(k)
    assert seen == {1, 2, 3, 4}


# ---------------------------------------------------------------- candidate sets


def _candidates_and_energies(seed=0, b=4, m=6, event=(3, 2)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, m, *event, generator=g), torch.randn(b, m, generator=g)


def _labelled_candidates(b, m, event=(2,)):
    """Candidate j of set i is filled with the value 100 i + j, so a drawn candidate names itself."""
    labels = 100 * torch.arange(b).view(b, 1) + torch.arange(m).view(1, m)
    return labels.view(b, m, *[1] * len(event)).expand(b, m, *event).float()


def _labels(drawn, b):
    """(B, S, *event) labelled candidates -> (B, S) candidate indices within their set."""
    first = drawn.flatten(2)[..., 0]
    assert torch.equal(drawn, first.view(*first.shape, *[1] * (drawn.dim() - 2)).expand_as(drawn))
    idx = first - 100 * torch.arange(b).view(b, 1)
    return idx.round().long()


def _softmax_reference(energies, temperature):
    """exp(-E / T) / sum exp(-E / T) in float64, over the finite energies of each row (0 elsewhere)."""
    e = energies.double()
    finite = torch.isfinite(e)
    shifted = torch.where(finite, -e / temperature, torch.tensor(-math.inf, dtype=torch.float64))
    shifted = shifted - shifted.max(dim=1, keepdim=True).values  # exact rescaling, avoids overflow
    w = torch.where(finite, shifted.exp(), torch.zeros_like(e))
    return w / w.sum(dim=1, keepdim=True)


def test_select_lowest_energy_picks_argmin():
    # the lowest energy sits neither first nor last, and the candidates' own values do not give it away
    energies = torch.tensor([[3.0, 1.0, 2.0, 5.0],
                             [0.5, 4.0, -1.0, 7.0],
                             [float("nan"), 9.0, 8.5, float("nan")],
                             [float("inf"), 2.0, float("-inf"), 0.0]])
    cands = _labelled_candidates(4, 4, (3, 2))
    best = select_lowest_energy(cands, energies)
    assert best.shape == (4, 3, 2)
    assert best[:, 0, 0].tolist() == [1.0, 102.0, 202.0, 302.0]  # NaN never chosen; -inf is the lowest
    # a single-candidate set returns that candidate
    assert torch.equal(select_lowest_energy(cands[:, :1], energies[:, :1].nan_to_num(0.0)), cands[:, 0])


def test_select_lowest_fraction_keeps_lowest():
    energies = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 6.0, 7.0],
                             [0.0, float("nan"), -3.0, 9.0, 1.0, 2.0, float("nan"), 8.0]])
    cands = _labelled_candidates(2, 8, (3,))
    quarter = _labels(select_lowest_fraction(cands, energies, 0.25), 2)
    assert quarter.tolist() == [[5, 1], [2, 0]]  # ordered by energy, lowest first
    half = _labels(select_lowest_fraction(cands, energies, 0.5), 2)
    assert half.tolist() == [[5, 1, 3, 4], [2, 0, 4, 5]]
    # NaN energies come last: they are kept only when the fraction reaches them
    everything = _labels(select_lowest_fraction(cands, energies, 1.0), 2)
    assert everything[1, :6].tolist() == [2, 0, 4, 5, 7, 3] and set(everything[1, 6:].tolist()) == {1, 6}
    # at least one survives, and it is the lowest-energy candidate
    one = select_lowest_fraction(cands, energies, 0.01)
    assert _labels(one, 2).tolist() == [[5], [2]]


def test_energy_weights_are_boltzmann_and_sharpen_at_low_temperature():
    energies = torch.tensor([[3.0, 1.0, 2.0, 5.0],
                             [0.2, 0.1, 0.3, -0.4]])
    argmin = torch.tensor([1, 3])
    on_best = []
    for t in (10.0, 1.0, 0.3, 0.1):
        w = energy_weights(energies, t)
        torch.testing.assert_close(w.double(), _softmax_reference(energies, t), atol=1e-6, rtol=1e-5)
        on_best.append(w[torch.arange(2), argmin])
    # lowering the temperature moves weight onto the lowest energy, monotonically
    for hot, cold in zip(on_best, on_best[1:]):
        assert (cold > hot).all()
    assert (on_best[-1] > 0.9).all()
    # a very high temperature is close to uniform
    torch.testing.assert_close(energy_weights(energies, 1e4), torch.full((2, 4), 0.25), atol=1e-3, rtol=0)
    # shifting all energies of a set leaves its weights unchanged, also far from zero (no overflow)
    torch.testing.assert_close(energy_weights(energies + 1000.0, 0.1), energy_weights(energies, 0.1))
    assert torch.isfinite(energy_weights(energies * 1e4, 0.01)).all()
    # a NaN energy gets no weight; the others are renormalised among themselves
    with_nan = energies.clone()
    with_nan[0, 1] = float("nan")
    w = energy_weights(with_nan, 1.0)
    assert w[0, 1] == 0
    torch.testing.assert_close(w.double(), _softmax_reference(with_nan, 1.0), atol=1e-6, rtol=1e-5)


def test_nonfinite_energies_get_zero_weight_and_a_set_without_finite_ones_equal_weights():
    nan, inf = float("nan"), float("inf")
    energies = torch.tensor([[nan, nan, nan, nan], [nan, 1.0, inf, -inf], [inf, -inf, nan, inf], [0.0, 1.0, 2.0, 3.0]])
    w = energy_weights(energies, 1.0)
    torch.testing.assert_close(w[:3], torch.tensor([[0.25] * 4, [0.0, 1.0, 0.0, 0.0], [0.25] * 4]))
    torch.testing.assert_close(w[3:].double(), _softmax_reference(energies[3:], 1.0))
    # resampling draws from those weights rather than failing on NaN probabilities
    drawn = _labels(energy_weighted_resample(_labelled_candidates(4, 4, (2,)), energies, 400,
                                             generator=torch.Generator().manual_seed(0)), 4)
    assert (drawn[1] == 1).all() and set(drawn[0].tolist()) == set(drawn[2].tolist()) == {0, 1, 2, 3}
    # through the pipeline: the weighted selection of a set without finite energies is its plain average,
    # and the Thought counts the sets compared blind (per proposal for weighted, per prediction for resample)
    starts = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    blind = Starts(starts[:, :, 0], starts, lambda x, index: torch.full((x.shape[0],), nan))
    weighted = think_and_select(blind, ThinkConfig(), StepSize(1.0), steps=0, selection="weighted")
    torch.testing.assert_close(weighted.samples, starts.mean(2))
    assert weighted.unverified == 2 * 3
    resampled = think_and_select(blind, ThinkConfig(), StepSize(1.0), steps=0, selection="resample",
                                 generator=torch.Generator().manual_seed(2))
    assert resampled.unverified == 2 and torch.isfinite(resampled.samples).all()
    seen = Starts(starts[:, :, 0], starts, lambda x, index: x.sum(-1))
    assert think_and_select(seen, ThinkConfig(), StepSize(1.0), steps=0, selection="weighted").unverified == 0


def test_energy_weighted_resample_frequencies_follow_boltzmann_weights():
    energies = torch.tensor([[0.0, 0.5, 1.0, 2.0, float("nan")],
                             [2.0, 0.0, 0.3, 5.0, 1.0]])
    cands = _labelled_candidates(2, 5, (3,))
    n, t = 20000, 0.7
    out = energy_weighted_resample(cands, energies, n, temperature=t, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, n, 3)
    idx = _labels(out, 2)  # every draw is one whole candidate of its own set
    freq = torch.stack([torch.bincount(idx[i], minlength=5) for i in range(2)]).double() / n
    expected = _softmax_reference(energies, t)
    # binomial std <= 0.0036 at n = 20000: 0.015 is about 4 sigma
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
    assert freq[0, 4] == 0  # a NaN-energy candidate is never drawn


def test_energy_weighted_resample_low_temperature_and_reproducible():
    energies = torch.tensor([[3.0, 1.0, 2.0, 5.0], [0.5, 4.0, -1.0, 7.0]])
    cands = _labelled_candidates(2, 4, (3, 2))
    out = energy_weighted_resample(cands, energies, 50, temperature=1e-6, generator=torch.Generator().manual_seed(0))
    assert _labels(out, 2).tolist() == [[1] * 50, [2] * 50]  # all mass on the argmin (not first, not last)
    cands, energies = _candidates_and_energies()
    a = energy_weighted_resample(cands, energies, 30, temperature=2.0, generator=torch.Generator().manual_seed(7))
    b = energy_weighted_resample(cands, energies, 30, temperature=2.0, generator=torch.Generator().manual_seed(7))
    c = energy_weighted_resample(cands, energies, 30, temperature=2.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- replay buffer


def test_replay_buffer_fifo():
    buf = ReplayBuffer(5)
    buf.push({"x": torch.arange(3).float().unsqueeze(1), "y": torch.arange(3) * 10})
    assert len(buf) == 3
    assert buf.oldest()["x"].item() == 0
    buf.push({"x": torch.arange(3, 8).float().unsqueeze(1), "y": torch.arange(3, 8) * 10})  # 8 rows pushed
    assert len(buf) == 5
    assert buf.oldest()["x"].item() == 3 and buf.oldest()["y"].item() == 30
    assert [r["x"].item() for r in buf._rows] == [3, 4, 5, 6, 7]
    buf.push({"x": torch.tensor([[8.0]]), "y": torch.tensor([80])})
    assert buf.oldest()["x"].item() == 4
    n = 5000
    batch = buf.sample(n, torch.Generator().manual_seed(0))
    # only the five live rows are drawn, each about a fifth of the time (4 sigma ~ 0.023)
    drawn = batch["x"].squeeze(1).long()
    assert set(drawn.tolist()) == {4, 5, 6, 7, 8}
    for v in range(4, 9):
        assert (drawn == v).float().mean().item() == pytest.approx(0.2, abs=0.025), v
    torch.testing.assert_close(batch["y"].float(), batch["x"].squeeze(1) * 10)  # a row's fields stay together


def test_replay_buffer_stores_detached_copies():
    buf = ReplayBuffer(2)
    x = torch.ones(2, 3, requires_grad=True)
    buf.push({"x": x * 2})
    assert not buf.oldest()["x"].requires_grad


def test_replay_buffer_capacity_zero_stores_nothing():
    buf = ReplayBuffer(0)
    buf.push({"x": torch.ones(4, 2)})
    assert len(buf) == 0
    with pytest.raises(ValueError):
        buf.sample(1)
    with pytest.raises(ValueError):
        ReplayBuffer(-1)


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "kwargs, key, allowed",
    [
        ({"train_steps": -1}, "think.train_steps", ">= 0"),
        ({"infer_steps": -2}, "think.infer_steps", ">= 0"),
        ({"train_steps": 3, "train_steps_min": 4}, "think.train_steps_min", "in [0, train_steps=3]"),
        ({"alpha": 0.0}, "think.alpha", "> 0"),
        ({"alpha": -1.0}, "think.alpha", "> 0"),
        ({"num_candidates": 0}, "think.num_candidates", ">= 1"),
        ({"stop_policy": "sometimes"}, "think.stop_policy", "one of fixed, energy_change, energy_threshold"),
        ({"replay_fraction": 1.0}, "think.replay_fraction", "in [0, 1)"),
        ({"temperature": 0.0}, "think.temperature", "> 0"),
        ({"alpha_random_scale": 0.5}, "think.alpha_random_scale", ">= 1"),
    ],
)
def test_config_validate_names_key_and_range(kwargs, key, allowed):
    with pytest.raises(ConfigError) as info:
        ThinkConfig(**kwargs).validate()
    msg = str(info.value)
    value = kwargs[key.split(".")[-1]]
    assert f"{key}={value!r}" in msg  # names the key and the offending value
    assert allowed in msg


@pytest.mark.parametrize(
    "kwargs",
    [
        {"train_steps": 0, "train_steps_min": 0, "infer_steps": 0},
        {"train_steps": 3, "train_steps_min": 3},
        {"alpha_random_scale": 1.0, "replay_fraction": 0.0, "temperature": 1e-9, "alpha": 1e-9},
        {"stop_policy": "energy_threshold", "stop_tolerance": 0.0, "max_update": 0.0},
    ],
)
def test_config_validate_accepts_boundary_values(kwargs):
    cfg = ThinkConfig(**kwargs)
    assert cfg.validate() is cfg


def test_config_validate_prefix_and_valid_default():
    cfg = ThinkConfig()
    assert cfg.validate() is cfg
    with pytest.raises(ConfigError, match=r"model\.think\.alpha"):
        ThinkConfig(alpha=-1).validate(prefix="model.think")
