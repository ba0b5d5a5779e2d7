#!/usr/bin/env bash
# Issue 28: the per-data-set baselines (DeepAR, PatchTST, today's per-data-set EBT verifier) on the four GIFT configs
# beside m4_hourly, one thread: seed 0 on every config first, then seeds 1-2 (rows already in zero_shot.csv are kept).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
configs=(exchange_rate/B/short etth1/H/short etth1/H/medium etth1/H/long)
for seeds in "0" "1 2"; do
  .venv/bin/python evaluation/issue28/zero_shot.py --configs "${configs[@]}" --trained patchtst ebt_verifier deepar \
    --seeds $seeds --threads 1
done
