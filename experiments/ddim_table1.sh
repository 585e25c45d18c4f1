#!/usr/bin/env bash
# DDIM Table 1 (Song et al. 2021) at Fashion-MNIST scale: one model trained with L_simple on the linear schedule,
# sampled with DDPM (ancestral) and DDIM at eta 0, 0.5, 1, with 10, 20, 50, 100 and 1000 steps.
#
# Expected finding: with few steps (10-50) deterministic DDIM (eta=0) has by far the best FID, and FID worsens
# as eta grows, DDPM / eta=1 being worst; at 1000 steps the samplers are close (DDPM / eta=1 equal or slightly
# better). FID improves with steps for every sampler.
#
# Budget: one job of JOB_MINUTES (default 25) + 4 x 5 FID evaluations of 2000 samples: under an hour on 1 GPU.
#   bash experiments/ddim_table1.sh          # DATA_ROOT=... NUM_GPUS=... STUDY_OUT=... (see common.sh)
STUDY=ddim_table1
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
JOB_MINUTES=${JOB_MINUTES:-25}
TRAIN=(experiment=fmnist trainer.max_steps=40000 "trainer.max_time='00:00:$(printf %02d "$JOB_MINUTES"):00'"
  trainer.val_check_interval=5000)

train_sweep model "${TRAIN[@]}" schedule=linear loss=simple prediction=eps variance=fixed_small

ensure_features
STEPS='steps=[10,20,50,100,1000]'
queue_eval ddpm 'metrics=[fid,is]' sampler=ddpm "$STEPS" n=${FID_N:-2000}
queue_eval ddim_eta0 'metrics=[fid,is]' sampler=ddim eta=0.0 "$STEPS" n=${FID_N:-2000}
queue_eval ddim_eta0.5 'metrics=[fid,is]' sampler=ddim eta=0.5 "$STEPS" n=${FID_N:-2000}
queue_eval ddim_eta1 'metrics=[fid,is]' sampler=ddim eta=1.0 "$STEPS" n=${FID_N:-2000}
run_queue
report "DDIM Table 1 at Fashion-MNIST scale: sampler x steps"
exit $STATUS
