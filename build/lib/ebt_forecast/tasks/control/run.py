"""`ebt-forecast control env=...`: logged data -> world models -> planners in closed loop -> tables and plots.

Everything is resumable under `<output_dir>/<env>/`: the logged Parquet file (`data/`), every trained
model (an artifact of the experiment layer, `models/<name>__<key>/`, loaded with weights_only=True; with
`trainer.checkpoint_dir` an interrupted world-model training resumes from its own folder there), and one
cell per (split, planner, seed, budget, energy weight), `cells/<name>__<key>.json`, keyed by the data,
settings and models it reads. The energy weight of the EBT planner is chosen on validation starts (seed 0's
model) before any test episode runs; the test starts are disjoint from the validation and the
collection starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from ebt_forecast.experiment import Artifacts, Cells, fit_or_load, write_frame, write_markdown
from ebt_forecast.io import atomic_save_figure
from ebt_forecast.metrics import auroc
from ebt_forecast.tasks.base import TrainerConfig
from ebt_forecast.tasks.control.config import PLANNERS, ControlAppConfig
from ebt_forecast.tasks.control.data import held_out_starts, load_transitions, logged_dataset
from ebt_forecast.tasks.control.ensemble import EnsembleDynamics, TransitionDataset, ensemble_data
from ebt_forecast.tasks.control.envs import ControlEnv, make_env
from ebt_forecast.tasks.control.episodes import EpisodeLog, History, run_episodes
from ebt_forecast.tasks.control.model import WorldShape
from ebt_forecast.tasks.control.module import ControlModule, WindowDataset, episode_arrays, window
from ebt_forecast.tasks.control.objectives import EnsembleObjective, SimulatorObjective, WorldModelObjective
from ebt_forecast.tasks.control.planners import (
    Plan,
    budget_to_descent,
    budget_to_samples,
    cem,
    energy_descent,
    mppi,
    random_shooting,
    shift,
)
from ebt_forecast.errors import ConfigError

VALIDATION_SEED, TEST_SEED = 1, 0  # held-out start streams (both apart from collection's)


# ------------------------------------------------------------------------------------------------
# set-up: environment, bounds, data


def checked_env(app: ControlAppConfig) -> ControlEnv:
    """The environment with the configured action bounds, checked (ConfigError names the key)."""
    env = make_env(app.env)
    c = app.control
    if c.action_low is None and c.action_high is None:
        return env
    low = list(c.action_low if c.action_low is not None else env.action_low)
    high = list(c.action_high if c.action_high is not None else env.action_high)
    if len(low) != len(env.action_names) or len(high) != len(env.action_names):
        raise ConfigError(f"control.action_low={low} / control.action_high={high}: need {len(env.action_names)} value(s) "
                          f"each, one per action ({', '.join(env.action_names)})")
    for name, lo, hi in zip(env.action_names, low, high):
        if not lo < hi:
            raise ConfigError(f"control.action_low / control.action_high for {name!r}: [{lo}, {hi}] is empty or "
                              "inverted (need low < high)")
    return dataclasses.replace(env, action_low=tuple(float(v) for v in low), action_high=tuple(float(v) for v in high))


def logged_frame(app: ControlAppConfig, env: ControlEnv, root: Path) -> pd.DataFrame:
    """The user's file (control.data), or collected / reused transitions under root/data."""
    if app.control.data:
        return load_transitions(app.control.data, env)
    if app.control.transitions < 1:
        raise ConfigError(f"control.transitions={app.control.transitions} is invalid: must be >= 1")
    return logged_dataset(env, root / "data", app.control.transitions, app.seed)


def split_episodes(frame: pd.DataFrame, env: ControlEnv, validation_share: float = 0.1):
    """Training and validation episodes (the last tenth of episode ids) as arrays."""
    ids = np.sort(frame["episode"].unique())
    cut = ids[int(len(ids) * (1 - validation_share))] if len(ids) > 1 else ids[-1] + 1
    cols = (env.state_names, env.action_names, env.covariate_names)
    return (frame[frame["episode"] < cut], episode_arrays(frame[frame["episode"] < cut], *cols),
            episode_arrays(frame[frame["episode"] >= cut], *cols))


