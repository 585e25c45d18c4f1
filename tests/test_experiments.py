"""experiments/*.sh: valid bash; every job of every study sweep composes and builds, the grid is covered, each
excluded cell is one the framework refuses; every evaluation's sampler settings are valid. No GPU, no training:
the scripts' DRY_RUN=1 mode prints what they would run."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import compose_train
from diffusion_lab.build import build_parts, make_spec
from diffusion_lab.process_parts import check_applies
from diffusion_lab.sampling import choose_sampler
from diffusion_lab.train import CONFIG_DIR

REPO_ROOT = Path(CONFIG_DIR).parent

EXPERIMENTS = REPO_ROOT / "experiments"
STUDIES = sorted(p.stem for p in EXPERIMENTS.glob("*.sh") if p.name not in ("common.sh", "all.sh"))
FMNIST_SHAPE = (1, 28, 28)


def test_there_are_studies():
    assert {"ddpm_table2", "iddpm", "ddim_table1", "weightings", "formulations"} <= set(STUDIES)


@pytest.mark.parametrize("script", sorted(EXPERIMENTS.glob("*.sh")), ids=lambda p: p.name)
def test_script_is_valid_bash(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if script.name != "common.sh":
        assert os.access(script, os.X_OK), f"chmod +x {script}"
    if script.stem in STUDIES:
        assert "Expected finding:" in script.read_text()


def dry_run(study: str, **extra_env: str) -> dict[str, list]:
    """The study's GRID / EXCLUDE / SWEEP / EVAL lines as override lists; ``SWEEP@`` holds each sweep's name and
    ``EVAL@`` the sweep each evaluation is restricted to (None: every checkpoint)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_ROOT", "STUDY_OUT", "EVAL_EXTRA")}
    env.update(DRY_RUN="1", CUDA_VISIBLE_DEVICES="0,1", **extra_env)
    proc = subprocess.run(
        ["bash", str(EXPERIMENTS / f"{study}.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines: dict[str, list] = {
        k: [] for k in ("GRID", "EXCLUDE", "PREWARM", "SWEEP", "EVAL", "SWEEP@", "EVAL@")
    }
    for line in proc.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        assert kind in ("GRID", "EXCLUDE", "PREWARM", "SWEEP", "EVAL"), line
        words = shlex.split(rest)
        tag = words.pop(0)[1:] if words and words[0].startswith("@") else None
        lines[kind].append(words)
        if kind in ("SWEEP", "EVAL"):
            lines[f"{kind}@"].append(tag)
    assert all(lines["SWEEP@"]), "every SWEEP line names its sweep"
    return lines


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of a multirun, as Hydra's BasicSweeper splits it (hydra.* overrides dropped)."""
    task = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]
    parsed = OverridesParser.create().parse_overrides(task)
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return batch


def as_dict(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides if "=" in o)  # a deletion (~schedule) sets nothing


def build(overrides: list[str]):
    cfg = compose_train(overrides, output_dir="/nonexistent")
    return cfg, build_parts(make_spec(cfg, FMNIST_SHAPE, None))


def but_the_seed(job: list[str]) -> tuple[str, ...]:
    """A job's overrides less its seed: the seeds of one cell build the same parts (the seed sets weights only)."""
    return tuple(o for o in job if not o.startswith("seed="))


@pytest.mark.parametrize("study", STUDIES)
def test_study_sweeps_compose_build_and_cover_the_grid(study):
    lines = dry_run(study)
    assert lines["SWEEP"], f"{study} runs no sweep"
    jobs = [job for sweep in lines["SWEEP"] for job in expand(sweep)]
    built = set()
    for job in jobs:
        # Another seed of a built cell composes, and builds as that one did.
        if but_the_seed(job) in built:
            assert compose_train(job, output_dir="/nonexistent").data.name == "fashion_mnist"
            continue
        cfg, parts = build(job)  # raises if the framework would refuse the job at start-up
        assert cfg.data.name == "fashion_mnist" and parts.net is not None
        built.add(but_the_seed(job))
    # The grid: each cell run by exactly one job, or excluded (and then refused by the framework).
    for grid in lines["GRID"]:
        factors = [(o.split("=", 1)[0], o.split("=", 1)[1].split(",")) for o in grid]
        excluded = [as_dict(e) for e in lines["EXCLUDE"]]
        for values in itertools.product(*[v for _, v in factors]):
            cell = dict(zip([k for k, _ in factors], values))
            runs = [job for job in jobs if all(as_dict(job).get(k) == v for k, v in cell.items())]
            if any(all(cell.get(k) == v for k, v in e.items()) for e in excluded):
                assert not runs, f"{study}: excluded cell {cell} is run"
                refused = {**as_dict(expand(lines["SWEEP"][0])[0]), **cell}
                with pytest.raises(ValueError):
                    build([f"{k}={v}" for k, v in refused.items()])
            else:  # once per seed, every seed the same budget: equal steps, or equal time with no step limit
                seeds = sorted(as_dict(job)["seed"] for job in runs)
                assert seeds == ["1", "2", "3"], f"{study}: cell {cell} run with seeds {seeds}"
                budgets = {(as_dict(j)["trainer.max_steps"], as_dict(j)["trainer.max_time"]) for j in runs}
                assert len(budgets) == 1, f"{study}: unequal budgets {budgets}"
                steps, time = budgets.pop()
                assert time == "null" or steps == "-1", f"{study}: a time guard on a step budget"


@pytest.mark.parametrize("study", STUDIES)
def test_study_evaluations_are_valid(study):
    lines = dry_run(study, EVAL_EXTRA="compile=true batch_size=1000")
    assert lines["EVAL"], f"{study} evaluates nothing"
    assert all(
        e[-2:] == ["compile=true", "batch_size=1000"] for e in lines["EVAL"]
    )  # EVAL_EXTRA reaches each
    cells = {  # one job per cell and sweep: its seeds train the same parts with the same sampler
        (name, but_the_seed(job)): job
        for name, sweep in zip(lines["SWEEP@"], lines["SWEEP"])
        for job in expand(sweep)
    }
    trained = [(name, *build(job)) for (name, _), job in cells.items()]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for under, overrides in zip(lines["EVAL@"], lines["EVAL"]):
            cfg = compose("evaluate", overrides=[*overrides, "ckpt=x.ckpt", "features=x.pt"])
            assert cfg.compile is True and cfg.batch_size == 1000
            assert set(cfg.metrics) <= {"fid", "kid", "pr", "is", "bpd"}
            if "bpd" in cfg.metrics:
                assert all(parts.diffusion.has_likelihood for _, _, parts in trained)
            # an evaluation restricted to a sweep (EVAL_UNDER) scores only that sweep's checkpoints
            models = [(c, parts) for name, c, parts in trained if under is None or name == under]
            assert models, f"{study}: an evaluation under {under!r} has no checkpoint to score"
            for (train_cfg, parts), s in itertools.product(models, list(cfg.steps)):
                if cfg.sampler is None:  # the trained sampler
                    sampler = choose_sampler(OmegaConf.to_container(train_cfg.sampler), None, s, cfg.eta)
                else:  # sampler=NAME: conf/sampler/<name>.yaml, as evaluate does
                    sampler = choose_sampler(OmegaConf.to_container(cfg.sampler), None, s, cfg.eta)
                check_applies(type(sampler), "sampler", parts.diffusion)  # as evaluate refuses it
                if s is not None:  # Heun (EDM, flow): 2s - 1 evaluations for s steps
                    per_step = 2 * s - 1 if getattr(sampler, "second_order", False) else s
                    assert sampler.num_evaluations(parts.diffusion) == per_step


def test_ddim_study_grid_matches_the_paper_table():
    """Every row of the paper's Table 1 (η = 0, 0.5, 1 and σ̂: ancestral sampling with β_t) at every step count
    (and η = 0 unclipped, as the paper sampled, at 1000),
    queued so that η = 1, a repeat of the DDPM row, comes last and the 1000-step rows after the few-step ones."""
    evals = [as_dict(e) for e in dry_run("ddim_table1")["EVAL"]]
    steps: dict[tuple, set[int]] = {}
    order = []
    for e in evals:
        key = (e["sampler"], e.get("eta"), e.get("sampling_variance"), e.get("sampler.clip_denoised"))
        steps.setdefault(key, set()).update(int(s) for s in e["steps"].strip("[]").split(","))
        order.append((key, e["steps"] == "[1000]"))
    assert set(steps) == {
        ("ddpm", None, None, None),
        ("ddim", "0.0", None, None),
        ("ddim", "0.5", None, None),
        ("ddim", "1.0", None, None),
        ("ddpm", None, "fixed_large", None),
        ("ddim", "0.0", None, "false"),  # the paper's unclipped DDIM, at 1000 steps
    }
    unclipped = ("ddim", "0.0", None, "false")
    assert steps.pop(unclipped) == {1000}
    assert all(s == {10, 20, 50, 100, 1000} for s in steps.values())
    eta1_few = [i for i, (key, full) in enumerate(order) if key[1] == "1.0" and not full]
    others_few = [i for i, (key, full) in enumerate(order) if key[1] != "1.0" and not full]
    full = [i for i, (_, is_full) in enumerate(order) if is_full]
    assert max(others_few) < min(full) and max(full) < min(eta1_few)


def test_iddpm_scores_50_steps_first_and_1000_steps_on_their_own_sample_count():
    """The 50-step rows (with bits/dim) are queued before the 20x dearer 1000-step ones, which take FID_N_1000
    samples (FID_N by default) and are left out with FID_N_1000=0."""
    evals = [as_dict(e) for e in dry_run("iddpm", FID_N="10000", FID_N_1000="2000")["EVAL"]]
    assert [(e["steps"], e["n"], e["metrics"]) for e in evals] == [
        ("[50]", "10000", "[fid,kid,bpd]"),
        ("[1000]", "2000", "[fid,kid]"),
    ]
    assert [as_dict(e)["n"] for e in dry_run("iddpm", FID_N="5000")["EVAL"]] == ["5000", "5000"]
    assert [as_dict(e)["steps"] for e in dry_run("iddpm", FID_N_1000="0")["EVAL"]] == ["[50]"]


def test_iddpm_trains_both_schedules_unless_told_one():
    schedules = [as_dict(s)["schedule"] for s in dry_run("iddpm")["SWEEP"]]
    assert schedules == ["linear,cosine"] * 3
    lines = dry_run("iddpm", SCHEDULES="cosine", SWEEPS="simple hybrid")
    assert [(as_dict(s)["schedule"], as_dict(s)["loss"]) for s in lines["SWEEP"]] == [
        ("cosine", "simple"),
        ("cosine", "hybrid"),
    ]


def test_ddpm_table2_scores_at_1000_steps_unless_told_fewer():
    (paper,) = [as_dict(e) for e in dry_run("ddpm_table2")["EVAL"]]
    assert (paper["sampler"], paper["steps"], paper["metrics"]) == ("ddpm", "[1000]", "[fid,kid,bpd]")
    (short,) = [as_dict(e) for e in dry_run("ddpm_table2", EVAL_STEPS="100")["EVAL"]]
    assert short["steps"] == "[100]"


def test_ddpm_table2_trains_the_papers_predictions_unless_told_others():
    """eps and the posterior mean (the paper's two rows) by default; PREDICTIONS re-runs the eps / x0 variant."""
    sweeps = [as_dict(s)["prediction"] for s in dry_run("ddpm_table2")["SWEEP"]]
    assert sweeps == ["eps,mean", "eps,mean"]
    assert [as_dict(s)["prediction"] for s in dry_run("ddpm_table2", PREDICTIONS="eps,x0")["SWEEP"]] == [
        "eps,x0"
    ] * 2


def test_ddpm_table2_trains_on_the_papers_linear_schedule_unless_told_another():
    # experiment=fmnist's cosine schedule would otherwise decide it, as no override names the schedule
    assert [as_dict(s)["schedule"] for s in dry_run("ddpm_table2")["SWEEP"]] == ["linear"] * 2
    assert [as_dict(s)["schedule"] for s in dry_run("ddpm_table2", SCHEDULE="cosine")["SWEEP"]] == [
        "cosine"
    ] * 2


def test_formulations_compare_at_equal_network_evaluations():
    """Every formulation is scored at about 10, 20, 35, 50 and 100 network evaluations (Heun's 2n - 1 for n
    steps: 9, 19, 35, 49, 99), and every cell of the study gets at least one sampler."""
    lines = dry_run("formulations")
    trained = {name: build(expand(sweep)[0])[1] for name, sweep in zip(lines["SWEEP@"], lines["SWEEP"])}
    assert set(trained) == {"ddpm_eps", "ddpm_v", "edm", "flow"} == set(lines["EVAL@"])
    for under, overrides in zip(lines["EVAL@"], lines["EVAL"]):
        e = as_dict(overrides)
        steps = [int(v) for v in e["steps"].strip("[]").split(",")]
        process = trained[under].diffusion
        samplers = [choose_sampler({}, e["sampler"], s) for s in steps]
        evaluations = [sampler.num_evaluations(process) for sampler in samplers]
        assert len(evaluations) == 5, e
        assert all(abs(n - want) <= 1 for n, want in zip(evaluations, (10, 20, 35, 50, 100))), (
            e,
            evaluations,
        )
        assert all(process.name in sampler.processes for sampler in samplers)


def test_latent_and_pixel_models_get_the_same_minutes_and_the_latent_ones_the_studys_autoencoder():
    lines = dry_run("latent_vs_pixel", STUDY_OUT="/studies/lvp")
    sweeps = dict(zip(lines["SWEEP@"], lines["SWEEP"]))
    assert list(sweeps) == ["autoencoder", "pixel", "latent"]  # the first stage before the models that use it
    (autoencoder,) = expand(sweeps["autoencoder"])
    assert compose_train(autoencoder, output_dir="/nonexistent").task.name == "autoencoder"
    assert as_dict(autoencoder)["seed"] == "1"  # trained once, shared by every latent model
    pixel, latent = (as_dict(sweeps[name]) for name in ("pixel", "latent"))
    assert latent.pop("autoencoder") == "'/studies/lvp/autoencoder/0_seed=1/checkpoints/last.ckpt'"
    assert (pixel.pop("experiment"), latent.pop("experiment")) == ("fmnist", "fmnist_latent")
    # The latent preset predicts v (its samples are never clipped); the pixel cell asks for the same.
    assert pixel.pop("prediction") == "v"
    assert pixel == latent and pixel["trainer.max_time"] == "'00:00:20:00'"  # same minutes, metrics, seeds
    pixel_cfg, latent_cfg = (
        compose_train(job, output_dir="/nonexistent")
        for job in (
            expand(sweeps["pixel"])[0],
            [o for o in expand(sweeps["latent"])[0] if not o.startswith("autoencoder=")]
            + ["autoencoder=/studies/ae.ckpt"],
        )
    )
    for group in ("prediction", "schedule", "loss", "weighting"):
        assert pixel_cfg[group] == latent_cfg[group], group
    # the sampler too, but for clip_denoised: off on latents, whatever a config says
    assert {**pixel_cfg.sampler, "clip_denoised": False} == latent_cfg.sampler
    assert sorted(lines["EVAL@"]) == ["latent", "pixel"]


@pytest.mark.parametrize("study", STUDIES)
def test_each_sweep_is_prewarmed_by_its_own_first_job(study):
    """The run that fills the compile cache before a sweep's jobs start together is one of that sweep's jobs
    (so the graph it compiles is theirs), printed just before the sweep."""
    lines = dry_run(study, TRAIN_EXTRA="compile=reduce-overhead")
    assert len(lines["PREWARM"]) == len(lines["SWEEP"])
    for prewarm, sweep in zip(lines["PREWARM"], lines["SWEEP"]):
        (single,) = expand(prewarm)  # one job, its overrides written as Hydra normalises them
        assert sorted(single) in [sorted(job) for job in expand(sweep)], (prewarm, sweep)
        assert prewarm[-1] == "compile=reduce-overhead"  # TRAIN_EXTRA too
    assert dry_run(study, PREWARM="0")["PREWARM"] == []


def test_sample_sets_reach_every_evaluation():
    evals = dry_run("weightings", SAMPLE_SETS="3")["EVAL"]
    assert evals and all(as_dict(e)["sample_sets"] == "3" for e in evals)


def test_dry_run_passes_data_root(tmp_path):
    env = {**os.environ, "DRY_RUN": "0", "DATA_ROOT": str(tmp_path), "PY": "echo"}
    env["STUDY_OUT"] = str(tmp_path / "out")
    # PY=echo: the script "runs" echo instead of Python, so each command line is printed.
    proc = subprocess.run(
        ["bash", str(EXPERIMENTS / "iddpm.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    train_lines = [line for line in proc.stdout.splitlines() if line.startswith("-m diffusion_lab.train -m")]
    assert len(train_lines) == 3 and all(f"data.root={tmp_path}" in line for line in train_lines)
    assert all(
        "hydra/launcher=gpu_pool" in line and f"hydra.sweep.dir={tmp_path}/out/" in line
        for line in train_lines
    )
    assert f"-m diffusion_lab.report {tmp_path}/out" in proc.stdout
    assert Path(tmp_path / "out").is_dir()


def test_evaluations_and_prewarm_get_the_launchers_share_of_the_cores(tmp_path):
    """On 2 GPUs with JOBS_PER_GPU=2 and 16 cores: run_queue's 4 evaluation workers, spread over the GPUs, and the
    prewarm run (like the sweep's 4 jobs at once) each get OMP_NUM_THREADS=4; a user's OMP_NUM_THREADS is kept."""
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    for name, body in (("nproc", "echo 16"), ("py", 'echo "$OMP_NUM_THREADS $CUDA_VISIBLE_DEVICES"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    jobs = [out / f"job{j}" for j in range(4)]
    for job in jobs:
        (job / "checkpoints").mkdir(parents=True)
        (job / "checkpoints" / "last.ckpt").touch()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUM_GPUS", "DATA_ROOT")}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        PY=str(bin_dir / "py"),
        STUDY_OUT=str(out),
        CUDA_VISIBLE_DEVICES="0,1",
        JOBS_PER_GPU="2",
        DRY_RUN="0",
    )
    script = (
        f"STUDY=t; source {EXPERIMENTS / 'common.sh'}; prewarm p x=1; queue_eval e; run_queue; exit $STATUS"
    )

    def seen(**extra_env: str) -> tuple[str, list[str]]:
        proc = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, env={**env, **extra_env}, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # each evaluation's log gets this run's lines appended (a study continued keeps the earlier ones)
        evals = sorted((job / "evaluation_e.log").read_text().strip().splitlines()[-1] for job in jobs)
        return (out / ".prewarm" / "p.log").read_text().strip(), evals

    assert seen() == ("4 0,1", ["4 0", "4 0", "4 1", "4 1"])
    assert seen(OMP_NUM_THREADS="3") == ("3 0,1", ["3 0", "3 0", "3 1", "3 1"])


def test_pool_with_adds_a_report_that_gathers_the_earlier_run_and_this_one(tmp_path):
    """POOL_WITH: after the study's own report, a second one over the earlier run and this study, gathered
    below $STUDY_OUT/pooled, with the same report arguments (the baselines)."""
    out, earlier = tmp_path / "out dir", tmp_path / "earlier" / "raw"
    argv = tmp_path / "argv"  # stands in for Python: prints its arguments as one JSON list
    argv.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n"
    )
    argv.chmod(0o755)
    env = {**os.environ, "STUDY_OUT": str(out), "PY": str(argv), "DRY_RUN": "0"}
    script = f"STUDY=t; source {EXPERIMENTS / 'common.sh'}; report 'My study' --baseline loss=simple"

    def commands(**extra_env: str) -> list[list[str]]:
        proc = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, env={**env, **extra_env}, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]

    own = ["-m", "diffusion_lab.report", str(out), "--title", "My study", "--keep-raw", str(out / "raw")]
    assert commands() == [[*own, "--baseline", "loss=simple"]]
    assert commands(POOL_WITH=str(earlier)) == [
        [*own, "--baseline", "loss=simple"],
        [
            *["-m", "diffusion_lab.report", str(earlier), str(out)],
            *["--title", "My study, pooled with an earlier run"],
            *[
                "--keep-raw",
                str(out / "pooled" / "raw"),
                "--out",
                str(out / "pooled"),
                "--baseline",
                "loss=simple",
            ],
        ],
    ]


def test_queue_eval_leaves_out_the_prewarm_runs_checkpoints(tmp_path):
    """A sweep's prewarm (two steps, only there to fill the compile cache) leaves a checkpoint under
    $STUDY_OUT/.prewarm: evaluating it would spend GPU time on a model no report reads."""
    out = tmp_path / "out dir"  # a space, and the study folder itself need not be hidden-free
    for job in (out / "sweep" / "0_seed=1", out / ".prewarm" / "sweep", out / "sweep" / ".hidden" / "x"):
        (job / "checkpoints").mkdir(parents=True)
        (job / "checkpoints" / "last.ckpt").touch()
    env = {**os.environ, "STUDY_OUT": str(out), "PY": "echo", "DRY_RUN": "0", "CUDA_VISIBLE_DEVICES": "0"}
    script = f"STUDY=t; source {EXPERIMENTS / 'common.sh'}; queue_eval e; printf '%s\\n' \"${{TASKS[@]}}\""
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    tasks = proc.stdout.strip().splitlines()
    assert len(tasks) == 1 and tasks[0].endswith("sweep/0_seed=1/evaluation_e.log 2>&1"), tasks


def test_all_runs_every_study_at_once_spread_over_the_gpus(tmp_path):
    """experiments/all.sh with PY=echo: each study runs (into its own folder, with its own log) on GPU
    i mod 2, its sweeps started together with jobs_per_gpu, and TRAIN_EXTRA reaches every training job."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_ROOT", "STUDY_OUT", "FEATURES")}
    env.update(
        PY="echo",
        CUDA_VISIBLE_DEVICES="0,1",
        STUDIES_OUT=str(tmp_path),
        JOBS_PER_GPU="3",
        TRAIN_EXTRA="trainer.val_check_interval=500 compile=false",
        FEATURES=str(tmp_path / "clf.pt"),
    )
    proc = subprocess.run(
        ["bash", str(EXPERIMENTS / "all.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    order = ["ddpm_table2", "iddpm", "ddim_table1", "weightings"]
    for i, study in enumerate(order):
        assert f"[all] {study} on GPU {i % 2}: {tmp_path}/{study}" in proc.stdout
        assert f"[all] {study} done" in proc.stdout
        log = (tmp_path / f"{study}.log").read_text()
        train = [line for line in log.splitlines() if line.startswith("-m diffusion_lab.train -m")]
        assert train and all(
            "hydra.launcher.jobs_per_gpu=3" in line
            and line.endswith("trainer.val_check_interval=500 compile=false")
            and f"hydra.sweep.dir={tmp_path}/{study}/" in line
            for line in train
        ), log
        assert f"-m diffusion_lab.report {tmp_path}/{study}" in log


def test_sweeps_runs_only_the_named_sweeps_and_their_evaluations():
    whole = dry_run("formulations")
    part = dry_run("formulations", SWEEPS="flow ddpm_eps")
    assert set(whole["SWEEP@"]) == {"ddpm_eps", "ddpm_v", "edm", "flow"}
    assert part["SWEEP@"] == ["ddpm_eps", "flow"]
    assert [w for w, tag in zip(whole["SWEEP"], whole["SWEEP@"]) if tag in ("ddpm_eps", "flow")] == part[
        "SWEEP"
    ]
    assert set(part["EVAL@"]) == {"ddpm_eps", "flow"}
    assert len(part["EVAL"]) == sum(tag in ("ddpm_eps", "flow") for tag in whole["EVAL@"]) == 3


def refused(study: str, **extra_env: str) -> str:
    """The one error line of a study's dry run that must stop before printing anything, with exit 2."""
    env = dict(os.environ, DRY_RUN="1", **extra_env)
    proc = subprocess.run(
        ["bash", str(EXPERIMENTS / f"{study}.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    return proc.stderr.strip()


def test_sweeps_naming_no_sweep_of_the_study_stops_it_with_exit_2():
    assert refused("formulations", SWEEPS="flow ddpm_esp") == (
        "SWEEPS: formulations has no sweep named 'ddpm_esp' (its sweeps: ddpm_eps ddpm_v edm flow)"
    )


def test_evals_runs_only_the_named_evaluations_in_the_studys_order():
    """EVALS names queue_eval NAMEs; ddim_table1 builds its 1000-step names in a loop, and they select too."""
    whole = dry_run("ddim_table1")["EVAL"]
    part = dry_run("ddim_table1", EVALS="ddpm_large_1000 ddpm")["EVAL"]
    assert [as_dict(e) for e in part] == [
        as_dict(e)
        for e in whole
        if as_dict(e).get("sampler") == "ddpm"
        and (as_dict(e)["steps"] != "[1000]") == ("sampling_variance" not in as_dict(e))
    ]
    assert len(part) == 2
    assert (as_dict(part[1])["sampling_variance"], as_dict(part[1])["steps"]) == ("fixed_large", "[1000]")


def test_evals_naming_no_evaluation_of_the_study_stops_it_with_exit_2():
    assert refused("ddim_table1", EVALS="ddpm ddpm_2000") == (
        "EVALS: ddim_table1 has no evaluation named 'ddpm_2000' (its evaluations: ddpm ddim_eta0_sets ddim_eta0 "
        "ddim_eta0.5 ddpm_large ddpm_1000 ddim_eta0_1000 ddim_eta0.5_1000 ddpm_large_1000 ddim_eta0_unclipped_1000 "
        "ddim_eta1_1000 ddim_eta1)"
    )


def test_resume_continues_the_sweeps_and_runs_only_the_evaluations_not_complete(tmp_path):
    """RESUME=1: sweeps continue in their folders; a complete evaluation is not run again; a stopped one continues
    (evaluate's resume=true); one that left a folder without a table runs again, the folder moved under
    evaluation/.stopped/ (kept, out of the report); a missing one runs."""
    out = tmp_path / "out"
    jobs = {name: out / "sweep" / name for name in ("0_seed=1", "1_seed=2", "2_seed=3", "3_seed=4")}
    for job in jobs.values():
        (job / "checkpoints").mkdir(parents=True)
        (job / "checkpoints" / "last.ckpt").touch()
    for name, complete in (("0_seed=1", True), ("1_seed=2", False)):
        (jobs[name] / "evaluation" / "e").mkdir(parents=True)
        table = {"summary": {"complete": complete}, "rows": []}
        (jobs[name] / "evaluation" / "e" / "evaluation.json").write_text(json.dumps(table))
    (jobs["2_seed=3"] / "evaluation" / "e").mkdir(parents=True)
    (jobs["2_seed=3"] / "evaluation" / "e" / "vlb_per_t.csv").write_text("t,vb\n")
    env = {
        **os.environ,
        "STUDY_OUT": str(out),
        "PY": sys.executable,
        "DRY_RUN": "0",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    script = f"STUDY=t; source {EXPERIMENTS / 'common.sh'}; queue_eval e; printf '%s\\n' \"${{TASKS[@]}}\""
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={**env, "RESUME": "1"})
    assert proc.returncode == 0, proc.stderr
    tasks = {
        t.split("/evaluation_e.log")[0].rsplit("/", 1)[-1]: shlex.split(t) for t in proc.stdout.splitlines()
    }
    assert sorted(tasks) == ["1_seed=2", "2_seed=3", "3_seed=4"], tasks
    assert [name for name, args in tasks.items() if "resume=true" in args] == ["1_seed=2"]
    assert (jobs["1_seed=2"] / "evaluation" / "e" / "evaluation.json").is_file()  # continued in place
    (moved,) = (jobs["2_seed=3"] / "evaluation" / ".stopped").iterdir()
    assert moved.name.startswith("e-") and (moved / "vlb_per_t.csv").is_file()
    assert not (jobs["2_seed=3"] / "evaluation" / "e").exists()
    # Without RESUME every job's evaluation is queued (evaluate itself refuses a folder that holds files).
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert len(proc.stdout.strip().splitlines()) == 4

    dry = {**env, "DRY_RUN": "1", "RESUME": "1"}
    script = f"STUDY=t; source {EXPERIMENTS / 'common.sh'}; train_sweep s x=1,2"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=dry)
    sweep_line = next(line for line in proc.stdout.splitlines() if line.startswith("SWEEP"))
    assert sweep_line.split()[-1] == "hydra.launcher.resume=true", proc.stdout


def test_a_prewarm_run_left_by_an_earlier_study_run_is_replaced(tmp_path):
    """The prewarm only fills the compile cache: an earlier one's folder (with its checkpoint, which a new run
    there would be refused over) is removed before it runs again."""
    out, bin_dir = tmp_path / "out", tmp_path / "bin"
    (out / ".prewarm" / "p" / "checkpoints").mkdir(parents=True)
    (out / ".prewarm" / "p" / "checkpoints" / "last.ckpt").touch()
    bin_dir.mkdir()
    (bin_dir / "py").write_text(f"#!/bin/sh\n[ -e '{out}/.prewarm/p' ] && echo kept || echo removed\n")
    (bin_dir / "py").chmod(0o755)
    env = {**os.environ, "STUDY_OUT": str(out), "PY": str(bin_dir / "py"), "DRY_RUN": "0"}
    script = f"STUDY=t; source {EXPERIMENTS / 'common.sh'}; prewarm p x=1"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (out / ".prewarm" / "p.log").read_text().strip() == "removed"
