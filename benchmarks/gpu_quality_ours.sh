#!/usr/bin/env bash
# Quality per GPU-minute, our side (issue 6) + evaluation cost (issue 4), on one GPU:
#   train experiment=fmnist_fast (240 s budget), train the FMNIST feature network, score 10k DDIM-100 samples.
# Run from the repo root on the GPU machine after `source benchmarks/gpu_env.sh`. Results under $OUT.
set -u
DATA=${DATA_ROOT:-.data/fashion-mnist}
RUN=/tmp/dl/fmnist_fast
python3 -m diffusion_lab.features data.root=$DATA device=cuda epochs=5 out=/tmp/dl/fmnist_clf.pt 2>&1 | tail -5 | tee $OUT/features.log
python3 -m diffusion_lab.train experiment=fmnist_fast data.root=$DATA hydra.run.dir=$RUN 2>&1 | tail -14 | tee $OUT/fmnist_fast_train.log
python3 -m diffusion_lab.evaluate ckpt=$RUN/checkpoints/last.ckpt features=/tmp/dl/fmnist_clf.pt metrics=[fid,kid,pr,is] \
  n=10000 steps=[100] batch_size=1000 data_root=$DATA progress=false out_dir=$RUN/eval 2>&1 | tail -8 | tee $OUT/fmnist_fast_eval.log
cp $RUN/samples/final.png $OUT/ours_fmnist_fast.png
cp $RUN/eval/evaluation.json $OUT/ours_fmnist_fast_eval.json
