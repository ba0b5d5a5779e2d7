"""`python evaluation/issue26/verifier_table.py IN_SAMPLE.csv OUT_OF_FOLD.csv` (RESULTS 15.2).

Per seed: geometric-mean WQL / MSIS / CRPS relative to seasonal naive of the verifier and its energy-free controls,
and the verifier's ratio to each control; mean and sd over seeds."""
import sys
import pandas as pd
from ebt_forecast.metrics import geometric_mean_relative

MODELS = ["ebt_verifier", "ebt_verifier_zero_shot", "sources_average", "sources_median", "sources_best_on_val"]
rows = []
for label, path in [("in-sample", sys.argv[1]), ("out of fold", sys.argv[2])]:
    t = pd.read_csv(path)
    for seed in sorted(t.seed.dropna().unique()):
        part = t[(t.seed == seed) | t.seed.isna()]
        rel = geometric_mean_relative(part, metrics=("wql", "crps_scaled", "msis")).set_index("model")
        row = {"teaching": label, "seed": int(seed)}
        for m in MODELS:
            row[m] = rel.loc[m, "wql"]
        for c in ("sources_average", "sources_median", "sources_best_on_val"):
            row[f"verifier / {c}"] = rel.loc["ebt_verifier", "wql"] / rel.loc[c, "wql"]
        row["verifier msis"] = rel.loc["ebt_verifier", "msis"]
        rows.append(row)
frame = pd.DataFrame(rows)
print(frame.to_markdown(index=False, floatfmt=".3f"))
summary = frame.drop(columns="seed").groupby("teaching", sort=False).agg(["mean", "std"])
summary.columns = [f"{a} ({b})" for a, b in summary.columns]
print(summary.T.to_markdown(floatfmt=".3f"))
