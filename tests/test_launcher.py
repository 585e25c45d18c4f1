"""The gpu_pool Hydra launcher: parallel subprocess jobs, GPU assignment, failures recorded, non-zero exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf

from conftest import cli_env, write_fake_idx_root
from diffusion_lab.train import CONFIG_DIR
from hydra_plugins.diffusion_lab_launcher import _job_command as job_command
from hydra_plugins.diffusion_lab_launcher import gpu_pool_launcher as gp
from hydra_plugins.diffusion_lab_launcher._job_process import Job, job_env
from sweeps import job_dirs, run_sweep, sweep_status, tiny_run

REPO_ROOT = Path(CONFIG_DIR).parent


def test_hydra_finds_the_launcher_and_it_is_the_default():
    assert "GPUPoolLauncher" in [p.__name__ for p in Plugins.instance().discover(Launcher)]
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
        basic = compose("train", overrides=["hydra/launcher=basic"], return_hydra_config=True)
        slurm = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("gpu_pool_launcher.GPUPoolLauncher")
    assert cfg.hydra.launcher.gpus_per_job == 1 and cfg.hydra.launcher.max_parallel is None
    assert basic.hydra.launcher._target_.endswith("BasicLauncher")
    assert (
        slurm.hydra.launcher._target_
        == "hydra_plugins.diffusion_lab_launcher.slurm_launcher.ResumableSlurmLauncher"
    )
    assert OmegaConf.select(slurm, "hydra.launcher.tasks_per_node") == slurm.trainer.devices


def test_long_job_names_are_shortened_to_the_varying_overrides():
    long = "0_" + ",".join(f"key{i}=value{i}" for i in range(40))
    assert job_command.safe_subdir("0_a=1", "0_x") == "0_a=1"
    assert job_command.safe_subdir(long, "0_lr=0.1") == "0_lr=0.1"
    shortened = job_command.safe_subdir(long, "0_" + "x" * 300)
    assert len(shortened.encode()) <= 200 and shortened.startswith("0_xxx")
    assert job_command.quote("/a/0_b=1,c=[1,2]") == "'/a/0_b=1,c=[1,2]'"
    # Quotes in override values never reach a folder name (the studies pass its checkpoint path on quoted).
    assert (
        job_command.safe_subdir("0_trainer.max_time='00:00:03:00',x=\"a b\"", "0")
        == "0_trainer.max_time=00:00:03:00,x=a b"
    )


@pytest.mark.slow  # three training processes: ~35 s on 2 cores
def test_cpu_sweep_runs_in_parallel_and_records_the_failed_job(tmp_path):
    proc, sweep = run_sweep(
        tmp_path,
        *tiny_run(
            "hydra/launcher=gpu_pool",
            "hydra.launcher.max_parallel=2",
            "schedule.num_timesteps=20,0,30",  # T=0 is refused at start-up
            "debug=fast_dev_run",
        ),
        timeout=400,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "job #1 exited with status 2" in proc.stderr, proc.stderr
    assert "[gpu_pool] #1 FAILED (exit 2)" in proc.stdout and "[gpu_pool] #2 COMPLETED" in proc.stdout

    status = sweep_status(sweep)
    jobs = {j["num"]: j for j in status["jobs"]}
    assert sorted(jobs) == [0, 1, 2] and status["max_parallel"] == 2
    assert [jobs[n]["status"] for n in (0, 1, 2)] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert jobs[1]["exit_code"] == 2 and jobs[0]["exit_code"] == 0
    assert "error: schedule.num_timesteps=0" in Path(jobs[1]["log"]).read_text()

    # Each job its own directory, named by what varies, with its own config and outputs.
    dirs = {n: Path(jobs[n]["dir"]) for n in jobs}
    assert len(set(dirs.values())) == 3 and all(d.parent == sweep for d in dirs.values())
    for n, T in ((0, 20), (1, 0), (2, 30)):
        assert dirs[n].name == f"{n}_schedule.num_timesteps={T}"
        overrides = OmegaConf.load(dirs[n] / ".hydra" / "overrides.yaml")
        assert f"schedule.num_timesteps={T}" in overrides
        assert OmegaConf.load(dirs[n] / ".hydra" / "config.yaml").schedule.num_timesteps == T
    for n in (0, 2):
        assert (dirs[n] / "samples" / "final.png").is_file()
        assert json.loads((dirs[n] / ".hydra" / "job_return.json").read_text())["return_value"] is not None
    assert not (dirs[1] / "samples").exists()

    # Two at a time: #0 and #1 start together, #2 waits for a free slot.
    t = {
        n: (datetime.fromisoformat(j["started"]), datetime.fromisoformat(j["ended"])) for n, j in jobs.items()
    }
    assert abs((t[0][0] - t[1][0]).total_seconds()) <= 2
    assert t[2][0] >= min(t[0][1], t[1][1]).replace(microsecond=0)


FAKE_APP = """
import json, os, time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher

