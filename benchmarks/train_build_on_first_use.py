"""``python -m diffusion_lab.train`` with ``compile=capture`` leaving the fused norm op's kernels to be built on first
use, one after another inside the capture, as before ``nets.fused_norm.build_kernels_at_once``: the baseline that
the startup suite's ``capture`` is compared with, side by side, as ``capture_first_use``. Benchmark-only (the
package has no switch for it).

    python benchmarks/train_build_on_first_use.py experiment=fmnist_fast ...
"""

from __future__ import annotations


def build_on_first_use() -> None:
    """Make no network get a builder, for the training module imported after this call (it imports the name)."""
    from diffusion_lab.nets import fused_norm

    fused_norm.kernel_builder = lambda net: None


if __name__ == "__main__":
    build_on_first_use()
    from diffusion_lab.train import main

    main()
