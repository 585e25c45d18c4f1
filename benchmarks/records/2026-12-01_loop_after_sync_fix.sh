#!/usr/bin/env bash
# After `source benchmarks/gpu_env.sh`, in the background as 2026-12-01_loop_profile_sync_debug.sh:
#   1. the training loop (experiment=bench_train) with nothing logged to the progress bar (no device sync
#      per step): plain; with nonfinite=off (the cost of the per-step finiteness check); profiled (host ms/step);
#   2. evaluation (10k DDIM-50 + FID) at batch 1000 and 2000 beside workload B.
set -u
R=${R:-$OUT}; DATA=${DATA_ROOT:-.data/fashion-mnist}; mkdir -p /tmp/dl "$R"
log() { echo "== $(date +%T) $*" >> "$R/summary.log"; }
for v in "nonfinite=skip" "nonfinite=off"; do
  log "loop $v"
  timeout 300 python3 -m diffusion_lab.train experiment=bench_train data.root=$DATA $v \
    hydra.run.dir=/tmp/dl/loop_${v#*=} > /tmp/dl/loop_${v#*=}.log 2>&1
  grep -E "steps trained|train speed|wall time|rror" /tmp/dl/loop_${v#*=}.log >> "$R/summary.log"
done
log "loop profiled"
LOOP_PROFILE_TRACE=/tmp/dl/loop_trace.json PYTHONPATH=benchmarks:$PYTHONPATH timeout 300 python3 -m diffusion_lab.train \
  experiment=bench_train data.root=$DATA hydra.run.dir=/tmp/dl/loop_prof \
  +callbacks.loop_profile._target_=loop_profile.LoopProfile +callbacks.loop_profile.start=300 > /tmp/dl/loop_prof.log 2>&1
grep -E '^\{"profile|rror' /tmp/dl/loop_prof.log >> "$R/summary.log"
gzip -c /tmp/dl/loop_trace.json > "$R/loop_trace.json.gz" 2>/dev/null
log "features"
timeout 120 python3 -m diffusion_lab.features data.root=$DATA data.image_size=32 data.channels=3 device=cuda epochs=1 \
  out=/tmp/dl/clf32.pt > /dev/null 2>&1
for bs in 1000 2000; do
  log "evaluate batch_size=$bs"
  timeout 240 python3 -m diffusion_lab.evaluate ckpt=/tmp/dl/loop_skip/checkpoints/last.ckpt features=/tmp/dl/clf32.pt \
    metrics=[fid] sampler=ddim 'steps=[50]' n=10000 batch_size=$bs compile=reduce-overhead channels_last=true \
    data_root=$DATA progress=false out_dir=/tmp/dl/eval_$bs 2>&1 | grep -E '^\{|rror' >> "$R/summary.log"
done
log "bench sample"
timeout 200 python3 -m diffusion_lab.bench --systems ours --workloads sample --variants compile-ro+cl \
  >> "$R/summary.log" 2>/tmp/dl/bench_s.err
log done
