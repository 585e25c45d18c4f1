#!/usr/bin/env bash
# On a 2-GPU machine: the two peers of the quality-per-GPU-minute comparison (one per GPU, concurrently, so each
# has a GPU to itself), a 2-job sweep through the gpu_pool launcher, one job with trainer=ddp over both GPUs, and
# the real training loop's throughput. Everything lands in $OUT/x2.tar.gz.
set -u
DATA=${DATA_ROOT:-.data/fashion-mnist}
L=/tmp/dl/logs; mkdir -p $L
CUDA_VISIBLE_DEVICES=0 python3 -m diffusion_lab.features data.root=$DATA device=cuda epochs=5 out=/tmp/dl/fmnist_clf.pt > $L/features.log 2>&1
for i in 0 1; do
  peer=$([ $i = 0 ] && echo diffusers || echo lucidrains)
  CUDA_VISIBLE_DEVICES=$i timeout 330 python3 benchmarks/peers_fmnist.py --peer $peer --data-root $DATA \
    --features /tmp/dl/fmnist_clf.pt --out /tmp/dl/peers > $L/peer_$peer.log 2>&1 &
done
wait
cp /tmp/dl/peers/*_grid.png $OUT/ 2>/dev/null; grep -h '^{' $L/peer_*.log
# A 2-job sweep: the launcher should put one job on each GPU, concurrently.
timeout 100 python3 -m diffusion_lab.train -m experiment=fmnist model=unet_tiny compile=false trainer.max_steps=400 \
  trainer.val_check_interval=200 data.root=$DATA seed=1,2 hydra.sweep.dir=/tmp/dl/sweep > $L/sweep.log 2>&1
echo "sweep rc=$?"; cp /tmp/dl/sweep/sweep_status.json $L/ 2>/dev/null; cat $L/sweep_status.json 2>/dev/null | head -40
# One job over both GPUs with Lightning DDP under Hydra.
timeout 100 python3 -m diffusion_lab.train experiment=fmnist trainer=ddp trainer.devices=2 model=unet_tiny compile=false \
  trainer.max_steps=300 trainer.val_check_interval=150 data.root=$DATA hydra.run.dir=/tmp/dl/ddp > $L/ddp.log 2>&1
echo "ddp rc=$?"; grep -E "steps trained|train speed|checkpoint|rror" $L/ddp.log | head
# The real training loop (workload A) with the lean EMA.
CUDA_VISIBLE_DEVICES=0 timeout 95 python3 -m diffusion_lab.train experiment=bench_train data.root=$DATA trainer.max_steps=900 > $L/loop.log 2>&1
grep -E "train speed|wall time" $L/loop.log
tar czf $OUT/x2.tar.gz -C /tmp/dl logs sweep 2>/dev/null; cp /tmp/dl/peers/*_result.json $OUT/ 2>/dev/null; true
