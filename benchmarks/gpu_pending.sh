#!/usr/bin/env bash
# What session 4 left for issue 6, for one ~12-minute background call on one H100/H200 (after
# `source benchmarks/gpu_env.sh`: `R=/tmp/dl/next setsid nohup bash benchmarks/gpu_pending.sh &`, then collect
# $R/* into $OUT from later calls, as gpu_s4_call1.sh was):
#   1. the training loop's gap (83% of the raw step in session 4): the loop with torch's CUDA sync debug mode,
#      which warns with a stack at every host-device synchronisation (a sync per step would serialise the
#      ~4 ms of host work per step with the GPU's 21 ms);
#   2. the training ceiling with NHWC convolutions (bound = no GroupNorm/dropout) beside the usable step and the
#      peer with CUDA graphs (its best: the 2x question);
#   3. fmnist_fast's steps per second with channels_last (layout optimization) and without;
#   4. evaluation at batch_size=2000 (5 batches for 10k) beside 1000.
set -u
R=${R:-$OUT}; DATA=${DATA_ROOT:-.data/fashion-mnist}; mkdir -p /tmp/dl "$R"
log() { echo "== $(date +%T) $*" >> "$R/summary.log"; }
log "loop with sync debug"
timeout 240 python3 - experiment=bench_train data.root=$DATA hydra.run.dir=/tmp/dl/sync > /tmp/dl/sync.log 2>&1 <<'PY'
import runpy, sys
import torch
torch.cuda.set_sync_debug_mode("warn")
sys.argv = ["train", *sys.argv[1:]]
runpy.run_module("diffusion_lab.train", run_name="__main__")
PY
grep -E "train speed|rror" /tmp/dl/sync.log >> "$R/summary.log"
grep -c "synchronizing" /tmp/dl/sync.log >> "$R/summary.log"
grep -B2 -A12 "synchronizing" /tmp/dl/sync.log | head -150 > "$R/sync_stacks.txt"
log "bench train ceiling"
timeout 420 python3 -m diffusion_lab.bench --workloads train --variants compile-ro+cl+lo,compile-ro+cl+lo+bound \
  --peer-variants compile-ro > "$R/bench_train.jsonl" 2>/tmp/dl/bench.err
for cl in true false; do
  log "fmnist_fast channels_last=$cl (90 s)"
  timeout 200 python3 -m diffusion_lab.train experiment=fmnist_fast data.root=$DATA channels_last=$cl \
    trainer.max_time=00:00:01:30 final_samples=0 hydra.run.dir=/tmp/dl/ff_$cl > /tmp/dl/ff_$cl.log 2>&1
  grep -E "steps trained|train speed|rror" /tmp/dl/ff_$cl.log >> "$R/summary.log"
done
log "evaluate batch_size=2000"
timeout 120 python3 -m diffusion_lab.features data.root=$DATA data.image_size=32 data.channels=3 device=cuda epochs=1 \
  out=/tmp/dl/clf32.pt > /dev/null 2>&1
timeout 240 python3 -m diffusion_lab.evaluate ckpt=/tmp/dl/sync/checkpoints/last.ckpt features=/tmp/dl/clf32.pt \
  metrics=[fid] sampler=ddim 'steps=[50]' n=10000 batch_size=2000 compile=reduce-overhead channels_last=true \
  data_root=$DATA progress=false out_dir=/tmp/dl/eval_2000 2>&1 | grep -E '^\{|rror' >> "$R/summary.log"
log done
