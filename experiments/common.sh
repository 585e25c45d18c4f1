# Shared by the study scripts (sourced, not run): where things go, and the train-sweep / evaluate / report
# steps. Settings (environment):
#   DATA_ROOT   Fashion-MNIST folder (data.root); default: the data config's own lookup
#   STUDY_OUT   the study's folder; default outputs/studies/<study>_<time> under DIFFUSION_LAB_ROOT (or .)
#   FEATURES    the FMNIST feature classifier (trained once by `python -m diffusion_lab.features` if missing)
#   NUM_GPUS    GPUs the evaluations are spread over; default: the visible ones (at least 1)
#   PY          the Python that has diffusion_lab installed; default python
#   JOBS_PER_GPU  training jobs (and evaluations) sharing one GPU (hydra.launcher.jobs_per_gpu); default 1
#   SWEEPS_AT_ONCE=1  start a study's sweeps together instead of one after another (with JOBS_PER_GPU)
#   TRAIN_EXTRA more training overrides for every job, space-separated (e.g. "trainer.val_check_interval=500")
#   EVAL_EXTRA  more evaluate overrides for every evaluation, space-separated (e.g. "compile=true batch_size=1000")
#   SEEDS       the seeds every cell is trained with (default 1,2,3): a sweep axis; the report pairs cells by seed
#   STEPS       training steps of every job (each study has its default): cells compare at equal steps
#   VAL_EVERY   steps between validations / in-training FD / checkpoints (each study has its default)
#   MAX_MINUTES a wall-time guard per job (default none); a job it stops is marked incomplete by the report
#   FID_N / BPD_N  generated samples per FD/FID (default 10000) / images for bits/dim (500)
#   PREWARM=0   skip the short run that compiles a sweep's network before its jobs start together (see prewarm)
#   SWEEPS      only these sweeps of the study, space-separated (e.g. "flow ddpm_eps"): re-running part of a
#               study; its evaluations are the selected sweeps' own. Default: every sweep
#   EVALS       only these evaluations of the study (queue_eval NAMEs, space-separated, e.g. "ddpm ddpm_1000"):
#               scoring a trained study again in some settings, or training it again for a few; default: every one
#   SAMPLE_SETS independent sample sets per evaluated setting (default 1; evaluate's sample_sets): their spread
#               is the FD estimator's own noise, beside the seed-to-seed spread
#   POOL_WITH   an earlier run of the study with other seeds (its kept raw/ folder, or its study folder): a
#               second report gathers both in $STUDY_OUT/pooled (raw/ beside it), each seed counted once and
#               paired within its own run; the study's own report is written as always
#   RESUME=1    continue a stopped study in its STUDY_OUT: each sweep continues (hydra.launcher.resume=true:
#               completed jobs kept, the others resumed from their checkpoints), an evaluation already complete is
#               not run again, and a stopped one continues (evaluate's resume=true: only the settings it lacks)
#   DRY_RUN=1   print what would run (GRID / EXCLUDE / PREWARM / SWEEP / EVAL lines) and run nothing (the tests use it);
#               a SWEEP line starts with @<its name>, an EVAL line restricted to one sweep with @<that name>
set -euo pipefail

PY=${PY:-python}
ROOT=${DIFFUSION_LAB_ROOT:-.}
STUDY_OUT=${STUDY_OUT:-$ROOT/outputs/studies/${STUDY}_$(date +%Y-%m-%d_%H-%M-%S)}
FEATURES=${FEATURES:-$ROOT/.cache/features/fashion_mnist_classifier.pt}
DRY_RUN=${DRY_RUN:-0}
JOBS_PER_GPU=${JOBS_PER_GPU:-1}
SWEEPS_AT_ONCE=${SWEEPS_AT_ONCE:-0}
SEEDS=${SEEDS:-1,2,3}
MAX_MINUTES=${MAX_MINUTES:-}
FID_N=${FID_N:-10000}
SAMPLE_SETS=${SAMPLE_SETS:-1}
SWEEPS=${SWEEPS:-}
EVALS=${EVALS:-}
RESUME=${RESUME:-0}
CONTINUE=()  # continue a sweep in its folder (RESUME=1)
[[ "$RESUME" != 1 ]] || CONTINUE=(hydra.launcher.resume=true)
read -r -a TRAIN_EXTRA <<< "${TRAIN_EXTRA:-}"
read -r -a EVAL_EXTRA <<< "${EVAL_EXTRA:-}"
STATUS=0
SWEEP_PIDS=()

