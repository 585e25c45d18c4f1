#!/usr/bin/env bash
# Evaluation speed: the evaluate CLI's 10k-sample DDIM-50 generation (batch 512) on workload A's network (a 5-step
# bench_train checkpoint: speed does not depend on the weights), compiled + channels_last, beside the bench's
# workload B in the same process tree. On the GPU machine after `source benchmarks/gpu_env.sh`.
set -u
DATA=${DATA_ROOT:-.data/fashion-mnist}; mkdir -p /tmp/dl
python3 -m diffusion_lab.train experiment=bench_train data.root=$DATA compile=false trainer.max_steps=5 hydra.run.dir=/tmp/dl/ho 2>&1 | tail -3
python3 -m diffusion_lab.features data.root=$DATA data.image_size=32 data.channels=3 device=cuda epochs=1 out=/tmp/dl/clf32.pt 2>&1 | tail -1
python3 -m diffusion_lab.evaluate ckpt=/tmp/dl/ho/checkpoints/last.ckpt features=/tmp/dl/clf32.pt metrics=[fid] sampler=ddim 'steps=[50]' \
  n=10000 batch_size=512 compile=true channels_last=true data_root=$DATA progress=false out_dir=/tmp/dl/evalspeed 2>&1 | grep -E '^\{|rror' | sed 's/^/eval compile+cl: /'
python3 -m diffusion_lab.bench --systems ours --workloads sample --variants compile+cl 2>/dev/null
