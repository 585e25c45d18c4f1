#!/usr/bin/env bash
# Watch the studies gpu_study_start.sh started for at most $1 seconds (default 540), printing progress; then
# (or when they end) pack every study's small text files (metrics, evaluations, statuses, resolved configs, logs)
# and final sample grids into $OUT/<study>.tar.gz, ready for `python -m diffusion_lab.report` to rebuild from.
# The watch ends a poll interval before $1 and the packing also runs when the command is killed (TERM, INT), so a
# device call's own time limit never loses what was measured: give it $1 + 60 s or more.
set -u
source benchmarks/gpu_env.sh
DL=$DIFFUSION_LAB_ROOT; S=$DL/studies; end=$((SECONDS + ${1:-540})); poll=${POLL:-30}
# Running while any set that gpu_study_start.sh started (its pid in all*.pid) is alive.
running() {
  local f
  for f in "$DL"/all*.pid; do [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2> /dev/null && return 0; done
  return 1
}
pack() {
  trap - TERM INT
  cp "$DL"/versions.txt "$DL"/features.log "$DL"/all*.log $OUT/ 2>/dev/null
  cd $S 2>/dev/null || exit 0
  for st in */; do
    st=${st%/}
    # $st/raw is the study's own kept copy of these files (marked by its report_settings.json, which is not
    # packed), $st/pooled one gathered with an earlier run's (POOL_WITH): left out, or a report rebuilt from the
    # pack would count jobs twice (rebuild the pooled one from the pack and the earlier raw/ instead).
    find "$st" \( -path "$st/raw" -o -path "$st/pooled" \) -prune -o \( -name 'sweep_status.json' -o -name 'evaluation*.json' -o -name 'evaluation*.csv' -o -name '*.yaml' \
      -o -name 'metrics.csv' -o -name 'hparams.yaml' -o -name final.png -o -name '*.log' \) -size -4M -print \
      | tar czf "$OUT/$st.tar.gz" -T - 2>/dev/null
  done
  ls -la $OUT
}
trap 'pack; exit 1' TERM INT
while running && ((SECONDS + poll + 5 < end)); do
  sleep "$poll" & wait $!  # a TERM interrupts the wait at once: the trap packs
  echo "== $(date +%T) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
  for f in $S/*/*/*/csv/metrics.csv; do [ -f "$f" ] && echo "$(basename "$(dirname "$(dirname "$f")")"): $(awk -F, -f benchmarks/last_step.awk "$f")"; done 2>/dev/null | tail -12
  # each running evaluation's last line: "generating <sampler> <steps>: done/n samples, s" (evaluate progress=false)
  for f in $S/*/*/*/evaluation_*.log; do [ -s "$f" ] && echo "$(basename "$(dirname "$f")"): $(tail -n 1 "$f")"; done 2>/dev/null | tail -12
done
# Said last, where a caller looks: a study still running lives on this machine only (checkpoints, unfinished
# evaluations), so a watch that ends first must be followed at once by another, before the machine is given back.
if running; then
  echo "[wait] STILL RUNNING at $(date +%T): call this again at once; a machine given back takes the studies' checkpoints and unfinished evaluations with it"
else
  echo "[wait] the studies have ended"
fi
pack
