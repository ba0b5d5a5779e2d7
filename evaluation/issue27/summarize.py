"""Issue 27's summary tables from the runs' CSVs (evaluation/issue27/runs/*.csv): mean ± sd over seeds.

    .venv/bin/python evaluation/issue27/summarize.py > evaluation/issue27/summary.md

For each recipe: the default inference; thinking steps (alpha unscaled and scaled); N independent starts with the
lowest energy beside their plain average and the best-of-N oracle; within-position / within-frame Spearman and the
pick rate; and "thinking beyond the default inference": the setting with the lowest validation (text) /
in-distribution (video: digits) error among more steps (either alpha) and more candidates, chosen per seed before
reading any other set, as the change against the default inference on every set.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

RUNS = Path(__file__).parent / "runs"
TEXT_SETS = ["validation", "test", "milton", "dyck", "arithmetic"]
VIDEO_SETS = ["digits", "clips", "digits_more", "digits_fast", "clips_heldout"]


def seeds_of(prefix: str) -> dict[int, pd.DataFrame]:
    """Seed -> its table, for runs named <prefix>_<seed>.csv."""
    out = {}
    for path in sorted(RUNS.glob(f"{prefix}_*.csv")):
        tail = path.stem[len(prefix) + 1:]
        if tail.isdigit():
            out[int(tail)] = pd.read_csv(path)
    return out


def mean_sd(values: list[float], digits: int) -> str:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def pick(frame: pd.DataFrame, kind: str, steps: int | None, candidates: int, name: str, column: str) -> float:
    rows = frame[(frame["model"] == "ebt") & (frame["kind"] == kind) & (frame["candidates"] == candidates)
                 & (frame["set"] == name)]
    if steps is not None:
        rows = rows[rows["steps"] == steps]
    return float(rows[column].iloc[0]) if len(rows) else float("nan")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def settings(frame: pd.DataFrame, trained: int, infer: int) -> list[tuple[str, str, int, int]]:
    """(label, kind, steps, candidates) of every inference setting the run scored."""
    ebt = frame[frame["model"] == "ebt"]
    out = [(f"{s} steps", "steps", s, 1) for s in sorted(ebt[ebt["kind"] == "steps"]["steps"].unique())]
    out += [(f"{s} steps, alpha x {trained}/{s}", "steps_scaled", s, 1)
            for s in sorted(ebt[ebt["kind"] == "steps_scaled"]["steps"].unique())]
    for kind, label in (("verify", "lowest energy"), ("average", "average"), ("oracle", "oracle")):
        out += [(f"N={n} {label} ({infer} steps)", kind, infer, n)
                for n in sorted(ebt[ebt["kind"] == kind]["candidates"].unique()) if n > 1 or kind == "verify"]
    return out


def summary(prefix: str, title: str, sets: list[str], column: str, trained: int, infer: int, digits: int) -> str:
    runs = seeds_of(prefix)
    if not runs:
        return ""
    first = next(iter(runs.values()))
    lines = [f"### {title} (`{prefix}_*`, seeds {', '.join(map(str, runs))}; {column}, mean ± sd)", ""]
    rows = []
    for label, kind, steps, n in settings(first, trained, infer):
        rows.append([label] + [mean_sd([pick(f, kind, steps, n, s, column) for f in runs.values()], digits)
                               for s in sets])
    twin = [f[(f["model"] == "transformer_pp")] for f in runs.values()]
    twin = [t for t in twin if len(t)]
    if twin:
        rows.append(["Transformer++ (same run)"] + [mean_sd([float(t[t["set"] == s][column].iloc[0]) for t in twin],
                                                              digits) for s in sets])
    lines += [table(["setting", *sets], rows), ""]
    # the ranking diagnostics at the largest N
    spear = first[first["kind"] == "verify"].dropna(subset=["spearman"]) if "spearman" in first else first.iloc[:0]
    if len(spear):
        n_max = int(spear["candidates"].max())
        r = [[f"Spearman (N={n_max})"] + [mean_sd([pick(f, "verify", infer, n_max, s, "spearman") for f in runs.values()],
                                                   3) for s in sets],
             [f"pick rate (N={n_max}, chance {1 / n_max:.3f})"] + [
                 mean_sd([pick(f, "verify", infer, n_max, s, "pick_best") for f in runs.values()], 3) for s in sets]]
        lines += [table(["energy ranking", *sets], r), ""]
    # thinking beyond the trained steps, the setting chosen on the first set of each seed
    beyond, chosen = {s: [] for s in sets}, []
    for f in runs.values():
        options = [(lab, k, st, n) for lab, k, st, n in settings(f, trained, infer)
                   if (k in ("steps", "steps_scaled") and st > infer) or (k == "verify" and n > 1)]
        base = {s: pick(f, "verify", infer, 1, s, column) for s in sets}  # the default inference
        best = min(options, key=lambda o: pick(f, o[1], o[2], o[3], sets[0], column))
        chosen.append(best[0])
        for s in sets:
            beyond[s].append(100 * (pick(f, best[1], best[2], best[3], s, column) / base[s] - 1))
    lines += [f"Thinking beyond the default inference ({infer} steps, one start: the `N=1 lowest energy` row; trained "
              f"with {trained}): more steps (either alpha) or more candidates by energy, the setting with the lowest "
              f"{sets[0]} {column} per seed ({'; '.join(chosen)}), as the change against the default, %",
              "", table(["", *sets], [["change %"] + [mean_sd(beyond[s], 1) for s in sets]]), ""]
    return "\n".join(lines)


def main() -> int:
    out = ["## Issue 27 summary (generated by evaluation/issue27/summarize.py)", ""]
    out.append(summary("text_s1", "Text, System 1 (reference)", TEXT_SETS, "perplexity", 2, 2, 2))
    out.append(summary("text_s2", "Text, System 2 (reference)", TEXT_SETS, "perplexity", 3, 3, 2))
    out.append(summary("text_hybrid", "Text, today's hybrid (head start, logits)", TEXT_SETS, "perplexity", 2, 2, 2))
    for prefix, title in (("text_s1_fixedalpha", "Text, System 1, alpha 500 fixed"),
                          ("text_s1_alpha50", "Text, System 1, alpha 50 learnable (x 150)"),
                          ("text_s1_alpha5000", "Text, System 1, alpha 5000 learnable (x 15000)"),
                          ("text_s1_noise0", "Text, System 1, no inference noise")):
        out.append(summary(prefix, title, TEXT_SETS, "perplexity", 2, 2, 2))
    out.append(summary("text_s2_alpha50", "Text, System 2, alpha 50", TEXT_SETS, "perplexity", 3, 3, 2))
    out.append(summary("video_s1_a30", "Video, System 1, alpha 30 learnable", VIDEO_SETS, "latent_mse", 2, 4, 4))
    out.append(summary("video_s2_a3", "Video, System 2, alpha 3", VIDEO_SETS, "latent_mse", 3, 4, 4))
    out.append(summary("video_s1_ref", "Video, System 1, the reference's alpha 30000", VIDEO_SETS, "latent_mse", 2, 4, 4))
    out.append(summary("video_s2_ref", "Video, System 2, the reference's alpha 3000", VIDEO_SETS, "latent_mse", 3, 4, 4))
    sys.stdout.write("\n".join(o for o in out if o))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
