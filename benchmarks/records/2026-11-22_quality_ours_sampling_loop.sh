#!/usr/bin/env bash
# On nvidia-h200-x2: the feature network; two fmnist_fast variants side by side (one per GPU); then DDIM-50
# sampling variants vs diffusers (GPU 0) and the real training loop vs the raw step (GPU 1). Results:
# $OUT/summary.log, $OUT/bench.jsonl, grids, and the classifier (which scores the peers in
# 2026-11-22_quality_peers_evaluation_speed.sh).
set -u
source benchmarks/gpu_env.sh; mkdir -p /tmp/dl
DATA=.data/fashion-mnist; export FEATURES=$OUT/fmnist_clf.pt
CUDA_VISIBLE_DEVICES=0 python3 -m diffusion_lab.features data.root=$DATA device=cuda epochs=5 out=$FEATURES 2>&1 | tail -2 >> $OUT/summary.log
(
  export CUDA_VISIBLE_DEVICES=0
  bash benchmarks/gpu_quality_ours.sh ro compile=reduce-overhead model.dropout=0.0
  timeout 170 python3 -m diffusion_lab.bench --workloads sample --variants compile+cl,eager,eager+cl \
    --peer-variants compile >> $OUT/bench.jsonl 2>/tmp/dl/bench_sample.err
) &
(
  export CUDA_VISIBLE_DEVICES=1
  bash benchmarks/gpu_quality_ours.sh def compile=true model.dropout=0.0 'model.attention_resolutions=[14,7]'
  timeout 120 python3 -m diffusion_lab.train experiment=bench_train data.root=$DATA hydra.run.dir=/tmp/dl/loop > /tmp/dl/loop.log 2>&1
  { echo "== loop (experiment=bench_train)"; grep -E "train speed|wall time|steps trained|rror" /tmp/dl/loop.log; } >> $OUT/summary.log
  timeout 110 python3 -m diffusion_lab.bench --systems ours --workloads train --variants compile-ro >> $OUT/bench.jsonl 2>/tmp/dl/bench_train.err
) &
wait
tail -3 /tmp/dl/bench_sample.err /tmp/dl/bench_train.err >> $OUT/summary.log 2>/dev/null; true
