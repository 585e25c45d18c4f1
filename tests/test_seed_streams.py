"""Seeds pair cells: with the same seed, cells that differ only in schedule or weighting start from the same
weights, see the same batches in the same order and draw the same timesteps."""

from __future__ import annotations

import hashlib

import lightning as L
import pytest
import torch

from conftest import small_train_cfg, write_fake_idx_root
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

RECORDS: list[dict] = []


class Probe(L.Callback):
    """Records a digest of the initial weights, of every training batch and of every step's timesteps."""

    def on_train_start(self, trainer, pl_module) -> None:
        RECORDS.append({"init": _digest(*pl_module.net.state_dict().values()), "batches": [], "t": []})
        sample = pl_module.timesteps.sample

        def recording_sample(*args, **kwargs):
            t, weights = sample(*args, **kwargs)
            RECORDS[-1]["t"].append(t.tolist())
            return t, weights

        pl_module.timesteps.sample = recording_sample

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        RECORDS[-1]["batches"].append(_digest(batch[0] if isinstance(batch, list | tuple) else batch))


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _run(tmp_path, data, name: str, *overrides: str) -> dict:
    cfg = small_train_cfg(
        tmp_path / name,
        *overrides,
        f"data.root={data}",
        "trainer.max_steps=8",  # two epochs of 4 batches: the second epoch's order too
        "trainer.val_check_interval=4",
        "+callbacks.probe._target_=test_seed_streams.Probe",
    )
    RECORDS.clear()
    train(cfg)
    return RECORDS[-1]


@pytest.mark.slow
def test_same_seed_same_init_data_order_and_timesteps_across_cells(tmp_path):
    data = write_fake_idx_root(tmp_path / "data", n_train=80, n_test=16)
    runs = {
        name: _run(tmp_path, data, name, *overrides)
        for name, overrides in {
            "linear": ["seed=3", "schedule=linear"],
            "cosine": ["seed=3", "schedule=cosine"],
            "min_snr": ["seed=3", "schedule=cosine", "weighting=min_snr"],
            "other_seed": ["seed=4", "schedule=linear"],
        }.items()
    }
    base = runs["linear"]
    assert len(base["batches"]) == 8 and len(set(base["batches"][:4])) == 4
    assert base["batches"][:4] != base["batches"][4:]  # reshuffled for the second epoch
    for name in ("cosine", "min_snr"):
        assert runs[name] == base, name
    other = runs["other_seed"]
    assert other["init"] != base["init"] and other["batches"] != base["batches"] and other["t"] != base["t"]
