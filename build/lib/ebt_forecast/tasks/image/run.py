"""`ebt-forecast image`: photos -> crops -> the denoising EBT and its DiT twin -> PSNR against passes.

Everything is a resumable cell of the experiment layer under `<output_dir>`: both trained models are
artifacts (`models/<name>__<key>/`, loaded with weights_only=True; an interrupted training resumes from
`checkpoints/<name>__<key>/`), and each (split, noise level, model) is a cell `cells/<name>__<key>.json`
keyed by the data, model and settings it reads. Noise levels in `image.train_sigmas` are "seen"; the other
`image.test_sigmas` are out of distribution. Outputs: image.md / image.csv (PSNR and MSE per level against
passes, with the identity = the noisy input), plots/psnr_vs_passes.png and plots/examples.png (a grid of
denoised test crops). Estimates are clipped to [-1, 1] before scoring.

Passes are per image and count what producing the row's estimate cost: `forward_passes` and
`backward_passes` (for the EBT, its k-step call's engine record: a thinking step is one forward for the
energy and one backward for its gradient w.r.t. the candidate, both over the candidate half against the
cached context; the one encoding of the noisy image is not counted; for the DiT one forward per DDIM
step, no backward), and `passes` = forward + backward, the plots' x axis. The headline's EBT step count
(<= 3) is chosen per noise level on the validation split; its test numbers are reported.

Rows carry a `kind`: `input` (the identity), `steps` (the EBT after k steps at the trained alpha), `ddim`
(the DiT), and, from the EBT's thinking cell (`thinking_rows`, every split and level, seen or not):
`steps_scaled` (k > think.train_steps steps at alpha x train_steps / k, each budget thought from the start
with the same inference noise as the plain k-step row), and self-verification over N =
`image.candidate_counts` starts, all at the noisy image, think.infer_steps each, made different by
inference Langevin noise (`image.verify_noise`, default think.infer_langevin_std): `verify` (the lowest
final energy per image), `average` (the energy-free control: the plain mean of the same N) and `oracle`
(best-of-N by the true error, an upper bound). The largest N's `verify` row also carries `spearman` (the
mean within-image Spearman correlation of energy against MSE over its N candidates) and `pick_best` (the
share of images where the lowest energy is the lowest error). Every inference noise comes from a seeded
generator.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from ebt_forecast.experiment import Artifacts, Cells, fit_or_load, write_frame, write_markdown
from ebt_forecast.io import atomic_save_figure
from ebt_forecast.metrics import psnr, rowwise_spearman
from ebt_forecast.tasks.image.config import ImageAppConfig
from ebt_forecast.tasks.image.data import (
    TrainCrops,
    add_noise,
    as_gaussian,
    eval_crops,
    load_photos,
    q_sample_coefficients,
    split_photos,
)
from ebt_forecast.tasks.image.model import ImageShape
from ebt_forecast.tasks.image.module import DiTModule, ImageEBTModule
from ebt_forecast.think import InferencePolicy, fixed_steps_passes

EVAL_SEED = {"val": 1, "test": 2}  # crop positions and noise of each held-out split
HEADLINE_STEPS = 3  # the headline's EBT chooses among 0..3 thinking steps
MAIN_KINDS = {"identity": "input", "ebt": "steps", "dit": "ddim"}  # each model's rows in the PSNR / MSE tables
VERIFY_SEED = 7919  # offset of the self-verification noise from a cell's seed (the k-step rows use seed + k)


def scores(estimate: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """Mean per-crop PSNR (dB, data range 2) and MSE of estimates clipped to [-1, 1]."""
    est, ref = estimate.clamp(-1, 1).numpy(), clean.numpy()
    mse = ((est - ref) ** 2).reshape(len(ref), -1).mean(1)
    return {"psnr": float(psnr(est, ref, data_range=2.0).mean()), "mse": float(mse.mean())}


def crop_mse(estimate: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-crop MSE (...) of estimates (..., C, H, W) clipped to [-1, 1], as `scores` reads them."""
    return (estimate.clamp(-1, 1) - clean).pow(2).flatten(-3).mean(-1)


def cell_seed(seed: int, split: str, sigma: float) -> int:
    """The inference-noise seed of one (split, level) cell."""
    return seed * 1_000_003 + EVAL_SEED[split] * 10_007 + int(round(sigma * 1e4))


