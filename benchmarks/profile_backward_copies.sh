#!/usr/bin/env bash
# What session 5 left for issue 6, for one background call on one H100/H200 (after `source benchmarks/gpu_env.sh`:
# `R=/tmp/dl/next setsid nohup bash benchmarks/gpu_pending.sh &`, then collect $R/* into $OUT from later calls,
# as gpu_s5_call1.sh was):
#   1. the ~31 at::native elementwise kernels in the compiled backward graph (1.13 ms of the 21 ms step): in the
#      inductor output code (session 5, TORCH_LOGS=output_code) several gradients that inductor's triton kernels
#      write NCHW (e.g. (128, 256, 8, 8) with strides (16384, 64, 8, 1)) feed aten.convolution_backward, which
#      copies them to dense channels_last first -- most likely the channel slices of the skip concatenations'
#      gradients (BENCHMARKS.md, workload A, session 3's CPU check). This call saves the output code again with
#      the kernel profile, to match each copy to its convolution (a copy is needed in either layout; at best it
#      can be fused into the kernel that produces the gradient: <= 1.1 ms, ~5%);
#   2. fmnist_fast for its full 240 s now that the loop no longer syncs every step (its small network is
#      host-bound: more steps in the same budget), then its 10k-sample evaluation (gpu_quality_ours.sh).
set -u
R=${R:-$OUT}; DATA=${DATA_ROOT:-.data/fashion-mnist}; mkdir -p /tmp/dl "$R"
log() { echo "== $(date +%T) $*" >> "$R/summary.log"; }
log "bench train, profiled, with inductor's output code"
TORCH_LOGS=output_code timeout 300 python3 -m diffusion_lab.bench --systems ours --workloads train \
  --variants compile-ro+cl+lo --profile 5 > "$R/bench_train_profiled.jsonl" 2> /tmp/dl/output_code.log
gzip -c /tmp/dl/output_code.log > "$R/output_code.log.gz"
log "fmnist_fast 240 s and its evaluation (the feature network the peers were scored with)"
OUT=$R FEATURES=.data/fmnist_clf.pt bash benchmarks/gpu_quality_ours.sh after_s5
log done
