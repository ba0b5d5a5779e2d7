#!/usr/bin/env bash
# Issue 28, the seventh session's attempt at the zero-shot targets (2 CPU cores, no GPU): the shipped twin (step 4,000
# of phase 1, results/twin_std4000) trained on for 6,500 more steps on the mix without KernelSynth (corpus 2/3, TSMixup
# 1/3: the better mix of RESULTS 17.1's ablation), a warm restart at lr 5e-4 with a fresh cosine, a new stream seed;
# then the energy taught on top (phase 2, as pretrain_cpu.sh) and GIFT-Eval's zero-shot rows. Every step resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
export OMP_NUM_THREADS=1
MIX='pretrain.data.source_probs={corpus: 0.667, tsmixup: 0.333, kernelsynth: 0}'
$BIN/ebt-forecast pretrain experiment=pretrain_1m pretrain.mode=feedforward pretrain.init_from=results/twin_std4000 \
  runtime.output_dir=results/pretrain_1m_cont trainer.max_steps=6500 trainer.lr=5e-4 trainer.warmup_steps=200 "$MIX" \
  pretrain.num_workers=1 runtime.threads=1 trainer.progress_bar=false seed=1
$BIN/ebt-forecast pretrain experiment=pretrain_1m pretrain.mode=ebt pretrain.init_from=results/pretrain_1m_cont \
  pretrain.train=energy runtime.output_dir=results/pretrain_1m_cont_ebt "$MIX" \
  trainer.max_steps=600 trainer.batch_size=32 trainer.lr=1e-3 trainer.warmup_steps=20 \
  trainer.checkpoint_every=50 pretrain.val_every=100 pretrain.num_workers=1 runtime.threads=1 trainer.progress_bar=false seed=1
$BIN/python evaluation/issue28/zero_shot.py --ebt ebt_1m_b=results/pretrain_1m_cont_ebt --verifier --threads 1
