#!/usr/bin/env bash
# Quality per GPU-minute, our side: train experiment=fmnist_fast (240 s budget) with extra overrides,
# then score 10k DDIM-100 samples of its EMA weights with the FMNIST feature network $FEATURES (the same file
# the peers are scored with: benchmarks/peers_fmnist.py --features). On the GPU machine, after
# `source benchmarks/gpu_env.sh`:
#   FEATURES=/tmp/dl/fmnist_clf.pt bash benchmarks/gpu_quality_ours.sh NAME [train overrides...]
# Appends the train summary and the evaluation row to $OUT/summary.log; the final grid to $OUT/ours_NAME.png.
set -u
NAME=$1; shift
DATA=${DATA_ROOT:-.data/fashion-mnist}
RUN=/tmp/dl/fmnist_fast_$NAME
mkdir -p /tmp/dl
timeout 320 python3 -m diffusion_lab.train experiment=fmnist_fast data.root=$DATA hydra.run.dir=$RUN "$@" > $RUN.train.log 2>&1
{ echo "== ours $NAME: $*"; grep -E "steps trained|train speed|wall time|rror" $RUN.train.log | head -8; } >> $OUT/summary.log
timeout 150 python3 -m diffusion_lab.evaluate ckpt=$RUN/checkpoints/last.ckpt features=$FEATURES metrics=[fid,kid,pr] \
  n=10000 steps=[100] batch_size=1000 data_root=$DATA progress=false out_dir=$RUN/eval > $RUN.eval.log 2>&1
{ grep '^{' $RUN.eval.log || tail -3 $RUN.eval.log; } | sed "s/^/ours $NAME eval: /" >> $OUT/summary.log
cp $RUN/samples/final.png $OUT/ours_$NAME.png 2>/dev/null; true
