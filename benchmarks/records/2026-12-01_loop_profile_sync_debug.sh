#!/usr/bin/env bash
# One H100/H200 (after `source benchmarks/gpu_env.sh`, in the background:
# `R=/tmp/dl/sync setsid nohup bash benchmarks/records/2026-12-01_loop_profile_sync_debug.sh &`; collect $R
# afterwards):
#   1. the training loop profiled (benchmarks/loop_profile.py: GPU idle gaps and what the host did in them,
#      host-device syncs) under torch's CUDA sync debug mode (a warning with a stack at every sync);
#   2. the training ceiling: NHWC step, its bound (no GroupNorm/dropout), the peer with CUDA graphs;
#   3. evaluation (10k DDIM-50 + FID) at batch 1000 and 2000, and workload B.
set -u
R=${R:-$OUT}; DATA=${DATA_ROOT:-.data/fashion-mnist}; mkdir -p /tmp/dl "$R"
log() { echo "== $(date +%T) $*" >> "$R/summary.log"; }
log "loop profiled, sync debug"
LOOP_PROFILE_TRACE=/tmp/dl/loop_trace.json PYTHONPATH=benchmarks:$PYTHONPATH timeout 300 python3 - \
  experiment=bench_train data.root=$DATA hydra.run.dir=/tmp/dl/loop \
  +callbacks.loop_profile._target_=loop_profile.LoopProfile +callbacks.loop_profile.start=300 \
  > /tmp/dl/loop.log 2>&1 <<'PY'
import runpy, sys
import torch
torch.cuda.set_sync_debug_mode("warn")
sys.argv = ["train", *sys.argv[1:]]
runpy.run_module("diffusion_lab.train", run_name="__main__")
PY
grep -E '^\{"profile|train speed|rror' /tmp/dl/loop.log >> "$R/summary.log"
grep -c "synchroniz" /tmp/dl/loop.log >> "$R/summary.log"
grep -B3 -A14 "synchroniz" /tmp/dl/loop.log | head -300 > "$R/sync_stacks.txt"
gzip -c /tmp/dl/loop_trace.json > "$R/loop_trace.json.gz" 2>/dev/null
log "bench train ceiling"
timeout 420 python3 -m diffusion_lab.bench --workloads train --variants compile-ro+cl+lo,compile-ro+cl+lo+bound \
  --peer-variants compile-ro > "$R/bench_train.jsonl" 2>/tmp/dl/bench.err
log "features"
timeout 120 python3 -m diffusion_lab.features data.root=$DATA data.image_size=32 data.channels=3 device=cuda epochs=1 \
  out=/tmp/dl/clf32.pt > /dev/null 2>&1
for bs in 1000 2000; do
  log "evaluate batch_size=$bs"
  timeout 240 python3 -m diffusion_lab.evaluate ckpt=/tmp/dl/loop/checkpoints/last.ckpt features=/tmp/dl/clf32.pt \
    metrics=[fid] sampler=ddim 'steps=[50]' n=10000 batch_size=$bs compile=reduce-overhead channels_last=true \
    data_root=$DATA progress=false out_dir=/tmp/dl/eval_$bs 2>&1 | grep -E '^\{|rror' >> "$R/summary.log"
done
log "bench sample"
timeout 200 python3 -m diffusion_lab.bench --systems ours --workloads sample --variants compile-ro+cl \
  >> "$R/summary.log" 2>/tmp/dl/bench_s.err
log done
