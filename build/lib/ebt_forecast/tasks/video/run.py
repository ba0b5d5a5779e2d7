"""`ebt-forecast video`: clips -> the frame autoencoder -> the next-frame EBT and its Transformer++ twin -> tables.

Everything is resumable on the experiment layer (`ebt_forecast.experiment`) under `<runtime.output_dir>/`: the
trained autoencoder and each sequence model (`models/<name>__<key>/`: weights, and a meta of training time and
parameters; with `trainer.checkpoint_dir` an interrupted training resumes from its own Lightning checkpoint) and one
cell of metrics per (model, evaluation set) (`cells/<model>__<set>__<key>.json`), each keyed by the configuration it
depends on; video.md says which cells were reused. Metrics of predicted next frames (frames 1..L-1 of every clip,
teacher-forced): latent MSE (standardised latents) and pixel PSNR (the decoded prediction against the true frame),
against thinking steps (each budget from the start, with and without alpha scaling) and self-verification
candidates N (beside the energy-free average of the same N and the best-of-N oracle, and how well the energy ranks
them: `evaluate`); beside them the copy-last-frame baseline and the autoencoder's ceiling (the true next latent, decoded). Autoregressive rollouts (`video.rollout_steps`, cells
`cells/<model>__rollout__<set>__<key>.json`): from L - 1 true frames each model predicts the next latent, appends
it to the frames it reads and continues; latent MSE and PSNR at each horizon k. Outputs: video.md, video.csv,
video_rollout.csv, plots/*.png and strip.png (true against predicted frames).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ebt_forecast.experiment import (Artifacts, Cells, cell_key, markdown_table, plot_sweeps, ranking_section,
                                     train_or_load, write_frame, write_markdown)
from ebt_forecast.io import atomic_save_figure
from ebt_forecast.metrics import psnr, rowwise_spearman
from ebt_forecast.tasks.base import TrainableModule, fit_module
from ebt_forecast.tasks.video.autoencoder import AutoencoderModule, FrameAutoencoder, autoencoder_trainer
from ebt_forecast.tasks.video.config import VideoAppConfig
from ebt_forecast.tasks.video.data import VideoSets, WeightedDraws, load_sets
from ebt_forecast.tasks.video.module import TransformerPPVideoModule, VideoModule
from ebt_forecast.errors import ConfigError
from ebt_forecast.think import InferencePolicy, fixed_steps_passes

# ------------------------------------------------------------------------------------------------
# the autoencoder and the latents (artifacts)


def source_weights(app: VideoAppConfig, sets: VideoSets) -> list[float]:
    """Training draws per source: real clips get `video.clip_weight` of them when digits are also used."""
    names = list(sets.train)
    if len(names) == 1:
        return [1.0]
    return [app.video.clip_weight if n == "clips" else 1 - app.video.clip_weight for n in names]


def load_or_train_autoencoder(app: VideoAppConfig, sets: VideoSets,
                              store: Artifacts) -> tuple[FrameAutoencoder, dict, dict]:
    """The frame autoencoder, what it depends on and its meta: trained once on the training frames (weighted by
    source; an artifact of `store`, resumable from its Lightning checkpoint with trainer.checkpoint_dir) and then
    loaded; trained where and how `app.trainer` runs (accelerator, devices, strategy, precision), float32 after."""
    v = app.video
    depends = {"autoencoder": {f: getattr(v, f) for f in ("frame_size", "latent_dim", "ae_width", "ae_steps",
                                                          "ae_batch", "ae_lr", "clip_weight")},
               "data": sets.key, "seed": app.seed, "precision": app.trainer.precision}
    L.seed_everything(app.seed, workers=True, verbose=False)
    module = AutoencoderModule(v.frame_size, v.latent_dim, v.ae_width, v.ae_lr)

    def train(model: FrameAutoencoder) -> dict:
        frames = [torch.from_numpy(c.reshape(-1, *c.shape[2:])) for c in sets.train.values()]
        root = app.trainer.checkpoint_dir  # one resumable folder per model
        folder = str(Path(root) / store.path("autoencoder", depends).name) if root else None
        trainer = autoencoder_trainer(app.trainer, v.ae_steps, v.ae_batch, v.ae_lr, folder)
        print(f"training the frame autoencoder ({sum(p.numel() for p in module.parameters()):,} parameters, "
              f"{v.ae_steps} steps x {v.ae_batch} frames)")
        report = fit_module(module, WeightedDraws(frames, source_weights(app, sets), v.ae_steps * v.ae_batch, app.seed,
                                                  key="frame"), trainer, seed=None, run_key=cell_key(depends))
        model.float()  # a 64-true / 16-true / bf16-true run leaves its dtype on the weights
        g = torch.Generator().manual_seed(app.seed)
        model.fit_standardisation(torch.cat([f[torch.randperm(len(f), generator=g)[:4096]] for f in frames]))
        return {"seconds": report.seconds, "steps": report.steps,
                "parameters": sum(p.numel() for p in model.parameters())}

    ae, meta = train_or_load(store, "autoencoder", depends, module.model, train)
    return ae, depends, meta


@torch.no_grad()
def encode_clips(ae: FrameAutoencoder, clips: np.ndarray, batch: int = 256) -> Tensor:
    """Pixel clips (N, L, 1, H, W) -> standardised latents (N, L, d)."""
    x = torch.from_numpy(clips)
    return torch.cat([ae.encode(x[i:i + batch]) for i in range(0, len(x), batch)])


# ------------------------------------------------------------------------------------------------
# the sequence models (artifacts)


@dataclasses.dataclass
class Trained:
    kind: str
    module: TrainableModule
    depends: dict  # what its training depended on: the key of its artifact, and part of its cells' keys
    meta: dict  # seconds, steps, clips, parameters


def build(kind: str, app: VideoAppConfig) -> TrainableModule:
    v = app.video
    if kind == "ebt":
        return VideoModule(app.model, app.think, app.trainer, app.task, v.latent_dim, v.clip_length)
    return TransformerPPVideoModule(app.model, app.trainer, v.latent_dim, v.clip_length)


def train_model(kind: str, app: VideoAppConfig, latents: list[Tensor], weights: list[float], ae_depends: dict,
                store: Artifacts) -> Trained:
    """One sequence model: trained once on the shared latent clips (an artifact of `store`; with
    trainer.checkpoint_dir, resumable from its own Lightning checkpoint), then loaded."""
    ebt = kind == "ebt"
    depends = {"model": app.model, "think": app.think if ebt else None, "task": app.task if ebt else None,
               "trainer": app.trainer.settings(), "latents": ae_depends, "seed": app.seed}

    def train(module: TrainableModule) -> dict:
        trainer = app.trainer
        if trainer.checkpoint_dir:  # one resumable folder per model
            trainer = dataclasses.replace(trainer, checkpoint_dir=str(Path(trainer.checkpoint_dir) /
                                                                      store.path(kind, depends).name))
        params = sum(p.numel() for n, p in module.named_parameters() if not n.startswith("step_size."))
        print(f"training {kind} ({params:,} parameters, {trainer.max_steps} steps x {trainer.batch_size} clips)")
        draws = WeightedDraws(latents, weights, trainer.max_steps * trainer.batch_size, app.seed + 7)
        report = fit_module(module, draws, trainer, seed=None, run_key=cell_key(depends))
        module.float()  # evaluation reads float32 latents whatever the training precision
        return {"seconds": report.seconds, "steps": report.steps, "clips": report.steps * trainer.batch_size,
                "parameters": params, "alpha": float(module.step_size().detach()) if ebt else None}

    L.seed_everything(app.seed, workers=True, verbose=False)  # one stream: the initial weights, then training
    module, meta = train_or_load(store, kind, depends, build(kind, app), train)
    return Trained(kind, module, depends, meta)


# ------------------------------------------------------------------------------------------------
# evaluation

EBT_ROWS = 2  # the layout of the EBT's evaluation rows (part of its cells' keys: a cell of an older layout is not
#              read back). 2: budgets thought from the start, steps_scaled, average and oracle, ranking per N


class Tally:
    """Latent squared error, per-frame PSNR and counts, per setting."""

    def __init__(self, ae: FrameAutoencoder):
        self.ae = ae
        self.sums: dict[tuple, np.ndarray] = defaultdict(lambda: np.zeros(4))  # latent se, psnr, frames, energy

    @torch.no_grad()
    def add(self, setting: tuple, latents: Tensor, target: Tensor, frames: Tensor, energy: float = float("nan"),
            pixels: Tensor | None = None) -> None:
        """Predicted latents (B, S, d) against true latents (B, S, d) and true frames (B, S, 1, H, W); `pixels`
        overrides the decoded prediction (the copy-last baseline copies the true frame)."""
        pixels = self.ae.decode(latents) if pixels is None else pixels
        n = latents.shape[0] * latents.shape[1]
        se = float(((latents - target) ** 2).mean(-1).sum())
        p = psnr(pixels.clamp(0, 1).flatten(0, 1).numpy(), frames.flatten(0, 1).numpy(), data_range=1.0)
        self.sums[setting] += np.array([se, float(np.minimum(p, 100.0).sum()), n, energy])

    def rows(self, model: str | None, name: str) -> list[dict]:
        """One row per setting; model None: each setting's kind names the model (the baselines)."""
        return [{"model": model or kind, "set": name, "kind": kind, "steps": steps, "candidates": candidates,
                 "frames": int(n), "latent_mse": se / n, "psnr": ps / n, "energy_per_frame": energy / n,
                 **dict(zip(("forward_passes", "backward_passes"), clip_passes(kind, steps, candidates)))}
                for (kind, steps, candidates), (se, ps, n, energy) in self.sums.items()]


