#!/usr/bin/env bash
# On a GPU machine, from the repository root, after `source benchmarks/gpu_env.sh`: train the feature network
# (once: a later call reuses it), then run the studies named by STUDIES through experiments/all.sh in the
# background (setsid: it outlives the command that started it), logging to /tmp/dl/all.log (all_$TAG.log with
# TAG set). benchmarks/gpu_study_wait.sh watches and collects.
#   STUDIES=ddim_table1 JOBS_PER_GPU=6 bash benchmarks/gpu_study_start.sh
# AFTER=PATH starts the studies only once PATH exists (a second set that should begin when a phase of the first
# ends, e.g. its autoencoder is trained); every setting of this call (FID_N, STEPS, SWEEPS, ...) is its own.
#   TAG=second AFTER=/tmp/dl/studies/latent_vs_pixel/.prewarm/pixel.log STUDIES=formulations ... bash $0
set -u
DL=${DIFFUSION_LAB_ROOT:-/tmp/dl}  # gpu_env.sh sets it; gpu_study_wait.sh reads the same folder
mkdir -p $DL
LOG=$DL/all${TAG:+_$TAG}.log
[[ -f $DL/versions.txt ]] || { date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"; } \
  > $DL/versions.txt 2>&1
[[ -f $DL/fmnist_clf.pt ]] || python3 -m diffusion_lab.features data=fashion_mnist data.root=.data/fashion-mnist \
  device=cuda epochs=5 out=$DL/fmnist_clf.pt > $DL/features.log 2>&1
# The wait gives up when no study is running any more (the first set failed before PATH appeared). The pattern
# al[l] and the quoted experiments/"all.sh" keep the waiting shell's own command line from matching pgrep.
WAIT="while [[ -n '${AFTER:-}' && ! -e '${AFTER:-}' ]]; do sleep 5; pgrep -f 'experiments/al[l].sh' > /dev/null || exit 1; done"
PY=python3 SHARE_GPUS=1 STUDIES_OUT=$DL/studies DATA_ROOT=.data/fashion-mnist FEATURES=$DL/fmnist_clf.pt \
  JOBS_PER_GPU=${JOBS_PER_GPU:-6} setsid nohup bash -c "$WAIT; echo \"[start] \$(date -u +%T)\"; exec bash experiments/\"all.sh\"" \
  > "$LOG" 2>&1 < /dev/null &
# The watch (gpu_study_wait.sh) follows this pid, which becomes experiments/all.sh's: a pattern match on command
# lines would also match any device command that merely names the script, and wait out its whole limit.
echo $! > $DL/all${TAG:+_$TAG}.pid
sleep 5
cat $DL/versions.txt; tail -3 $DL/features.log; cat "$LOG"
