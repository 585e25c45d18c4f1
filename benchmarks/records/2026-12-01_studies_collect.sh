#!/usr/bin/env bash
# On nvidia-h200: wait (at most $1 seconds) for the studies 2026-12-01_training_profile_ceiling_studies.sh
# started, then bring back their reports, sweep records, evaluations, metrics and grids (one tar per study) and
# $OUT/summary.log.
set -u
source benchmarks/gpu_env.sh
S=/tmp/dl/studies; end=$((SECONDS + ${1:-540}))
while pgrep -f experiments/all.sh > /dev/null && ((SECONDS < end)); do sleep 10; done
{ date +%T; cat /tmp/dl/all.log; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  pgrep -fa "diffusion_lab\.(train|evaluate)" | cut -c1-160 | head -30; } > $OUT/summary.log 2>&1
for st in ddpm_table2 iddpm ddim_table1; do
  [ -d $S/$st ] || continue
  (cd $S && find $st -name 'report*' -o -name sweep_status.json -o -name 'evaluation*.json' -o -name 'results*.csv' \
     -o -name 'metrics.csv' -o -name final.png -o -name '*.log' -size -2M | tar czf $OUT/$st.tar.gz -T - 2>/dev/null)
  tail -5 $S/$st.log >> $OUT/summary.log 2>/dev/null
done
true