def clip_passes(kind: str, steps: int, candidates: int) -> tuple[int, int]:
    """Passes per predicted clip: the Transformer++'s one forward, none for copy-last and the autoencoder ceiling;
    an EBT thinking step is one forward and one backward per candidate, plus the final energies when the lowest
    is chosen."""
    if kind in ("forward", "transformer_pp"):
        return 1, 0
    if kind in ("copy_last", "autoencoder"):
        return 0, 0
    return fixed_steps_passes(steps, candidates, final_energy=kind == "verify" and candidates > 1)


def chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, i + size)


def evaluate_baselines(ae: FrameAutoencoder, name: str, latents: Tensor, clips: np.ndarray,
                       app: VideoAppConfig) -> list[dict]:
    """Copy the last frame (latent and pixels), and the autoencoder's ceiling (the true next latent, decoded)."""
    tally, frames = Tally(ae), torch.from_numpy(clips)
    for c in chunks(len(latents), app.video.eval_batch):
        z, f = latents[c], frames[c]
        tally.add(("copy_last", 0, 1), z[:, :-1], z[:, 1:], f[:, 1:], pixels=f[:, :-1])
        tally.add(("autoencoder", 0, 1), z[:, 1:], z[:, 1:], f[:, 1:])
    return tally.rows(None, name)


