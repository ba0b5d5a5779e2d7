#!/usr/bin/env bash
# Issue 28, the eighth session (2 CPU cores, no GPU): more pretraining steps paid most in the seventh session
# (suite WQL 0.832 -> 0.781 for 2.6x the windows), so the shipped twin (results/pretrain_1m_cont, step 4,000 + 6,500)
# trains on for 8,000 more steps with the same recipe (the mix without KernelSynth, a warm restart at lr 5e-4 with a
# fresh cosine) on a new stream seed; then the energy taught on top (phase 2, as pretrain_cpu.sh) and GIFT-Eval's
# zero-shot rows. It ships only if its validation loss (windows of the suite's training parts) is lower. Every step
# resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
export OMP_NUM_THREADS=1
MIX='pretrain.data.source_probs={corpus: 0.667, tsmixup: 0.333, kernelsynth: 0}'
$BIN/ebt-forecast pretrain experiment=pretrain_1m pretrain.mode=feedforward pretrain.init_from=results/pretrain_1m_cont \
  runtime.output_dir=results/pretrain_1m_cont2 trainer.max_steps=8000 trainer.lr=5e-4 trainer.warmup_steps=200 "$MIX" \
  pretrain.num_workers=1 runtime.threads=1 trainer.progress_bar=false seed=2
$BIN/ebt-forecast pretrain experiment=pretrain_1m pretrain.mode=ebt pretrain.init_from=results/pretrain_1m_cont2 \
  pretrain.train=energy runtime.output_dir=results/pretrain_1m_cont2_ebt "$MIX" \
  trainer.max_steps=600 trainer.batch_size=32 trainer.lr=1e-3 trainer.warmup_steps=20 \
  trainer.checkpoint_every=50 pretrain.val_every=100 pretrain.num_workers=1 runtime.threads=1 trainer.progress_bar=false seed=2
$BIN/python evaluation/issue28/zero_shot.py --ebt ebt_1m_c=results/pretrain_1m_cont2_ebt --verifier --threads 1
