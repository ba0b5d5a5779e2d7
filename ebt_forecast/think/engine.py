"""The System 2 loop: refine candidates by gradient descent on a learned energy.

The engine knows nothing about the modality. It sees candidates shaped (B, M, *event) (B
predictions, M candidates each) and an energy function over a flat set of candidates:

    energy_fn(x, index) -> energies          (with cfg.step_embedding: energy_fn(x, index, step=t))
      x:     (N, *event) candidates
      index: None when x holds all B * M candidates in (B, M) order, otherwise the flat
             indices (into B * M) of the rows of x; the prediction a row belongs to is index // M
      step:  the thinking step whose landscape scores x (0-based, clamped to cfg.train_steps - 1)
      returns (N,) energies

so a task adapter can reuse one cached context for every step and every candidate, and the
engine can stop thinking on some samples and spend passes only on the others.

One step, for a state s (what the loss and the next step read) and an optional candidate transform T
(the task's; text: softmax, so the energy scores distributions):

    evaluated = T(s + noise)             noise: Langevin, only where the energy is evaluated
    g         = dE(evaluated) / d evaluated
    s'        = T(s + noise) - alpha g   with a transform (the reference's text update p - alpha dE/dp)
              = s - alpha g              without one: the noise never enters the state
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ebt_forecast.think.config import ThinkConfig
from ebt_forecast.think.implicit import attach_implicit_gradient
from ebt_forecast.think.step_size import StepSize

EnergyFn = Callable[..., Tensor]  # energy_fn(x, index[, step=t]) -> (N,) energies
Transform = Callable[[Tensor], Tensor]  # state (N, *event) -> the candidate the energy reads (N, *event)


@dataclass
class ThinkRecord:
    """What one call did: energies per step, steps per sample, passes spent, non-finite flags."""

    energies: Tensor  # (T + 1, B, M): energy before step t (row T = at the final candidate); NaN = not evaluated
    steps_taken: Tensor  # (B, M) update steps applied per candidate
    forward_passes: int  # candidate energy evaluations
    backward_passes: int  # candidate energy gradients
    nonfinite: Tensor  # (B, M) True where a NaN / inf energy or gradient stopped the sample
    steps_budget: int  # the number of steps asked for
    policy: "InferencePolicy | None" = None  # the inference policy this call ran (None while training)

    @property
    def any_nonfinite(self) -> bool:
        return bool(self.nonfinite.any())


@dataclass
class ThinkResult:
    """Final candidates (B, M, *event), their energies (B, M), the path, and the record."""

    candidates: Tensor
    energies: Tensor
    trajectory: list[Tensor] = field(default_factory=list)  # candidates after each step (step 0 = init);
    # training with cfg.truncate or gradient=implicit: [init, final] (only the final candidate carries a gradient)
    record: ThinkRecord | None = None

    @property
    def loss_states(self) -> list[Tensor]:
        """The candidates a training loss reads: after every step, or (truncated / implicit) the final one only."""
        return self.trajectory[1:] or [self.candidates]


class StopPolicy:
    """Fixed steps: every candidate thinks for the whole budget."""

    def initial_active(self, energies: Tensor) -> Tensor:
        return torch.ones_like(energies, dtype=torch.bool)

    def still_active(self, previous: Tensor, current: Tensor) -> Tensor:
        return torch.ones_like(current, dtype=torch.bool)


class EnergyChangeStop(StopPolicy):
    """Stop a candidate once its energy changes by less than `tolerance` in one step."""

    def __init__(self, tolerance: float):
        self.tolerance = tolerance

    def still_active(self, previous: Tensor, current: Tensor) -> Tensor:
        return (current - previous).abs() >= self.tolerance


class EnergyThresholdStop(StopPolicy):
    """Think only on candidates whose initial energy is above `threshold`."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def initial_active(self, energies: Tensor) -> Tensor:
        return energies > self.threshold


