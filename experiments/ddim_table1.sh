#!/usr/bin/env bash
# DDIM Table 1 (Song et al. 2021) at Fashion-MNIST scale: one model trained with L_simple on the linear schedule,
# sampled with DDPM (ancestral) and DDIM at eta 0, 0.5, 1, with 10, 20, 50, 100 and 1000 steps; and the paper's
# sigma-hat row: ancestral sampling with the larger variance beta_t (evaluate's sampling_variance=fixed_large) on
# the same fixed_small-trained model. DDIM at eta=1 is ancestral sampling with beta~_t, so it repeats the DDPM row.
#
# Expected finding: with few steps (10-50) deterministic DDIM (eta=0) has by far the best FID, and FID worsens
# as eta grows, sigma-hat being worst; at 1000 steps the samplers are close, sigma-hat the best and eta=0 the best
# of the eta rows (the paper's CIFAR-10 numbers). FID improves with steps for every sampler.
#
# Budget: one model per seed (SEEDS, default 1,2,3), 20k steps each (STEPS), with FD on 2000 samples every 2500
# steps to show where training flattens; then per model 5 samplers x 10, 20, 50, 100 steps on FID_N (10k) samples
# (DDIM eta=0 at 10 and 50 steps on NOISE_SETS sample sets) and x 1000 steps on FID_N_1000 (2000: the 1000-step
# rows cost more than the others together). The
# few-step claim is about a well-trained model, so the budget is in steps, never in minutes.
#   bash experiments/ddim_table1.sh          # DATA_ROOT=... NUM_GPUS=... STUDY_OUT=... (see common.sh)
STUDY=ddim_table1
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
budget 20000 2500

ensure_features  # FD during training needs the feature network first
train_sweep model "${BUDGET[@]}" schedule=linear loss=simple prediction=eps variance=fixed_small \
  callbacks=with_metrics "callbacks.sample_quality.features=$FEATURES" callbacks.sample_quality.n=${TRAIN_FID_N:-2000}

FEW='steps=[10,20,50,100]'
# In the order the claims need them, so a run cut short keeps the most: the DDPM baseline and eta=0, then eta=0.5
# and sigma-hat, the 1000-step rows, and last eta=1 (a repeat of the DDPM row: a check of both samplers).
queue_eval ddpm 'metrics=[fid,kid]' sampler=ddpm "$FEW" n=$FID_N
# DDIM eta=0 at 10 and 50 steps on NOISE_SETS (default 4) independent sample sets: the FD estimator's own spread,
# which the report shows beside the seed-to-seed spread; at 20 and 100 steps on SAMPLE_SETS like the rest.
SAMPLE_SETS=${NOISE_SETS:-4} queue_eval ddim_eta0_sets 'metrics=[fid,kid]' sampler=ddim eta=0.0 'steps=[10,50]' n=$FID_N
queue_eval ddim_eta0 'metrics=[fid,kid]' sampler=ddim eta=0.0 'steps=[20,100]' n=$FID_N
queue_eval ddim_eta0.5 'metrics=[fid,kid]' sampler=ddim eta=0.5 "$FEW" n=$FID_N
queue_eval ddpm_large 'metrics=[fid,kid]' sampler=ddpm sampling_variance=fixed_large "$FEW" n=$FID_N
# DDIM eta=0 unclipped at 1000 steps: the paper's sampler does not clip x0 (every sampler here does by default),
# and clipping bends the deterministic path, which no later noise corrects.
for setting in "ddpm sampler=ddpm" "ddim_eta0 sampler=ddim eta=0.0" "ddim_eta0.5 sampler=ddim eta=0.5" \
  "ddpm_large sampler=ddpm sampling_variance=fixed_large" \
  "ddim_eta0_unclipped sampler=ddim eta=0.0 sampler.clip_denoised=false" "ddim_eta1 sampler=ddim eta=1.0"; do
  read -r -a words <<< "$setting"
  queue_eval "${words[0]}_1000" 'metrics=[fid,kid]' "${words[@]:1}" 'steps=[1000]' n=${FID_N_1000:-2000}
done
queue_eval ddim_eta1 'metrics=[fid,kid]' sampler=ddim eta=1.0 "$FEW" n=$FID_N
run_queue
# Each sampler against DDPM at the same steps, paired by seed: the "Evaluation differences" table.
report "DDIM Table 1 at Fashion-MNIST scale: sampler x steps, per seed" --eval-baseline sampler=ddpm
exit $STATUS
