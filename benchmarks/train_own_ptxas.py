"""``python -m diffusion_lab.train`` with Triton left on its own ptxas until inductor first builds in-process, as
training ran before ``compile_policy.use_torch_ptxas``: the baseline that the startup suite's ``fused_auto``
is compared with, side by side, as ``fused_auto_own_ptxas``. Benchmark-only (the package has no switch for it).

    python benchmarks/train_own_ptxas.py experiment=fmnist_fast ...
"""

from __future__ import annotations


def leave_ptxas_alone() -> None:
    """Make ``use_torch_ptxas`` a no-op for the training imported after this call (it imports the name)."""
    from diffusion_lab import compile_policy

    compile_policy.use_torch_ptxas = lambda: None


if __name__ == "__main__":
    leave_ptxas_alone()
    from diffusion_lab.train import main

    main()
