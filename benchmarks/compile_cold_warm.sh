#!/usr/bin/env bash
# Cold and warm starts of experiment=fmnist_fast on one GPU: the training time each run spends beyond its
# steady-state steps (compilation, recompilation, CUDA-graph recording, autotuning) as the run's own summary
# reports it ("startup cost"), with the whole network compiled (compile_scope=net) and its blocks compiled
# regionally (compile_scope=blocks). "Cold" empties every compile cache first (the run's compile_cache folder,
# inductor's default /tmp folder and Triton's kernel cache); "warm" is the same command again. 2,000 steps with a
# validation, EMA swap, checkpoint and in-training grid every 500, so a recompilation after the first step shows.
# On the GPU machine, after `source benchmarks/gpu_env.sh`:
#   bash benchmarks/compile_cold_warm.sh      # appends to $OUT/compile_cold_warm.log; WITH_BLOCKS=0: net only
# WITH_NET=0 leaves the whole-network runs out; WITH_FUSED=1 adds a warm-cache pair with model.fused_norm=true
# (the Triton GroupNorm+SiLU op), whose steady img/s against the net_warm run's is the fused op's effect on a
# whole CUDA-graph training step.
set -u
DATA=${DATA_ROOT:-.data/fashion-mnist}
LOG=${OUT:-/tmp/dl}/compile_cold_warm.log
CACHE=/tmp/dl/compile_cache
mkdir -p /tmp/dl
clear_caches() { rm -rf "$CACHE" /tmp/torchinductor_"$(whoami)" ~/.triton/cache; }
one_run() {  # NAME SCOPE [OVERRIDES...]
  local run=/tmp/dl/compile_$1
  timeout 300 python3 -m diffusion_lab.train experiment=fmnist_fast "data.root=$DATA" "hydra.run.dir=$run" \
    trainer.max_time=null trainer.max_steps=2000 trainer.val_check_interval=500 \
    callbacks.checkpoint.every_n_train_steps=500 "compile_scope=$2" "compile_cache=$CACHE" "${@:3}" > "$run.log" 2>&1
  { echo "== $1 (compile_scope=$2${3:+ ${*:3}}), exit $?"
    grep -E "steps trained|startup cost|train speed|wall time|rror" "$run.log" | head -6; } | tee -a "$LOG"
  [[ -z "${OUT:-}" ]] || tail -40 "$run.log" > "$OUT/compile_$1.tail.log"  # the run's own summary, kept
}
{ date -u +%FT%TZ; git rev-parse --short HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"; } | tee -a "$LOG"
if [[ "${WITH_NET:-1}" == 1 ]]; then
  clear_caches; one_run net_cold net
  one_run net_warm net
fi
if [[ "${WITH_FUSED:-0}" == 1 ]]; then
  one_run fused_first net model.fused_norm=true
  one_run fused_warm net model.fused_norm=true
fi
if [[ "${WITH_BLOCKS:-1}" == 1 ]]; then
  clear_caches; one_run blocks_cold blocks
  one_run blocks_warm blocks
fi
