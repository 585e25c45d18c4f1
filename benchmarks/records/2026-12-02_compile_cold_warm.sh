#!/usr/bin/env bash
# One H200: cold and warm starts of experiment=fmnist_fast (2,000 steps, validation and checkpoint every 500),
# whole-network compilation only, then a formulations study started at once (18 jobs compiling together).
# After `source benchmarks/gpu_env.sh`:
set -u
export OUT
WITH_BLOCKS=0 timeout 240 bash benchmarks/compile_cold_warm.sh
cp /tmp/dl/compile_*.log "$OUT/"
export STUDIES=formulations STEPS=2000 VAL_EVERY=1000 MAX_MINUTES=14 TRAIN_FID_N=1000 FID_N=2000 JOBS_PER_GPU=18 \
  EVAL_EXTRA="batch_size=2000"
bash benchmarks/gpu_study_start.sh
# then, in later device calls: bash benchmarks/gpu_study_wait.sh 540
