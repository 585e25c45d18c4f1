#!/usr/bin/env bash
# Session 4, follow-up of gpu_s4_call1.sh (same machine, in the background beside it): the peer's training rows in
# call 1 ran after profiled rows and were host-bound (81 ms steps of ~24 ms GPU work), so once call 1 reaches its
# sampling bench (skipped: session 3's workload-B numbers stand), workload A again without --profile, in one
# process: ours channels_last (+ layout optimization) beside the peer with default compile and with CUDA graphs.
set -u
R=${R:-$OUT}
until grep -q "bench sample" "$R/summary.log"; do sleep 2; done
pkill -f "diffusion_lab.bench --workloads sample"; sleep 2
echo "== $(date +%T) clean bench train (call 2)" >> "$R/summary.log"
timeout 600 python3 -m diffusion_lab.bench --workloads train --variants compile-ro+cl+lo \
  --peer-variants compile,compile-ro > "$R/bench_train_clean.jsonl" 2>/tmp/dl/bench_clean.err
tail -2 /tmp/dl/bench_clean.err >> "$R/summary.log"
echo "== $(date +%T) call 2 done" >> "$R/summary.log"