# A machine with 5 GPUs. (Hydra runs the launcher class its plugin scan loaded, not the importable module's.)
(pool,) = [c for c in Plugins.instance().discover(Launcher) if c.__name__ == "GPUPoolLauncher"]
pool.visible_gpus = staticmethod(lambda: ["0", "1", "2", "3", "4"])


@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    start = time.time()
    time.sleep(cfg.sleep)
    seen = {
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "devices": cfg.trainer.devices,
        "start": start,
        "end": time.time(),
        "sweep": os.environ.get("DIFFUSION_LAB_SWEEP_DIR"),
        "mode": str(HydraConfig.get().mode),
        "num": HydraConfig.get().job.num,
    }
    Path(HydraConfig.get().runtime.output_dir, "seen.json").write_text(json.dumps(seen))
    if cfg.x == cfg.fail_x:
        raise SystemExit(3)
    if cfg.x == cfg.stop_x:  # as a training that a SIGTERM stopped after saving its checkpoint ends
        import diffusion_lab.callbacks.preemption as preemption

        preemption._stopped_by = "SIGTERM"
    return cfg.x * 10


if __name__ == "__main__":
    main()
"""

FAKE_APP_CONFIG = """
defaults:
  - _self_
  - override hydra/launcher: gpu_pool
x: 0
fail_x: -1
stop_x: -1
sleep: 1.5
trainer:
  devices: 1
