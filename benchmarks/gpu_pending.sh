#!/usr/bin/env bash
# What session 2 left unmeasured (issue 6), for one ~8-minute call on one H100/H200:
#   the evaluate CLI's steady 10k DDIM-50 rate with the full-batch fix (benchmarks/gpu_evalspeed.sh), and the
#   max-autotune + CUDA-graph variants of both workloads beside the peer in one process.
# On the GPU machine: source benchmarks/gpu_env.sh; bash benchmarks/gpu_pending.sh  (results under $OUT)
set -u
mkdir -p /tmp/dl
timeout 200 bash benchmarks/gpu_evalspeed.sh 2>&1 | tee $OUT/evalspeed.log
timeout 300 python3 -m diffusion_lab.bench --workloads train,sample --variants compile-ro,compile-max,compile-max+cl \
  --peer-variants compile 2>/tmp/dl/bench.err | tee $OUT/bench.jsonl
tail -5 /tmp/dl/bench.err > $OUT/bench.err; true
