#!/usr/bin/env bash
# Issue 28's pretraining as run on the 2-core CPU (no GPU was lent that session); every step resumes after a kill.
#   phase 1: System 1 (the twin) with standard scaling, a 5,000-step schedule of 128 windows, stopped at step 4,000
#            (the session's time) and exported from its checkpoint
#   phase 2: the energy taught on top (pretrain.init_from, pretrain.train=energy: backbone and proposals frozen)
#   ship:    weights.pt + model.json into ebt_forecast/pretrained/{twin_1m,ebt_1m}
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
export OMP_NUM_THREADS=1
$BIN/ebt-forecast pretrain experiment=pretrain_1m pretrain.mode=feedforward pretrain.data.scaling=standard \
  runtime.output_dir=results/pretrain_1m_std trainer.max_steps="${PHASE1_STEPS:-4000}" pretrain.schedule_steps=5000 \
  pretrain.num_workers=1 runtime.threads=1 trainer.progress_bar=false
$BIN/python -c "from ebt_forecast.tasks.forecast.pretrain import export_checkpoint as e; e('results/pretrain_1m_std', out='results/twin_std4000')"
$BIN/ebt-forecast pretrain experiment=pretrain_1m pretrain.mode=ebt pretrain.data.scaling=standard \
  pretrain.init_from=results/twin_std4000 pretrain.train=energy runtime.output_dir=results/pretrain_1m_ebt \
  trainer.max_steps="${PHASE2_STEPS:-600}" trainer.batch_size=32 trainer.lr=1e-3 trainer.warmup_steps=20 \
  trainer.checkpoint_every=50 pretrain.val_every=100 pretrain.num_workers=1 runtime.threads=1 trainer.progress_bar=false
mkdir -p ebt_forecast/pretrained/twin_1m ebt_forecast/pretrained/ebt_1m
cp results/twin_std4000/{weights.pt,model.json} ebt_forecast/pretrained/twin_1m/
cp results/pretrain_1m_ebt/{weights.pt,model.json} ebt_forecast/pretrained/ebt_1m/