def trained(store: Artifacts, name: str, depends: dict, module: L.LightningModule, data: TrainCrops, trainer_cfg,
            checkpoints: Path) -> tuple[L.LightningModule, float]:
    """Train once (an interrupted run resumes from `checkpoints/<name>__<key>`), then load; the training seconds."""
    module, meta = fit_or_load(store, name, depends, module, lambda: data, trainer_cfg, checkpoints)
    how = "loaded" if store.reused(name) else "trained"
    print(f"{name}: {how} {store.path(name, depends)} ({meta['steps']} steps in {meta['seconds']:.0f} s)")
    return module, meta["seconds"]


def passes(forward: float, backward: float) -> dict[str, float]:
    """Per-image pass columns: forward, backward and their sum (the plots' x axis)."""
    return {"forward_passes": forward, "backward_passes": backward, "passes": forward + backward}


def in_batches(fn, noisy: torch.Tensor, size: int) -> torch.Tensor:
    """fn over batches of `size` crops, outputs concatenated."""
    return torch.cat([fn(chunk) for chunk in noisy.split(size)])


def run_image_command(app: ImageAppConfig) -> int:
    """Load photos, train (or load) both models, score every split x level x passes cell, write the report."""
    c, task = app.image.validate(), app.task.validate()
    app.trainer.validate()
    shape = ImageShape(3, c.crop, c.patch)
    root = Path(app.runtime.output_dir)
    cells = Cells(root / "cells")
    store = Artifacts(root / "models", ledger=cells.ledger)  # the summary counts models beside cells
    start = time.perf_counter()
    photos = load_photos(c.photos, c.downscale, c.crop)
    splits = split_photos(list(photos), c.split_every)
    print(f"image: {len(photos)} photos -> train {len(splits['train'])}, val {splits['val']}, test {splits['test']}; "
          f"crops {c.crop} x {c.crop}, patch {c.patch}, training noise {c.noise} at level {list(c.train_sigmas)}")
    data = {"photos": c.photos or "bundled", "shapes": {n: photos[n].shape for n in sorted(photos)},
            "downscale": c.downscale, "crop": c.crop, "split_every": c.split_every, "noise": c.noise,
            "train_sigmas": list(c.train_sigmas), "seed": app.seed}
    train = [photos[n] for n in splits["train"]]
    models: dict[str, torch.nn.Module] = {}
    seconds: dict[str, float] = {}
    depends: dict[str, dict] = {}  # per model: what its weights depend on
    if "ebt" in c.models:
        L.seed_everything(app.seed, workers=True, verbose=False)
        depends["ebt"] = {"data": data, "model": app.model, "think": app.think, "trainer": app.trainer.settings(),
                          "task": task, "shape": shape}
        crops = TrainCrops(train, c.crop, c.train_sigmas, app.trainer.max_steps * app.trainer.batch_size, app.seed,
                           c.noise)
        models["ebt"], seconds["ebt"] = trained(store, "ebt", depends["ebt"],
                                                ImageEBTModule(app.model, app.think, app.trainer, task, shape), crops,
                                                app.trainer, root / "checkpoints")
    if "dit" in c.models:
        L.seed_everything(app.seed, workers=True, verbose=False)
        dit_trainer = dataclasses.replace(app.trainer, max_steps=c.dit_max_steps or app.trainer.max_steps)
        depends["dit"] = {"data": data, "model": app.model, "trainer": dit_trainer.settings(), "shape": shape,
                          "max_sigma": c.dit_max_sigma}
        crops = TrainCrops(train, c.crop, c.train_sigmas, dit_trainer.max_steps * dit_trainer.batch_size, app.seed,
                           c.noise)
        models["dit"], seconds["dit"] = trained(store, "dit", depends["dit"],
                                                DiTModule(app.model, dit_trainer, shape, c.dit_max_sigma), crops,
                                                dit_trainer, root / "checkpoints")
    rows, seen = [], set(c.train_sigmas)
    held_out = {"data": data, "eval_crops": c.eval_crops}  # what every evaluation cell reads
    verify_noise = app.think.infer_langevin_std if c.verify_noise is None else c.verify_noise
    for split in c.splits:
        clean = eval_crops([photos[n] for n in splits[split]], c.crop, c.eval_crops, EVAL_SEED[split])
        for sigma in c.test_sigmas:
            noisy = add_noise(clean, sigma, EVAL_SEED[split], c.noise)
            seed = cell_seed(app.seed, split, sigma)
            base, name = {"split": split, "sigma": sigma, "seen": sigma in seen}, f"{split}__s{sigma}"
            cell_rows = list(cells.run(f"{name}__identity", held_out, lambda: [
                {"model": "identity", "steps": 0, **passes(0, 0), **scores(noisy, clean), "seconds": 0.0}]))
            if "ebt" in models:
                cell_rows += cells.run(
                    f"{name}__ebt", {**held_out, "ebt": depends["ebt"], "steps": c.ebt_steps},
                    lambda: ebt_rows(models["ebt"], noisy, clean, c.ebt_steps, c.eval_batch, seed=seed))
                grid = {"steps": c.ebt_steps, "candidate_counts": c.candidate_counts, "verify_noise": verify_noise}
                cell_rows += cells.run(
                    f"{name}__ebt_think", {**held_out, "ebt": depends["ebt"], "grid": grid},
                    lambda: thinking_rows(models["ebt"], noisy, clean, c.ebt_steps, c.candidate_counts, verify_noise,
                                          c.eval_batch, seed=seed))
            gauss_noisy, gauss_sigma = as_gaussian(noisy, sigma, c.noise)  # the DiT's DDIM starts from this form
            for k in c.dit_steps if "dit" in models else []:
                cell_rows += cells.run(f"{name}__dit{k}", {**held_out, "dit": depends["dit"]},
                                       lambda: dit_rows(models["dit"], gauss_noisy, clean, gauss_sigma, k,
                                                        c.eval_batch))
            # cells written before rows had a kind get their model's (identity: input, ebt: steps, dit: ddim)
            rows += [{**base, "kind": MAIN_KINDS.get(r["model"]), "candidates": 1, **r} for r in cell_rows]
    frame = pd.DataFrame(rows)
    write_report(root, app, frame, splits, seconds, models, photos)
    print(cells.summary())
    print(f"image: done in {time.perf_counter() - start:.0f} s")
    return 0


