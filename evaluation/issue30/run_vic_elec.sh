#!/usr/bin/env bash
# Issue 30's second attempt at the vic_elec target, run after the choices were made on validation windows
# (evaluation/issue30/vic_elec_variants.py): the pretrained EBT fine-tuned 300 steps with its covariate slots at 30x
# the fine-tuning rate (task.covariate_slot_lr) and its control without covariates, 3 seeds; the same with the local
# calendar beside temperature, and with the calendar alone (what temperature adds beyond the calendar); the
# from-scratch EBT on the calendar sets. Every cell resumes. Summary: evaluation/issue30/summarise.py.
set -euo pipefail
run() { OMP_NUM_THREADS=1 .venv/bin/ebt-forecast benchmark experiment=covariates data.root=../shared/data \
          runtime.threads=1 runtime.output_dir=results/issue30 "$@"; }
case "${1:-all}" in
  temperature) run "benchmark.datasets=[vic_elec]" "benchmark.models=[ebt_finetune,ebt_finetune_no_covariates]" \
                 "benchmark.seeds=[0,1,2]" ;;
  calendar) run suite=vic_elec_calendar "benchmark.models=[seasonal_naive,ebt_finetune,ebt]" "benchmark.seeds=[0,1,2]" ;;
  calendar_only) run suite=vic_elec_calendar_only "benchmark.models=[seasonal_naive,ebt_finetune,ebt]" \
                   "benchmark.seeds=[0,1,2]" ;;
  all) "$0" temperature; "$0" calendar; "$0" calendar_only ;;
esac