def world_stats(frame: pd.DataFrame, env: ControlEnv) -> dict[str, torch.Tensor]:
    """Normalisation of the world model: logged state and covariate mean / std, the action bounds."""
    col = lambda names: torch.from_numpy(frame[list(names)].to_numpy(np.float32).reshape(len(frame), len(names)))  # noqa: E731
    states, covs = col(env.state_names), col(env.covariate_names)
    low, high = env.action_bounds
    return {"state_mean": states.mean(0), "state_std": states.std(0).clamp_min(1e-6),
            "covariate_mean": covs.mean(0) if covs.shape[1] else torch.zeros(0),
            "covariate_std": covs.std(0).clamp_min(1e-6) if covs.shape[1] else torch.ones(0),
            "action_low": low.float(), "action_high": high.float()}


# ------------------------------------------------------------------------------------------------
# models (cached)


def model_depends(app: ControlAppConfig, data: dict, seed: int) -> dict[str, dict]:
    """What the trained models of one seed depend on: the world-model EBT's and the ensemble's settings."""
    c = app.control
    return {"world": {"data": data, "model": app.model, "think": app.think, "trainer": app.trainer.settings(),
                      "task": {k: v for k, v in asdict(app.task).items() if k != "planner"}, "seed": seed},
            "ensemble": {"data": data, "members": c.ensemble_members, "hidden": c.ensemble_hidden,
                         "trainer": ensemble_trainer(app).settings(), "seed": seed}}


def ensemble_trainer(app: ControlAppConfig) -> TrainerConfig:
    """The ensemble's optimiser: the world model's, for `control.ensemble_steps` steps, without checkpoints."""
    return dataclasses.replace(app.trainer, max_steps=app.control.ensemble_steps, checkpoint_dir=None)


def train_world_model(app: ControlAppConfig, env: ControlEnv, train_frame: pd.DataFrame, episodes, seed: int,
                      store: Artifacts, depends: dict) -> ControlModule:
    """The world-model EBT of one seed (trained once, then loaded)."""
    shape = WorldShape(len(env.state_names), len(env.action_names), len(env.covariate_names),
                       app.task.context_steps, app.task.horizon)
    trainer = app.trainer
    L.seed_everything(seed, workers=True, verbose=False)
    module = ControlModule(app.model, app.think, app.trainer, app.task, shape, world_stats(train_frame, env))
    data = lambda: WindowDataset(episodes, app.task.context_steps, app.task.horizon,  # noqa: E731
                                 trainer.max_steps * trainer.batch_size, seed)
    return fit_or_load(store, f"ebt_seed{seed}", depends, module, data, trainer)[0]


def train_ensemble(app: ControlAppConfig, env: ControlEnv, train_frame: pd.DataFrame, seed: int, store: Artifacts,
                   depends: dict) -> EnsembleDynamics:
    """The PETS-style ensemble of one seed: same data, same optimiser, `ensemble_steps` steps."""
    c, trainer = app.control, ensemble_trainer(app)
    inputs, deltas, stats = ensemble_data(train_frame, env.state_names, env.action_names, env.covariate_names)
    L.seed_everything(seed, workers=True, verbose=False)
    model = EnsembleDynamics(len(env.state_names), len(env.action_names), len(env.covariate_names),
                             c.ensemble_members, c.ensemble_hidden, trainer, stats)

    data = lambda: TransitionDataset(inputs, deltas, c.ensemble_members,  # noqa: E731
                                     trainer.max_steps * trainer.batch_size, seed)
    return fit_or_load(store, f"ensemble_seed{seed}", depends, model, data, trainer)[0]


# ------------------------------------------------------------------------------------------------
# controllers


