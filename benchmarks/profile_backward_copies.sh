#!/usr/bin/env bash
# For one background run on one H100/H200 (after `source benchmarks/gpu_env.sh`:
# `R=/tmp/dl/next setsid nohup bash benchmarks/profile_backward_copies.sh &`, then collect $R):
#   1. the at::native elementwise kernels in the compiled backward graph: in inductor's output code
#      (TORCH_LOGS=output_code) several gradients that inductor's triton kernels write NCHW feed
#      aten.convolution_backward, which copies them to dense channels_last first -- most likely the channel
#      slices of the skip concatenations' gradients. This saves the output code with the kernel profile, to
#      match each copy to its convolution (a copy is needed in either layout; at best it can be fused into the
#      kernel that produces the gradient);
#   2. fmnist_fast for its full 240 s (its small network is host-bound), then its 10k-sample evaluation
#      (gpu_quality_ours.sh).
set -u
R=${R:-$OUT}; DATA=${DATA_ROOT:-.data/fashion-mnist}; mkdir -p /tmp/dl "$R"
log() { echo "== $(date +%T) $*" >> "$R/summary.log"; }
log "bench train, profiled, with inductor's output code"
TORCH_LOGS=output_code timeout 300 python3 -m diffusion_lab.bench --systems ours --workloads train \
  --variants compile-ro+cl+lo --profile 5 > "$R/bench_train_profiled.jsonl" 2> /tmp/dl/output_code.log
gzip -c /tmp/dl/output_code.log > "$R/output_code.log.gz"
log "fmnist_fast 240 s and its evaluation (the feature network the peers were scored with)"
OUT=$R FEATURES=.data/fmnist_clf.pt bash benchmarks/gpu_quality_ours.sh full_240s
log done
