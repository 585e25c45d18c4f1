#!/usr/bin/env bash
# All four studies at once, spread over the visible GPUs (study i on GPU i mod #GPUs), each study's sweeps
# started together and its jobs sharing their GPU (JOBS_PER_GPU, default 8: Fashion-MNIST-sized jobs leave
# most of a large GPU idle). For a quick look at every finding on 1-2 GPUs; run the scripts one by one, with
# more STEPS, for closer-to-paper numbers.
#   STEPS=4000 bash experiments/all.sh            # DATA_ROOT, FEATURES, STUDIES_OUT, PY as in common.sh
# SHARE_GPUS=1: every study sees every GPU, and each sweep's launcher spreads its jobs over all of them
# (least-loaded GPU first), instead of study i keeping to GPU i mod #GPUs.
# Writes $STUDIES_OUT/<study>/report.{md,html} (default outputs/studies/all_<time>) and <study>.log beside.
set -uo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
STUDIES=(${STUDIES:-ddpm_table2 iddpm ddim_table1 weightings})
STUDIES_OUT=${STUDIES_OUT:-${DIFFUSION_LAB_ROOT:-.}/outputs/studies/all_$(date +%Y-%m-%d_%H-%M-%S)}
source "$HERE/lib/gpus.sh"
mapfile -t GPUS < <(visible_gpus)
((${#GPUS[@]})) || GPUS=("")  # no GPU: the studies run on the CPU
mkdir -p "$STUDIES_OUT"
pids=()
for i in "${!STUDIES[@]}"; do
  study=${STUDIES[i]}
  gpu=${GPUS[i % ${#GPUS[@]}]}
  if [[ "${SHARE_GPUS:-0}" == 1 ]]; then gpu=$(IFS=,; echo "${GPUS[*]}"); fi
  echo "[all] $study on GPU ${gpu:-none}: $STUDIES_OUT/$study (log: $STUDIES_OUT/$study.log)"
  CUDA_VISIBLE_DEVICES=$gpu NUM_GPUS=$(awk -F, '{print NF}' <<< "$gpu") JOBS_PER_GPU=${JOBS_PER_GPU:-8} SWEEPS_AT_ONCE=1 \
    STUDY_OUT="$STUDIES_OUT/$study" bash "$HERE/$study.sh" > "$STUDIES_OUT/$study.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if wait "${pids[i]}"; then
    echo "[all] ${STUDIES[i]} done: $STUDIES_OUT/${STUDIES[i]}/report.md"
  else
    echo "[all] ${STUDIES[i]} FAILED (see $STUDIES_OUT/${STUDIES[i]}.log)"
    status=1
  fi
done
exit $status