@dataclass(frozen=True)
class InferencePolicy:
    """How one inference call thinks, handed to `think()` and recorded in its `ThinkRecord`: the stopping rule
    (`fixed`: the whole budget; `energy_change`: stop a candidate once |dE| < tolerance; `energy_threshold`: think
    only where the start's energy > threshold) and uphill rejection (a step that raised the energy is undone and
    its alpha halved), and alpha scaling (T steps at alpha x train_steps / T). `InferencePolicy.of(cfg)` is the policy a config names; a study builds others without
    touching any module's config."""

    stop: str = "fixed"
    tolerance: float = 0.0
    threshold: float = 0.0
    reject_uphill: bool = False
    alpha_scaling: bool = False  # T steps at alpha x train_steps / T (thinking longer with the trained total step)

    @classmethod
    def of(cls, cfg: ThinkConfig) -> "InferencePolicy":
        """The inference policy of a think config."""
        common = {"reject_uphill": cfg.reject_uphill, "alpha_scaling": cfg.infer_alpha_scaling}
        if cfg.stop_policy == "energy_change":
            return cls("energy_change", tolerance=cfg.stop_tolerance, **common)
        if cfg.stop_policy == "energy_threshold":
            return cls("energy_threshold", threshold=cfg.energy_threshold, **common)
        return cls(**common)

    def with_alpha_scaling(self, scaled: bool) -> "InferencePolicy":
        """This policy with alpha scaling on or off."""
        return dataclasses.replace(self, alpha_scaling=scaled)

    def stop_rule(self) -> StopPolicy:
        """The per-candidate stopping rule."""
        if self.stop == "energy_change":
            return EnergyChangeStop(self.tolerance)
        if self.stop == "energy_threshold":
            return EnergyThresholdStop(self.threshold)
        if self.stop != "fixed":
            raise ValueError(f"InferencePolicy.stop={self.stop!r} is invalid: fixed, energy_change or energy_threshold")
        return StopPolicy()


def fixed_steps_passes(steps: int, starts: int, final_energy: bool) -> tuple[int, int]:
    """(forward, backward) passes `think` spends on `starts` candidates under the fixed policy: one energy and one
    gradient per step, plus the final energy when it is read (a selection that compares energies)."""
    return starts * (steps + int(final_energy)), starts * steps


def make_stop_policy(cfg: ThinkConfig) -> StopPolicy:
    """The stopping policy named by cfg.stop_policy."""
    return InferencePolicy.of(cfg).stop_rule()


def draw_train_steps(cfg: ThinkConfig, generator: torch.Generator | None = None) -> int:
    """Training steps for this call: fixed, or uniform in [train_steps_min, train_steps]."""
    if cfg.train_steps_min <= 0 or cfg.train_steps_min >= cfg.train_steps:
        return cfg.train_steps
    return int(torch.randint(cfg.train_steps_min, cfg.train_steps + 1, (1,), generator=generator))


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    """Reshape (N,) to broadcast against (N, *event)."""
    return values.view(-1, *[1] * (like.dim() - 1))


def _broadcast(values: Tensor, like: Tensor) -> Tensor:
    """Reshape (N, *lead) to broadcast against (N, *lead, *rest) (per-candidate or per-position alpha)."""
    return values.reshape(*values.shape, *[1] * (like.dim() - values.dim()))


