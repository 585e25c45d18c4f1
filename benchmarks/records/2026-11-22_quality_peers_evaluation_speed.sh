#!/usr/bin/env bash
# On nvidia-h200-x2: the two peers of the quality comparison, one per GPU, scored with the classifier that
# 2026-11-22_quality_ours_sampling_loop.sh trained (.data/fmnist_clf.pt); then the evaluation's 10k DDIM-50
# generation rate on workload A's network (a bench_train checkpoint), plain and compiled, beside the bench's
# workload B.
set -u
source benchmarks/gpu_env.sh; mkdir -p /tmp/dl
DATA=.data/fashion-mnist; CLF=.data/fmnist_clf.pt
for i in 0 1; do
  peer=$([ $i = 0 ] && echo diffusers || echo lucidrains)
  CUDA_VISIBLE_DEVICES=$i timeout 340 python3 benchmarks/peers_fmnist.py --peer $peer --data-root $DATA \
    --features $CLF --out /tmp/dl/peers > /tmp/dl/peer_$peer.log 2>&1 &
done
(
  export CUDA_VISIBLE_DEVICES=0; sleep 330
  [ -f /tmp/dl/loop/checkpoints/last.ckpt ] || timeout 120 python3 -m diffusion_lab.train experiment=bench_train data.root=$DATA hydra.run.dir=/tmp/dl/loop > /tmp/dl/loop.log 2>&1
  timeout 60 python3 -m diffusion_lab.features data.root=$DATA data.image_size=32 data.channels=3 device=cuda epochs=1 out=/tmp/dl/clf32.pt > /tmp/dl/clf32.log 2>&1
  for c in false true; do
    timeout 120 python3 -m diffusion_lab.evaluate ckpt=/tmp/dl/loop/checkpoints/last.ckpt features=/tmp/dl/clf32.pt metrics=[fid] \
      sampler=ddim 'steps=[50]' n=10000 batch_size=512 compile=$c data_root=$DATA progress=false out_dir=/tmp/dl/evalspeed_$c 2>&1 | grep '^{' | sed "s/^/eval compile=$c: /" >> $OUT/summary.log
  done
) &
wait
cp /tmp/dl/peers/*_grid.png /tmp/dl/peers/*_result.json $OUT/ 2>/dev/null
tail -2 /tmp/dl/peer_*.log /tmp/dl/clf32.log >> $OUT/summary.log; true