def evaluate(trained: Trained, ae: FrameAutoencoder, name: str, latents: Tensor, clips: np.ndarray,
             app: VideoAppConfig) -> list[dict]:
    """Every evaluation row of one model on one set (deterministic: starts and inference noise drawn from seeded
    generators).

    EBT rows (kind, steps, candidates):
    - `steps` (k, 1): one start thought k steps (`video.think_steps`), each budget from the start (a step-embedded
      energy and alpha scaling make k steps differ from k increments), under the config's policy without alpha
      scaling; `steps_scaled` (k, 1): the same start and noise at alpha x train_steps / k (every k but the trained
      number of steps);
    - `verify` (infer_steps, N): N independent starts (`video.candidate_counts`) thought think.infer_steps each
      (the config's policy and inference noise), per frame the candidate of lowest final energy; beside it the
      energy-free control `average` (the plain mean of the same N refined latents) and the best-of-N `oracle`
      (per frame the candidate with the lowest latent error, a bound no verifier can beat);
    - on the `verify` rows with N > 1: `spearman`, the mean within-frame Spearman of energy against latent error
      over the N candidates, and `pick_best`, how often the lowest energy is the lowest error (chance 1 / N).
    """
    v, module, tally = app.video, trained.module, Tally(ae)
    frames = torch.from_numpy(clips)
    generator = torch.Generator().manual_seed(app.seed)
    counts = sorted(set(v.candidate_counts))
    n_max = max(counts)
    ranking = defaultdict(lambda: np.zeros(4))  # N -> Spearman sum, ranked frames, lowest energy = best, frames
    for c in chunks(len(latents), v.eval_batch):
        batch, target, true_frames = {"x": latents[c]}, latents[c][:, 1:], frames[c][:, 1:]
        if trained.kind != "ebt":
            with torch.no_grad():
                tally.add(("forward", 0, 1), module.predict(batch), target, true_frames)
            continue
        b, s, d = target.shape
        with torch.no_grad():
            encoding = module.encode(batch)
        # against thinking steps: one start, each budget thought from the start, with and without alpha scaling
        starts = module.propose(encoding, batch, 1, 1, generator)
        x0 = starts.starts.reshape(b, 1, s, d)
        if 0 in v.think_steps:
            with torch.no_grad():
                energy = float(module.frame_energies(encoding, x0, 0).sum())
            tally.add(("steps", 0, 1), x0[:, 0], target, true_frames, energy)
        for k in sorted(set(v.think_steps) - {0}):
            for kind, scaled in (("steps", False), ("steps_scaled", True)):
                if scaled and k == app.think.train_steps:
                    continue  # alpha x train_steps / k = alpha: the `steps` row
                noise = torch.Generator().manual_seed(app.seed + k)  # the same inference noise with and without
                result = module.think(starts.energy_fn, x0, training=False, steps=k, generator=noise,
                                      policy=InferencePolicy.of(app.think).with_alpha_scaling(scaled))
                tally.add((kind, k, 1), result.candidates.detach()[:, 0], target, true_frames,
                          float(result.energies.sum()))
        # self-verification: N independent starts, think.infer_steps each, lowest energy per frame
        k = app.think.infer_steps
        starts = module.propose(encoding, batch, 1, n_max, generator)
        result = module.think(starts.energy_fn, starts.starts.reshape(b, n_max, s, d), training=False, steps=k,
                              generator=generator)
        final = result.candidates.detach()
        with torch.no_grad():
            energies = module.frame_energies(encoding, final, k)  # (b, N, S)
        errors = ((final - target[:, None]) ** 2).mean(-1)  # (b, N, S)
        for n in counts:
            best = energies[:, :n].argmin(1)  # (b, S)
            chosen = final[:, :n].gather(1, best[:, None, :, None].expand(-1, 1, -1, d))[:, 0]
            picked = energies[:, :n].gather(1, best[:, None])[:, 0]
            tally.add(("verify", k, n), chosen, target, true_frames, float(picked.sum()))
            tally.add(("average", k, n), final[:, :n].mean(1), target, true_frames)  # the energy-free control
            oracle = final[:, :n].gather(1, errors[:, :n].argmin(1)[:, None, :, None].expand(-1, 1, -1, d))[:, 0]
            tally.add(("oracle", k, n), oracle, target, true_frames)
            if n > 1:  # does the energy rank the N candidates of a frame by their latent error?
                e_np = energies[:, :n].transpose(1, 2).flatten(0, 1).numpy()  # (frames, N)
                err_np = errors[:, :n].transpose(1, 2).flatten(0, 1).numpy()
                rho = rowwise_spearman(e_np, err_np)
                picks = np.take_along_axis(err_np, e_np.argmin(-1)[:, None], -1)[:, 0] <= err_np.min(-1) + 1e-12
                ranking[n] += np.array([np.nansum(rho), np.isfinite(rho).sum(), picks.sum(), len(picks)])
    rows = tally.rows(trained.kind, name)
    for row in rows:  # the ranking diagnostics over each N's candidates, on the self-verification rows
        n = row["candidates"]
        if row["kind"] == "verify" and n in ranking and ranking[n][3]:
            rho_sum, ranked, picked, count = ranking[n]
            row["spearman"] = rho_sum / max(ranked, 1)
            row["pick_best"] = picked / count
    return rows


