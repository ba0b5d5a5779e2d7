"""Issue 30: how the EBT should read vic_elec's temperature, chosen on validation windows only (no test number is
read here).

    python evaluation/issue30/vic_elec_variants.py --variants scratch scratch_nocov finetune_slotlr10 ...

Each variant trains on vic_elec's training part (the last 28 days held out, never touched) and records the WQL of
every thinking setting on the validation tail (what `selection=auto` chooses from) in
evaluation/issue30/vic_elec_variants.csv. Variants: the `experiment=covariates` recipe from scratch (`scratch`), with
more steps (`scratch_steps1500`), with the local calendar beside temperature (`scratch_calendar`; the row
`scratch_calendar_utc` is its first run, with the calendar read off the corpus's UTC stamps, before that was fixed),
with the calendar alone (`scratch_calendaronly`), each `_nocov` without the covariates; the pretrained EBT fine-tuned 300 steps with its temperature slot at the fine-tuning rate times N
(`finetune_slotlrN`), and without covariates (`finetune_nocov`).
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import pandas as pd
import torch

from ebt_forecast.config import compose
from ebt_forecast.data.covariate_sets import load_vic_elec, without_covariates
from ebt_forecast.io import atomic_write_csv
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from ebt_forecast.tasks.forecast.pretrained import PretrainedForecaster

OUT = Path("evaluation/issue30/vic_elec_variants.csv")


def fit_variant(variant: str, root: str, seed: int):
    """The fitted forecaster of one variant (see the module docstring)."""
    overrides = ["experiment=covariates", f"seed={seed}", "runtime.threads=1", "trainer.progress_bar=false"]
    steps = re.search(r"steps(\d+)", variant)
    if steps:
        overrides.append(f"trainer.max_steps={steps.group(1)}")
    dataset = load_vic_elec(root, calendar="calendar" in variant, temperature="calendaronly" not in variant)
    if variant.endswith("_nocov"):
        dataset = without_covariates(dataset)
    app = compose("benchmark", overrides)
    if variant.startswith("finetune"):
        slot_lr = re.search(r"slotlr(\d+)", variant)
        forecaster = PretrainedForecaster(None, app.forecaster(), finetune_steps=app.benchmark.finetune_steps,
                                          slot_lr_multiplier=float(slot_lr.group(1)) if slot_lr else 1.0)
    else:
        forecaster = EBTForecaster(app.forecaster())
    return forecaster.fit(dataset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    read = lambda: pd.read_csv(OUT).to_dict("records") if OUT.exists() else []  # noqa: E731
    for seed in args.seeds:
        for variant in args.variants:
            if any(r["variant"] == variant and r["seed"] == seed for r in read()):
                continue
            start = time.perf_counter()
            forecaster = fit_variant(variant, args.root, seed)
            scores = forecaster.validation_scores
            row = {"variant": variant, "seed": seed, "val_wql_best": min(scores.values()),
                   "chosen": forecaster.chosen.key, "seconds": round(time.perf_counter() - start),
                   **{f"val_{k}": v for k, v in scores.items()}}
            print({k: row[k] for k in ("variant", "seed", "val_wql_best", "chosen", "seconds")}, flush=True)
            atomic_write_csv(pd.DataFrame([*read(), row]), OUT)  # read again: another run may have added rows
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
