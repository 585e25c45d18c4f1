"""Hydra launcher plugins of diffusion_lab: ``hydra/launcher=gpu_pool`` runs multirun jobs in parallel, one
subprocess per job with its own GPU(s). See :mod:`.gpu_pool_launcher`."""