def rollout(predict: Callable[[Tensor], Tensor], context: Tensor, horizon: int, window: int) -> Tensor:
    """Latents (B, horizon, d) predicted after a true `context` (B, C, d), one frame at a time: `predict` maps
    frames (B, <= window, d) to the next latent (B, d) and reads the last `window` frames, its own predictions
    appended to the true ones."""
    frames, out = context, []
    for _ in range(horizon):
        out.append(predict(frames[:, -window:]))
        frames = torch.cat([frames, out[-1][:, None]], 1)
    return torch.stack(out, 1)


def next_latent(module: VideoModule | TransformerPPVideoModule, steps: int,
                generator: torch.Generator) -> Callable[[Tensor], Tensor]:
    """A sequence model's default next-latent prediction after frames (B, T, d) -> (B, d): the EBT thinks `steps`
    from one start (as in its one-step evaluation), the Transformer++ twin's forward."""

    def predict(frames: Tensor) -> Tensor:
        x = torch.cat([frames, frames[:, -1:]], 1)  # a placeholder next frame: no candidate reads it
        return module.predict({"x": x}, steps, generator)[:, -1].detach()

    return predict


def evaluate_rollouts(trained: Trained | None, ae: FrameAutoencoder, name: str, latents: Tensor, clips: np.ndarray,
                      app: VideoAppConfig) -> list[dict]:
    """Latent MSE and PSNR of frame L - 2 + k of each rollout clip (N, L - 1 + max k, ...) at every horizon k in
    `video.rollout_steps`, predicted from the L - 1 true frames before it and the model's own predictions since
    (`rollout`). trained None: the baselines, copy_last (the last true frame, its pixels) and autoencoder (the
    true latent, decoded). Deterministic: the EBT's starts come from app.seed."""
    v = app.video
    s, horizon, tally = v.clip_length - 1, max(v.rollout_steps), Tally(ae)
    frames, generator = torch.from_numpy(clips), torch.Generator().manual_seed(app.seed)
    for c in chunks(len(latents), v.eval_batch):
        z, f = latents[c], frames[c]
        target, true_frames = z[:, s:s + horizon], f[:, s:s + horizon]
        if trained is None:
            predictions = {"copy_last": (z[:, s - 1:s].expand_as(target), f[:, s - 1:s].expand_as(true_frames)),
                           "autoencoder": (target, None)}
        else:
            predict = next_latent(trained.module, app.think.infer_steps, generator)
            predictions = {trained.kind: (rollout(predict, z[:, :s], horizon, s), None)}
        for kind, (latent, pixels) in predictions.items():
            for k in sorted(set(v.rollout_steps)):
                at = slice(k - 1, k)
                tally.add((kind, k, 1), latent[:, at], target[:, at], true_frames[:, at],
                          pixels=None if pixels is None else pixels[:, at])
    return [{"model": r["model"], "set": name, "k": r["steps"], "frames": r["frames"], "latent_mse": r["latent_mse"],
             "psnr": r["psnr"]} for r in tally.rows(None, name)]


