"""`python evaluation/issue27/forecast_table.py LABEL=results.csv:G ...` (RESULTS 16.3): per recipe and seed, the
EBT's step 0, the validation-chosen setting, thinking steps with the lowest energy of G starts beside the
energy-free average of the same starts, relative WQL to seasonal naive (geometric mean over the data sets), then
mean and sd; and the energy's within-window Spearman against candidate error on the validation windows."""
import sys

import pandas as pd

from ebt_forecast.metrics import geometric_mean_relative

DIAGNOSTICS = ("val_group_spearman", "val_pick_accuracy")


def rows_for(g: int) -> dict[str, str]:
    """Table column -> benchmark row name, for G starts per level."""
    out = {"step 0, average of the starts": f"ebt[steps=0,average,M=21,G={g}]", "chosen on validation": "ebt"}
    for k in (1, 2, 4):
        out[f"{k} steps, lowest energy"] = f"ebt[steps={k},verified,M=21,G={g}]"
        out[f"{k} steps, average (no energy)"] = f"ebt[steps={k},average,M=21,G={g}]"
    return out


out = []
for arg in sys.argv[1:]:
    label, rest = arg.split("=", 1)
    path, g = rest.rsplit(":", 1)
    t = pd.read_csv(path)
    for seed in sorted(t.seed.dropna().unique()):
        part = t[(t.seed == seed) | t.seed.isna()]
        rel = geometric_mean_relative(part, metrics=("wql",)).set_index("model")["wql"]
        main = part[part.model == "ebt"]
        row = {"recipe": label, "seed": int(seed), **{name: rel.get(model, float("nan"))
                                                      for name, model in rows_for(int(g)).items()}}
        row.update({k.removeprefix("val_"): main[k].mean() for k in DIAGNOSTICS if k in main})
        out.append(row)
frame = pd.DataFrame(out)
print(frame.to_markdown(index=False, floatfmt=".3f"))
stats = frame.drop(columns="seed").groupby("recipe", sort=False).agg(["mean", "std"])
stats.columns = [f"{a} ({b})" for a, b in stats.columns]
print()
print(stats.T.to_markdown(floatfmt=".3f"))