class PlannerController:
    """One planner kind at one budget: builds the step's objective, optimises, keeps the warm start."""

    def __init__(self, kind: str, app: ControlAppConfig, env: ControlEnv, budget: int, seed: int,
                 world: ControlModule | None, ensemble: EnsembleDynamics | None, energy_weight: float):
        if kind not in PLANNERS:
            raise ConfigError(f"planner {kind!r} is unknown: must be one of {', '.join(PLANNERS)}")
        self.kind, self.app, self.env, self.budget = kind, app, env, budget
        self.world, self.ensemble = world, ensemble
        self.energy_weight = 0.0 if kind == "ebt_no_energy" else energy_weight
        self.low, self.high = (b.float() for b in env.action_bounds)
        self.generator = torch.Generator().manual_seed(seed)
        self.warm: torch.Tensor | None = None
        self.last_objective: WorldModelObjective | None = None

    def objective(self, states, history: History, covariates):
        w = self.app.task.planner.constraint_weight
        if self.kind.startswith("true"):
            return SimulatorObjective(self.env, states, covariates, w)
        if self.kind.startswith("ensemble"):
            return EnsembleObjective(self.env, self.ensemble, states, covariates, w)
        with torch.no_grad():
            context = self.world.model.encode(history.states, history.actions, history.covariates)
        self.last_objective = WorldModelObjective(self.env, self.world.model, context, states, covariates, w,
                                                  self.energy_weight)
        return self.last_objective

    def __call__(self, states, history: History, covariates) -> Plan:
        b, h, a = states.shape[0], self.app.task.horizon, len(self.env.action_names)
        mid = ((self.low + self.high) / 2).expand(b, a)
        descent = self.kind in ("ebt", "ebt_no_energy")
        if self.kind == "zero":  # no force (the thermal heater off); inside the bounds
            zero = torch.zeros(b, h, a).clamp(self.low, self.high)
            return Plan(zero, 0.0, torch.zeros(b), zero)
        if self.kind == "random":
            acts = self.low + (self.high - self.low) * torch.rand((b, h, a), generator=self.generator)
            return Plan(acts, 0.0, torch.zeros(b), acts)
        if self.warm is None:
            self.warm = torch.zeros(b, h, a) if descent else mid.unsqueeze(1).expand(b, h, a).clone()
        objective = self.objective(states, history, covariates)
        p, c = self.app.task.planner, self.app.control
        if descent:
            starts, steps = budget_to_descent(self.budget)
            plan = energy_descent(objective, self.low, self.high, self.warm, starts=starts, steps=steps, alpha=p.alpha,
                                  max_update=p.max_update, init_std=p.init_std, generator=self.generator)
            fill = torch.zeros(b, a)
        else:
            samples, iterations = budget_to_samples(self.budget, c.cem_iterations)
            with torch.no_grad():
                if self.kind.endswith("_rs"):
                    plan = random_shooting(objective, self.low, self.high, self.warm, samples=self.budget,
                                           generator=self.generator)
                elif self.kind.endswith("_cem"):
                    plan = cem(objective, self.low, self.high, self.warm, samples=samples, iterations=iterations,
                               generator=self.generator)
                else:
                    plan = mppi(objective, self.low, self.high, self.warm, samples=samples, iterations=iterations,
                                generator=self.generator)
            fill = mid
        self.warm = shift(plan.warm.detach(), fill)
        return plan

    def energy_of(self, plan: Plan) -> torch.Tensor:
        """The world model's energy of the executed plan (NaN without a world model)."""
        if self.last_objective is None:
            return torch.full((plan.actions.shape[0],), float("nan"))
        with torch.no_grad():
            _, energy = self.last_objective.parts(plan.actions.detach(), torch.arange(plan.actions.shape[0]), True)
        return energy


# ------------------------------------------------------------------------------------------------
# cells


def log_result(log: EpisodeLog) -> dict:
    """An episode cell's JSON result: per-episode returns, violation rates, success and energy; cost."""
    return {"returns": log.returns.tolist(), "violation_rate": log.violation_rate.tolist(),
            "success": log.success.astype(int).tolist(), "energy": [None if np.isnan(e) else float(e) for e in log.energy],
            "evaluations": log.evaluations, "seconds": log.seconds}


def k_step_errors(world: ControlModule, ensemble: EnsembleDynamics, episodes, app: ControlAppConfig, env: ControlEnv,
                  windows: int = 512, seed: int = 0) -> dict[str, list[float]]:
    """MSE (normalised state units) at every step ahead on validation windows: System 1, System 1 refined by
    the trained number of thinking steps, and the ensemble (mean of its members)."""
    rng = np.random.default_rng(seed)
    h, k = app.task.horizon, app.task.context_steps
    positions = [(e, t) for e, ep in enumerate(episodes) for t in range(len(ep["actions"]) - h + 1)]
    pick = [positions[i] for i in rng.integers(0, len(positions), size=min(windows, len(positions)))]
    rows = [window(episodes[e], t, k, h) for e, t in pick]
    batch = {key: torch.from_numpy(np.stack([r[key] for r in rows])) for key in rows[0]}
    model = world.model
    target = model.normalise_states(batch["future_states"])
    thought = world.infer(batch, num_candidates=1, group=1, steps=app.think.infer_steps, selection="refined")
    proposal, refined = thought.proposals[:, 0].detach(), thought.samples[:, 0].detach()
    s = batch["past_states"][:, -1]
    e = ensemble.members
    states = s.unsqueeze(0).expand(e, -1, -1)
    outs = []
    with torch.no_grad():
        for step in range(h):
            states = ensemble.step(states, batch["future_actions"][None, :, step].expand(e, -1, -1),
                                   batch["future_covariates"][None, :, step].expand(e, -1, -1))
            outs.append(states.mean(0))
    ens = model.normalise_states(torch.stack(outs, dim=1))
    mse = lambda x: (x - target).pow(2).mean((0, 2)).tolist()  # noqa: E731
    return {"ebt_proposal": mse(proposal), "ebt_refined": mse(refined), "ensemble": mse(ens)}