DATA_TRAIN=()  # data.root for train / features
DATA_EVAL=()   # data_root for evaluate
if [[ -n "${DATA_ROOT:-}" ]]; then
  DATA_TRAIN=("data.root=$DATA_ROOT")
  DATA_EVAL=("data_root=$DATA_ROOT")
fi

source "$(dirname "${BASH_SOURCE[0]}")/lib/gpus.sh"
mapfile -t GPU_IDS < <(visible_gpus)
NUM_GPUS=${NUM_GPUS:-${#GPU_IDS[@]}}
((NUM_GPUS >= 1)) || NUM_GPUS=1
((${#GPU_IDS[@]} >= 1)) || GPU_IDS=(0)

# selected NAME: whether the sweep NAME is one SWEEPS asks for (every sweep when SWEEPS is empty).
selected() { [[ -z "$SWEEPS" || " $SWEEPS " == *" $1 "* ]]; }

# refuse_unknown SETTING NOUN KNOWN: stop the study (exit 2, one line) at the first name in $SETTING that is not
# in the space-separated KNOWN names of its NOUN (sweep, evaluation).
refuse_unknown() {
  local setting=$1 noun=$2 known=$3 name
  for name in ${!setting}; do
    [[ " $known " == *" $name "* ]] && continue
    echo "$setting: $STUDY has no $noun named '$name' (its ${noun}s: ${known% })" >&2
    exit 2
  done
}

# A name in SWEEPS that no `train_sweep NAME` of the study declares stops the study before anything runs.
check_sweeps() {
  [[ -n "$SWEEPS" ]] || return 0
  # the study script: the outermost file of the source chain
  refuse_unknown SWEEPS sweep "$(grep -oE '^\s*(SEEDS=[^ ]+ )?train_sweep [A-Za-z0-9_]+' "${BASH_SOURCE[-1]}" \
    | awk '{print $NF}' | tr '\n' ' ')"
}
check_sweeps

# A name in EVALS that the study does not queue stops it before anything runs. The names are read off the study
# itself, run in a listing mode (LIST_EVALS=1: queue_eval prints its name, nothing runs), since a study may build
# them in a loop.
check_evals() {
  [[ -n "$EVALS" ]] || return 0
  refuse_unknown EVALS evaluation "$(EVALS='' LIST_EVALS=1 DRY_RUN=1 bash "${BASH_SOURCE[-1]}" \
    | sed -n 's/^EVALNAME //p' | tr '\n' ' ')"
}
check_evals

# core_share N: the OMP_NUM_THREADS of one of N processes sharing this host's cores: nproc / N, at least 1 (the
# gpu_pool launcher gives each of the jobs it runs at once the same share).
core_share() {
  local n=$(($(nproc) / $1))
  echo $((n > 0 ? n : 1))
}

# The study's full factor grid and the combinations it leaves out (why: in a comment where it is called).
grid() { [[ "$DRY_RUN" == 1 ]] && echo "GRID $*" || true; }
exclude() { [[ "$DRY_RUN" == 1 ]] && echo "EXCLUDE $*" || true; }

# budget DEFAULT_STEPS VAL_EVERY: the training length every job of the study gets (STEPS overrides the default),
# validation (and in-training FD) every VAL_EVERY steps (VAL_EVERY overrides it) -- the same steps for every
# cell; sets BUDGET.
budget() {
  local guard=null every=${VAL_EVERY:-$2}
  [[ -n "$MAX_MINUTES" ]] && guard="'00:00:$(printf %02d "$MAX_MINUTES"):00'"
  BUDGET=(experiment=fmnist "trainer.max_steps=${STEPS:-$1}" "trainer.max_time=$guard"
    "trainer.val_check_interval=$every" "callbacks.checkpoint.every_n_train_steps=$every")
}

# train_sweep NAME OVERRIDES...: one multirun, in parallel over the GPUs (hydra/launcher=gpu_pool), into
# $STUDY_OUT/NAME. A failed job is recorded (sweep_status.json) and the study goes on.
train_sweep() {
  local name=$1
  shift
  selected "$name" || return 0
  if [[ "$DRY_RUN" == 1 ]]; then
    prewarm "$name" "$@"
    echo "SWEEP @$name $(printf '%q ' "$@" "seed=$SEEDS" "${TRAIN_EXTRA[@]}" "${CONTINUE[@]}")"
    return 0
  fi
  mkdir -p "$STUDY_OUT"
  local cmd=("$PY" -m diffusion_lab.train -m hydra/launcher=gpu_pool "hydra.sweep.dir=$STUDY_OUT/$name"
    "hydra.launcher.jobs_per_gpu=$JOBS_PER_GPU" "${DATA_TRAIN[@]}" "$@" "seed=$SEEDS" "${TRAIN_EXTRA[@]}"
    "${CONTINUE[@]}")
  if [[ "$SWEEPS_AT_ONCE" == 1 ]]; then
    { prewarm "$name" "$@"; "${cmd[@]}"; } &
    SWEEP_PIDS+=($!)
  else
    prewarm "$name" "$@"
    "${cmd[@]}" || STATUS=1
  fi
}

# The sweep's first job: each plain comma list (a sweep axis) cut to its first value.
first_job() {
  local o
  for o in "$@"; do
    if [[ "$o" == *=*,* && "$o" != *[\[\]\{\}\(\)\'\"]* ]]; then echo "${o%%,*}"; else echo "$o"; fi
  done
}

# prewarm NAME OVERRIDES...: the sweep's first job trains two steps alone, so its compiled network is in the
# shared compile cache (compile_cache) before the sweep's jobs start together and load it. Jobs that start at
# once all miss the cache and compile the same graph side by side (BENCHMARKS.md, "Cold and warm starts": 18 such
# jobs on a 16-core host took 85-101 s each in the compiler, one alone 55 s). Uncompiled, it costs one start-up.
# A failure here is reported and the sweep runs anyway (its jobs then compile on their own).
prewarm() {
  local name=$1 job
  shift
  [[ "${PREWARM:-1}" == 1 ]] || return 0
  mapfile -t job < <(first_job "$@" "seed=${SEEDS%%,*}" "${TRAIN_EXTRA[@]}")
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "PREWARM @$name $(printf '%q ' "${job[@]}")"
    return 0
  fi
  mkdir -p "$STUDY_OUT/.prewarm"
  rm -rf "${STUDY_OUT:?}/.prewarm/$name"  # an earlier prewarm's run (a study continued): it only filled the cache
  # Inductor keys a graph with CPU kernels by the thread count: the launcher's share of the cores (jobs at once:
  # the visible GPUs x JOBS_PER_GPU, or cpu_parallel = 2 without GPUs), so the prewarmed graph is the jobs' own.
  local threads=() gpus at_once=2
  mapfile -t gpus < <(visible_gpus)
  ((${#gpus[@]} == 0)) || at_once=$((${#gpus[@]} * JOBS_PER_GPU))
  [[ -n "${OMP_NUM_THREADS:-}" ]] || threads=("OMP_NUM_THREADS=$(core_share "$at_once")")
  env "${threads[@]}" "$PY" -m diffusion_lab.train "hydra.run.dir=$STUDY_OUT/.prewarm/$name" "${DATA_TRAIN[@]}" "${job[@]}" \
    trainer.max_steps=2 trainer.max_time=null trainer.limit_val_batches=0 final_samples=0 \
    > "$STUDY_OUT/.prewarm/$name.log" 2>&1 ||
    echo "prewarm of $name failed, its jobs compile on their own: $STUDY_OUT/.prewarm/$name.log" >&2
}

# Wait for sweeps started with SWEEPS_AT_ONCE=1 (evaluations need their checkpoints).
wait_sweeps() {
  local pid
  for pid in "${SWEEP_PIDS[@]}"; do wait "$pid" || STATUS=1; done
  SWEEP_PIDS=()
}

# The feature network FID is measured with (Inception is a poor judge of 28x28 grayscale).
ensure_features() {
  wait_sweeps
  [[ "$DRY_RUN" == 1 || -f "$FEATURES" ]] && return 0
  "$PY" -m diffusion_lab.features data=fashion_mnist "out=$FEATURES" "${DATA_TRAIN[@]}" || STATUS=1
}

# queue_eval NAME OVERRIDES...: queue an `evaluate` of every job's last checkpoint under $STUDY_OUT (only those of
# the sweep named EVAL_UNDER when it is set: a sampler that applies to one process only), written to
# <job>/evaluation/NAME (log: <job>/evaluation_NAME.log), each setting scored on SAMPLE_SETS independent sample
# sets; run_queue runs the queue spread over the GPUs.
TASKS=()
queue_eval() {
  local name=$1 under=${EVAL_UNDER:-}
  shift
  [[ -z "$under" ]] || selected "$under" || return 0
  [[ "${LIST_EVALS:-0}" == 1 ]] && { echo "EVALNAME $name"; return 0; }
  [[ -z "$EVALS" || " $EVALS " == *" $name "* ]] || return 0
  set -- "$@" "sample_sets=$SAMPLE_SETS"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "EVAL ${under:+@$under }$(printf '%q ' "$@" "${EVAL_EXTRA[@]}")"
    return 0
  fi
  wait_sweeps
  # every job's checkpoint, not those in hidden folders (.prewarm: two-step runs that only fill the compile cache)
  local ckpt job root=$STUDY_OUT${under:+/$under}
  while IFS= read -r -d '' ckpt; do
    job=$(dirname "$(dirname "$ckpt")")
    local again=()
    if [[ "$RESUME" == 1 ]]; then
      case $(evaluation_state "$job/evaluation/$name") in
        complete) continue ;;
        stopped) again=(resume=true) ;;
      esac
    fi
    # ckpt / out_dir quoted for Hydra: job folders are named by their overrides (they hold '=' and ',').
    TASKS+=("$(printf '%q ' "$PY" -m diffusion_lab.evaluate "ckpt='$ckpt'" "out_dir='$job/evaluation/$name'" \
      "features=$FEATURES" progress=false "${DATA_EVAL[@]}" "$@" "${EVAL_EXTRA[@]}" "${again[@]}") >> $(printf '%q' "$job/evaluation_$name.log") 2>&1")
  done < <(find "$root" \( -name '.*' ! -path "$root" \) -prune -o -path '*/checkpoints/last.ckpt' -print0 | sort -z)
}

# evaluation_state FOLDER: "complete", "stopped" (its table is partial: evaluate continues it) or "none". A folder
# without a table (stopped before evaluate wrote one) is moved to <job>/evaluation/.stopped/<name>-<time>.
evaluation_state() {
  local folder=$1
  if [[ -f "$folder/evaluation.json" ]]; then
    "$PY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["summary"].get("complete") else 1)' \
      "$folder/evaluation.json" && echo complete || echo stopped
    return 0
  fi
  if [[ -e "$folder" ]]; then
    mkdir -p "$(dirname "$folder")/.stopped"
    mv "$folder" "$(dirname "$folder")/.stopped/$(basename "$folder")-$(date +%Y%m%d-%H%M%S)"
  fi
  echo none
}

run_queue() {
  [[ "$DRY_RUN" == 1 ]] && return 0
  local g pids=() workers=$((NUM_GPUS * JOBS_PER_GPU))
  for ((g = 0; g < workers; g++)); do
    (
      export CUDA_VISIBLE_DEVICES=${GPU_IDS[g % ${#GPU_IDS[@]}]}
      # `workers` evaluations at once share the cores for their CPU-side work (metrics, data, BLAS/OpenMP threads)
      [[ -n "${OMP_NUM_THREADS:-}" ]] || export OMP_NUM_THREADS=$(core_share "$workers")
      failed=0
      for ((i = g; i < ${#TASKS[@]}; i += workers)); do
        eval "${TASKS[i]}" || { echo "evaluate failed: ${TASKS[i]}" >&2; failed=1; }
      done
      exit $failed
    ) &
    pids+=($!)
  done
  for g in "${pids[@]}"; do wait "$g" || STATUS=1; done
  TASKS=()
}

# report TITLE [REPORT ARGS...]: the study's report, its raw text files kept in $STUDY_OUT/raw beside it
# (report.md, report_plots/ and raw/ are what to commit: `python -m diffusion_lab.report raw --out .` rebuilds).
report() {
  [[ "$DRY_RUN" == 1 ]] && return 0
  local title=$1
  shift
  "$PY" -m diffusion_lab.report "$STUDY_OUT" --title "$title" --keep-raw "$STUDY_OUT/raw" "$@" || STATUS=1
  if [[ -n "${POOL_WITH:-}" ]]; then
    "$PY" -m diffusion_lab.report "$POOL_WITH" "$STUDY_OUT" --title "$title, pooled with an earlier run" \
      --keep-raw "$STUDY_OUT/pooled/raw" --out "$STUDY_OUT/pooled" "$@" || STATUS=1
  fi
  echo "study folder: $STUDY_OUT"
}
