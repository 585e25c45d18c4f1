#!/usr/bin/env bash
# One H100/H200 (~22 min, run in the background: `R=/tmp/dl/nhwc setsid nohup bash
# benchmarks/records/2026-12-01_nhwc_layout.sh &` after `source benchmarks/gpu_env.sh`; collect $R afterwards):
#   1. workload A with inductor's layout optimization forced (`lo`: NHWC convolutions inside the compiled graph;
#      its heuristic leaves the UNet NCHW and cuDNN transposes around every convolution),
#      beside the plain step and the peer with and without the same switch, profiled;
#   2. the real training loop (experiment=bench_train) with channels_last=true (which forces it) and without;
#   3. evaluation speed: 10k DDIM-50 at batch_size=512 (20 balanced batches of 500) and 1000;
#   4. workload B, ours and the peer.
set -u
R=${R:-$OUT}; DATA=${DATA_ROOT:-.data/fashion-mnist}; mkdir -p /tmp/dl "$R"
log() { echo "== $(date +%T) $*" >> "$R/summary.log"; }
log "bench train"
timeout 720 python3 -m diffusion_lab.bench --workloads train --variants compile-ro,compile-ro+lo,compile-ro+cl+lo \
  --peer-variants compile,compile+lo --profile 5 > "$R/bench_train.jsonl" 2>/tmp/dl/bench_train.err
tail -3 /tmp/dl/bench_train.err >> "$R/summary.log"
for cl in true false; do
  log "loop channels_last=$cl"
  timeout 240 python3 -m diffusion_lab.train experiment=bench_train data.root=$DATA channels_last=$cl \
    hydra.run.dir=/tmp/dl/loop_$cl > /tmp/dl/loop_$cl.log 2>&1
  grep -E "train speed|wall time|steps trained|rror" /tmp/dl/loop_$cl.log >> "$R/summary.log"
done
log "features"
timeout 120 python3 -m diffusion_lab.features data.root=$DATA data.image_size=32 data.channels=3 device=cuda epochs=1 \
  out=/tmp/dl/clf32.pt 2>&1 | tail -1 >> "$R/summary.log"
for bs in 512 1000; do
  log "evaluate batch_size=$bs"
  timeout 240 python3 -m diffusion_lab.evaluate ckpt=/tmp/dl/loop_true/checkpoints/last.ckpt features=/tmp/dl/clf32.pt \
    metrics=[fid] sampler=ddim 'steps=[50]' n=10000 batch_size=$bs compile=reduce-overhead channels_last=true \
    data_root=$DATA progress=false out_dir=/tmp/dl/eval_$bs 2>&1 | grep -E '^\{|rror' >> "$R/summary.log"
done
log "bench sample"
timeout 360 python3 -m diffusion_lab.bench --workloads sample --variants compile-ro+cl --peer-variants compile \
  > "$R/bench_sample.jsonl" 2>/tmp/dl/bench_sample.err
tail -3 /tmp/dl/bench_sample.err >> "$R/summary.log"
log done
