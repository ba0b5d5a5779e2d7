#!/usr/bin/env bash
# `forecast` wall time and peak memory on 20,000 hourly points (ETTh1's 7 columns x 2,857 rows, long form), horizon
# 24, on this machine's 2 cores: the default (the packaged pretrained EBT, zero-shot) and its variants.
#   bash evaluation/issue28/cost.sh            -> evaluation/issue28/cost.md
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
$BIN/python - "$WORK/etth1_20k.csv" <<'PY'
import sys, pandas as pd
wide = pd.read_csv("../shared/data/ett/ETTh1.csv").head(2857)
long = wide.melt(id_vars="date", var_name="item_id", value_name="target").rename(columns={"date": "timestamp"})
long[["item_id", "timestamp", "target"]].to_csv(sys.argv[1], index=False)
print(len(long), "points")
PY
out=evaluation/issue28/cost.md
{
  echo "| run | wall s | peak RSS MB |"
  echo "|---|---|---|"
} > "$out.tmp"
run() {  # label, overrides...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" $BIN/ebt-forecast forecast input="$WORK/etth1_20k.csv" horizon=24 freq=h \
    output="$WORK/fc.csv" "$@" > /dev/null 2> "$WORK/err" || { cat "$WORK/err"; exit 1; }
  read -r wall kb < "$WORK/time"
  echo "| $label | $wall | $((kb / 1024)) |" >> "$out.tmp"
  echo "$label: $wall s, $((kb / 1024)) MB"
}
run "default (zero-shot, thinking chosen on the validation tail)"
run "zero-shot proposals only (task.selection=proposal)" task.selection=proposal
run "fine-tune 30 steps (finetune=30)" finetune=30
mv "$out.tmp" "$out"
cat "$out"
