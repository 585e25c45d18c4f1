#!/usr/bin/env bash
# On nvidia-h200-x2: all four studies at once on both GPUs (experiments/all.sh, SHARE_GPUS=1: each sweep's jobs
# spread over both GPUs, up to 8 per GPU), at a small budget (3 min per job, FID on 1000 samples, bits/dim on
# 100 images); then the evaluation's steady 10k DDIM-50 rate on workload A's network with compile +
# channels_last. Results: one tar per study + $OUT/summary.log.
set -u
source benchmarks/gpu_env.sh; mkdir -p /tmp/dl
DATA=.data/fashion-mnist; S=/tmp/dl/studies
SHARE_GPUS=1 JOBS_PER_GPU=8 JOB_MINUTES=3 FID_N=1000 BPD_N=100 DATA_ROOT=$DATA FEATURES=.data/fmnist_clf.pt \
  STUDIES_OUT=$S PY=python3 TRAIN_EXTRA="trainer.val_check_interval=250" timeout 470 bash experiments/all.sh > $OUT/summary.log 2>&1
echo "all.sh rc=$?" >> $OUT/summary.log
for st in ddpm_table2 iddpm ddim_table1 weightings; do
  python3 -m diffusion_lab.report $S/$st >> $OUT/summary.log 2>&1
  (cd $S && find $st -name 'report*' -o -name sweep_status.json -o -name evaluation.json -o -name 'metrics.csv' -o -name final.png \
     -o -name '*.log' -size -2M | tar czf $OUT/$st.tar.gz -T - 2>/dev/null)
done
cat $S/iddpm/simple/sweep_status.json | grep -E '"(num|gpus|started|ended|status)"|"[0-9]"' | head -30 >> $OUT/summary.log
export CUDA_VISIBLE_DEVICES=0
timeout 30 python3 -m diffusion_lab.train experiment=bench_train data.root=$DATA compile=false trainer.max_steps=5 hydra.run.dir=/tmp/dl/ho > /tmp/dl/ho.log 2>&1
timeout 20 python3 -m diffusion_lab.features data.root=$DATA data.image_size=32 data.channels=3 device=cuda epochs=1 out=/tmp/dl/clf32.pt > /tmp/dl/clf32.log 2>&1
timeout 80 python3 -m diffusion_lab.evaluate ckpt=/tmp/dl/ho/checkpoints/last.ckpt features=/tmp/dl/clf32.pt metrics=[fid] sampler=ddim 'steps=[50]' \
  n=10000 batch_size=512 compile=true channels_last=true data_root=$DATA progress=false out_dir=/tmp/dl/evalspeed 2>&1 | grep '^{' | sed 's/^/eval compile+cl: /' >> $OUT/summary.log
true
