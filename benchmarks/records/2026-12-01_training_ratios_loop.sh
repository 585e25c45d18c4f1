#!/usr/bin/env bash
# After `source benchmarks/gpu_env.sh`, in the background as 2026-12-01_loop_profile_sync_debug.sh: on one
# machine,
#   1. workload A (bench defaults: ours compile-ro+cl+lo, the peer compile and compile-ro);
#   2. the real loop (experiment=bench_train), for its ratio to 1.;
#   3. fmnist_fast for 90 s: steps/s of the small network (host-bound: a per-step sync costs it the most).
set -u
R=${R:-$OUT}; DATA=${DATA_ROOT:-.data/fashion-mnist}; mkdir -p /tmp/dl "$R"
log() { echo "== $(date +%T) $*" >> "$R/summary.log"; }
log "bench train"
timeout 420 python3 -m diffusion_lab.bench --workloads train > "$R/bench_train.jsonl" 2>/tmp/dl/bench.err
cat "$R/bench_train.jsonl" >> "$R/summary.log"
log "loop"
timeout 300 python3 -m diffusion_lab.train experiment=bench_train data.root=$DATA hydra.run.dir=/tmp/dl/loop \
  > /tmp/dl/loop.log 2>&1
grep -E "steps trained|train speed|wall time|rror" /tmp/dl/loop.log >> "$R/summary.log"
log "fmnist_fast 90 s"
timeout 250 python3 -m diffusion_lab.train experiment=fmnist_fast data.root=$DATA trainer.max_time=00:00:01:30 \
  final_samples=0 hydra.run.dir=/tmp/dl/ff > /tmp/dl/ff.log 2>&1
grep -E "steps trained|train speed|wall time|rror" /tmp/dl/ff.log >> "$R/summary.log"
log done
