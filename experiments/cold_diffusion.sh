#!/usr/bin/env bash
# Cold diffusion (Bansal et al. 2022) at Fashion-MNIST scale: Gaussian blur and masking, each undone by a
# restoration network, next to Gaussian diffusion with the same network (the small UNet), optimizer, batch and
# steps.
#
# Expected finding: both cold degradations generate recognisable samples from a fully degraded start (the
# fitted prior plus a small noise); their FD is worse than Gaussian diffusion's (the paper's own finding: blur's
# unconditional FID trails DDPM's), and the improved sampler (Algorithm 2) beats the naive one (Algorithm 1).
#
# Budget: 3 cells x SEEDS (default 3) jobs of 20k steps (STEPS); FD/KD on FID_N (10k) samples: the Gaussian
# model with DDIM at 50 steps, the cold models with both samplers over their 50 levels (50 evaluations each).
#   bash experiments/cold_diffusion.sh       # DATA_ROOT=... NUM_GPUS=... STUDY_OUT=... (see common.sh)
STUDY=cold_diffusion
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
budget 20000 5000

grid degradation=gaussian_blur,mask  # the cold cells; the Gaussian cell is the reference beside them
# One preset for both (experiment=fmnist: the small UNet, optimizer, EMA, batch): only the process differs.
# process=ddpm names the Gaussian cell (the preset's default) so the report can pair the others with it.
train_sweep gaussian "${BUDGET[@]}" process=ddpm
train_sweep cold "${BUDGET[@]}" process=cold degradation=gaussian_blur,mask degradation.num_timesteps=50 sampler.steps=null

ensure_features
EVAL_UNDER=gaussian queue_eval ddim50 'metrics=[fid,kid]' sampler=ddim 'steps=[50]' n=$FID_N
EVAL_UNDER=cold queue_eval improved 'metrics=[fid,kid]' sampler=cold_improved n=$FID_N
EVAL_UNDER=cold queue_eval naive 'metrics=[fid,kid]' sampler=cold_naive n=$FID_N
run_queue
report "Cold diffusion at Fashion-MNIST scale: blur and mask next to Gaussian diffusion" --eval-baseline sampler=cold_naive \
  --baseline process=ddpm
exit $STATUS
