#!/usr/bin/env bash
# Issue 30's covariate benchmark in the order this CPU could afford (every part resumes from its cells):
# the EBT with and without covariates first (3 seeds on vic_elec, the target's data set), then the other data sets,
# DeepAR, and the remaining seeds; the last call only summarises every finished cell into results.md.
set -euo pipefail
run() { OMP_NUM_THREADS=1 .venv/bin/ebt-forecast benchmark experiment=covariates data.root=../shared/data \
          runtime.threads=1 runtime.output_dir=results/issue30 "$@"; }
run "benchmark.datasets=[vic_elec]" "benchmark.models=[seasonal_naive,ebt,ebt_no_covariates]" "benchmark.seeds=[0,1,2]"
run "benchmark.datasets=[dc_bike,etth1_loads,bdg2]" "benchmark.models=[seasonal_naive,ebt,ebt_no_covariates]" "benchmark.seeds=[0]"
run "benchmark.datasets=[dc_bike,etth1_loads,bdg2]" "benchmark.models=[deepar]" "benchmark.seeds=[0]"
run "benchmark.datasets=[dc_bike,etth1_loads,bdg2]" "benchmark.models=[ebt,ebt_no_covariates]" "benchmark.seeds=[1,2]"
run "benchmark.models=[deepar]" "benchmark.seeds=[1,2]"
