# Source on the GPU machine: puts the carried wheels (hydra, omegaconf, torch-fidelity, diffusers, ...) and src/
# on the path, using the machine's own torch. Usage: source benchmarks/gpu_env.sh
set -e
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export DIFFUSION_LAB_ROOT=${DIFFUSION_LAB_ROOT:-/tmp/dl}
set +e