def ebt_rows(module: ImageEBTModule, noisy: torch.Tensor, clean: torch.Tensor, steps: int, batch: int,
             seed: int = 0) -> list[dict]:
    """PSNR, MSE and passes per image after k = 0..steps thinking steps at the trained alpha (no alpha scaling): one
    k-step call per row, so its passes are that call's engine record and its seconds its own wall time; `energy` (a
    diagnostic, not counted) is the estimate's mean energy. Inference noise (think.infer_langevin_std) from a
    generator seeded with seed + k."""
    rows = []
    policy = InferencePolicy.of(module.think_cfg).with_alpha_scaling(False)
    for k in range(steps + 1):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed + k)
        thoughts = [module.denoise(chunk, k, generator=generator, policy=policy) for chunk in noisy.split(batch)]
        seconds = time.perf_counter() - start
        rows.append(thought_row(module, "steps", k, thoughts, noisy, clean, batch, seconds))
    return rows


def thought_row(module: ImageEBTModule, kind: str, k: int, thoughts: list, noisy: torch.Tensor, clean: torch.Tensor,
                batch: int, seconds: float) -> dict:
    """One row of single-start thinking: the estimate after k steps, its engine-recorded passes per image, its
    mean energy (a diagnostic, not counted)."""
    records = [t.record for t in thoughts if t.record is not None]
    estimate = torch.cat([t.path[:, k, 0] for t in thoughts])
    energy = torch.cat([module.energy(x, e) for x, e in zip(noisy.split(batch), estimate.split(batch))])
    return {"model": "ebt", "kind": kind, "steps": k, "candidates": 1,
            **passes(sum(r.forward_passes for r in records) / len(noisy),
                     sum(r.backward_passes for r in records) / len(noisy)),
            **scores(estimate, clean), "seconds": seconds, "energy": float(energy.mean())}


