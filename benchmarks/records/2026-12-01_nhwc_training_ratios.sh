#!/usr/bin/env bash
# Beside 2026-12-01_nhwc_layout.sh (same machine, in the background): that script's peer training rows run after
# profiled rows and are host-bound, so once it reaches its sampling bench (stopped here), workload A again
# without --profile, in one process: ours channels_last (+ layout optimization) beside the peer with default
# compile and with CUDA graphs.
set -u
R=${R:-$OUT}
until grep -q "bench sample" "$R/summary.log"; do sleep 2; done
pkill -f "diffusion_lab.bench --workloads sample"; sleep 2
echo "== $(date +%T) clean bench train" >> "$R/summary.log"
timeout 600 python3 -m diffusion_lab.bench --workloads train --variants compile-ro+cl+lo \
  --peer-variants compile,compile-ro > "$R/bench_train_clean.jsonl" 2>/tmp/dl/bench_clean.err
tail -2 /tmp/dl/bench_clean.err >> "$R/summary.log"
echo "== $(date +%T) done" >> "$R/summary.log"