def think(
    energy_fn: EnergyFn,
    init: Tensor,
    cfg: ThinkConfig,
    step_size: StepSize,
    *,
    training: bool = False,
    steps: int | None = None,
    final_energy: bool = True,
    keep_trajectory: bool = False,
    generator: torch.Generator | None = None,
    policy: InferencePolicy | None = None,
    transform: Transform | None = None,
) -> ThinkResult:
    """Refine candidates `init` (B, M, *event) by `candidate -= alpha * grad(energy)` (the module docstring's step).

    Training: randomised steps and alpha, Langevin noise and `create_graph` (second order; only
    the last step when cfg.truncate; each step on its own detached state when cfg.detach_steps).
    Inference: first-order only, with cfg's stopping policy, inference noise, and alpha x train_steps / steps
    when cfg.infer_alpha_scaling. `transform`: the task's candidate transform (module docstring).
    Training with cfg.gradient="implicit": the steps build no graph; the final candidates get the
    implicit-function-theorem gradient instead (implicit.py; alpha then gets none). `policy`: the inference
    policy (stopping rule, uphill rejection); None = the one cfg names; ignored while training. Training with
    cfg.truncate or implicit keeps the trajectory [init, final]: the earlier steps carry no gradient,
    so a loss averaged over them would only add constants and weight the last step 1 / T.
    """
    batch, num_candidates = init.shape[:2]
    n = batch * num_candidates
    event = init.shape[2:]
    if steps is None:
        steps = draw_train_steps(cfg, generator) if training else cfg.infer_steps
    noise_std = cfg.langevin_std if training else cfg.infer_langevin_std
    policy = None if training else (policy or InferencePolicy.of(cfg))
    rule = StopPolicy() if training else policy.stop_rule()
    implicit = training and cfg.gradient == "implicit"
    last_only = training and (implicit or cfg.truncate)  # the trajectory keeps [init, final]

    x = init.reshape(n, *event)
    if cfg.detach_init or not training:
        x = x.detach()
    alpha = step_size.randomised((n, *event[:cfg.alpha_random_dims]), cfg.alpha_random_scale if training else 1.0,
                                 generator)
    if not training and policy.alpha_scaling and steps > 0:
        alpha = alpha * (max(cfg.train_steps, 1) / steps)
    if not training or implicit:
        alpha = alpha.detach().clone()  # its own memory: uphill rejection halves it per sample
    detach_steps = training and cfg.detach_steps

    def energy_at(candidates: Tensor, index: Tensor | None, t: int) -> Tensor:
        """The energy of candidates in step t's landscape (the step index only reaches a step-embedded energy)."""
        if cfg.step_embedding:
            return energy_fn(candidates, index, step=max(0, min(t, cfg.train_steps - 1)))
        return energy_fn(candidates, index)

    def evaluated_of(state: Tensor) -> Tensor:
        return state if transform is None else transform(state)

    energies = torch.full((steps + 1, n), float("nan"), device=x.device, dtype=x.dtype)
    steps_taken = torch.zeros(n, dtype=torch.long, device=x.device)
    nonfinite = torch.zeros(n, dtype=torch.bool, device=x.device)
    forward_passes = backward_passes = 0
    trajectory = [x.reshape(batch, num_candidates, *event)] if keep_trajectory else []

    x_out = x  # the latest state with its graph (== x unless cfg.detach_steps)
    uphill = UphillRejection(x) if not training and policy.reject_uphill else None
    with torch.enable_grad():
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        if isinstance(rule, EnergyThresholdStop):
            with torch.no_grad():
                e0 = energy_at(evaluated_of(x), None, 0)
            forward_passes += n
            energies[0] = e0
            active = rule.initial_active(e0) & torch.isfinite(e0)
        previous = energies[0].clone()
        for t in range(steps):
            idx = active.nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            full = idx.numel() == n
            build_graph = training and not implicit and (not cfg.truncate or t == steps - 1)
            xa = x if full else x[idx]
            if not build_graph:
                xa = xa.detach()
            x_prev = xa  # the state before the step: where a non-finite sample stays
            noisy = xa
            if noise_std > 0:  # Langevin noise where the energy is evaluated; it never enters the state
                noisy = xa + noise_std * torch.randn(xa.shape, generator=generator, device=xa.device)
            evaluated = evaluated_of(noisy)
            if not evaluated.requires_grad:
                evaluated = evaluated.requires_grad_(True)
            anchor = evaluated if transform is not None else xa  # without a transform the noise stays out of the state
            e = energy_at(evaluated, None if full else idx, t)
            (g,) = torch.autograd.grad(e.sum(), evaluated, create_graph=build_graph)
            forward_passes += idx.numel()
            backward_passes += idx.numel()

            finite = torch.isfinite(e.detach()) & torch.isfinite(g.detach()).flatten(1).all(dim=1)
            if uphill is not None:  # step from the lowest-energy candidate seen; halve alpha where a step went up
                anchor, g = uphill.accept(idx, anchor.detach(), e.detach(), g.detach(), finite, alpha)
                x_prev = anchor
            update = _broadcast(alpha[idx], g) * g
            if cfg.max_update > 0:
                update = update.clamp(-cfg.max_update, cfg.max_update)
            # a non-finite energy or gradient freezes the sample at its last finite state
            xa_new = torch.where(_per_row(finite, g), anchor - update, x_prev)
            if not build_graph:
                xa_new = xa_new.detach()
            x = xa_new if full else x.index_copy(0, idx, xa_new.to(x.dtype))
            x_out = x  # carries this step's graph (the loss reads it)
            if detach_steps:
                x = x.detach()

            e_now = e.detach().to(energies.dtype)  # bf16 autocast gives bf16 energies
            energies[t, idx] = e_now
            steps_taken[idx] += finite.long()
            nonfinite[idx] |= ~finite
            seen_before = ~torch.isnan(previous[idx])
            keep = finite & (~seen_before | rule.still_active(previous[idx], e_now))
            active[idx] = keep
            previous[idx] = e_now
            if keep_trajectory and not last_only:
                trajectory.append(x_out.reshape(batch, num_candidates, *event))

        if implicit:  # the gradient is taken at the final candidate, so its energy is always read
            last_landscape = lambda c, index: energy_at(evaluated_of(c), index, steps - 1)  # noqa: E731
            x, final = attach_implicit_gradient(last_landscape, x, cfg.implicit_cg_iters, cfg.implicit_damping)
            x_out = x
            forward_passes += n
            backward_passes += n
            energies[steps] = final.detach()
        elif final_energy:
            grad_ctx = torch.enable_grad() if training else torch.no_grad()
            with grad_ctx:
                e_final = energy_at(evaluated_of(x_out if training else x.detach()), None, steps - 1)
            forward_passes += n
            energies[steps] = e_final.detach()
            final = e_final
            if uphill is not None:
                x, final = uphill.best(x.detach(), e_final.detach())
                x_out = x
        else:
            final = _last_finite(energies)
        if keep_trajectory and last_only:
            trajectory.append(x_out.reshape(batch, num_candidates, *event))

    record = ThinkRecord(
        energies=energies.view(steps + 1, batch, num_candidates),
        steps_taken=steps_taken.view(batch, num_candidates),
        forward_passes=forward_passes,
        backward_passes=backward_passes,
        nonfinite=nonfinite.view(batch, num_candidates),
        steps_budget=steps,
        policy=policy,
    )
    return ThinkResult(
        candidates=x_out.reshape(batch, num_candidates, *event),
        energies=final.view(batch, num_candidates),
        trajectory=trajectory,
        record=record,
    )


