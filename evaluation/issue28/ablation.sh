#!/usr/bin/env bash
# How much each part of the pretraining mix helps (issue 28): the phase-1 recipe (standard scaling, the same
# 5,000-step schedule) for 1,000 steps on corpus only, and on corpus + TSMixup without KernelSynth, against the
# full mix's step-1,000 validation row (results/pretrain_1m_std). Two runs side by side, one thread each.
set -euo pipefail
cd "$(dirname "$0")/../.."
common=(experiment=pretrain_1m pretrain.mode=feedforward pretrain.schedule_steps=5000 trainer.max_steps=1000
        pretrain.num_workers=1 runtime.threads=1 trainer.progress_bar=false)
OMP_NUM_THREADS=1 .venv/bin/ebt-forecast pretrain "${common[@]}" runtime.output_dir=results/ablation_corpus_only \
  'pretrain.data.source_probs={corpus: 1, tsmixup: 0, kernelsynth: 0}' > results/ablation_corpus_only.log 2>&1 &
OMP_NUM_THREADS=1 .venv/bin/ebt-forecast pretrain "${common[@]}" runtime.output_dir=results/ablation_no_kernelsynth \
  'pretrain.data.source_probs={corpus: 0.667, tsmixup: 0.333, kernelsynth: 0}' > results/ablation_no_kernelsynth.log 2>&1 &
wait
for run in pretrain_1m_std ablation_corpus_only ablation_no_kernelsynth; do
  echo "$run: $(grep '^1000,' results/$run/validation.csv | cut -d, -f2,8 | tr '\n' ' ')"
done
