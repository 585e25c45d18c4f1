# Sourced by experiments/common.sh and experiments/all.sh.
# visible_gpus: the GPU ids jobs may use, one per line: the entries of CUDA_VISIBLE_DEVICES when it is set,
# else 0 .. (the GPUs nvidia-smi lists) - 1; nothing on a machine without GPUs.
visible_gpus() {
  local ids=() n i
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=',' read -r -a ids <<< "$CUDA_VISIBLE_DEVICES"
  else
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    for ((i = 0; i < ${n:-0}; i++)); do ids+=("$i"); done
  fi
  ((${#ids[@]})) && printf '%s\n' "${ids[@]}"
  return 0
}
