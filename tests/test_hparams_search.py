"""hparams_search=fmnist_optuna: an Optuna study whose trials are normal runs returning `optimized_metric`."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from conftest import write_fake_idx_root
from diffusion_lab.errors import UserError
from diffusion_lab.sweeper_check import SweeperSettingsCheck
from diffusion_lab.train import objective
from sweeps import job_dirs, run_report, run_sweep, tiny_run


def test_objective_returns_the_named_metric():
    cfg = OmegaConf.create({"optimized_metric": "metrics/fd_classifier"})
    assert objective(cfg, {"val/loss": 0.5, "metrics/fd_classifier": 12.0}) == 12.0
    assert objective(OmegaConf.create({"optimized_metric": None}), {"val/loss": 0.5}) == 0.5


def test_objective_turns_nan_into_inf_and_names_the_recorded_metrics():
    cfg = OmegaConf.create({"optimized_metric": "val/loss"})
    assert objective(cfg, {"val/loss": math.nan}) == math.inf
    with pytest.raises(UserError, match=r"optimized_metric=val/bpd was not recorded.*train/loss, val/loss$"):
        objective(OmegaConf.create({"optimized_metric": "val/bpd"}), {"val/loss": 1.0, "train/loss": 2.0})


@pytest.mark.slow
def test_optuna_search_through_gpu_pool_reports_the_best_trial(tmp_path):
    """Five trials of 3 steps, two at a time through the default gpu_pool launcher; a trial with T=0 is refused
    at start-up and the study goes on. The sweeper gets each run's val/loss: its best trial is the completed
    trial with the lowest returned value, and the report shows it."""
    data = write_fake_idx_root(tmp_path / "data", n_train=48, n_test=8)
    proc, sweep = run_sweep(
        tmp_path,
        "hparams_search=fmnist_optuna",
        *tiny_run(
            f"data.root={data}",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "hydra.sweeper.n_trials=5",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
            "schedule.num_timesteps=choice(0,50)",
        ),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = job_dirs(sweep)
    assert len(trials) == 5
    returned, failed = {}, []
    for trial in trials:
        cfg = OmegaConf.load(trial / ".hydra" / "config.yaml")
        result = trial / ".hydra" / "job_return.json"
        if cfg.schedule.num_timesteps == 0:
            failed.append(trial)
            assert not result.exists()
            continue
        value = json.loads(result.read_text())["return_value"]
        assert isinstance(value, float) and cfg.optimized_metric == "val/loss"
        returned[trial] = (value, cfg)
    assert failed and returned  # the seeded sampler draws both

    best = OmegaConf.load(sweep / "optimization_results.yaml")
    best_trial = min(returned, key=lambda t: returned[t][0])
    value, cfg = returned[best_trial]
    assert best.best_value == pytest.approx(value, rel=1e-6)
    assert best.best_params["optimizer.lr"] == pytest.approx(cfg.optimizer.lr)
    assert best.best_params["weighting.gamma"] == pytest.approx(cfg.weighting.gamma)
    assert best.best_params["callbacks.ema.decay"] == cfg.callbacks.ema.decay

    report = run_report(sweep)
    assert report.returncode == 0, report.stderr
    text = (sweep / "report.md").read_text()
    section = text.split("## Hyperparameter search: best trial", 1)[1].split("\n## ", 1)[0]
    assert f"| best value | **{value:.6g} ★** |" in section
    assert f"| optimizer.lr | {cfg.optimizer.lr:.6g} |" in section


@pytest.mark.parametrize(
    ("sweeper", "refused"),
    [
        ({"n_trials": 0, "n_jobs": 2}, "hydra.sweeper.n_trials=0 is invalid: it must be an integer >= 1"),
        ({"n_trials": 20, "n_jobs": 0}, "hydra.sweeper.n_jobs=0 is invalid: it must be an integer >= 1"),
        ({"n_trials": 20, "n_jobs": 2}, None),
        (
            {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "max_batch_size": None},
            None,
        ),
    ],
)
def test_an_optuna_sweep_that_would_run_no_trial_is_refused_before_it_starts(sweeper, refused, capsys):
    config = OmegaConf.create({"hydra": {"sweeper": sweeper}})
    if refused is None:
        SweeperSettingsCheck().on_multirun_start(config)
        return
    with pytest.raises(SystemExit) as exit_info:
        SweeperSettingsCheck().on_multirun_start(config)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {refused}"]
