"""The report reads every logger a job can use: CSV, TensorBoard event files; a W&B-only run gets a note."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import small_train_cfg, write_fake_idx_root
from diffusion_lab.report import write_report
from diffusion_lab.reporting.runs import find_jobs
from diffusion_lab.train import train
from synthetic_sweep import write_job

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_tensorboard_only_run_is_reported_with_its_metrics(tmp_path):
    data = write_fake_idx_root(tmp_path / "data", n_train=48, n_test=16)
    job_dir = tmp_path / "sweep" / "0_logger=tensorboard"
    overrides = ["logger=tensorboard", "trainer.max_steps=4", "trainer.val_check_interval=2"]
    cfg = small_train_cfg(
        job_dir, *overrides, f"data.root={data}", "data.val_size=8", "trainer.log_every_n_steps=1"
    )
    result = train(cfg)
    (job_dir / ".hydra").mkdir(exist_ok=True)  # train() already wrote the run's config record there
    OmegaConf.save(OmegaConf.create(overrides), job_dir / ".hydra" / "overrides.yaml")
    OmegaConf.save(cfg, job_dir / ".hydra" / "config.yaml")
    assert not list(job_dir.rglob("metrics.csv"))

    (job,) = find_jobs(tmp_path / "sweep")
    assert job.value("val_loss") == pytest.approx(result["metrics"]["val/loss"], rel=1e-6)
    assert job.last_step == 3 and not job.incomplete
    assert [s for s, _ in job.series["val/loss"]] == [1, 3]
    write_report(tmp_path / "sweep")
    md = (tmp_path / "sweep" / "report.md").read_text()
    row = md.split("\n\n| # |", 1)[1].splitlines()[2]
    assert f"{result['metrics']['val/loss']:.4g}" in row and "| 3 |" in row
    assert (tmp_path / "sweep" / "report_plots" / "val_loss_over_training.png").is_file()


def test_a_wandb_only_offline_run_gets_a_note(tmp_path):
    job = write_job(tmp_path / "sweep", 0, ["logger=wandb"], {})
    (job / "csv" / "metrics.csv").unlink()
    (job / "wandb" / "offline-run-20260101_000000-abc").mkdir(parents=True)
    write_report(tmp_path / "sweep")
    md = (tmp_path / "sweep" / "report.md").read_text()
    notes = md.split("## Notes\n", 1)[1]
    assert "offline-run-20260101_000000-abc" in notes and "does not read" in notes