class UphillRejection:
    """Trust-region bookkeeping for inference: every sample keeps the lowest-energy candidate it has
    seen (and its gradient); a step that lands higher is undone and retried from there with half the
    step size. The final candidate is the lowest seen, so more steps never end at a higher energy."""

    def __init__(self, x: Tensor):
        self.x, self.g = x.detach().clone(), torch.zeros_like(x)
        self.e = torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)

    def accept(self, idx: Tensor, x: Tensor, e: Tensor, g: Tensor, finite: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """The candidate and gradient to step from for rows `idx`; halves `alpha` in place where rejected."""
        better = finite & (e <= self.e[idx])
        rows = _per_row(better, x)
        self.x[idx] = torch.where(rows, x, self.x[idx])
        self.g[idx] = torch.where(rows, g, self.g[idx])
        self.e[idx] = torch.where(better, e, self.e[idx])
        keep = _broadcast(better | ~finite, alpha[idx])
        alpha[idx] = torch.where(keep, alpha[idx], alpha[idx] / 2)
        return self.x[idx], self.g[idx]

    def best(self, x: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        """The final candidates: the last one where it is the lowest seen, else the lowest seen."""
        last = torch.isfinite(e) & (e <= self.e)
        return torch.where(_per_row(last, x), x, self.x), torch.where(last, e, self.e)


def _last_finite(energies: Tensor) -> Tensor:
    """Per column, the last non-NaN row of a (T, N) table (NaN where none)."""
    out = torch.full_like(energies[0], float("nan"))
    for row in energies:
        out = torch.where(torch.isnan(row), out, row)
    return out
