"""Settings of the thinking engine, checked at start with messages that name the key."""
from __future__ import annotations

from dataclasses import dataclass, fields

STOP_POLICIES = ("fixed", "energy_change", "energy_threshold")
GRADIENTS = ("unrolled", "implicit")


from ebt_forecast.errors import ConfigError  # noqa: E402  (re-exported: think's settings raise it)


def check_settings(node: object, prefix: str, checks: list[tuple[str, bool, str]]) -> None:
    """Raise ConfigError for the first (key, ok, allowed) check of `node` that failed, naming `prefix.key`."""
    for key, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{prefix}.{key}={getattr(node, key)!r} is invalid: must be {allowed}")


@dataclass
class ThinkConfig:
    """How candidates are refined by gradient descent on the energy."""

    enabled: bool = True  # False: System 1 only at inference (proposals are the samples, no energy is read)
    train_steps: int = 2  # thinking steps while training (the upper end when randomised)
    train_steps_min: int = 0  # >0: draw the training steps uniformly from [train_steps_min, train_steps]
    infer_steps: int = 2  # thinking steps at inference
    alpha: float = 1.0  # step size (its initial value when learnable)
    learn_alpha: bool = True
    alpha_lr_multiplier: float = 1.0  # alpha's own optimizer group: lr = multiplier * peak lr
    alpha_random_scale: float = 1.0  # s >= 1: while training, alpha ~ U[alpha / s, alpha * s] per candidate
    alpha_random_dims: int = 0  # randomised alpha: one draw per candidate and per index of its first k event dims
    #                            (text: 1 = per token position, as the reference)
    infer_alpha_scaling: bool = False  # inference with T steps: alpha x train_steps / T (the reference's video run
    #                                    thinks 4 steps at alpha 7.5k after training 2 at 30k)
    langevin_std: float = 0.0  # training: noise added where the energy is evaluated (never carried into the state)
    infer_langevin_std: float = 0.0  # the same at inference (the reference: 1.0 for text and video)
    step_embedding: bool = False  # each step its own energy landscape: the energy gets the step index
    #                               (`energy_fn(x, index, step=t)`, clamped to train_steps - 1 beyond the trained steps)
    detach_steps: bool = False  # training: the state is detached between steps, so each step's loss trains that
    #                             step's landscape only (the reference's System 1)
    max_update: float = 0.0  # >0: clamp each element of the update alpha * grad to [-max_update, max_update]
    truncate: bool = True  # only the last training step builds the second-order graph
    gradient: str = "unrolled"  # training: backprop through the steps, or "implicit": at the final candidate only
    implicit_cg_iters: int = 10  # implicit: conjugate-gradient iterations (Hessian-vector products) per training call
    implicit_damping: float = 1.0  # implicit: solve (H + damping I) v = dL/dy*; keeps indefinite / flat H usable
    detach_init: bool = True  # the refinement loss does not reach whatever produced the initial candidates
    num_candidates: int = 8  # M candidates per prediction
    stop_policy: str = "fixed"
    stop_tolerance: float = 1e-3  # energy_change: stop a sample when |E_t - E_{t-1}| < tolerance
    energy_threshold: float = 0.0  # energy_threshold: think only where the initial energy is above this
    reject_uphill: bool = False  # inference: a step that raised the energy is undone and alpha halved for that sample
    replay_size: int = 0  # replay buffer capacity (0 = off)
    replay_fraction: float = 0.5  # share of a training batch drawn from the replay buffer
    temperature: float = 1.0  # energy-weighted resampling: softmax(-energy / temperature)

    def validate(self, prefix: str = "think") -> "ThinkConfig":
        """Raise ConfigError naming the first invalid key; return self when all are valid."""
        checks = {
            "train_steps": (self.train_steps >= 0, ">= 0"),
            "train_steps_min": (0 <= self.train_steps_min <= max(self.train_steps, 0), f"in [0, train_steps={self.train_steps}]"),
            "infer_steps": (self.infer_steps >= 0, ">= 0"),
            "alpha": (self.alpha > 0, "> 0"),
            "alpha_lr_multiplier": (self.alpha_lr_multiplier >= 0, ">= 0"),
            "alpha_random_scale": (self.alpha_random_scale >= 1, ">= 1 (1 = off)"),
            "alpha_random_dims": (self.alpha_random_dims >= 0, ">= 0"),
            "langevin_std": (self.langevin_std >= 0, ">= 0"),
            "infer_langevin_std": (self.infer_langevin_std >= 0, ">= 0"),
            "max_update": (self.max_update >= 0, ">= 0 (0 = off)"),
            "gradient": (self.gradient in GRADIENTS, f"one of {', '.join(GRADIENTS)}"),
            "implicit_cg_iters": (self.implicit_cg_iters >= 1, ">= 1"),
            "implicit_damping": (self.implicit_damping >= 0, ">= 0 (> 0 unless the energy is strictly convex in y)"),
            "num_candidates": (self.num_candidates >= 1, ">= 1"),
            "stop_policy": (self.stop_policy in STOP_POLICIES, f"one of {', '.join(STOP_POLICIES)}"),
            "stop_tolerance": (self.stop_tolerance >= 0, ">= 0"),
            "replay_size": (self.replay_size >= 0, ">= 0"),
            "replay_fraction": (0 <= self.replay_fraction < 1, "in [0, 1)"),
            "temperature": (self.temperature > 0, "> 0"),
        }
        for f in fields(self):
            ok, allowed = checks.get(f.name, (True, ""))
            if not ok:
                raise ConfigError(f"{prefix}.{f.name}={getattr(self, f.name)!r} is invalid: must be {allowed}")
        return self
