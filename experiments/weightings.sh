#!/usr/bin/env bash
# Loss weightings at Fashion-MNIST scale: uniform (L_simple) vs Min-SNR-gamma (Hang et al. 2023, gamma=5) vs P2
# (Choi et al. 2022, k=1, gamma=1), FID measured during training (callbacks=with_metrics, every 2000 steps).
#
# Expected finding: Min-SNR-5 converges fastest (lower FID at the early evaluations than uniform); P2, which
# down-weights the easy high-SNR steps, ends at an equal or better FID than uniform; uniform is slowest.
#
# Every cell trains on experiment=fmnist's cosine schedule, predicting eps.
#
# Budget: 3 weightings x SEEDS (default 3) jobs of 30k steps (STEPS), FD on 2000 samples every 2000 steps, then a
# final FD/KID on FID_N (10k) samples and bits/dim.
#   bash experiments/weightings.sh           # DATA_ROOT=... NUM_GPUS=... STUDY_OUT=... (see common.sh)
STUDY=weightings
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
budget 30000 2000

ensure_features  # FD during training needs the feature network first
grid weighting=uniform,min_snr,p2
# min_snr's gamma is 5 and p2's k=1, gamma=1 by default (conf/weighting/).
train_sweep weighting "${BUDGET[@]}" weighting=uniform,min_snr,p2 callbacks=with_metrics \
  "callbacks.sample_quality.features=$FEATURES" callbacks.sample_quality.n=${TRAIN_FID_N:-2000}

queue_eval final 'metrics=[fid,kid,bpd]' n=$FID_N bpd_n=${BPD_N:-500}
run_queue
# Every pair of the three: each weighting against uniform, and Min-SNR against P2.
report "Loss weightings at Fashion-MNIST scale: FD over training" --baseline weighting=uniform --baseline weighting=p2
exit $STATUS
