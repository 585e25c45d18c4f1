#!/usr/bin/env bash
# What session 3 left for issue 6, for one ~9-minute call on one H100/H200 (see BENCHMARKS.md, workload A):
#   1. the training step with channels_last, profiled beside the NCHW one and the peer, in one process (the peer's
#      row is also the session's ratio): where do the NCHW<->NHWC transposes (23% of the NCHW step) go, and what
#      makes the channels_last step slower anyway?
#   2. the max-autotune + CUDA-graph variants of both workloads.
# On the GPU machine: source benchmarks/gpu_env.sh; bash benchmarks/gpu_pending.sh  (results under $OUT)
set -u
mkdir -p /tmp/dl
timeout 300 python3 -m diffusion_lab.bench --workloads train --variants compile-ro,compile-ro+cl --peer-variants compile \
  --profile 5 2>/tmp/dl/bench_train.err | tee $OUT/bench_train.jsonl
timeout 240 python3 -m diffusion_lab.bench --systems ours --workloads train,sample --variants compile-max,compile-max+cl \
  2>/tmp/dl/bench_max.err | tee $OUT/bench_max.jsonl
tail -5 /tmp/dl/bench_train.err /tmp/dl/bench_max.err > $OUT/bench.err; true