# ------------------------------------------------------------------------------------------------
# the command


def run_video_command(app: VideoAppConfig) -> int:
    """Train (or load) the autoencoder and both sequence models, evaluate every set, write tables and plots."""
    for node in (app.video, app.task, app.think, app.trainer):
        node.validate()
    if app.model.dim % app.model.heads or (app.model.dim // app.model.heads) % 2:
        raise ConfigError(f"model.dim={app.model.dim} / model.heads={app.model.heads}: need an even head width")
    root, v = Path(app.runtime.output_dir), app.video
    sets = load_sets(v, app.seed)
    print(f"video: {sets.description}")
    cells, models = Cells(root / "cells"), Artifacts(root / "models")
    ae, ae_depends, ae_meta = load_or_train_autoencoder(app, sets, models)
    train_latents = [encode_clips(ae, c) for c in sets.train.values()]
    eval_latents = {name: encode_clips(ae, c) for name, c in sets.evaluation.items()}
    weights = source_weights(app, sets)
    trained = {kind: train_model(kind, app, train_latents, weights, ae_depends, models) for kind in v.models}
    grid = {"eval_batch": v.eval_batch, "think_steps": v.think_steps, "candidate_counts": v.candidate_counts}
    horizons = {"eval_batch": v.eval_batch, "rollout_steps": v.rollout_steps}  # the rollout clips' length too
    rows, rollouts = [], []
    for name, clips in sets.evaluation.items():
        z = eval_latents[name]
        rows += cells.run(f"baselines__{name}", {"latents": ae_depends, "grid": {"eval_batch": v.eval_batch}},
                          lambda: evaluate_baselines(ae, name, z, clips, app))
        for m in trained.values():
            model_grid = {**grid, "rows": EBT_ROWS} if m.kind == "ebt" else grid
            rows += cells.run(f"{m.kind}__{name}", {"model": m.depends, "grid": model_grid},
                              lambda: evaluate(m, ae, name, z, clips, app))
    for name, clips in sets.rollout.items():
        z = encode_clips(ae, clips)
        rollouts += cells.run(f"baselines__rollout__{name}", {"latents": ae_depends, "grid": horizons},
                              lambda: evaluate_rollouts(None, ae, name, z, clips, app))
        for m in trained.values():
            rollouts += cells.run(f"{m.kind}__rollout__{name}", {"model": m.depends, "grid": horizons},
                                  lambda: evaluate_rollouts(m, ae, name, z, clips, app))
    frame = pd.DataFrame(rows)
    reused = (f"This run: {cells.summary()}; {sum(r.reused for r in models.ledger)} of {len(models.ledger)} models "
              "loaded.")
    write_report(root, app, sets, ae_meta, trained, frame, pd.DataFrame(rollouts), reused)
    write_strip(root, app, sets, ae, eval_latents, trained)
    return 0


# ------------------------------------------------------------------------------------------------
# tables, plots and the strip


def headline(frame: pd.DataFrame, model: str, name: str) -> pd.Series | None:
    """A model's default prediction on a set: EBT at think.infer_steps from one start; the twin's forward;
    the copy-last baseline; the autoencoder ceiling."""
    rows = frame[(frame["model"] == model) & (frame["set"] == name)]
    if model == "ebt":
        rows = rows[(rows["kind"] == "verify") & (rows["candidates"] == 1)]
    return rows.iloc[0] if len(rows) else None


def write_report(root: Path, app: VideoAppConfig, sets: VideoSets, ae_meta: dict, trained: dict[str, Trained],
                 frame: pd.DataFrame, rollouts: pd.DataFrame, reused: str) -> None:
    """video.md, video.csv, video_rollout.csv and the plots, atomically."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    write_frame(frame, root, "video")
    names = list(sets.evaluation)
    tag = {n: f"{n} (OOD)" if n in sets.ood else n for n in names}
    k = app.think.infer_steps
    models = [*trained, "copy_last", "autoencoder"]
    lines = ["# video: next-frame prediction", "", sets.description + ".", "", reused, "",
             f"Frame autoencoder: {ae_meta['parameters']:,} parameters, {ae_meta['steps']} steps, "
             f"{ae_meta['seconds']:.0f} s; latent dim {app.video.latent_dim}. Scored: frames 1..{app.video.clip_length - 1} "
             "of every clip from the true frames before it. Latent MSE in standardised latents; PSNR (dB) of the "
             f"decoded prediction against the true frame, per frame. EBT default inference: {k} thinking steps from one "
             f"start (task.init={app.task.init}). copy_last: the previous true frame; autoencoder: the true next "
             "latent decoded (the ceiling of any latent predictor).", "",
             "| model | parameters | train s | " + " | ".join(f"{tag[n]} MSE / PSNR" for n in names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    for model in models:
        meta = trained[model].meta if model in trained else {}
        cells = []
        for name in names:
            r = headline(frame, model, name)
            cells.append("" if r is None else f"{r['latent_mse']:.4f} / {r['psnr']:.2f}")
        params = f"{meta['parameters']:,}" if meta else ""
        seconds = f"{meta['seconds']:.0f}" if meta else ""
        lines.append(f"| {model} | {params} | {seconds} | " + " | ".join(cells) + " |")
    ebt = frame[frame["model"] == "ebt"]
    if len(ebt):
        def by_set(rows: pd.DataFrame, column: str, setting: str, label: str, digits: int) -> str:
            """`column` as a markdown table: a row per evaluation set (OOD marked), a column per `setting` value."""
            table = rows.pivot(index="set", columns=setting, values=column).reindex(names)
            return markdown_table(table.rename(index=tag, columns=label.format).reset_index(), floatfmt=f".{digits}f")

        t = app.think
        noise = f"inference noise {t.infer_langevin_std:g}" if t.infer_langevin_std > 0 else "no inference noise"
        steps = ebt[ebt["kind"] == "steps"]
        lines += ["", f"## EBT against thinking steps (one start, task.init={app.task.init})", "",
                  f"Each budget thought from the same start ({noise}; trained with {t.train_steps} steps"
                  + (f", {t.train_steps} step landscapes" if t.step_embedding else "") + "), alpha unscaled. "
                  "Latent MSE:", "", by_set(steps, "latent_mse", "steps", "{} steps", 4), "", "PSNR (dB):", "",
                  by_set(steps, "psnr", "steps", "{} steps", 2), "", "Mean energy per frame:", "",
                  by_set(steps, "energy_per_frame", "steps", "{} steps", 3)]
        scaled = ebt[ebt["kind"] == "steps_scaled"]
        if len(scaled):
            lines += ["", f"The same budgets with alpha x {t.train_steps} / steps (thinking longer with smaller steps, "
                      "InferencePolicy.alpha_scaling). Latent MSE:", "",
                      by_set(scaled, "latent_mse", "steps", "{} steps", 4), "", "PSNR (dB):", "",
                      by_set(scaled, "psnr", "steps", "{} steps", 2)]
        verify = ebt[ebt["kind"] == "verify"]
        n_max = verify["candidates"].max()
        policy = f"alpha x {t.train_steps} / {k}" if t.infer_alpha_scaling and k != t.train_steps else "alpha unscaled"
        lines += ["", f"## EBT self-verification: N independent starts, {k} steps each ({noise}, {policy}), lowest "
                  "energy per frame", "", "Latent MSE:", "", by_set(verify, "latent_mse", "candidates", "N={}", 4), "",
                  "PSNR (dB):", "", by_set(verify, "psnr", "candidates", "N={}", 2)]
        average = ebt[ebt["kind"] == "average"]
        if len(average):
            lines += ["", "The energy-free control of the same candidates, their plain average (latent MSE):", "",
                      by_set(average, "latent_mse", "candidates", "N={}", 4)]
        oracle = ebt[ebt["kind"] == "oracle"]
        if len(oracle):
            lines += ["", "The best-of-N oracle, per frame the candidate with the lowest latent error (latent MSE; no "
                      "verifier can beat it):", "", by_set(oracle, "latent_mse", "candidates", "N={}", 4)]
        if "spearman" in verify and verify["spearman"].notna().any():
            lines += ranking_section(verify, n_max, "frame", "latent squared error", tag)
            ranked = verify[verify["candidates"] > 1]
            if ranked["candidates"].nunique() > 1:
                lines += ["", "Lowest energy = lowest latent error, per N (chance 1 / N):", "",
                          by_set(ranked, "pick_best", "candidates", "N={}", 3)]
        alpha = trained["ebt"].meta.get("alpha") if "ebt" in trained else None
        if alpha is not None:
            lines += ["", f"Learned alpha after training: {alpha:.3g}."]
    if len(rollouts):
        lines += write_rollouts(root, app, frame, rollouts, tag, models)
    write_markdown(["\n".join(lines)], root / "video.md")

    def draw(ax, rows: pd.DataFrame, column: str, name: str) -> None:
        at = np.arange(len(rows))  # evenly spaced settings (0, 1, 2, 4, 8): no log axis, no mathtext
        ax.plot(at, rows["latent_mse"], marker="o", label="EBT")
        ax.set_xticks(at, [str(x) for x in rows[column]])
        place = {x: i for i, x in enumerate(rows[column])}
        beside = [("steps_scaled", "alpha scaled")] if column == "steps" else [("average", "average"),
                                                                                ("oracle", "oracle")]
        for kind, label in beside:  # the same sweep's companions, at the same x positions
            other = ebt[(ebt["kind"] == kind) & (ebt["set"] == name) & ebt[column].isin(place)].sort_values(column)
            if len(other):
                ax.plot([place[x] for x in other[column]], other["latent_mse"], marker=".", ls="-.", label=label)
        for model, style in [("transformer_pp", "--"), ("copy_last", ":")]:
            r = headline(frame, model, name)
            if r is not None:
                ax.axhline(r["latent_mse"], color="gray", ls=style, label=model)
        ax.set_yscale("log")  # step 0 (a noise start) sits far above the rest
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))  # plain numbers: mathtext labels are slow
        ax.yaxis.set_minor_formatter(NullFormatter())

    plot_sweeps(ebt, list(names), "frame", [root / "plots" / "latent_mse_vs_steps.png",
                                            root / "plots" / "latent_mse_vs_candidates.png"], draw,
                ylabel="latent MSE (log scale)", titles=tag, adjust=dict(left=0.06, right=0.99, bottom=0.17, top=0.9,
                                                                         wspace=0.3))
    print("\n".join(lines))
    print(f"\nwritten: {root / 'video.md'}, {root / 'video.csv'}, {root / 'video_rollout.csv'}, {root / 'plots'}, "
          f"{root / 'strip.png'}")


def write_rollouts(root: Path, app: VideoAppConfig, frame: pd.DataFrame, rollouts: pd.DataFrame,
                   tag: dict[str, str], models: list[str]) -> list[str]:
    """video_rollout.csv and plots/latent_mse_vs_rollout.png, atomically; video.md's rollout table (its lines),
    latent MSE / PSNR at each horizon k beside each model's one-step (teacher-forced) numbers."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    write_frame(rollouts, root, "video_rollout")
    s, ks, names = app.video.clip_length - 1, sorted(rollouts["k"].unique()), list(dict.fromkeys(rollouts["set"]))
    fmt = lambda r: f"{r['latent_mse']:.4f} / {r['psnr']:.2f}"  # noqa: E731
    lines = ["", "## Autoregressive rollouts", "",
             f"From the first {s} true frames of longer clips ({s + max(ks)} frames), each model predicts the next "
             f"latent, appends its own prediction to the frames it reads (the last {s}) and continues; k = frames "
             f"ahead (k = 1 reads true frames only). EBT: {app.think.infer_steps} thinking steps from one start per "
             "frame. Latent MSE / PSNR (dB); one-step: the teacher-forced numbers above (frames 1.."
             f"{s}, every context length).", "",
             "| set | model | one-step | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---|---|---:|" + "---:|" * len(ks)]
    for name in names:
        for model in [m for m in models if m in set(rollouts[rollouts["set"] == name]["model"])]:
            r = rollouts[(rollouts["set"] == name) & (rollouts["model"] == model)].set_index("k")
            one = headline(frame, model, name)
            cells = ["" if one is None else fmt(one), *(fmt(r.loc[k]) for k in ks)]
            lines.append(f"| {tag[name]} | {model} | " + " | ".join(cells) + " |")
    missing = [n for n in tag if n not in names]
    if missing:
        lines += ["", f"Not rolled out (every clip shorter than {s + max(ks)} frames): {', '.join(missing)}."]
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    at = np.arange(len(ks))  # evenly spaced horizons (1, 2, 4, 8)
    for ax, name in zip(axes[0], names):
        for model, style in [("ebt", "-"), ("transformer_pp", "--"), ("copy_last", ":")]:
            r = rollouts[(rollouts["set"] == name) & (rollouts["model"] == model)].set_index("k")
            if len(r):
                ax.plot(at, [r.loc[k, "latent_mse"] for k in ks], marker="o", ls=style, label=model)
        ax.set_xticks(at, [str(k) for k in ks])
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))  # plain numbers: mathtext labels are slow
        ax.set_title(tag[name], fontsize=9)
        ax.set_xlabel("rollout k (frames ahead)", fontsize=8)
    axes[0][0].set_ylabel("latent MSE")
    axes[0][0].legend(fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.17, top=0.9, wspace=0.3)
    atomic_save_figure(fig, root / "plots" / "latent_mse_vs_rollout.png")
    return lines