# ------------------------------------------------------------------------------------------------
# the command


def summarise(kind: str, cells: list[dict]) -> dict:
    """Mean return and its 95% interval over every episode of every seed, success, violations, cost."""
    returns = np.concatenate([c["returns"] for c in cells])
    half = 1.96 * returns.std(ddof=1) / np.sqrt(len(returns)) if len(returns) > 1 else float("nan")
    return {"planner": kind, "return_mean": returns.mean(), "ci95_low": returns.mean() - half,
            "ci95_high": returns.mean() + half, "seed_means": [float(np.mean(c["returns"])) for c in cells],
            "success_rate": float(np.mean(np.concatenate([c["success"] for c in cells]))),
            "violation_rate": float(np.mean(np.concatenate([c["violation_rate"] for c in cells]))),
            "evaluations_per_step": float(np.mean([c["evaluations"] for c in cells])),
            "seconds": float(np.sum([c["seconds"] for c in cells])), "episodes": len(returns)}


def run_control_command(app: ControlAppConfig) -> int:
    """Collect or load data, train the world models, run every planner, write tables and plots."""
    task, c = app.task.validate(), app.control
    env = checked_env(app)
    unknown = [p for p in [*c.planners, *c.budget_planners] if p not in PLANNERS]
    if unknown:
        raise ConfigError(f"control.planners: {unknown[0]!r} is unknown: must be one of {', '.join(PLANNERS)}")
    for key, value in [("eval_starts", c.eval_starts), ("validation_starts", c.validation_starts), ("budget", c.budget)]:
        if value < 1:
            raise ConfigError(f"control.{key}={value} is invalid: must be >= 1")
    if not c.seeds:
        raise ConfigError("control.seeds is empty: give at least one seed")
    root = Path(app.runtime.output_dir) / env.name
    frame = logged_frame(app, env, root)
    steps = c.episode_steps or env.episode_steps
    train_frame, train_eps, val_eps = split_episodes(frame, env)
    data = {"env": env.name, "file": c.data or "", "transitions": c.transitions, "seed": app.seed,
            "action_low": env.action_low, "action_high": env.action_high, "rows": len(frame)}
    print(f"control {env.name}: {len(frame)} logged transitions ({frame['episode'].nunique()} episodes), "
          f"horizon {task.horizon}, {steps} steps per episode")
    cells = Cells(root / "cells")
    store = Artifacts(root / "models", ledger=cells.ledger)  # the summary counts models beside cells
    depends = {s: model_depends(app, data, s) for s in c.seeds}
    worlds = {s: train_world_model(app, env, train_frame, train_eps, s, store, depends[s]["world"]) for s in c.seeds}
    ensembles = {s: train_ensemble(app, env, train_frame, s, store, depends[s]["ensemble"]) for s in c.seeds}

    def episodes(kind: str, seed: int, budget: int, starts: np.ndarray, split: str, weight: float) -> dict:
        model = "world" if kind.startswith("ebt") else "ensemble" if kind.startswith("ensemble") else None

        def go() -> dict:
            controller = PlannerController(kind, app, env, budget, seed, worlds[seed], ensembles[seed], weight)
            return log_result(run_episodes(env, controller, starts, steps, task.horizon, task.context_steps,
                                           controller.energy_of if model == "world" else None))
        reads = {"data": data, "task": task, "cem_iterations": c.cem_iterations, "episode_steps": steps,
                 "starts": len(starts), "model": depends[seed][model] if model else None}
        return cells.run(f"{split}__{kind}__seed{seed}__b{budget}__w{weight}", reads, go)

    # the energy weight, on validation starts, before any test episode
    val_starts = held_out_starts(env, c.validation_starts, VALIDATION_SEED)
    first = c.seeds[0]
    validation = {w: float(np.mean(episodes("ebt", first, c.budget, val_starts, "val", w)["returns"]))
                  for w in c.energy_weights} if "ebt" in c.planners or "ebt_cem" in c.planners else {}
    weight = max(validation, key=validation.get) if validation else task.planner.energy_weight
    print(f"energy weight {weight} chosen on {c.validation_starts} validation starts: "
          + ", ".join(f"{w}: {r:.1f}" for w, r in validation.items()))

    test_starts = held_out_starts(env, c.eval_starts, TEST_SEED)
    test = {kind: [episodes(kind, s, c.budget, test_starts, "test", weight) for s in c.seeds] for kind in c.planners}
    table = [summarise(kind, runs) for kind, runs in test.items()]
    budget_starts = test_starts[:c.budget_starts]
    sweep = [{"planner": kind, "budget": b, **{k: v for k, v in summarise(kind, [
        episodes(kind, first, b, budget_starts, "sweep", weight)]).items() if k != "planner"}}
        for kind in c.budget_planners for b in c.budgets]

    # energy as a failure signal: AUROC over the EBT planner's test episodes (every seed)
    signals = {}
    for kind in ("ebt", "ebt_no_energy", "ebt_cem"):
        if kind in c.planners:
            energy = np.array([np.nan if e is None else e for r in test[kind] for e in r["energy"]], dtype=float)
            failed = np.array([not ok for r in test[kind] for ok in r["success"]])
            signals[kind] = auroc(energy, failed)
    errors = {s: k_step_errors(worlds[s], ensembles[s], val_eps, app, env, seed=s) for s in c.seeds}
    write_report(root, env, app, weight, validation, table, sweep, signals, errors, len(frame))
    print(cells.summary())
    return 0


