"""W&B logging (offline): metrics and sample images reach the run; sweep jobs share a group, named by overrides."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from conftest import compose_train, small_train_cfg, write_fake_idx_root
from diffusion_lab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (W&B's LevelDB-style log: a 7-byte file header,
    32 KiB blocks of records, each a 7-byte header (crc32, length, type) and a chunk; FULL=1, FIRST=2,
    MIDDLE=3, LAST=4). wandb's own reader (wandb.sdk.internal.datastore) is gone from recent releases."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    block, pos, chunks = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += block - pos % block
            continue
        if pos + 7 + length > len(data):  # still being written
            break
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            yield record
            chunks = b""


def test_offline_run_has_metrics_and_sample_image(tmp_path, wandb_offline):
    import wandb

    data = write_fake_idx_root(tmp_path / "data", n_train=48, n_test=16)
    cfg = small_train_cfg(
        tmp_path / "run",
        "logger=wandb",
        "schedule=cosine",
        f"data.root={data}",
        "data.val_size=8",
        "schedule.num_timesteps=20",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
    )
    assert cfg.logger.wandb.group == cfg.task_name and cfg.logger.wandb.job_type == "train"
    try:
        train(cfg)
    finally:
        wandb.finish()
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    # The W&B service process writes the file: wait for its exit record.
    deadline = time.time() + 60
    while "exit" not in {r.WhichOneof("record_type") for r in wandb_records(log)} and time.time() < deadline:
        time.sleep(0.5)
    history, summary, run = set(), {}, None
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "summary":
            summary.update(
                {item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update}
            )
        elif kind == "run":
            run = record.run
    assert {
        "train/loss",
        "val/loss",
        "val/bpd_one_t_mc",
        "train_bucket/loss_t0",
        "samples/filenames",
    } <= history
    assert "train/loss" in summary and "val/loss" in summary
    images = list((run_dir / "files" / "media" / "images").glob("samples_*.png"))
    assert images and images[0].stat().st_size > 0 and images[0].read_bytes()[:4] == b"\x89PNG"
    assert images[0].name in summary["samples/filenames"]
    assert run.run_group == cfg.task_name and run.job_type == "train" and run.project == "diffusion_lab"
    assert run.display_name == cfg.logger.wandb.name and "schedule=cosine" in run.display_name


def test_sweep_jobs_share_a_group_and_are_named_by_their_overrides(monkeypatch):
    single = compose_train(["logger=wandb"])  # no overrides that name the run: falls back to the task name
    assert single.logger.wandb.name == single.task_name and single.logger.wandb.group == single.task_name
    # A gpu_pool job: the launcher tells it its sweep directory.
    monkeypatch.setenv("DIFFUSION_LAB_SWEEP_DIR", "/x/outputs/train/multirun/2024-05-01_12-00-00")
    job = compose_train(["logger=wandb", "schedule=cosine", "loss=hybrid", "variance=learned_range"])
    assert job.logger.wandb.group == f"{job.task_name}-2024-05-01_12-00-00"
    assert job.logger.wandb.name == "loss=hybrid,schedule=cosine,variance=learned_range"