def thinking_rows(module: ImageEBTModule, noisy: torch.Tensor, clean: torch.Tensor, steps: int, counts: list[int],
                  noise_std: float, batch: int, seed: int = 0) -> list[dict]:
    """The EBT's thinking beyond the trained budget and its self-verification (module docstring's row kinds):
    `steps_scaled` for k = think.train_steps + 1 .. steps (alpha x train_steps / k, noise seeded seed + k as the
    plain k-step row), then N = max(counts) starts per image at the noisy image, think.infer_steps each under the
    config's inference policy with Langevin std `noise_std` (seeded seed + VERIFY_SEED), scored for every N in
    `counts` on the first N: `verify`, `average`, `oracle`; Spearman and pick-best on the largest N's `verify`."""
    cfg, rows = module.think_cfg, []
    scaled = InferencePolicy.of(cfg).with_alpha_scaling(True)
    for k in range(cfg.train_steps + 1, steps + 1):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed + k)
        thoughts = [module.denoise(chunk, k, generator=generator, policy=scaled) for chunk in noisy.split(batch)]
        rows.append(thought_row(module, "steps_scaled", k, thoughts, noisy, clean, batch,
                                time.perf_counter() - start))
    n_max, k = max(counts), cfg.infer_steps
    generator = torch.Generator().manual_seed(seed + VERIFY_SEED)
    start = time.perf_counter()
    thoughts = [module.denoise(chunk, k, starts=n_max, generator=generator, noise_std=noise_std, final_energy=True)
                for chunk in noisy.split(batch)]
    seconds = time.perf_counter() - start
    final = torch.cat([t.grouped[:, 0] for t in thoughts])  # (B, N, C, H, W)
    energies = torch.cat([t.energies[:, 0] for t in thoughts]).double()  # (B, N)
    errors = crop_mse(final, clean[:, None]).double()  # (B, N)
    rows_of = torch.arange(len(final))
    for n in sorted(set(counts)):
        picked = energies[:, :n].argmin(1)
        oracle = errors[:, :n].argmin(1)
        for kind, estimate, final_read, energy in (
                ("verify", final[rows_of, picked], n > 1, float(energies[rows_of, picked].mean())),
                ("average", final[:, :n].mean(1), False, None),
                ("oracle", final[rows_of, oracle], False, None)):
            forward, backward = fixed_steps_passes(k, n, final_energy=final_read)
            rows.append({"model": "ebt", "kind": kind, "steps": k, "candidates": n, **passes(forward, backward),
                         **scores(estimate, clean), "seconds": seconds * n / n_max,
                         **({} if energy is None else {"energy": energy})})
    rho = rowwise_spearman(energies.numpy(), errors.numpy())  # NaN where an image's N energies or errors tie
    best = (errors[rows_of, energies.argmin(1)] <= errors.min(1).values + 1e-12).double()
    for row in rows:
        if row["kind"] == "verify" and row["candidates"] == n_max:
            row["spearman"] = float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")
            row["pick_best"] = float(best.mean())
    return rows


def dit_rows(module: DiTModule, noisy: torch.Tensor, clean: torch.Tensor, sigma: float, steps: int,
             batch: int) -> list[dict]:
    """PSNR, MSE and passes per image of DDIM with `steps` steps (one forward each) from the time matching sigma."""
    start = time.perf_counter()
    est = in_batches(lambda x: module.denoise(x, sigma, steps), noisy, batch)
    return [{"model": "dit", "steps": steps, **passes(steps, 0), **scores(est, clean),
             "seconds": time.perf_counter() - start}]


# ------------------------------------------------------------------------------------------------
# the report


