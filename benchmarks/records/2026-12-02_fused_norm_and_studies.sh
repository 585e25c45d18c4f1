#!/usr/bin/env bash
# One H200: the fused-norm microbenchmark, then the formulations and cold-diffusion studies started together
# (27 jobs sharing the GPU, each sweep prewarmed). The Fashion-MNIST files travelled as an xz archive
# (.dpack/fmnist.tar.xz, the four idx files) because the working tree and the .gz files passed the 64 MiB a call
# may carry. After `source benchmarks/gpu_env.sh`:
set -u
mkdir -p .data/fashion-mnist && tar xJf .dpack/fmnist.tar.xz -C .data/fashion-mnist && gzip -1 .data/fashion-mnist/*-ubyte
timeout 200 python3 benchmarks/fused_norm_bench.py > "$OUT/fused_norm_bench.jsonl" 2>&1
export STUDIES="formulations cold_diffusion" STEPS=2000 VAL_EVERY=1000 TRAIN_FID_N=1000 FID_N=2000 JOBS_PER_GPU=18 \
  EVAL_EXTRA="batch_size=2000"
bash benchmarks/gpu_study_start.sh
sleep 10
bash benchmarks/gpu_study_wait.sh 230
# then, in later device calls: bash benchmarks/gpu_study_wait.sh 545; bash benchmarks/gpu_study_wait.sh 100
