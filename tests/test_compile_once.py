"""One compilation per run: validation, the EMA swap, checkpoints, sample grids and the final samples do not
compile the network again after training has started (compile_eval=false, the default)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import small_train_cfg
from diffusion_lab.train import train


@pytest.fixture
def eager_backend(monkeypatch):
    """torch.compile with the "eager" backend: Dynamo decides every (re)compilation before any backend runs, so
    the counts are those of inductor, and each compilation costs milliseconds instead of a C++ build."""
    original = torch.nn.Module.compile

    def compile_eagerly(self, *args, **kwargs):
        return original(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _fit(tmp_path, *overrides: str) -> int:
    cfg = small_train_cfg(
        tmp_path / "run",
        "compile=true",
        "trainer.max_steps=12",
        "trainer.val_check_interval=4",  # three validations, each with an EMA swap and a sample grid
        "callbacks.checkpoint.every_n_train_steps=4",
        *overrides,
    )
    train(cfg)
    return int(counters["stats"]["unique_graphs"])


def test_a_fit_with_validation_checkpoints_and_samples_compiles_the_network_once(tmp_path, eager_backend):
    assert _fit(tmp_path) == 1  # a recompilation (a failed guard) would be a second graph


def test_compiling_evaluation_too_adds_graphs_and_the_count_sees_them(tmp_path, eager_backend):
    # The no-grad validation graph and the sampling batch shapes: what compile_eval=false avoids.
    assert _fit(tmp_path, "compile_eval=true") > 1