def write_report(root: Path, env: ControlEnv, app: ControlAppConfig, weight: float, validation: dict, table: list[dict],
                 sweep: list[dict], signals: dict, errors: dict, transitions: int) -> None:
    """control.csv, control_budget.csv, control.md and the plots, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_frame(pd.DataFrame(table), root, "control")
    sweep_frame = pd.DataFrame(sweep)
    write_frame(sweep_frame, root, "control_budget")
    horizon = app.task.horizon
    err = {name: np.mean([errors[s][name] for s in errors], axis=0) for name in next(iter(errors.values()))}
    picks = sorted({1, min(5, horizon), min(10, horizon), horizon})
    lines = [f"# control: {env.name}", "",
             f"{transitions} logged transitions; horizon {horizon}; seeds {list(app.control.seeds)}; "
             f"{app.control.eval_starts} held-out starts per seed; {app.control.budget} model evaluations per control "
             f"step (a forward or backward pass of one plan counts one). Energy weight {weight} chosen on "
             f"{app.control.validation_starts} validation starts: "
             + ", ".join(f"{w} -> {r:.1f}" for w, r in validation.items()), "",
             "| planner | return (mean) | 95% interval | seed means | success | violation rate | evals / step | seconds |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['planner']} | {r['return_mean']:.1f} | [{r['ci95_low']:.1f}, {r['ci95_high']:.1f}] | "
                     f"{', '.join(f'{m:.1f}' for m in r['seed_means'])} | {r['success_rate']:.2f} | "
                     f"{r['violation_rate']:.3f} | {r['evaluations_per_step']:.0f} | {r['seconds']:.0f} |")
    lines += ["", "## Return against model evaluations per control step (seed 0, "
              f"{app.control.budget_starts} starts)", "", "| planner | " + " | ".join(str(b) for b in app.control.budgets) + " |",
              "|---|" + "---:|" * len(app.control.budgets)]
    for kind, rows in sweep_frame.groupby("planner", sort=False) if len(sweep_frame) else []:
        lines.append(f"| {kind} | " + " | ".join(f"{v:.1f}" for v in rows["return_mean"]) + " |")
    lines += ["", "## k-step prediction error (validation episodes, normalised state MSE, mean over seeds)", "",
              "| model | " + " | ".join(f"k={k}" for k in picks) + " |", "|---|" + "---:|" * len(picks)]
    for name, values in err.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[k - 1]:.4f}" for k in picks) + " |")
    lines += ["", "## Energy as a failure signal", "",
              "AUROC of the mean energy of the executed plans for flagging a failed episode: "
              + ", ".join(f"{k} {v:.3f}" for k, v in signals.items()) + "."]
    write_markdown(["\n".join(lines)], root / "control.md")

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, rows in sweep_frame.groupby("planner", sort=False) if len(sweep_frame) else []:
        ax.plot(rows["evaluations_per_step"], rows["return_mean"], marker="o", label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("model evaluations per control step")
    ax.set_ylabel("return")
    ax.set_title(f"{env.name}: return against planning compute")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, root / "plots" / "return_vs_evaluations.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in err.items():
        ax.plot(range(1, horizon + 1), values, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("steps ahead")
    ax.set_ylabel("MSE (normalised states)")
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, root / "plots" / "k_step_error.png")
    print("\n".join(lines))
    print(f"\nwritten: {root / 'control.md'}, {root / 'control.csv'}, {root / 'plots'}")
