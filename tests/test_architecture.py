"""docs/ARCHITECTURE.md checked as a newcomer would use it: a schedule, a weighting, a sampler, a network and a
dataset of one's own, added only through the documented extension points, train and sample; and the layers hold
(nothing low imports anything high)."""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import diffusion_lab
from conftest import CPU_ONLY, SMALL_RUN, compose_train, dedupe_overrides
from diffusion_lab.build import load_checkpoint
from diffusion_lab.samplers import SAMPLERS
from diffusion_lab.sampling import choose_sampler
from diffusion_lab.train import train

# A user's own package: each part subclasses the documented base class.
USER_PARTS = """
import math

import torch
from torch import nn

from diffusion_lab.data import DiffusionDataModule
from diffusion_lab.data.datasets import PointDataset
from diffusion_lab.diffusion.schedules import NoiseSchedule
from diffusion_lab.diffusion.weightings import Weighting
from diffusion_lab.samplers import DDIMSampler


class GeometricSchedule(NoiseSchedule):
    name = "geometric"

    def __init__(self, num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
        super().__init__(torch.logspace(math.log10(beta_start), math.log10(beta_end), num_timesteps,
                                        dtype=torch.float64))


class HalfWeighting(Weighting):
    name = "half"

    def __call__(self, diffusion, t):
        return torch.full(t.shape, 0.5, device=t.device)


class StochasticDDIMSampler(DDIMSampler):
    name = "stochastic_ddim"

    def __init__(self, steps=None, eta=1.0, clip_denoised=False):
        super().__init__(steps=steps, eta=eta, clip_denoised=clip_denoised)


class TinyNet(nn.Module):
    def __init__(self, in_dim, out_dim, hidden=16, num_classes=None):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self, x, t, y=None):
        return self.body(torch.cat([x, t.float()[:, None] / 1000], dim=1))


class RingDataModule(DiffusionDataModule):
    NAMES = ("ring",)
    is_image = False
    data_shape = (2,)
    num_classes = None

    def build(self, split):
        n = 64 if split == "train" else 16
        angle = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
        points = torch.stack([angle.cos(), angle.sin()], dim=1) * 0.8
        return PointDataset(points, torch.zeros(n, dtype=torch.long))
"""

# One YAML per part, in a config folder of the user's own, added to Hydra's search path.
USER_CONFIGS = {
    "schedule/geometric.yaml": "_target_: user_parts.GeometricSchedule\nnum_timesteps: 1000\n",
    "weighting/half.yaml": "_target_: user_parts.HalfWeighting\n",
    "sampler/stochastic_ddim.yaml": "_target_: user_parts.StochasticDDIMSampler\nsteps: 10\n",
    "model/tiny.yaml": "_target_: user_parts.TinyNet\nhidden: 16\n",
    "data/ring.yaml": "_target_: user_parts.RingDataModule\nname: ring\nbatch_size: 16\neval_batch_size: 16\n",
}


def test_a_newcomers_parts_train_and_sample_through_the_documented_extension_points(tmp_path, monkeypatch):
    package = tmp_path / "user"
    package.mkdir()
    (package / "user_parts.py").write_text(textwrap.dedent(USER_PARTS))
    monkeypatch.syspath_prepend(str(package))
    for name, text in USER_CONFIGS.items():
        (tmp_path / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / name).write_text(text)
    overrides = [*CPU_ONLY, "experiment=toy2d", *SMALL_RUN, f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    overrides += [
        "schedule=geometric",
        "weighting=half",
        "sampler=stochastic_ddim",
        "model=tiny",
        "data=ring",
    ]
    overrides += ["trainer.max_steps=3", "trainer.val_check_interval=3", "final_samples=0"]
    cfg = compose_train(dedupe_overrides(overrides), tmp_path / "run")

    result = train(cfg)

    parts, spec, _ = load_checkpoint(result["checkpoint"])
    import user_parts

    assert isinstance(parts.diffusion.schedule, user_parts.GeometricSchedule)
    assert isinstance(parts.loss.weighting, user_parts.HalfWeighting)
    assert isinstance(parts.net, user_parts.TinyNet) and isinstance(
        parts.sampler, user_parts.StochasticDDIMSampler
    )
    assert spec["data"]["_target_"] == "user_parts.RingDataModule" and result["global_step"] == 3
    # sampling by name (`python -m diffusion_lab.sample sampler=NAME`) goes through the SAMPLERS registry
    monkeypatch.setitem(SAMPLERS, "stochastic_ddim", user_parts.StochasticDDIMSampler)
    sampler = choose_sampler(spec["sampler"], "stochastic_ddim", steps=4)
    x = sampler.sample(parts.diffusion, parts.net, (8, 2), generator=torch.Generator().manual_seed(0))
    assert isinstance(sampler, user_parts.StochasticDDIMSampler) and x.shape == (8, 2)
    assert torch.isfinite(x).all()
    sys.modules.pop("user_parts", None)


PACKAGE = Path(diffusion_lab.__file__).parent
LOW_LAYERS = ("diffusion", "samplers", "nets")
# What a low layer must not import: the composition, the commands and everything that sits on them.
HIGH = (
    "module", "train", "build", "callbacks", "reporting", "metrics", "cli", "sample", "evaluate", "visualize",
    "report", "features", "bench", "resume", "export", "import_model", "interop",
)  # fmt: skip


def imported_modules(source: str, package: tuple[str, ...]) -> set[str]:
    """The diffusion_lab modules a file of the sub-package ``package`` imports, as dotted names relative to
    diffusion_lab."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join(["diffusion_lab", *parent, *([base] if base else [])])
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m.removeprefix("diffusion_lab.") for m in found if m.startswith("diffusion_lab")}


@pytest.mark.parametrize("layer", LOW_LAYERS)
def test_low_layers_import_nothing_high(layer):
    offending = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for name in imported_modules(path.read_text(), path.relative_to(PACKAGE).parent.parts)
        if name.split(".")[0] in HIGH
    }
    assert not offending


def test_the_layer_check_sees_a_high_import():
    """The check itself: relative and absolute imports of high modules from diffusion/ are seen."""
    source = (
        "from ..module import DiffusionModule\nfrom .. import train\nimport diffusion_lab.reporting.plots\n"
    )
    found = imported_modules(source, ("diffusion",))
    assert {"module", "train", "reporting.plots"} <= found