@torch.no_grad()
def write_strip(root: Path, app: VideoAppConfig, sets: VideoSets, ae: FrameAutoencoder, latents: dict[str, Tensor],
                trained: dict[str, Trained]) -> None:
    """strip.png: for the first `video.strip_clips` clips of each set, the true frames 1..L-1 and each model's
    prediction of them (default inference, from the true frames before each), one row each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = app.video.strip_clips
    if n == 0:
        return
    generator = torch.Generator().manual_seed(app.seed)
    labels, rows = [], []  # rows: (S, H, W) frames
    for name, clips in sets.evaluation.items():
        z = latents[name][:n]
        predicted = {kind: ae.decode(model.module.predict({"x": z}, app.think.infer_steps, generator))
                     for kind, model in trained.items()}
        for c in range(len(z)):
            labels.append(f"{name} #{c}: true")
            rows.append(torch.from_numpy(clips[c, 1:, 0]))
            for kind, frames in predicted.items():
                labels.append(kind)
                rows.append(frames[c, :, 0].clamp(0, 1))
    s, size = rows[0].shape[0], rows[0].shape[-1]
    gap = 2
    grid = np.ones((len(rows) * (size + gap), s * (size + gap)), dtype=np.float32)  # white gaps
    for r, frames in enumerate(rows):
        for t in range(s):
            grid[r * (size + gap):r * (size + gap) + size, t * (size + gap):t * (size + gap) + size] = frames[t].numpy()
    fig, ax = plt.subplots(figsize=(2.2 + 0.45 * s, 0.45 * len(rows) + 0.4))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([r * (size + gap) + size / 2 for r in range(len(rows))], labels, fontsize=6)
    ax.set_xticks([t * (size + gap) + size / 2 for t in range(s)], [f"t+{t + 1}" for t in range(s)], fontsize=6)
    ax.set_title("true next frames; predictions", fontsize=7)
    fig.subplots_adjust(left=0.3, right=0.99, bottom=0.02, top=0.97)
    atomic_save_figure(fig, root / "strip.png")