"""


def run_fake_app(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    """A sweep of the fake app (written into ``tmp_path``) through the gpu_pool launcher."""
    (tmp_path / "app.py").write_text(textwrap.dedent(FAKE_APP))
    (tmp_path / "app.yaml").write_text(textwrap.dedent(FAKE_APP_CONFIG))
    return run_sweep(
        tmp_path, *overrides, script="app.py", env={"PYTHONPATH": str(REPO_ROOT / "src")}, timeout=120
    )


def seen_by_jobs(status: dict) -> list[dict]:
    """What each job of a fake-app sweep saw (its seen.json), in job order."""
    return [json.loads((Path(j["dir"]) / "seen.json").read_text()) for j in status["jobs"]]


@pytest.mark.slow  # five job processes each: ~20 s on 2 cores
@pytest.mark.parametrize(
    "launcher,expect_parallel,gpus_per_job,pool",
    [
        (["hydra.launcher.gpus_per_job=2"], 2, 2, {"0", "1", "2", "3"}),
        (["hydra.launcher.gpus=[1,3]", "hydra.launcher.max_parallel=5"], 2, 1, {"1", "3"}),
    ],
)
def test_jobs_get_their_own_gpus_and_queue_for_them(tmp_path, launcher, expect_parallel, gpus_per_job, pool):
    proc, sweep = run_fake_app(tmp_path, "x=1,2,3,4,5", "fail_x=4", *launcher)
    assert proc.returncode != 0 and "job #3 exited with status 3" in proc.stderr, proc.stdout + proc.stderr
    status = sweep_status(sweep)
    assert [j["status"] for j in status["jobs"]] == ["COMPLETED"] * 3 + ["FAILED", "COMPLETED"]
    assert status["max_parallel"] == expect_parallel
    seen = seen_by_jobs(status)
    for job, s in zip(status["jobs"], seen):
        gpus = s["cuda"].split(",")
        assert len(gpus) == gpus_per_job and set(gpus) <= pool and gpus == job["gpus"]
        assert s["devices"] == gpus_per_job  # trainer.devices=<gpus_per_job> passed to the job
        assert s["sweep"] == str(sweep.resolve()) and s["mode"] == "RunMode.RUN" and s["num"] == job["num"]
    # Never more than expect_parallel at once, and jobs running together never share a GPU.
    for i, a in enumerate(seen):
        overlapping = [b for b in seen if b["start"] < a["end"] and a["start"] < b["end"]]
        assert len(overlapping) <= expect_parallel
        for b in seen[i + 1 :]:
            if b["start"] < a["end"] and a["start"] < b["end"]:
                assert not set(a["cuda"].split(",")) & set(b["cuda"].split(","))
    assert max(len([b for b in seen if b["start"] < a["end"] and a["start"] < b["end"]]) for a in seen) == 2
    # The task's return value comes back (sweepers that optimise it work with this launcher).
    returns = [Path(j["dir"], ".hydra", "job_return.json") for j in status["jobs"]]
    assert json.loads(returns[0].read_text()) == {"return_value": 10} and not returns[3].exists()


@pytest.mark.slow  # six job processes: ~25 s on 2 cores
def test_jobs_share_gpus_with_jobs_per_gpu(tmp_path):
    """jobs_per_gpu=2 on GPUs 1 and 3: four jobs at once, two per GPU, spread (never three on one GPU)."""
    proc, sweep = run_fake_app(
        tmp_path, "x=1,2,3,4,5,6", "sleep=3", "hydra.launcher.gpus=[1,3]", "hydra.launcher.jobs_per_gpu=2"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = sweep_status(sweep)
    assert status["max_parallel"] == 4 and status["jobs_per_gpu"] == 2
    seen = seen_by_jobs(status)
    assert {s["cuda"] for s in seen} == {"1", "3"}
    assert [s["cuda"] for s in seen[:2]] == ["1", "3"]  # spread first, then doubled up
    for a in seen:
        together = [b["cuda"] for b in seen if b["start"] < a["end"] and a["start"] < b["end"]]
        assert together.count(a["cuda"]) <= 2 and len(together) <= 4
    assert max(len([b for b in seen if b["start"] < a["end"] and a["start"] < b["end"]]) for a in seen) == 4


def test_jobs_per_gpu_needs_one_gpu_per_job():
    with pytest.raises(ValueError, match="jobs_per_gpu=2 is invalid.*gpus_per_job=1 \\(got 2\\)"):
        gp.GPUPoolLauncher(gpus_per_job=2, jobs_per_gpu=2)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (dict(gpus_per_job=-1), "hydra.launcher.gpus_per_job=-1 must be >= 0"),
        (dict(max_parallel=0), "hydra.launcher.max_parallel=0 must be >= 1 (or null)"),
        (dict(cpu_parallel=0), "hydra.launcher.cpu_parallel=0 must be >= 1 (jobs at once without GPUs)"),
        (dict(poll_seconds=0), "hydra.launcher.poll_seconds=0 must be > 0"),
    ],
)
def test_a_launcher_setting_out_of_range_is_refused_in_one_line(setting, message):
    # cpu_parallel=0 was taken as 1 without a word; poll_seconds=-1 failed in time.sleep once jobs ran.
    with pytest.raises(ValueError) as err:
        gp.GPUPoolLauncher(**setting)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "launcher,gpus,threads",
    [
        (dict(jobs_per_gpu=3), ("0",), "2"),  # 2 GPUs x 3 jobs at once on 12 cores
        (dict(jobs_per_gpu=3, max_parallel=2), ("0",), "6"),
        (dict(gpus_per_job=2), ("0", "1"), "12"),  # one 2-GPU job at a time
    ],
)
def test_gpu_jobs_get_a_share_of_the_cores_unless_omp_num_threads_is_set(
    tmp_path, monkeypatch, launcher, gpus, threads
):
    """OMP_NUM_THREADS = cores // (jobs running at once on the host) for GPU jobs too; a user's value is kept."""
    pool = gp.GPUPoolLauncher(**launcher)
    monkeypatch.setattr(pool, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    pool._set_up_slots()
    assert pool._slots.take() == gpus
    job = Job(0, [], tmp_path, OmegaConf.create(), ["true"], tmp_path / "job.log")
    env = job_env(job, tmp_path, pool._cuda_devices(gpus), pool._parallel)
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(gpus) and env["OMP_NUM_THREADS"] == threads
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert job_env(job, tmp_path, pool._cuda_devices(gpus), pool._parallel)["OMP_NUM_THREADS"] == "5"


@pytest.mark.slow  # two jobs of two DDP processes: ~40 s on 2 cores
def test_ddp_inside_a_sweep_job(tmp_path):
    """Lightning DDP relaunches the job's own command line (a plain single run under hydra.run.dir): two jobs
    side by side, each of 2 processes (CPU, gloo), each in its own directory."""
    data = write_fake_idx_root(tmp_path / "data", n_train=48, n_test=8)
    proc, sweep = run_sweep(
        tmp_path,
        *tiny_run(
            "schedule.num_timesteps=20,30",
            f"data.root={data}",
            "data.val_size=8",
            "data.batch_size=8",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
        ),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = sweep_status(sweep)
    assert [j["status"] for j in status["jobs"]] == ["COMPLETED", "COMPLETED"]
    for job in status["jobs"]:
        log = Path(job["log"]).read_text()
        assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log
        assert (Path(job["dir"]) / "checkpoints" / "last.ckpt").is_file()
    assert [d.name for d in job_dirs(sweep)] == [
        "0_schedule.num_timesteps=20",
        "1_schedule.num_timesteps=30",
    ]


def test_a_job_folder_can_be_passed_on_as_a_quoted_override():
    """What the studies do with every job's checkpoint (experiments/common.sh: ckpt='<job>/checkpoints/last.ckpt'):
    a job folder named by overrides that hold quotes, '=', ',' and ':' must parse back as one string value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    dirname = "0_loss=simple,trainer.max_time='00:00:03:00',x=[1,2],y=\"a b\""
    path = f"/runs/study/simple/{job_command.safe_subdir(dirname, '0')}/checkpoints/last.ckpt"
    (parsed,) = OverridesParser.create().parse_overrides([f"ckpt='{path}'"])
    assert parsed.value() == path


@pytest.mark.slow  # two job processes: ~18 s on 2 cores
def test_a_job_stopped_by_a_signal_is_recorded_interrupted_not_completed(tmp_path):
    proc, sweep = run_fake_app(tmp_path, "x=1,2", "stop_x=2", "sleep=0")
    assert proc.returncode != 0
    assert "[gpu_pool] #1 INTERRUPTED (exit 0)" in proc.stdout, proc.stdout
    jobs = sweep_status(sweep)["jobs"]
    assert [(j["status"], j["exit_code"]) for j in jobs] == [("COMPLETED", 0), ("INTERRUPTED", 0)]
    assert (
        "job #1 was stopped before its end; continue the sweep with hydra.launcher.resume=true" in proc.stderr
    )
    returned = json.loads((Path(jobs[1]["dir"]) / ".hydra" / "job_return.json").read_text())
    assert returned == {"return_value": 20, "stopped_by": "SIGTERM"}


@pytest.mark.parametrize("sig,code,name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_stopped_sweep_stops_its_jobs_and_records_them(tmp_path, sig, code, name):
    """SIGTERM (a scheduler, kill) or Ctrl-C to the sweep: its running jobs are stopped, not left orphaned, and
    recorded INTERRUPTED, the queued ones QUEUED; the sweep exits 143 / 130 saying how to continue."""
    (tmp_path / "app.py").write_text(textwrap.dedent(FAKE_APP))
    (tmp_path / "app.yaml").write_text(textwrap.dedent(FAKE_APP_CONFIG))
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "app.py", "-m", "x=1,2,3", "sleep=60", "hydra.launcher.max_parallel=2",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env={**cli_env(tmp_path), "PYTHONPATH": str(REPO_ROOT / "src")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a test run started in the background ignores SIGINT, and so would this child.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            running = [j for j in _status_or_empty(sweep) if j["status"] == "RUNNING"]
            if len(running) == 2:
                break
            time.sleep(0.2)
        assert len(running) == 2, "the two jobs did not start"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code
    jobs = _status_or_empty(sweep)
    assert [j["status"] for j in jobs] == ["INTERRUPTED", "INTERRUPTED", "QUEUED"]
    for job in jobs[:2]:
        with pytest.raises(ProcessLookupError):
            os.kill(job["pid"], 0)  # stopped, not left running without its launcher
    assert (
        f"[gpu_pool] stopped by {name}: 2 running job(s) stopped (a training saves its checkpoint first), 1 not "
        f"started; continue with the same command and hydra.launcher.resume=true; status: {sweep / 'sweep_status.json'}"
    ) in out


def _status_or_empty(sweep: Path) -> list[dict]:
    try:
        return sweep_status(sweep)["jobs"]
    except (OSError, ValueError):
        return []
