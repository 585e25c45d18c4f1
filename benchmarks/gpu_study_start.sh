#!/usr/bin/env bash
# On a GPU machine, from the repository root, after `source benchmarks/gpu_env.sh`: train the feature network,
# then run the studies named by STUDIES through experiments/all.sh in the background (setsid: it outlives the
# command that started it), logging to /tmp/dl/all.log. benchmarks/gpu_study_wait.sh watches and collects.
#   STUDIES=ddim_table1 JOBS_PER_GPU=6 bash benchmarks/gpu_study_start.sh
set -u
mkdir -p /tmp/dl
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"; } \
  > /tmp/dl/versions.txt 2>&1
python3 -m diffusion_lab.features data=fashion_mnist data.root=.data/fashion-mnist device=cuda epochs=5 \
  out=/tmp/dl/fmnist_clf.pt > /tmp/dl/features.log 2>&1
PY=python3 SHARE_GPUS=1 STUDIES_OUT=/tmp/dl/studies DATA_ROOT=.data/fashion-mnist FEATURES=/tmp/dl/fmnist_clf.pt \
  JOBS_PER_GPU=${JOBS_PER_GPU:-6} setsid nohup bash experiments/all.sh > /tmp/dl/all.log 2>&1 < /dev/null &
sleep 5
cat /tmp/dl/versions.txt; tail -3 /tmp/dl/features.log; cat /tmp/dl/all.log