def write_report(root: Path, app: ImageAppConfig, frame: pd.DataFrame, splits: dict, seconds: dict, models: dict,
                 photos: dict) -> None:
    """image.csv, image.md, plots/psnr_vs_passes.png and plots/examples.png, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = app.image
    write_frame(frame, root, "image")
    extra = frame[~frame["kind"].isin(set(MAIN_KINDS.values()))] if "kind" in frame else frame.iloc[:0]
    frame = frame[frame["kind"].isin(set(MAIN_KINDS.values()))] if "kind" in frame else frame
    sigmas = list(c.test_sigmas)
    label = lambda s: f"{s:g}" + ("" if s in set(c.train_sigmas) else " (unseen)")  # noqa: E731
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    alpha = float(models["ebt"].step_size().detach()) if "ebt" in models else None
    if c.noise == "q_sample":
        coefficients = ", ".join(f"{s:g}: x {q_sample_coefficients(s)[0]:.3f} + {q_sample_coefficients(s)[1]:.3f} eps"
                                 for s in sigmas)
        noise = (f"the reference's q_sample noise (step 99 of a linear schedule of int(100 / level) steps: "
                 f"{coefficients}), trained at level {', '.join(f'{s:g}' for s in c.train_sigmas)}")
    else:
        noise = f"Gaussian noise, trained at sigma {', '.join(f'{s:g}' for s in c.train_sigmas)}"
    lines = ["# image denoising: EBT against DiT", "",
             f"{len(photos)} photos (test: {', '.join(splits['test'])}; validation: {', '.join(splits['val'])}); "
             f"{c.eval_crops} crops of {c.crop} x {c.crop} per split; {noise} (pixels in [-1, 1]). EBT energy: "
             f"{app.task.conditioning}, smooth L1 beta {app.task.huber_beta:g}. Backbone dim {app.model.dim}, depth "
             f"{app.model.depth}, heads {app.model.heads}; parameters "
             + ", ".join(f"{k} {v:,}" for k, v in params.items()) + "; training "
             + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + f" ({app.trainer.max_steps} steps of "
             f"{app.trainer.batch_size} crops each" + (f"; the DiT {c.dit_max_steps} steps" if c.dit_max_steps else "")
             + "). Passes per image (forward, backward; `passes` and the plots' x axis = forward + backward): an "
             "EBT thinking step is one forward (the energy) and one backward (its gradient w.r.t. the candidate) of "
             "the candidate half against the cached context, as the thinking engine records them (the one "
             "encoding of the noisy image is not counted); a DiT DDIM step is one forward. "
             "PSNR in dB (mean over crops, data range 2), estimates clipped to [-1, 1]. DiT training noise: "
             + ("every level (t ~ U[0, 1])." if c.dit_max_sigma is None else f"sigma <= {c.dit_max_sigma:g} only.")
             + ("" if "ebt" not in models else f" EBT alpha after training: {alpha:.4g}."), ""]
    for split in [s for s in ("test", "val") if s in set(frame["split"])]:
        part = frame[frame["split"] == split]
        lines += metric_table(part, "psnr", f"## {split}: PSNR (dB) by noise level", ".2f", sigmas, label)
        lines += metric_table(part, "mse", f"## {split}: MSE by noise level", ".5f", sigmas, label)
        more = extra[extra["split"] == split]
        if len(more):
            lines += thinking_tables(more, part, app, split, sigmas, label)
    lines += headline(frame, sigmas, label)
    write_markdown(["\n".join(lines)], root / "image.md")

    test = frame[frame["split"] == ("test" if "test" in set(frame["split"]) else frame["split"].iloc[0])]
    fig, axes = plt.subplots(1, len(sigmas), figsize=(3.2 * len(sigmas), 3.2), squeeze=False)
    for ax, sigma in zip(axes[0], sigmas):
        part = test[test["sigma"] == sigma]
        for model, marker in (("ebt", "o"), ("dit", "s")):
            rows = part[part["model"] == model].sort_values("passes")
            if len(rows):
                ax.plot(rows["passes"], rows["psnr"], marker=marker, label=model.upper())
        ident = part[part["model"] == "identity"]["psnr"]
        if len(ident):
            ax.axhline(float(ident.iloc[0]), color="grey", linestyle="--", label="noisy input")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(-0.2, 1.5 * max(part["passes"].max(), 1))
        ax.set_xlabel("passes per image (forward + backward)")
        ax.set_title(f"sigma {label(sigma)}", fontsize=9)
    axes[0][0].set_ylabel("PSNR (dB)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, root / "plots" / "psnr_vs_passes.png")
    if c.grid_examples > 0 and "test" in splits:
        example_grid(root, app, models, photos, splits)
    print("\n".join(lines))
    print(f"\nwritten: {root / 'image.md'}, {root / 'image.csv'}, {root / 'plots'}")


def metric_table(part: pd.DataFrame, metric: str, title: str, fmt: str, sigmas: list[float], label) -> list[str]:
    """One markdown table: a row per (model, steps) with its passes per image (mean over levels), a column per
    noise level."""
    lines = [title, "", "| model | steps | forward | backward | " + " | ".join(label(s) for s in sigmas) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(sigmas)]
    for (model, steps), rows in part.groupby(["model", "steps"], sort=False):
        values = rows.set_index("sigma")[metric]
        lines.append(f"| {model} | {steps} | {rows['forward_passes'].mean():g} | {rows['backward_passes'].mean():g} | "
                     + " | ".join(format(values.get(s, float("nan")), fmt) for s in sigmas) + " |")
    return lines + [""]


def thinking_tables(extra: pd.DataFrame, main: pd.DataFrame, app: ImageAppConfig, split: str, sigmas: list[float],
                    label) -> list[str]:
    """The EBT thinking cell's tables for one split: PSNR after more steps than trained with and without alpha
    scaling, and self-verification (lowest energy, the energy-free average, the oracle, Spearman) by N."""
    t, c = app.think, app.image
    noise = t.infer_langevin_std if c.verify_noise is None else c.verify_noise
    at = lambda rows, s: rows[rows["sigma"] == s]  # noqa: E731
    psnr_of = lambda rows: f"{rows['psnr'].iloc[0]:.2f}" if len(rows) else ""  # noqa: E731
    lines = []
    scaled = extra[extra["kind"] == "steps_scaled"]
    ks = sorted(set(scaled["steps"]))
    if ks:
        plain = main[main["kind"] == "steps"]
        lines += [f"## {split}: more thinking steps than trained (train_steps {t.train_steps}), each budget from the "
                  f"start: PSNR (dB) at the trained alpha / at alpha x {t.train_steps} / steps", "",
                  "| level | " + " | ".join(f"{k} steps | {k} steps, alpha x {t.train_steps}/{k}" for k in ks) + " |",
                  "|---|" + "---:|---:|" * len(ks)]
        for s in sigmas:
            cells = [f"{psnr_of(at(plain[plain['steps'] == k], s))} | {psnr_of(at(scaled[scaled['steps'] == k], s))}"
                     for k in ks]
            lines.append(f"| {label(s)} | " + " | ".join(cells) + " |")
        lines.append("")
    verify = extra[extra["kind"].isin(["verify", "average", "oracle"])]
    if len(verify):
        ns = sorted(set(verify["candidates"]))
        top = verify[(verify["kind"] == "verify") & (verify["candidates"] == max(ns))]
        header = [f"lowest E N={n}" for n in ns] + [f"average N={n}" for n in ns] + [f"oracle N={n}" for n in ns]
        lines += [f"## {split}: self-verification, N starts at the noisy image, {t.infer_steps} steps each, "
                  f"inference Langevin std {noise:g}: PSNR (dB)", "",
                  "Lowest E: the candidate with the lowest final energy per image; average: the plain mean of the "
                  "same N (the energy-free control); oracle: the candidate with the lowest error (best-of-N, an "
                  f"upper bound); Spearman: energy against MSE over an image's N={max(ns)} candidates (mean over "
                  "images); pick best: share of images where the lowest energy is the lowest error."
                  + (" With no inference noise the N candidates are identical (Spearman undefined)."
                     if noise == 0 else ""), "",
                  "| level | " + " | ".join(header) + " | Spearman | pick best |",
                  "|---|" + "---:|" * (len(header) + 2)]
        for s in sigmas:
            cells = [psnr_of(at(verify[(verify["kind"] == kind) & (verify["candidates"] == n)], s))
                     for kind in ("verify", "average", "oracle") for n in ns]
            row = at(top, s)
            rho = float(row["spearman"].iloc[0]) if len(row) and "spearman" in row else float("nan")
            best = float(row["pick_best"].iloc[0]) if len(row) and "pick_best" in row else float("nan")
            lines.append(f"| {label(s)} | " + " | ".join(cells) + f" | {'n/a' if math.isnan(rho) else f'{rho:+.3f}'}"
                         f" | {'n/a' if math.isnan(best) else f'{best:.2f}'} |")
        lines.append("")
    return lines


def validation_steps(frame: pd.DataFrame, max_steps: int = HEADLINE_STEPS) -> dict[float, int]:
    """Per noise level, the EBT step count in 0..max_steps with the best validation PSNR (the fewer on a tie)."""
    val = frame[(frame["split"] == "val") & (frame["model"] == "ebt") & (frame["steps"] <= max_steps)]
    return {sigma: int(rows.sort_values("steps").set_index("steps")["psnr"].idxmax())
            for sigma, rows in val.groupby("sigma")}


def headline(frame: pd.DataFrame, sigmas: list[float], label) -> list[str]:
    """The benchmark question: the test PSNR of the EBT at the step count (<= 3) validation chose for each level,
    against the DiT at each of its step counts."""
    test = frame[frame["split"] == "test"]
    ebt, dit = test[test["model"] == "ebt"], test[test["model"] == "dit"]
    if not len(ebt) or not len(dit):
        return []
    title = f"## test: EBT (steps <= {HEADLINE_STEPS}, chosen per noise level on validation) minus DiT, PSNR (dB)"
    chosen = validation_steps(frame)
    if not chosen:
        return [title, "", "Not reported: the EBT's step count is chosen on the validation split, which this run "
                "did not evaluate (image.splits).", ""]
    ks = sorted(set(dit["steps"]))
    lines = [title, "", "| sigma | EBT steps (val) | EBT passes | EBT | " + " | ".join(f"DiT {k}" for k in ks) + " | "
             + " | ".join(f"EBT - DiT {k}" for k in ks) + " |", "|---|---:|---:|---:|" + "---:|" * (2 * len(ks))]
    for sigma in [s for s in sigmas if s in chosen]:
        row = ebt[(ebt["sigma"] == sigma) & (ebt["steps"] == chosen[sigma])].iloc[0]
        d = dit[dit["sigma"] == sigma].set_index("steps")["psnr"]
        lines.append(f"| {label(sigma)} | {chosen[sigma]} | {row['passes']:g} | {row['psnr']:.2f} | "
                     + " | ".join(f"{d.get(k, float('nan')):.2f}" for k in ks) + " | "
                     + " | ".join(f"{row['psnr'] - d.get(k, float('nan')):+.2f}" for k in ks) + " |")
    return lines + [""]


def example_grid(root: Path, app: ImageAppConfig, models: dict, photos: dict, splits: dict) -> None:
    """Rows: test crops (one per photo) at the largest seen and the largest unseen level; columns: clean, noisy,
    EBT, DiT."""
    import matplotlib.pyplot as plt

    c = app.image
    clean = eval_crops([photos[n] for n in splits["test"]], c.crop, c.eval_crops, EVAL_SEED["test"])
    pick = clean[:c.grid_examples]  # crops are dealt to the photos in turn: one per photo
    unseen = [s for s in c.test_sigmas if s not in set(c.train_sigmas)]
    levels = [max(c.train_sigmas)] + ([max(unseen)] if unseen else [])
    ebt_steps, dit_steps = min(3, c.ebt_steps), max(c.dit_steps)
    columns = ["clean", "noisy"] + ([f"EBT {ebt_steps} steps"] if "ebt" in models else []) + (
        [f"DiT {dit_steps} steps"] if "dit" in models else [])
    n_rows = len(levels) * len(pick)
    fig, axes = plt.subplots(n_rows, len(columns), figsize=(1.6 * len(columns), 1.6 * n_rows), squeeze=False)
    for li, sigma in enumerate(levels):
        noisy = add_noise(pick, sigma, EVAL_SEED["test"] + 7, c.noise)
        shown = [pick, noisy]
        if "ebt" in models:
            generator = torch.Generator().manual_seed(cell_seed(app.seed, "test", sigma) + ebt_steps)
            shown.append(models["ebt"].denoise(noisy, ebt_steps, generator=generator).path[:, -1, 0])
        if "dit" in models:
            shown.append(models["dit"].denoise(*as_gaussian(noisy, sigma, c.noise), dit_steps))
        for i in range(len(pick)):
            for j, images in enumerate(shown):
                ax = axes[li * len(pick) + i][j]
                ax.imshow(((images[i].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if li * len(pick) + i == 0:
                    ax.set_title(columns[j], fontsize=7)
                if j == 0:
                    ax.set_ylabel(f"sigma {sigma:g}", fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, root / "plots" / "examples.png")
