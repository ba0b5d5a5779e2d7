"""Issue 30: which covariate standardisation, chosen on validation windows only (no test number is read here).

    python evaluation/issue30/covariate_scaling.py --sets vic_elec dc_bike --scalings window history

Trains the EBT of `experiment=covariates` (seed 0) on each data set's training part with each
`task.covariate_scaling` and prints the WQL of every thinking setting on the validation tail (the numbers
`selection=auto` chooses from), appending rows to evaluation/issue30/covariate_scaling.csv.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from ebt_forecast.config import compose
from ebt_forecast.data.covariate_sets import load_covariate_set
from ebt_forecast.io import atomic_write_csv
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster

OUT = Path("evaluation/issue30/covariate_scaling.csv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--sets", nargs="*", default=["vic_elec", "dc_bike"])
    parser.add_argument("--scalings", nargs="*", default=["window", "history"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = pd.read_csv(OUT).to_dict("records") if OUT.exists() else []
    for name in args.sets:
        dataset = load_covariate_set(name, args.root)
        for scaling in args.scalings:
            app = compose("benchmark", ["experiment=covariates", f"task.covariate_scaling={scaling}",
                                        f"seed={args.seed}", "runtime.threads=1", "trainer.progress_bar=false"])
            forecaster = EBTForecaster(app.forecaster()).fit(dataset)
            best = min(forecaster.validation_scores.values())
            rows.append({"dataset": name, "covariate_scaling": scaling, "seed": args.seed, "val_wql_best": best,
                         "chosen": forecaster.chosen.key, **{f"val_{k}": v for k, v in forecaster.validation_scores.items()}})
            print(rows[-1], flush=True)
            atomic_write_csv(pd.DataFrame(rows), OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
