#!/usr/bin/env bash
# On nvidia-h200: workload A with the GPU kernels that take its time (--profile), and the `bound` variant
# (GroupNorm and dropout removed: a ceiling for this network) beside the peer; workload B likewise; the evaluate
# CLI's steady 10k DDIM-50 rate with full batches. Then the three studies still without evaluations start in
# the background (setsid: they outlive this command; 2026-12-01_studies_collect.sh collects them).
# Results: $OUT/summary.log, $OUT/bench.jsonl, $OUT/fmnist_clf.pt.
set -u
source benchmarks/gpu_env.sh; mkdir -p /tmp/dl
DATA=.data/fashion-mnist; CLF=/tmp/dl/fmnist_clf.pt; S=$OUT/summary.log
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> $S
timeout 80 python3 -m diffusion_lab.features data.root=$DATA device=cuda epochs=5 out=$CLF 2>&1 | tail -2 >> $S
cp $CLF $OUT/
echo "== A $(date +%T)" >> $S
timeout 210 python3 -m diffusion_lab.bench --workloads train --variants compile-ro,compile-ro+bound --peer-variants compile \
  --profile 5 2>/tmp/dl/benchA.err | tee -a $OUT/bench.jsonl | cut -c1-200 >> $S
tail -3 /tmp/dl/benchA.err >> $S
echo "== B $(date +%T)" >> $S
timeout 150 python3 -m diffusion_lab.bench --workloads sample --variants compile+cl,compile+cl+bound --peer-variants compile \
  --profile 1 2>/tmp/dl/benchB.err | tee -a $OUT/bench.jsonl | cut -c1-200 >> $S
tail -3 /tmp/dl/benchB.err >> $S
echo "== eval speed $(date +%T)" >> $S
(
  timeout 25 python3 -m diffusion_lab.train experiment=bench_train data.root=$DATA compile=false trainer.max_steps=5 \
    hydra.run.dir=/tmp/dl/ho > /tmp/dl/ho.log 2>&1
  timeout 20 python3 -m diffusion_lab.features data.root=$DATA data.image_size=32 data.channels=3 device=cuda epochs=1 \
    out=/tmp/dl/clf32.pt > /tmp/dl/clf32.log 2>&1
  timeout 90 python3 -m diffusion_lab.evaluate ckpt=/tmp/dl/ho/checkpoints/last.ckpt features=/tmp/dl/clf32.pt metrics=[fid] \
    sampler=ddim 'steps=[50]' n=10000 batch_size=512 compile=true channels_last=true data_root=$DATA progress=false \
    out_dir=/tmp/dl/evalspeed 2>&1 | grep -E '^\{|rror' | sed 's/^/eval compile+cl: /'
) >> $S 2>&1
echo "== studies start $(date +%T)" >> $S
rm -rf /tmp/dl/tree && mkdir -p /tmp/dl/tree && cp -r . /tmp/dl/tree/
cd /tmp/dl/tree && setsid nohup env SHARE_GPUS=1 STUDIES="ddpm_table2 iddpm ddim_table1" JOBS_PER_GPU=13 JOB_MINUTES=6 \
  FID_N=1000 BPD_N=100 DATA_ROOT=$DATA FEATURES=$CLF STUDIES_OUT=/tmp/dl/studies PY=python3 \
  PYTHONPATH=/tmp/dl/tree/src:/tmp/site TRAIN_EXTRA="trainer.val_check_interval=250" \
  EVAL_EXTRA="compile=true batch_size=1000" bash experiments/all.sh > /tmp/dl/all.log 2>&1 < /dev/null &
sleep 20; cat /tmp/dl/all.log >> $S; ls /tmp/dl/studies >> $S; true
