#!/usr/bin/env bash
# Issue 27's runs on a lent GPU machine, all at once: the reference text and video recipes (System 1 and System 2)
# and image System 1, 3 seeds each, the text hybrid for the new rows, and a Transformer++ at the EBT's training
# FLOPs. Each run is its own process (1 CPU thread; training and text evaluation on the GPU); every table comes back
# in a few tarballs under $OUT. Locally (a dry run of the orchestration on tiny settings):
#   PY=.venv/bin/python ACCEL=cpu EVAL=cpu TINY=1 OUT=/tmp/dry bash evaluation/issue27/device_run.sh
set -u
PY=${PY:-python3}
ACCEL=${ACCEL:-gpu}
EVAL=${EVAL:-cuda}
LIMIT=${LIMIT:-470}
RUNS=${RUNS:-runs}
DATA=${DATA:-.devdata}
SEEDS=${SEEDS:-"0 1 2"}
mkdir -p "$RUNS" "$OUT"
common=(runtime.threads=1 trainer.accelerator=$ACCEL trainer.progress_bar=false)
tiny_text=(); tiny_video=(); tiny_image=()
if [ "${TINY:-0}" = 1 ]; then
  tiny_text=(trainer.max_steps=3 text.eval_windows=2 "text.generated=[dyck]" text.generated_examples=20 model.dim=32 model.heads=2 model.depth=1 text.vocab_size=300 text.context_length=16 "text.think_steps=[1,2]" "text.candidate_counts=[1,2]")
  tiny_video=(trainer.max_steps=3 ${TINY_VIDEO:-})
  tiny_image=(trainer.max_steps=3 ${TINY_IMAGE:-})
fi
launch() {  # name, then the command line
  local name=$1; shift
  ( timeout "$LIMIT" env OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 "$PY" -m ebt_forecast "$@" > "$RUNS/$name.log" 2>&1;
    echo "exit $?" >> "$RUNS/$name.log" ) &
}
for s in $SEEDS; do
  launch text_s1_$s text experiment=text_system1 seed=$s text.root=$DATA/text runtime.output_dir=$RUNS/text_s1_$s \
    runtime.eval_device=$EVAL "${common[@]}" "${tiny_text[@]}"
  launch text_s2_$s text experiment=text_system2 seed=$s text.root=$DATA/text runtime.output_dir=$RUNS/text_s2_$s \
    runtime.eval_device=$EVAL "text.models=[ebt]" "${common[@]}" "${tiny_text[@]}"
  launch text_hybrid_$s text seed=$s text.root=$DATA/text runtime.output_dir=$RUNS/text_hybrid_$s \
    runtime.eval_device=$EVAL "${common[@]}" "${tiny_text[@]}"
  launch text_twin_flops_$s text seed=$s text.root=$DATA/text runtime.output_dir=$RUNS/text_twin_flops_$s \
    runtime.eval_device=$EVAL "text.models=[transformer_pp]" text.twin_max_steps=${TWIN_STEPS:-2400} "${common[@]}" "${tiny_text[@]}"
  launch video_s1_$s video experiment=video_system1 seed=$s video.clips=$DATA/video runtime.output_dir=$RUNS/video_s1_$s \
    "${common[@]}" "${tiny_video[@]}"
  launch video_s2_$s video experiment=video_system2 seed=$s video.clips=$DATA/video runtime.output_dir=$RUNS/video_s2_$s \
    "${common[@]}" "${tiny_video[@]}"
  launch image_s1_$s image experiment=image_system1 seed=$s runtime.output_dir=$RUNS/image_s1_$s \
    "${common[@]}" "${tiny_image[@]}"
done
while sleep 15; do  # progress, and the tables so far, while the runs go on
  n=$(jobs -r | wc -l); echo "$(date +%T) running: $n"; [ "$n" = 0 ] && break
done
wait
for kind in text video image; do
  tar czf "$OUT/$kind.tgz" --exclude='*.pt' --exclude='*.ckpt' --exclude='tokenizers' $RUNS/${kind}_* 2>/dev/null
done
tar czf "$OUT/logs.tgz" $RUNS/*.log
grep -H "^exit" $RUNS/*.log
ls -la "$OUT"
