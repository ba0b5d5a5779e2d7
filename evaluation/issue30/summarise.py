"""Issue 30: the covariate benchmark's per-data-set table (WQL relative to seasonal naive, mean and sd over the
seeds run; MASE), from the results.csv that `ebt-forecast benchmark experiment=covariates ... benchmark.compute=false`
writes. Writes evaluation/issue30/covariates.md.

    python evaluation/issue30/summarise.py results/issue30/covariates/results.csv \
        results/issue30/vic_elec_calendar/results.csv results/issue30/vic_elec_calendar_only/results.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from ebt_forecast.io import atomic_write_text

MODELS = ["seasonal_naive", "autoarima", "autoarima_exog", "deepar_no_covariates", "deepar", "ebt_no_covariates", "ebt",
          "ebt_zero_shot",
          "ebt_finetune_no_covariates", "ebt_finetune"]


def main(paths: list[str]) -> int:
    table = pd.concat([pd.read_csv(path) for path in paths], ignore_index=True)
    table = table[table.model.isin(MODELS)]
    naive = table[table.model == "seasonal_naive"].set_index("dataset")
    table = table.assign(rel_wql=table.wql / naive.wql.reindex(table.dataset).to_numpy(),
                         rel_mase=table.mase / naive.mase.reindex(table.dataset).to_numpy())
    rows = []
    for (dataset, model), g in table.groupby(["dataset", "model"], sort=False):
        rows.append({"data set": dataset, "model": model, "seeds": len(g), "WQL": g.wql.mean(),
                     "rel. WQL": g.rel_wql.mean(), "rel. WQL sd": g.rel_wql.std(ddof=1) if len(g) > 1 else float("nan"),
                     "rel. MASE": g.rel_mase.mean(), "per seed rel. WQL": " / ".join(f"{v:.3f}" for v in g.rel_wql)})
    frame = pd.DataFrame(rows)
    frame["order"] = frame.model.map(MODELS.index)
    frame = frame.sort_values(["data set", "order"], key=lambda c: c if c.name == "order" else c.map(
        {d: i for i, d in enumerate(dict.fromkeys(table.dataset))})).drop(columns="order")
    text = frame.to_markdown(index=False, floatfmt=".4f")
    atomic_write_text(Path("evaluation/issue30/covariates.md"), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
