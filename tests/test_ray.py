"""The Ray launcher (``hydra/launcher=ray_cpu`` / ``ray_gpu``, the ``ray`` extra): a sweep through a local Ray
instance that the sweep starts and stops."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from diffusion_lab.train import CONFIG_DIR
from sweeps import job_dirs, run_sweep, tiny_run

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra: pip install -e '.[ray]'")


def test_ray_launchers_ask_for_the_jobs_resources():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        gpu = compose(
            "train", overrides=["hydra/launcher=ray_gpu", "trainer.devices=2"], return_hydra_config=True
        )
        cpu = compose("train", overrides=["hydra/launcher=ray_cpu"], return_hydra_config=True)
    assert gpu.hydra.launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert OmegaConf.to_container(gpu.hydra.launcher.ray.remote, resolve=True) == {
        "num_cpus": 4,
        "num_gpus": 2,
        "max_calls": 1,
    }
    assert cpu.hydra.launcher.ray.remote.num_gpus == 0 and cpu.hydra.launcher.ray.remote.num_cpus == 1
    assert cpu.hydra.launcher.ray.init.address is None


@pytest.mark.slow
def test_cpu_sweep_through_a_local_ray_instance(tmp_path):
    proc, sweep = run_sweep(
        tmp_path,
        *tiny_run(
            "hydra/launcher=ray_cpu",
            "hydra.launcher.ray.init.num_cpus=2",
            "+hydra.launcher.ray.init.include_dashboard=false",
            "schedule=linear,cosine",
            "data=digits",
            "trainer.max_steps=6",
            "trainer.val_check_interval=3",
            # Ray names a job's folder by all its overrides, which may be too long for a folder name.
            "hydra.sweep.subdir=${hydra.job.num}_${schedule._target_}",
        ),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Started a local Ray instance" in proc.stderr + proc.stdout
    runs = job_dirs(sweep)
    assert [r.name.split(".")[-1] for r in runs] == ["LinearSchedule", "CosineSchedule"]
    for run in runs:
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
        assert ckpt["global_step"] == 6 and (run / "samples" / "final.png").is_file()
    # Each job ran in a Ray worker process, not in the sweep's own.
    assert "(_run_job pid=" in proc.stdout + proc.stderr
