"""`ebt-forecast text`: corpus -> tokenizer -> the EBT and its Transformer++ twin -> perplexity tables and plots.

Everything is resumable on the experiment layer (`ebt_forecast.experiment`) under
`<runtime.output_dir>/<corpus folder name>/`: the trained tokenizer (`tokenizers/`), every trained model
(`models/<model>__<key>/`: weights, and a meta of its training time and FLOPs; with `trainer.checkpoint_dir` an
interrupted training resumes from its own Lightning checkpoint) and one cell of metrics per (model, evaluation set)
(`cells/<model>__<set>__<key>.json`), each keyed by the configuration it depends on; text.md says which cells were
reused. Evaluation sets: the validation and test works, the out-of-distribution folder (Milton) and the generated
Dyck / arithmetic sets (completion tokens only). `text.scaling_dims=[...]` (experiment=text_scaling) trains both
models at each width instead and reports validation perplexity against parameters and training FLOPs with fitted
log-log slopes.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ebt_forecast.experiment import (Artifacts, Cells, cell_key, markdown_table, plot_sweeps, ranking_section,
                                     train_or_load, write_frame, write_markdown)
from ebt_forecast.io import atomic_save_figure
from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import TrainableModule, fit_module
from ebt_forecast.tasks.text.config import TextAppConfig
from ebt_forecast.tasks.text.data import (
    TokenWindows,
    arithmetic_examples,
    dyck_examples,
    eval_windows,
    pack_examples,
    read_folder,
    split_works,
    token_stream,
)
from ebt_forecast.metrics import rowwise_spearman
from ebt_forecast.tasks.text.module import TextModule, TransformerPPModule, position_cross_entropy, token_cross_entropy
from ebt_forecast.tasks.text.tokenizer import TextTokenizer, make_tokenizer
from ebt_forecast.errors import ConfigError
from ebt_forecast.think import InferencePolicy, fixed_steps_passes

GENERATORS = {"dyck": dyck_examples, "arithmetic": arithmetic_examples}


# ------------------------------------------------------------------------------------------------
# data


@dataclass
class TextData:
    """Token streams of the splits, the evaluation sets as batches, and what they depend on."""

    name: str  # the corpus folder's name
    tokenizer: TextTokenizer
    train: np.ndarray  # training token stream
    sets: dict[str, dict[str, Tensor]]  # evaluation set -> {x, y, mask} (windows, S)
    depends: dict  # what the training data depends on: files, split, tokenizer, window length, seed
    eval_depends: dict  # what the evaluation sets add: the OOD folder, windows, generated examples
    description: str


def load_data(app: TextAppConfig, out: Path | None = None) -> TextData:
    """Read, split and tokenize the corpus; build the evaluation sets (DataError names a bad path)."""
    t = app.text
    folder = Path(t.corpus) if t.corpus else Path(t.root) / "shakespeare"
    works = read_folder(folder)
    ood_folder = Path(t.ood) if t.ood else (Path(t.root) / "milton" if t.ood is None else None)
    ood = read_folder(ood_folder) if ood_folder is not None and (t.ood or ood_folder.is_dir()) else []
    splits = split_works(works, t.split_every)
    out = out if out is not None else Path(app.runtime.output_dir) / folder.name
    tok = make_tokenizer(t.tokenizer, [text for _, text in splits["train"]], t.vocab_size, t.gpt2_path,
                         Artifacts(out / "tokenizers"), app.runtime.threads)
    streams = {name: token_stream(ws, tok.encode, tok.eot) for name, ws in splits.items()}
    if ood:
        streams[ood_folder.name] = token_stream(ood, tok.encode, tok.eot)
    sets = {name: eval_windows(ids, t.context_length, t.eval_windows) for name, ids in streams.items() if name != "train"}
    for i, name in enumerate(t.generated):
        examples = GENERATORS[name](t.generated_examples, app.seed + 1000 + i)
        packed = pack_examples(examples, tok.encode, tok.eot, t.context_length)
        sets[name] = {k: v[:t.eval_windows] for k, v in packed.items()}
    depends = {"works": [(n, len(s)) for n, s in works], "split_every": t.split_every, "tokenizer": t.tokenizer,
               "vocabulary": t.vocab_size if t.tokenizer == "bpe" else t.gpt2_path,
               "context_length": t.context_length, "seed": app.seed}
    eval_depends = {"ood": [(n, len(s)) for n, s in ood], "eval_windows": t.eval_windows, "generated": t.generated,
                    "generated_examples": t.generated_examples}
    description = (f"{len(works)} works in {str(folder)!r} ({len(splits['train'])} train / {len(splits['validation'])} "
                   f"validation / {len(splits['test'])} test), {len(streams['train']):,} training tokens; tokenizer "
                   f"{tok.name} ({tok.vocab_size:,} ids); out of distribution: "
                   + (f"{ood_folder.name} ({len(ood)} works)" if ood else "none") + f", {', '.join(t.generated) or 'no'} "
                   f"generated set(s); {t.context_length} tokens per window")
    return TextData(folder.name, tok, streams["train"], sets, depends, eval_depends, description)


# ------------------------------------------------------------------------------------------------
# models (artifacts)


def build(kind: str, app: TextAppConfig, model_cfg: TransformerConfig, vocab_size: int) -> TrainableModule:
    s = app.text.context_length
    if kind == "ebt":
        return TextModule(model_cfg, app.think, app.trainer, app.task, vocab_size, s)
    return TransformerPPModule(model_cfg, app.trainer, vocab_size, s)


def measure_flops(kind: str, app: TextAppConfig, model_cfg: TransformerConfig, vocab_size: int) -> dict[str, float]:
    """Matmul FLOPs per token (torch's FlopCounterMode) of one training step (forward, thinking, backward)
    and of one inference at the default setting (EBT: encode + think.infer_steps steps, one start)."""
    from torch.utils.flop_counter import FlopCounterMode

    module = build(kind, app, model_cfg, vocab_size)
    module.log = module.log_dict = module.log_think_record = lambda *a, **k: None  # no trainer attached
    s, b = app.text.context_length, 2
    batch = {"x": torch.randint(0, vocab_size, (b, s)), "y": torch.randint(0, vocab_size, (b, s))}
    module.train()
    with FlopCounterMode(display=False) as counter:
        module.training_step(batch, 0).backward()
    train = counter.get_total_flops() / (b * s)
    module.eval()
    with FlopCounterMode(display=False) as counter:
        if kind == "ebt":
            module.infer(batch, num_candidates=1, group=1, steps=app.think.infer_steps, selection="refined")
        else:
            with torch.no_grad():
                module.predict(batch)
    return {"train_flops_per_token": train, "infer_flops_per_token": counter.get_total_flops() / (b * s)}


@dataclass
class Trained:
    kind: str
    module: TrainableModule
    depends: dict  # what its training depended on: the key of its artifact, and part of its cells' keys
    meta: dict  # seconds, steps, tokens, parameters, FLOPs per token


def train_model(kind: str, app: TextAppConfig, data: TextData, store: Artifacts,
                model_cfg: TransformerConfig | None = None) -> Trained:
    """One language model: trained once on the shared token windows (an artifact of `store`; with
    trainer.checkpoint_dir, resumable from its own Lightning checkpoint), then loaded."""
    model_cfg = model_cfg or app.model
    ebt = kind == "ebt"
    trainer_cfg = app.trainer if ebt or not app.text.twin_max_steps else dataclasses.replace(
        app.trainer, max_steps=app.text.twin_max_steps)
    depends = {"model": model_cfg, "think": app.think if ebt else None, "task": app.task if ebt else None,
               "trainer": trainer_cfg.settings(), "data": data.depends, "seed": app.seed}

    def train(module: TrainableModule) -> dict:
        trainer = trainer_cfg
        if trainer.checkpoint_dir:  # one resumable folder per model
            trainer = dataclasses.replace(trainer, checkpoint_dir=str(Path(trainer.checkpoint_dir) /
                                                                      store.path(kind, depends).name))
        windows = TokenWindows(data.train, app.text.context_length, trainer.max_steps * trainer.batch_size, app.seed)
        print(f"training {kind} ({sum(p.numel() for p in module.parameters()):,} parameters, "
              f"{trainer.max_steps} steps x {trainer.batch_size} windows x {app.text.context_length} tokens)")
        report = fit_module(module, windows, trainer, seed=None, run_key=cell_key(depends))
        embedding = module.model.embed.weight.numel()
        params = sum(p.numel() for n, p in module.named_parameters() if not n.startswith("step_size."))
        return {"seconds": report.seconds, "steps": report.steps,
                "tokens": report.steps * trainer.batch_size * app.text.context_length,
                "parameters": params, "non_embedding_parameters": params - embedding, "dim": model_cfg.dim,
                "alpha": float(module.step_size().detach()) if ebt else None,
                **measure_flops(kind, app, model_cfg, data.tokenizer.vocab_size)}

    L.seed_everything(app.seed, workers=True, verbose=False)  # one stream: the initial weights, then training
    module, meta = train_or_load(store, kind, depends, build(kind, app, model_cfg, data.tokenizer.vocab_size), train)
    return Trained(kind, module, depends, meta)


# ------------------------------------------------------------------------------------------------
# evaluation


class Tally:
    """Cross-entropy, correct argmax and token counts over the scored tokens, per setting."""

    def __init__(self):
        self.sums: dict[tuple, np.ndarray] = defaultdict(lambda: np.zeros(4))  # ce, correct, tokens, energy

    def add(self, setting: tuple, logits: Tensor, y: Tensor, mask: Tensor, energy: float = float("nan")) -> None:
        n = float(mask.sum())
        ce = float(token_cross_entropy(logits, y, mask)) * n
        correct = float(((logits.argmax(-1) == y) & mask).sum())
        self.sums[setting] += np.array([ce, correct, n, energy])

    def rows(self, model: str, name: str, positions: int) -> list[dict]:
        """One row per setting, with the forward / backward passes one sequence's prediction costs."""
        out = []
        for (kind, steps, candidates), (ce, correct, n, energy) in self.sums.items():
            forward, backward = sequence_passes(kind, steps, candidates)
            out.append({"model": model, "set": name, "kind": kind, "steps": steps, "candidates": candidates,
                        "tokens": int(n), "ce": ce / n, "perplexity": float(np.exp(min(ce / n, 700.0))), "accuracy": correct / n,
                        "energy_per_position": energy / positions, "forward_passes": forward,
                        "backward_passes": backward})
        return out


def sequence_passes(kind: str, steps: int, candidates: int) -> tuple[int, int]:
    """Passes per predicted sequence: the Transformer++'s one forward; an EBT thinking step is one forward (the
    energy) and one backward (its gradient) per candidate, plus the final energies when the lowest is chosen."""
    if kind == "forward":
        return 1, 0
    return fixed_steps_passes(steps, candidates, final_energy=kind == "verify" and candidates > 1)


def chunks(batch: dict[str, Tensor], size: int):
    for i in range(0, len(batch["x"]), size):
        yield {k: v[i:i + size] for k, v in batch.items()}


def evaluate(trained: Trained, name: str, batch: dict[str, Tensor], app: TextAppConfig) -> list[dict]:
    """Every evaluation row of one model on one set (deterministic: starts drawn from app.seed)."""
    t, module, tally = app.text, trained.module, Tally()
    n_max = max(t.candidate_counts)
    ranking = defaultdict(float)  # within-position Spearman of energy vs cross-entropy over the N_max candidates
    device = torch.device(app.runtime.eval_device)
    module = module.to(device)
    generator = torch.Generator(device).manual_seed(app.seed)
    positions = 0
    for c in chunks(batch, t.eval_batch):
        c = {k: v.to(device) for k, v in c.items()}
        y, mask = c["y"], c["mask"]
        if trained.kind != "ebt":
            with torch.no_grad():
                tally.add(("forward", 0, 1), module.predict(c), y, mask)
            continue
        b, s, v = *c["x"].shape, module.model.vocab_size
        positions += b * s
        with torch.no_grad():
            encoding = module.encode(c)
        # perplexity against thinking steps: one start, each budget thought from the start (a step-embedded energy
        # and alpha scaling make k steps differ from k increments); beyond the trained steps also with alpha scaled
        # by train_steps / k (InferencePolicy.alpha_scaling)
        starts = module.propose(encoding, c, 1, 1, generator)
        x0 = starts.starts.reshape(b, 1, s, v)
        with torch.no_grad():
            energy = float(module.position_energies(encoding, x0, 1).sum())
        tally.add(("steps", 0, 1), x0[:, 0], y, mask, energy)
        for k in sorted(set(t.think_steps) - {0}):
            for kind, scaled in (("steps", False), ("steps_scaled", True)):
                if scaled and k == app.think.train_steps:
                    continue
                noise = torch.Generator(device).manual_seed(app.seed + k)  # the same noise with and without
                result = module.think(starts.energy_fn, x0, training=False, steps=k, generator=noise,
                                      policy=InferencePolicy.of(app.think).with_alpha_scaling(scaled))
                tally.add((kind, k, 1), result.candidates.detach()[:, 0], y, mask, float(result.energies.sum()))
        # self-verification: N independent starts, think.infer_steps each, lowest energy per position
        starts = module.propose(encoding, c, 1, n_max, generator)
        result = module.think(starts.energy_fn, starts.starts.reshape(b, n_max, s, v), training=False,
                              steps=app.think.infer_steps, generator=generator)
        final = result.candidates.detach()
        with torch.no_grad():
            energies = module.position_energies(encoding, final, app.think.infer_steps)  # (b, N, S)
        errors = position_cross_entropy(final, y.unsqueeze(1))  # (b, N, S)
        for n in sorted(set(t.candidate_counts)):
            best = energies[:, :n].argmin(1)  # (b, S)
            chosen = final[:, :n].gather(1, best[:, None, :, None].expand(-1, 1, -1, v))[:, 0]
            picked = energies[:, :n].gather(1, best[:, None])[:, 0]
            tally.add(("verify", app.think.infer_steps, n), chosen, y, mask, float(picked.sum()))
            # the energy-free control of the same candidates: their plain average (a mixture of the N distributions)
            mixture = torch.logsumexp(final[:, :n].log_softmax(-1), dim=1) - math.log(n)
            tally.add(("average", app.think.infer_steps, n), mixture, y, mask)
            # the best-of-N oracle: per position, the candidate with the lowest cross-entropy (an upper bound)
            oracle = final[:, :n].gather(1, errors[:, :n].argmin(1)[:, None, :, None].expand(-1, 1, -1, v))[:, 0]
            tally.add(("oracle", app.think.infer_steps, n), oracle, y, mask)
        # does the energy rank the N candidates of a position by their cross-entropy? (scored positions only)
        scored = mask.bool().cpu().numpy()
        e_np = energies.transpose(1, 2).cpu().numpy()[scored]  # (P, N)
        err_np = errors.transpose(1, 2).cpu().numpy()[scored]
        rho = rowwise_spearman(e_np, err_np)
        picks = np.take_along_axis(err_np, e_np.argmin(-1)[:, None], -1)[:, 0] <= err_np.min(-1) + 1e-9
        ranking["spearman"] += float(np.nansum(rho))
        ranking["ranked"] += int(np.isfinite(rho).sum())
        ranking["picked_best"] += int(picks.sum())
        ranking["positions"] += len(picks)
    module.cpu()
    rows = tally.rows("ebt" if trained.kind == "ebt" else "transformer_pp", name, max(positions, 1))
    if ranking["positions"]:
        for row in rows:  # the ranking diagnostics over the N_max candidates, on the self-verification rows
            if row["kind"] == "verify" and row["candidates"] == n_max:
                row["spearman"] = ranking["spearman"] / max(ranking["ranked"], 1)
                row["pick_best"] = ranking["picked_best"] / ranking["positions"]
    return rows


def evaluation_cell(cells: Cells, model: Trained, name: str, data: TextData, app: TextAppConfig) -> list[dict]:
    """`evaluate` as a cell, keyed by the model, the evaluation sets and the evaluation grid."""
    t = app.text
    grid = {"eval_batch": t.eval_batch, "think_steps": t.think_steps, "candidate_counts": t.candidate_counts}
    depends = {"model": model.depends, "sets": data.eval_depends, "grid": grid}
    return cells.run(f"{model.kind}__{name}", depends, lambda: evaluate(model, name, data.sets[name], app))


# ------------------------------------------------------------------------------------------------
# the command


def run_text_command(app: TextAppConfig) -> int:
    """Train (or load) both language models, evaluate every set, write tables and plots."""
    app.text.validate()
    app.task.validate()
    app.think.validate()
    app.trainer.validate()
    t = app.text
    if app.model.dim % app.model.heads or (app.model.dim // app.model.heads) % 2:
        raise ConfigError(f"model.dim={app.model.dim} / model.heads={app.model.heads}: need an even head width")
    os.environ.setdefault("RAYON_NUM_THREADS", str(app.runtime.threads))
    folder = Path(t.corpus) if t.corpus else Path(t.root) / "shakespeare"
    root = Path(app.runtime.output_dir) / folder.name
    data = load_data(app, root)
    print(f"text: {data.description}")
    cells, models = Cells(root / "cells"), Artifacts(root / "models")
    if t.scaling_dims:
        return run_scaling(app, data, root, cells, models)
    trained = {kind: train_model(kind, app, data, models) for kind in t.models}
    rows = [row for model in trained.values() for name in data.sets
            for row in evaluation_cell(cells, model, name, data, app)]
    reused = (f"This run: {cells.summary()}; {sum(r.reused for r in models.ledger)} of {len(models.ledger)} models "
              "loaded.")
    write_report(root, app, data, trained, pd.DataFrame(rows), reused)
    return 0


def headline(frame: pd.DataFrame, model: str, name: str, infer_steps: int) -> pd.Series | None:
    """The default inference of a model on a set: EBT at think.infer_steps with one start; the twin's forward."""
    rows = frame[(frame["model"] == model) & (frame["set"] == name)]
    rows = rows[(rows["kind"] == "forward") | ((rows["kind"] == "verify") & (rows["candidates"] == 1))]
    return rows.iloc[0] if len(rows) else None


def write_report(root: Path, app: TextAppConfig, data: TextData, trained: dict[str, Trained], frame: pd.DataFrame,
                 reused: str) -> None:
    """text.csv, text.md and the plots, atomically."""

    write_frame(frame, root, "text")
    sets = list(data.sets)
    steps_k = app.think.infer_steps
    lines = [f"# text: {data.name}", "", data.description + ".", "", reused, "",
             "Perplexity = exp(mean cross-entropy of the scored tokens): every token of the text sets, the closing "
             "brackets (dyck) and the answer digits (arithmetic) of the generated sets. EBT default inference: "
             f"{steps_k} thinking steps from one start (task.init={app.task.init}). FLOPs: matmul FLOPs counted by torch "
             "(forward, thinking and backward), per token.", "",
             "| model | parameters | non-embedding | tokens | train s | train FLOPs / token | infer FLOPs / token | "
             + " | ".join(f"{s} ppl" for s in sets) + " |", "|---|" + "---:|" * (6 + len(sets))]
    for kind, m in trained.items():
        meta = m.meta
        values = []
        for name in sets:
            r = headline(frame, kind, name, steps_k)
            values.append("" if r is None else f"{r['perplexity']:.2f}")
        lines.append(f"| {kind} | {meta['parameters']:,} | {meta['non_embedding_parameters']:,} | {meta['tokens']:,} | "
                     f"{meta['seconds']:.0f} | {meta['train_flops_per_token'] / 1e6:.1f}M | "
                     f"{meta['infer_flops_per_token'] / 1e6:.1f}M | " + " | ".join(values) + " |")
    lines += ["", "Accuracy (argmax of the chosen logits = the next token) at the default inference:", "",
              "| model | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
    for kind in trained:
        lines.append(f"| {kind} | " + " | ".join(
            "" if (r := headline(frame, kind, name, steps_k)) is None else f"{r['accuracy']:.3f}" for name in sets) + " |")
    ebt = frame[frame["model"] == "ebt"]
    if len(ebt):
        def by_set(rows: pd.DataFrame, column: str, setting: str, label: str, digits: int) -> str:
            """`column` as a markdown table: a row per evaluation set, a column per value of `setting`."""
            table = rows.pivot(index="set", columns=setting, values=column).reindex(sets).rename(columns=label.format)
            return markdown_table(table.reset_index(), floatfmt=f".{digits}f")

        steps = ebt[ebt["kind"] == "steps"]
        lines += ["", f"## EBT perplexity against thinking steps (one start, task.init={app.task.init})", "",
                  by_set(steps, "perplexity", "steps", "{} steps", 2), "",
                  "Mean energy per position after each number of steps:", "",
                  by_set(steps, "energy_per_position", "steps", "{} steps", 3)]
        scaled = ebt[ebt["kind"] == "steps_scaled"]
        if len(scaled):
            lines += ["", f"The same budgets with alpha x {app.think.train_steps} / steps (InferencePolicy.alpha_scaling):",
                      "", by_set(scaled, "perplexity", "steps", "{} steps", 2)]
        verify = ebt[ebt["kind"] == "verify"]
        n_max = verify["candidates"].max()
        lines += ["", f"## EBT self-verification: N starts, {steps_k} steps each, lowest energy per position", "",
                  by_set(verify, "perplexity", "candidates", "N={}", 2)]
        average = ebt[ebt["kind"] == "average"]
        if len(average):
            lines += ["", "The energy-free control of the same candidates: their plain average (the mixture of the N "
                      "next-token distributions):", "", by_set(average, "perplexity", "candidates", "N={}", 2)]
        oracle = ebt[ebt["kind"] == "oracle"]
        if len(oracle):
            lines += ["", "The best-of-N oracle (per position, the candidate with the lowest cross-entropy):", "",
                      by_set(oracle, "perplexity", "candidates", "N={}", 2)]
        if "spearman" in verify:
            lines += ranking_section(verify, n_max, "position", "cross-entropy")
        alpha = trained["ebt"].meta.get("alpha")
        lines += ["", f"Learned alpha after training: {alpha:.3g}." if alpha is not None else ""]
    write_markdown(["\n".join(lines)], root / "text.md")

    def draw(ax, rows: pd.DataFrame, column: str, name: str) -> None:
        rows = rows[rows[column] > 0]  # log axis: the steps sweep's step 0 is left out
        ax.plot(rows[column], rows["perplexity"], marker="o", label="EBT")
        base = headline(frame, "transformer_pp", name, steps_k)
        if base is not None:
            ax.axhline(base["perplexity"], color="gray", ls="--", label="Transformer++")
        ax.set_xscale("log", base=2)

    if len(ebt):  # a run of the twin alone has no sweeps to draw
        plot_sweeps(ebt, list(sets), "position", [root / "plots" / "perplexity_vs_steps.png",
                                                  root / "plots" / "perplexity_vs_candidates.png"], draw,
                    size=3.2, ylabel="perplexity")
    print("\n".join(lines))
    print(f"\nwritten: {root / 'text.md'}, {root / 'text.csv'}, {root / 'plots'}")


def run_scaling(app: TextAppConfig, data: TextData, root: Path, cells: Cells, models: Artifacts) -> int:
    """Both models at each width on the same tokens: validation perplexity against parameters and FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = app.text
    rows = []
    for dim in t.scaling_dims:
        model_cfg = dataclasses.replace(app.model, dim=dim, heads=dim // t.head_dim)
        for kind in t.models:
            m = train_model(kind, app, data, models, model_cfg)
            single = dataclasses.replace(app, text=dataclasses.replace(t, think_steps=[app.think.infer_steps],
                                                                        candidate_counts=[1]))
            frame = pd.DataFrame(evaluation_cell(cells, m, "validation", data, single))
            r = headline(frame, kind, "validation", app.think.infer_steps)
            rows.append({"model": kind, "dim": dim, "parameters": m.meta["parameters"],
                         "non_embedding_parameters": m.meta["non_embedding_parameters"],
                         "train_flops": m.meta["train_flops_per_token"] * m.meta["tokens"], "tokens": m.meta["tokens"],
                         "seconds": m.meta["seconds"], "perplexity": r["perplexity"]})
    frame = pd.DataFrame(rows)
    write_frame(frame, root, "text_scaling")
    slopes = {}
    for kind, r in frame.groupby("model", sort=False):
        fit = lambda col: float(np.polyfit(np.log(r[col]), np.log(r["perplexity"]), 1)[0]) if len(r) > 1 else float("nan")  # noqa: E731
        slopes[kind] = {"parameters": fit("parameters"), "non_embedding_parameters": fit("non_embedding_parameters"),
                        "train_flops": fit("train_flops")}
    reused = (f"This run: {cells.summary()}; {sum(r.reused for r in models.ledger)} of {len(models.ledger)} models "
              "loaded.")
    lines = [f"# text scaling: {data.name}", "", data.description + ".", "", reused, "",
             "Validation perplexity (default inference) of both models at each width, same training tokens.", "",
             "| model | dim | parameters | non-embedding | training FLOPs | train s | perplexity |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dim']} | {r['parameters']:,} | {r['non_embedding_parameters']:,} | "
                     f"{r['train_flops']:.3g} | {r['seconds']:.0f} | {r['perplexity']:.2f} |")
    lines += ["", "Fitted log-log slopes of perplexity (more negative = scales faster):", "",
              "| model | vs parameters | vs non-embedding parameters | vs training FLOPs |", "|---|---:|---:|---:|"]
    for kind, s in slopes.items():
        lines.append(f"| {kind} | {s['parameters']:.3f} | {s['non_embedding_parameters']:.3f} | {s['train_flops']:.3f} |")
    write_markdown(["\n".join(lines)], root / "text_scaling.md")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for kind, r in frame.groupby("model", sort=False):
        for ax, col in zip(axes, ["parameters", "train_flops"]):
            ax.loglog(r[col], r["perplexity"], marker="o", label=f"{kind} (slope {slopes[kind][col]:.3f})")
            ax.set_xlabel(col.replace("_", " "))
    axes[0].set_ylabel("validation perplexity")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, root / "plots" / "scaling.png")
    print("\n".join(lines))
    print(f"\nwritten: {root / 'text_scaling.md'}, {root / 'text_scaling.csv'}, {root / 'plots' / 'scaling.png'}")
    return 0
