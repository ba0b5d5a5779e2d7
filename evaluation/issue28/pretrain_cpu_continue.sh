#!/usr/bin/env bash
# Issue 28: train a shipped twin on (2 CPU cores, no GPU), then teach the energy on top and read GIFT-Eval's
# zero-shot rows. The seventh session ran it as it stands: the twin of step 4,000 (results/twin_std4000) trained
# 6,500 more steps on the mix without KernelSynth (corpus 2/3, TSMixup 1/3: the better mix of RESULTS 17.1's
# ablation), a warm restart at lr 5e-4 with a fresh cosine, stream seed 1; then phase 2 as pretrain_cpu.sh. Every
# step resumes. Arguments (all optional, in order): FROM OUT STEPS SEED NAME LR, e.g. the eighth session's
#   bash evaluation/issue28/pretrain_cpu_continue.sh results/pretrain_1m_cont results/pretrain_1m_cont2 8000 2 ebt_1m_c
# and the ninth's, from the shipped twin at a lower peak learning rate:
#   bash evaluation/issue28/pretrain_cpu_continue.sh ebt_forecast/pretrained/twin_1m results/pretrain_1m_cont3 7000 3 ebt_1m_d 3e-4
set -euo pipefail
cd "$(dirname "$0")/../.."
FROM=${1:-results/twin_std4000} OUT=${2:-results/pretrain_1m_cont} STEPS=${3:-6500} SEED=${4:-1} NAME=${5:-ebt_1m_b} LR=${6:-5e-4}
BIN=.venv/bin
export OMP_NUM_THREADS=1
MIX='pretrain.data.source_probs={corpus: 0.667, tsmixup: 0.333, kernelsynth: 0}'
$BIN/ebt-forecast pretrain experiment=pretrain_1m pretrain.mode=feedforward pretrain.init_from=$FROM \
  runtime.output_dir=$OUT trainer.max_steps=$STEPS trainer.lr=$LR trainer.warmup_steps=200 "$MIX" \
  pretrain.num_workers=1 runtime.threads=1 trainer.progress_bar=false seed=$SEED
$BIN/ebt-forecast pretrain experiment=pretrain_1m pretrain.mode=ebt pretrain.init_from=$OUT \
  pretrain.train=energy runtime.output_dir=${OUT}_ebt "$MIX" \
  trainer.max_steps=600 trainer.batch_size=32 trainer.lr=1e-3 trainer.warmup_steps=20 \
  trainer.checkpoint_every=50 pretrain.val_every=100 pretrain.num_workers=1 runtime.threads=1 trainer.progress_bar=false seed=$SEED
$BIN/python evaluation/issue28/zero_shot.py --ebt $NAME=${OUT}_ebt --verifier --threads 1
