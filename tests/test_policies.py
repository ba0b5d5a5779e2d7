"""Inference policies are objects handed to `think()` and recorded in its output; no module config is swapped."""
from __future__ import annotations

import torch

from ebt_forecast.think import InferencePolicy, ThinkConfig, think
from ebt_forecast.think.step_size import StepSize
from tests.test_think import QuadraticEnergy, WavyEnergy, _expected_energy_change_steps


def test_a_policy_object_sets_the_stopping_rule_and_is_recorded():
    """The same config, with a policy passed per call: energy_change stops each candidate where |dE| < tol (the
    quadratic's energy shrinks by (1 - 2 alpha)^2 per step), the fixed policy spends the whole budget."""
    targets = torch.zeros(2, 3)
    init = torch.zeros(2, 1, 3)
    init[:, 0, 0] = torch.tensor([0.1, 10.0])  # E0 = 0.01 and 100
    cfg = ThinkConfig(alpha=0.25, infer_steps=30).validate()
    stop = InferencePolicy("energy_change", tolerance=1e-3)
    early = think(QuadraticEnergy(targets, 1), init, cfg, StepSize(0.25), policy=stop)
    full = think(QuadraticEnergy(targets, 1), init, cfg, StepSize(0.25))
    assert early.record.policy == stop and full.record.policy == InferencePolicy.of(cfg) == InferencePolicy()
    # E_t = E0 / 4^t; the step that measures |E_t - E_t-1| = 0.75 E0 / 4^t < 1e-3 is the last: t + 1 steps
    assert early.record.steps_taken.view(-1).tolist() == [_expected_energy_change_steps(e0, 0.25, 1e-3, 30)
                                                          for e0 in (0.01, 100.0)] == [4, 11]
    assert (full.record.steps_taken == 30).all()
    assert cfg.stop_policy == "fixed"  # the config is untouched


def test_uphill_rejection_as_a_policy_matches_the_config_switch():
    init = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0)) * 2
    plain = ThinkConfig(alpha=0.6, learn_alpha=False)
    by_object = think(WavyEnergy(), init, plain, StepSize(0.6), steps=8, policy=InferencePolicy(reject_uphill=True))
    by_config = think(WavyEnergy(), init, ThinkConfig(alpha=0.6, learn_alpha=False, reject_uphill=True),
                      StepSize(0.6), steps=8)
    without = think(WavyEnergy(), init, plain, StepSize(0.6), steps=8)
    torch.testing.assert_close(by_object.energies, by_config.energies)
    assert not torch.allclose(by_object.energies, without.energies)
    assert by_object.record.policy.reject_uphill


def test_fixed_steps_passes_is_what_the_engine_spends():
    """The pass formula the text and video tables use equals the engine's own record and an energy call counter."""
    from ebt_forecast.think import fixed_steps_passes

    targets, init = torch.zeros(2, 3), torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    cfg = ThinkConfig(alpha=0.1).validate()
    for steps in (0, 1, 3):
        for final in (False, True):
            energy = QuadraticEnergy(targets, 4)
            record = think(energy, init, cfg, StepSize(0.1), steps=steps, final_energy=final).record
            assert (record.forward_passes, record.backward_passes) == fixed_steps_passes(steps, 8, final)
            assert (energy.forward_rows, energy.backward_rows) == fixed_steps_passes(steps, 8, final)
