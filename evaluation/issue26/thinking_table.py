"""`python evaluation/issue26/thinking_table.py BEFORE.csv AFTER.csv` (RESULTS 15.5): the EBT's step 0 (its
proposals), the validation-chosen setting, 2 thinking steps with the lowest energy and the energy-free average of
the same starts, relative WQL to seasonal naive (geometric mean over the data sets) per seed, then mean and sd;
and the energy's within-window Spearman against candidate error on the validation windows."""
import sys

import pandas as pd

from ebt_forecast.metrics import geometric_mean_relative

ROWS = {"step 0 (proposals)": "ebt[steps=0,proposal,M=21,G=1]", "chosen on validation": "ebt",
        "2 steps, lowest energy of 2 starts": "ebt[steps=2,verified,M=21,G=2]",
        "2 steps, energy-free average of the same starts": "ebt[steps=2,average,M=21,G=2]",
        "2 steps, own start refined": "ebt[steps=2,refined,M=21,G=1]"}
DIAGNOSTICS = ("val_group_spearman", "val_pick_accuracy", "val_window_spearman")

out = []
for label, path in [("before", sys.argv[1]), ("after", sys.argv[2])]:
    t = pd.read_csv(path)
    for seed in sorted(t.seed.dropna().unique()):
        part = t[(t.seed == seed) | t.seed.isna()]
        rel = geometric_mean_relative(part, metrics=("wql",)).set_index("model")["wql"]
        main = part[part.model == "ebt"]
        row = {"code": label, "seed": int(seed), **{name: rel[model] for name, model in ROWS.items()}}
        row.update({k.removeprefix("val_"): main[k].mean() for k in DIAGNOSTICS if k in main})
        out.append(row)
frame = pd.DataFrame(out)
print(frame.to_markdown(index=False, floatfmt=".3f"))
stats = frame.drop(columns="seed").groupby("code", sort=False).agg(["mean", "std"])
stats.columns = [f"{a} ({b})" for a, b in stats.columns]
print()
print(stats.T.to_markdown(floatfmt=".3f"))
