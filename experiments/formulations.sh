#!/usr/bin/env bash
# Formulations at Fashion-MNIST scale, one network and one training budget: DDPM (ε on the linear and on the
# cosine schedule, v on the cosine), EDM (Karras et al. 2022: its preconditioning, log-normal σ, λ(σ)) and
# rectified flow (Liu et al. 2022) with uniform and logit-normal training times (Esser et al. 2024), each scored
# by FD on the classifier's features against the number of network evaluations (≈ 10, 20, 35, 50, 100).
#
# Expected finding: at few evaluations (10-20) EDM's Heun sampler and the flow's samplers reach a far lower FD
# than DDIM on the DDPM models (straighter paths, a σ grid placed by ρ = 7); among the DDPM models v and the
# cosine schedule do better than ε on the linear schedule; logit-normal times beat uniform ones for the flow
# (SD3's finding); at 100 evaluations the formulations end close together.
#
# Network evaluations, not steps, are the common axis (evaluate's `steps` column counts evaluations): a
# first-order sampler (DDIM, EDM Euler, flow Euler) uses one per step and runs 10, 20, 35, 50, 100 steps; Heun
# uses 2n - 1 for n steps and runs 5, 10, 18, 25, 50 steps (9, 19, 35, 49, 99 evaluations). The same rule sets
# the in-training FD's sampler at about 50 evaluations for every cell.
#
# Budget: 6 cells x SEEDS (default 3) jobs of 30k steps (STEPS), FD on 2000 samples every 2500 steps, then FD
# and KID on FID_N (10k) samples at 5 evaluation budgets per sampler (DDPM models: DDIM; EDM and flow: Euler and
# Heun).
#   bash experiments/formulations.sh        # DATA_ROOT=... NUM_GPUS=... STUDY_OUT=... (see common.sh)
STUDY=formulations
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
budget 30000 2500

ensure_features  # FD during training needs the feature network first
METRICS=(callbacks=with_metrics "callbacks.sample_quality.features=$FEATURES"
  "callbacks.sample_quality.n=${TRAIN_FID_N:-2000}")
grid prediction=eps schedule=linear,cosine
train_sweep ddpm_eps "${BUDGET[@]}" process=ddpm prediction=eps schedule=linear,cosine sampler=ddim \
  sampler.steps=50 "${METRICS[@]}"
grid prediction=v schedule=cosine
train_sweep ddpm_v "${BUDGET[@]}" process=ddpm prediction=v schedule=cosine sampler=ddim sampler.steps=50 \
  "${METRICS[@]}"
# EDM and the flow take no schedule: ~schedule drops the one the fmnist preset names.
grid process=edm
train_sweep edm "${BUDGET[@]}" process=edm '~schedule' sampler=edm_heun sampler.steps=25 "${METRICS[@]}"
grid process=flow timesteps=flow_uniform,flow_logit_normal
train_sweep flow "${BUDGET[@]}" process=flow '~schedule' timesteps=flow_uniform,flow_logit_normal \
  sampler=flow_euler sampler.steps=50 "${METRICS[@]}"

FIRST_ORDER='steps=[10,20,35,50,100]'
HEUN='steps=[5,10,18,25,50]'
for sweep in ddpm_eps ddpm_v; do
  EVAL_UNDER=$sweep queue_eval ddim 'metrics=[fid,kid]' sampler=ddim eta=0.0 "$FIRST_ORDER" n=$FID_N
done
EVAL_UNDER=edm queue_eval edm_euler 'metrics=[fid,kid]' sampler=edm_euler "$FIRST_ORDER" n=$FID_N
EVAL_UNDER=edm queue_eval edm_heun 'metrics=[fid,kid]' sampler=edm_heun "$HEUN" n=$FID_N
EVAL_UNDER=flow queue_eval flow_euler 'metrics=[fid,kid]' sampler=flow_euler "$FIRST_ORDER" n=$FID_N
EVAL_UNDER=flow queue_eval flow_heun 'metrics=[fid,kid]' sampler=flow_heun "$HEUN" n=$FID_N
run_queue
report "Formulations at Fashion-MNIST scale: DDPM, EDM and rectified flow, FD against network evaluations"
exit $STATUS
