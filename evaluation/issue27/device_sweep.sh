#!/usr/bin/env bash
# Issue 27, the second lent-GPU call: text System 1 (seed 0) at other step sizes and without inference noise,
# each its own process, every table back in $OUT/sweep.tgz (same set-up as device_run.sh).
set -u
PY=${PY:-python3}; ACCEL=${ACCEL:-gpu}; EVAL=${EVAL:-cuda}; LIMIT=${LIMIT:-200}
REPO=$(pwd); RUNS=${RUNS:-$REPO/runs}; DATA=${DATA:-$REPO/.devdata}
mkdir -p "$RUNS" "$OUT"; cd /tmp
run() { local name=$1; shift
  ( timeout "$LIMIT" env OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 "$PY" -m ebt_forecast text experiment=text_system1 seed=0 \
      text.root=$DATA/text runtime.output_dir=$RUNS/$name runtime.eval_device=$EVAL runtime.threads=1 \
      trainer.accelerator=$ACCEL trainer.progress_bar=false "text.models=[ebt]" "$@" ${TINY:-} > "$RUNS/$name.log" 2>&1
    echo "exit $?" >> "$RUNS/$name.log" ) &
}
run text_s1_alpha50_0 think.alpha=50 think.alpha_lr_multiplier=150
run text_s1_alpha5000_0 think.alpha=5000 think.alpha_lr_multiplier=15000
run text_s1_noise0_0 think.infer_langevin_std=0
run text_s1_fixedalpha_0 think.learn_alpha=false
run text_s2_alpha50_0 experiment=text_system2 think.alpha=50
wait
cd "$RUNS" && tar czf "$OUT/sweep.tgz" --exclude='*.pt' --exclude='*.ckpt' --exclude='tokenizers' text_* && grep -H "^exit" *.log
