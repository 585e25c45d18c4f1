"""Every logger records exactly the run's resolved config: nothing merged on top of it (the DataModule's own
arguments share names with top-level keys: ``data.seed`` vs ``seed``)."""

from __future__ import annotations

import time

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import small_train_cfg, write_fake_idx_root
from diffusion_lab.train import train
from test_wandb import wandb_records

pytestmark = pytest.mark.usefixtures("one_thread")


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def tensorboard_hparams(log_dir) -> dict:
    """The hparams of TensorBoard's event file (what its HPARAMS tab shows), flattened with '/'."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hp = data.session_start_info.hparams
            return {k: getattr(v, v.WhichOneof("kind")) for k, v in hp.items()}
    raise AssertionError(f"no hparams in the event files of {log_dir}")


def wandb_config(run_root) -> dict:
    (run_dir,) = run_root.glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    deadline = time.time() + 60
    while "exit" not in {r.WhichOneof("record_type") for r in wandb_records(log)} and time.time() < deadline:
        time.sleep(0.5)
    config = {}
    for record in wandb_records(log):
        items = []
        if record.WhichOneof("record_type") == "config":
            items = record.config.update
        elif record.WhichOneof("record_type") == "run":
            items = record.run.config.update
        for item in items:
            config[item.key or "/".join(item.nested_key)] = yaml.safe_load(item.value_json)
    config.pop("_wandb", None)
    return config


def test_every_logger_records_the_resolved_config(tmp_path, wandb_offline):
    import wandb

    data = write_fake_idx_root(tmp_path / "data", n_train=40, n_test=8)
    cfg = small_train_cfg(
        tmp_path / "run",
        "logger=[wandb,tensorboard]",
        "seed=7",  # the DataModule has a `seed` argument of its own (default 0)
        "data.batch_size=8",
        f"data.root={data}",
        "data.val_size=8",
        "trainer.max_steps=1",
        "final_samples=0",
    )
    expected = OmegaConf.to_container(cfg, resolve=True)
    assert expected["seed"] == 7 and "seed" not in expected["data"]
    try:
        train(cfg)
    finally:
        wandb.finish()
    run = tmp_path / "run"
    assert yaml.safe_load((run / "csv" / "hparams.yaml").read_text()) == expected
    assert yaml.safe_load((run / "tensorboard" / "hparams.yaml").read_text()) == expected
    events = tensorboard_hparams(run / "tensorboard")
    scalars = {k: v for k, v in flatten(expected).items() if isinstance(v, int | float | str | bool)}
    assert {k: events.get(k) for k in scalars} == scalars
    assert set(events) <= set(flatten(expected))
    assert wandb_config(run / "wandb") == expected
